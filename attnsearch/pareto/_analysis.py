"""One query: the study it reads, its front and hypervolume, the files asked for, and (only when it is the
study's own question, or when asked) the study's record in MLflow."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow import MlflowClient

from ..contract import ALL_STUDIES, COMPLETED
from ._front import (
    _objectives,
    _reference,
    baseline_rows,
    hypervolume,
    pareto_front,
    relative_to_baseline,
)
from ._output import export_front, plot_front
from ._record import front_key, record_names, write_record
from ._runs import Study, load_runs, select_study

if TYPE_CHECKING:
    from ..config import Job

__all__ = ["analyze", "record_study"]

logger = logging.getLogger(__name__)


def analyze(
    uri: str,
    experiment: str,
    study_id: str | None = None,
    *,
    parent_run_id: str | None = None,
    objectives: Mapping[str, str] | None = None,
    budget: str | int = "full",
    reference: Mapping[str, float] | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    record: bool | None = None,
    definition: Mapping[str, str] | None = None,
    job: Job | None = None,
) -> tuple[pd.DataFrame, float]:
    """Front and hypervolume of one study (or of every study of the experiment); returns ``(front, hv)``.

    The study is ``parent_run_id``, else ``study_id``: an id, ``"latest"``/None (the most recently started
    study) or ``"all"`` (the trials of every study, compared at equal budget). The objectives are ``objectives``,
    else the study's own: its parent's ``attnsearch.objectives`` tag, else ``definition`` (for a study recorded
    before that tag existed), else ``DEFAULT_OBJECTIVES``. ``out`` (CSV/Parquet) and ``plot`` (PNG) are written
    when given. The default reference is taken from all trials competing at ``budget`` (package docstring).

    MLflow is written only when ``record`` says so: None (the default) records the study's own question (its
    own objectives, ``budget="full"``) under the plain names and leaves the store untouched for any other
    query; True records any query of one study (another objective set or budget under names keyed by
    ``front_key``, never overwriting the study's own); False never writes. ``front.attrs`` says what was done:
    ``study``, ``parent_run_id``, ``own`` (the study's own definition), ``recorded`` and ``record_key`` (None:
    the plain names).

    Args:
        uri: the MLflow tracking URI.
        experiment: the job's MLflow experiment.
        study_id: a study id, ``"latest"``/None or ``"all"``.
        parent_run_id: a study's parent run (instead of ``study_id``).
        objectives: ``{metric: "max"|"min"}`` to compare on (default: the study's own).
        budget: ``"full"``, ``"any"`` or a number of epochs (which trials compete).
        reference: the hypervolume's reference point, one value per objective (default: from the competitors).
        out: a ``.csv``/``.parquet`` file to write the front to.
        plot: a ``.png`` file to draw the front in.
        record: write the front to MLflow (None: only the study's own question; see above).
        definition: the objectives of a study recorded before its parent carried them.
        job: the job file's job, for a query through it: only its own studies (``select_study``).
    """
    client = MlflowClient(uri)
    study = select_study(client, experiment, study_id, parent_run_id, job=job)
    df = load_runs(experiment, tracking_uri=uri, parent_run_id=study.parent_run_id)
    if study.studies is not None and "study" in df.columns:  # all of a job's studies, not another job's
        df = df[df["study"].isin(study.studies)].reset_index(drop=True)
    return _analyze(client, study, df, objectives=objectives, budget=budget, reference=reference, out=out,
                    plot=plot, record=record, definition=definition)


def record_study(
    uri: str,
    experiment: str,
    study_id: str | None = None,
    *,
    parent_run_id: str | None = None,
    definition: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, float] | None:
    """Record the study's own front (its objectives at the full budget) as its end does (``attnsearch sync``);
    returns ``(front, hv)``, or None, writing nothing, when the study has no completed trial yet."""
    if study_id == ALL_STUDIES and parent_run_id is None:
        raise ValueError("a study's front is recorded one study at a time; name one (an id or 'latest')")
    client = MlflowClient(uri)
    study = select_study(client, experiment, study_id, parent_run_id)
    df = load_runs(experiment, tracking_uri=uri, parent_run_id=study.parent_run_id)
    if "state" not in df.columns or not (df["state"] == COMPLETED).any():
        return None
    return _analyze(client, study, df, objectives=None, budget="full", reference=None, out=None, plot=None,
                    record=True, definition=definition)


def _analyze(
    client: Any,
    study: Study,
    df: pd.DataFrame,
    *,
    objectives: Mapping[str, str] | None,
    budget: str | int,
    reference: Any,
    out: str | os.PathLike | None,
    plot: str | os.PathLike | None,
    record: bool | None,
    definition: Mapping[str, str] | None,
) -> tuple[pd.DataFrame, float]:
    own = _objectives(study.objectives or definition)
    query = _objectives(objectives if objectives is not None else own)
    is_own = query == own and budget == "full"
    if record and study.parent_run_id is None:
        raise ValueError("recording a front needs one study, and 'all' compares several; name one (an id or "
                         "'latest')")
    write = (is_own if record is None else bool(record)) and study.parent_run_id is not None

    front = pareto_front(df, query, budget)
    baselines = baseline_rows(df)  # each study's own (--study all compares several)
    if len(baselines):
        front = relative_to_baseline(front, baselines, query)
    ref = _reference(front, query, reference if reference is not None else front.attrs["reference"])
    hv = hypervolume(front, query, ref)
    front["pareto"] = pd.array([True] * len(front), dtype="boolean")
    front.attrs.update({
        "reference": ref,
        "hypervolume": hv,
        "study": study.study,
        "parent_run_id": study.parent_run_id,
        "own": {"objectives": own, "budget": "full"},
        "recorded": write,
        "record_key": None if is_own else front_key(query, budget),
    })
    if study.parent_run_id is None:
        front.attrs["studies"] = sorted(df["study"].dropna().unique().tolist()) if "study" in df.columns else []
    title = (f"{study.experiment}: Pareto front of all studies" if study.parent_run_id is None
             else f"{study.experiment} / {study.study}: Pareto front")

    if out is not None:
        export_front(front, out)
    if plot is not None:
        plot_front(df, front, query, plot, title=title, hv=hv)
    if write:
        write_record(client, study, df, front, record_names(front.attrs["record_key"]), title=title)
    else:
        logger.info("Pareto query on study %s not recorded in MLflow (the study's own front is %s at budget full)",
                    study.study, own)
    return front, hv
