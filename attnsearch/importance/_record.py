"""Writing a study's importances and plots to its MLflow parent run (at the study's end, and by ``attnsearch sync``).

On the parent run:

* metrics ``importance.<objective>.<knob>`` (the whole study's ranking, e.g. ``importance.val_acc.train.lr``) and
  ``importance.<objective>.<type>.<knob>`` (a type's knobs among its own trials, the type's prefix not repeated:
  ``importance.val_acc.se.reduction``, ``importance.val_acc.se.stages``); only values that changed are written;
* tags ``attnsearch.importance.evaluator``, ``attnsearch.importance.reliable`` (``true``/``false``) and
  ``attnsearch.importance.warnings`` (the unreliability rules that apply, ``; ``-separated);
* artifacts ``importance/importance.csv`` (``Importances.table``) and the plots under ``plots/``
  (``attnsearch.importance._plots``), next to the front's ``pareto.png``;
* the ``importance`` section of the run's description: the ranking and links to the plots.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, RunTag

from ..contract import (
    TAG_IMPORTANCE_EVALUATOR,
    TAG_IMPORTANCE_RELIABLE,
    TAG_IMPORTANCE_WARNINGS,
    TAG_PARETO_REFERENCE,
)
from ..pareto import Study
from ..tracking import fast_http, note_room, note_tags
from ._evaluate import Importances, study_importances
from ._output import importance_markdown
from ._plots import write_plots

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PLOTS_DIR",
    "importance_metrics",
    "record_importances",
]

PLOTS_DIR = "plots"  # the parent run's plots (artifacts); the front's own stays pareto.png at the root
_PLOT_TITLES = {
    "param_importances": "parameter importances",
    "parallel_coordinate": "parallel coordinates",
    "hypervolume_trials": "hypervolume by trial",
    "hypervolume_time": "hypervolume by wall time",
}


def importance_metrics(imp: Importances) -> dict[str, float]:
    """The metric names and values of ``imp`` on the parent run (module docstring)."""
    out = {}
    for objective, values in imp.overall.items():
        out.update({f"importance.{objective}.{knob}": float(v) for knob, v in values.items()})
    for kind, per in imp.by_type.items():
        for objective, values in per.items():
            for knob, v in values.items():
                own = knob[len(kind) + 1:] if knob.startswith(kind + ".") else knob
                out[f"importance.{objective}.{kind}.{own}"] = float(v)
    return out


def _reference(study: Study) -> dict[str, float] | None:
    # the recorded front's hypervolume reference, so the plots' hypervolume is the parent's pareto.hypervolume
    try:
        value = json.loads(study.tags.get(TAG_PARETO_REFERENCE) or "null")
    except ValueError:
        return None
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else None


def _plot_url(parent_run_id: str, path: str) -> str:
    return f"get-artifact?path={path}&run_uuid={parent_run_id}"


def record_importances(
    client: Any,
    study: Study,
    optuna_study: optuna.Study,
    *,
    evaluator: str = "fanova",
    objectives: dict[str, str] | None = None,
    seed: int | None = 0,
) -> Importances:
    """Compute the importances of ``optuna_study`` (the study's Optuna record), draw its plots and write both to
    the parent run of ``study`` (``attnsearch.pareto.select_study``); returns the importances.

    Args:
        client: an ``mlflow.MlflowClient`` on the study's store.
        study: the study's parent run, as read.
        optuna_study: the study's Optuna record.
        evaluator: ``fanova``, ``ped-anova`` or ``mdi``.
        objectives: ``{name: mode}`` in the Optuna study's order (default: its metric names, else the study's).
        seed: the evaluator's seed.
    """
    if study.parent_run_id is None:
        raise ValueError("importances are recorded one study at a time; name one (an id or 'latest')")
    if objectives is None and not optuna_study.metric_names:
        objectives = study.objectives
    imp = study_importances(optuna_study, objectives, evaluator, seed=seed)
    parent = study.parent_run_id
    tmp = Path(tempfile.mkdtemp(prefix="attnsearch-importance-"))
    try:
        plots = write_plots(optuna_study, imp, tmp / PLOTS_DIR, reference=_reference(study),
                            title=study.study)
        csv = tmp / "importance.csv"
        imp.table().to_csv(csv, index=False)
        links = {}
        for name in plots:
            kind, _, objective = name.removesuffix(".png").partition("_coordinate_")
            title = (_PLOT_TITLES["parallel_coordinate"] + f" ({objective})" if objective
                     else _PLOT_TITLES.get(kind, kind))
            links[title] = _plot_url(parent, f"{PLOTS_DIR}/{name}")
        links["Pareto front"] = _plot_url(parent, "pareto.png")
        section = importance_markdown(imp, links, limit=min(2400, note_room(study.tags, "importance")))
        now = int(time.time() * 1000)
        metrics = importance_metrics(imp)
        tags = {TAG_IMPORTANCE_EVALUATOR: evaluator, TAG_IMPORTANCE_RELIABLE: str(imp.reliable).lower(),
                TAG_IMPORTANCE_WARNINGS: "; ".join(imp.warnings)[:4000],
                **note_tags(study.tags, "importance", section)}
        with fast_http():
            client.log_artifact(parent, str(csv), "importance")
            if plots:
                client.log_artifacts(parent, str(tmp / PLOTS_DIR), PLOTS_DIR)
            new_metrics = [Metric(k, v, now, 0) for k, v in metrics.items() if study.metrics.get(k) != v]
            new_tags = [RunTag(k, v) for k, v in tags.items() if study.tags.get(k) != v]
            for start in range(0, len(new_metrics), 900):  # MLflow takes 1,000 metrics per batch
                client.log_batch(parent, metrics=new_metrics[start:start + 900])
            if new_tags:
                client.log_batch(parent, tags=new_tags)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return imp
