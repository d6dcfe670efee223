"""Writing a front to MLflow: the study's record.

A study's recorded front is the front of its own objectives at the full budget, under the plain names (the
child-run tag ``attnsearch.pareto``, the parent's ``pareto.hypervolume``/``pareto.size`` metrics,
``attnsearch.pareto.objectives``/``budget``/``reference`` tags, ``pareto.csv``/``pareto.png`` artifacts), so the
MLflow UI filter ``tags.attnsearch.pareto = 'true'`` shows the study's answer. A front recorded on request for
another objective set or budget lives under names keyed by ``front_key`` and never touches the plain ones; what
follows the study's own front only is written with the plain names only: the ``baseline.<metric>`` metrics and the
parent's description (``mlflow.note.content``: the front as a markdown table with the baseline's row, and the plot),
here; the front's models by ``attnsearch.export`` (the driver, after the study's own front is recorded).

Only values that differ from what the store holds are written (tags, flags, metrics), so recording the same
front twice adds nothing to the metric histories.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, RunTag

from ..contract import (
    METRIC_FRONT_SIZE,
    METRIC_HYPERVOLUME,
    TAG_PARENT,
    TAG_PARETO,
    TAG_PARETO_BUDGET,
    TAG_PARETO_OBJECTIVES,
    TAG_PARETO_REFERENCE,
    TAG_ROLE,
)
from ..tracking import fast_http, note_room, note_tags, quote, search_all
from ._front import _present, baseline_row
from ._output import export_front, front_markdown, plot_front
from ._runs import Study

__all__ = ["front_key", "RecordNames", "record_names", "write_record", "description"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def front_key(objectives: Mapping[str, str], budget: str | int) -> str:
    """The key of a front's names in MLflow: objectives sorted by name (their order changes no front), then the
    budget, e.g. ``params-min.val_acc-max.budget-any`` (only characters MLflow accepts in keys)."""
    parts = [f"{_UNSAFE.sub('_', str(name))}-{mode}" for name, mode in sorted(objectives.items())]
    return ".".join([*parts, f"budget-{_UNSAFE.sub('_', str(budget))}"])


@dataclass(frozen=True)
class RecordNames:
    """Where one recorded front lives: ``key`` None for the study's own front (the plain names)."""

    key: str | None
    trial_tag: str
    objectives_tag: str
    budget_tag: str
    reference_tag: str
    hypervolume: str
    size: str
    artifact_dir: str | None  # None: the parent run's root

    @property
    def own(self) -> bool:
        return self.key is None


def record_names(key: str | None = None) -> RecordNames:
    """The names of the study's own front (``key`` None), or of the front ``key`` (``front_key``)."""
    if key is None:
        return RecordNames(None, TAG_PARETO, TAG_PARETO_OBJECTIVES, TAG_PARETO_BUDGET, TAG_PARETO_REFERENCE,
                           METRIC_HYPERVOLUME, METRIC_FRONT_SIZE, None)
    return RecordNames(key, f"{TAG_PARETO}.{key}", f"{TAG_PARETO_OBJECTIVES}.{key}", f"{TAG_PARETO_BUDGET}.{key}",
                       f"{TAG_PARETO_REFERENCE}.{key}", f"{METRIC_HYPERVOLUME}.{key}", f"{METRIC_FRONT_SIZE}.{key}",
                       f"pareto/{key}")


def _trial_flags(client: Any, study: Study, tag: str) -> dict[str, str | None]:
    runs = search_all(client, [study.experiment_id],
                      f"tags.`{TAG_ROLE}` = 'trial' and tags.`{TAG_PARENT}` = {quote(study.parent_run_id)}")
    return {run.info.run_id: run.data.tags.get(tag) for run in runs}


def write_record(
    client: Any,
    study: Study,
    df: pd.DataFrame,
    front: pd.DataFrame,
    names: RecordNames,
    *,
    title: str,
) -> None:
    """Record ``front`` (from ``pareto_front`` on ``df``, the study's trials, with ``hypervolume``, ``reference``
    and ``objectives``/``budget`` in its attrs) on the study's parent run and its trials under ``names``."""
    objectives, ref, hv = front.attrs["objectives"], front.attrs["reference"], front.attrs["hypervolume"]
    parent = study.parent_run_id
    tmp = Path(tempfile.mkdtemp(prefix="attnsearch-pareto-"))
    try:
        csv = export_front(front, tmp / "pareto.csv")
        png = plot_front(df, front, objectives, tmp / "pareto.png", title=title, hv=hv)
        now = int(pd.Timestamp.now().timestamp() * 1000)
        metrics = {names.hypervolume: float(hv), names.size: float(len(front))}
        if names.own:
            base = front.attrs.get("baseline") or {}
            metrics.update({f"baseline.{k}": float(v) for k, v in base.items() if k in objectives and _present(v)})
        tags = {names.objectives_tag: json.dumps(dict(objectives)), names.reference_tag: json.dumps(ref),
                names.budget_tag: str(front.attrs["budget"])}
        if names.own:  # the parent's description: what the MLflow UI shows first on the study's run
            # its front section; the other sections (the importances) are kept as they are
            tags.update(note_tags(study.tags, "pareto",
                                  description(study, df, front, limit=note_room(study.tags, "pareto"))))
        with fast_http():
            client.log_artifact(parent, str(csv), names.artifact_dir)
            client.log_artifact(parent, str(png), names.artifact_dir)
            new_metrics = [Metric(k, v, now, 0) for k, v in metrics.items() if study.metrics.get(k) != v]
            new_tags = [RunTag(k, v) for k, v in tags.items() if study.tags.get(k) != v]
            if new_metrics or new_tags:
                client.log_batch(parent, metrics=new_metrics, tags=new_tags)
            on_front = set(front["run_id"])
            for run_id, old in _trial_flags(client, study, names.trial_tag).items():
                new = "true" if run_id in on_front else "false"
                if old != new:  # only the flags that change: one call per change
                    client.log_batch(run_id, tags=[RunTag(names.trial_tag, new)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def description(study: Study, df: pd.DataFrame, front: pd.DataFrame, limit: int | None = None) -> str:
    """The study's parent-run description (markdown): its recorded front as a table with the baseline's row, run
    names linking to their runs, and the front's plot (the parent's ``pareto.png``, served by the MLflow server)."""
    objectives = ", ".join(f"{k} ({m})" for k, m in front.attrs["objectives"].items())
    heading = (f"**Pareto front** of study `{study.study}`: {objectives} at budget {front.attrs['budget']}; "
               f"{len(front)} of {front.attrs.get('candidates', len(df))} trials, hypervolume "
               f"{front.attrs['hypervolume']:.6g}. Front runs carry the tag `{TAG_PARETO} = 'true'`.")
    plot = f"get-artifact?path=pareto.png&run_uuid={study.parent_run_id}"
    extra = {} if limit is None else {"limit": limit}
    return front_markdown(front, baseline_row(df), experiment_id=study.experiment_id, plot_url=plot, heading=heading,
                          **extra)
