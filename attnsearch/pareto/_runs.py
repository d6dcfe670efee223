"""Loading: a study's trials from MLflow as a DataFrame, and which study a query reads (with its own definition)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..contract import (
    ALL_STUDIES,
    LATEST,
    MODES,
    TAG_BASELINE,
    TAG_BUDGET,
    TAG_MAX_T,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_PARETO,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    is_number,
)
from ..space import job_identity
from ..tracking import fast_http, job_study_ids, latest_parent, param_types, quote, run_params, search_all

if TYPE_CHECKING:
    from ..config import Job

__all__ = ["load_runs", "Study", "select_study", "study_definition", "LATEST", "ALL_STUDIES"]

# Columns every frame from load_runs has first, in this order (then params, then metrics).
_LEAD = ["run_name", "state", "budget", "pareto", "baseline", "reason", "trial_id", "study", "run_id", "status",
         "start_time"]


def _column_values(values: list[Any], texts: list[str | None], guessed: list[bool]) -> pd.Series:
    """One param over the runs (None where a run lacks it), decoded (``tracking.run_params``), as the tightest
    pandas dtype; ``texts`` are the logged strings, ``guessed`` says where no type was recorded."""
    present = [v for v in values if v is not None]
    if not present:
        return pd.Series(values, dtype=object)
    if all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if all(is_number(v) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    if all(isinstance(v, str) for v in present):
        return pd.Series(values)
    if any(guessed):
        # guessed types disagree within a column (e.g. stages "3" and "2,3"): the strings are the truth
        return pd.Series(texts)
    return pd.Series(values, dtype=object)


def load_runs(
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    study_id: str | None = None,
) -> pd.DataFrame:
    """One row per trial (child run) of ``experiment``; all studies unless ``parent_run_id``/``study_id`` is given.

    Columns: ``run_name``, ``state``, ``budget`` (Int64), ``pareto`` (boolean), ``baseline`` (bool: the study's
    baseline trial, tag ``attnsearch.baseline``), ``reason``, ``trial_id``,
    ``study``, ``run_id``, ``status``, ``start_time``; then every param under its trial-config name
    (``attention``, ``stages``, ``sa.groups``, ``train.lr``...) cast back to its type; then every metric under its
    name (``val_acc``, ``flops``, ...: the value at the last step).

    Args:
        experiment: the MLflow experiment (a job's ``tracking.experiment``, default its name).
        tracking_uri: the MLflow store (default: MLflow's own).
        parent_run_id: only the trials of this study's parent run.
        study_id: only the trials of this study.
    """
    from mlflow import MlflowClient

    with fast_http():
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            known = [e.name for e in client.search_experiments(max_results=50)]
            raise ValueError(f"no MLflow experiment named {experiment!r} in this store; experiments: {known}")
        flt = f"tags.`{TAG_ROLE}` = 'trial'"
        if parent_run_id:
            flt += f" and tags.`{TAG_PARENT}` = {quote(parent_run_id)}"
        if study_id:
            flt += f" and tags.`{TAG_STUDY}` = {quote(study_id)}"
        runs = search_all(client, [exp.experiment_id], flt)
        if not parent_run_id and not study_id:  # every study: the searches' trials, not a retrain's re-runs
            studies = {r.info.run_id for r in search_all(client, [exp.experiment_id], f"tags.`{TAG_ROLE}` = 'study'")}
            runs = [r for r in runs if r.data.tags.get(TAG_PARENT) in studies]

    base, params, texts, guessed, metrics = [], {}, {}, {}, {}
    for i, run in enumerate(sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))):
        tags = run.data.tags
        types = param_types(run)
        budget = tags.get(TAG_BUDGET)
        pareto = tags.get(TAG_PARETO)
        base.append({
            "run_name": run.info.run_name,
            "state": tags.get(TAG_STATE),
            "budget": int(budget) if budget not in (None, "") else None,
            "pareto": None if pareto is None else pareto.lower() == "true",
            "baseline": tags.get(TAG_BASELINE, "").lower() == "true",
            "reason": tags.get(TAG_REASON),
            "trial_id": tags.get(TAG_TRIAL),
            "study": tags.get(TAG_STUDY),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms") if run.info.start_time else pd.NaT,
        })
        for key, value in run_params(run).items():
            params.setdefault(key, [None] * len(runs))[i] = value
            texts.setdefault(key, [None] * len(runs))[i] = run.data.params[key]
            guessed.setdefault(key, [True] * len(runs))[i] = key not in types  # no type recorded (or no param)
        for key, value in run.data.metrics.items():
            metrics.setdefault(key, [np.nan] * len(runs))[i] = value

    df = pd.DataFrame(base, columns=_LEAD)
    df["budget"] = df["budget"].astype("Int64")
    df["pareto"] = df["pareto"].astype("boolean")
    df["baseline"] = df["baseline"].astype(bool)
    columns = {}
    for key in params:
        columns[key] = _column_values(params[key], texts[key], guessed[key])
    for key, values in metrics.items():
        name = key if key not in columns and key not in df.columns else f"metric.{key}"
        columns[name] = pd.Series(values, dtype="float64")
    if columns:
        df = pd.concat([df, pd.DataFrame(columns, index=df.index)], axis=1)
    df.attrs["experiment"] = experiment
    return df



@dataclass(frozen=True)
class Study:
    """The study a query reads: one parent run, or every study of the experiment (``study == "all"``).

    ``objectives``/``max_t`` are the study's own definition from its parent's tags (None when the parent predates
    them); for ``all`` they are the newest study's. ``tags``/``metrics`` are the parent's as read.
    """

    experiment: str
    study: str
    parent_run_id: str | None
    objectives: dict[str, str] | None = None
    max_t: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    experiment_id: str | None = None
    studies: list[str] | None = None  # ``all`` of a job's query: its own studies (None: every study)


def study_definition(tags: dict[str, str]) -> tuple[dict[str, str] | None, int | None]:
    """(objectives, max_t) a parent run's tags record as the study's own definition; None for what is missing."""
    objectives = max_t = None
    try:
        value = json.loads(tags.get(TAG_OBJECTIVES) or "null")
        if isinstance(value, dict) and value and all(m in MODES for m in value.values()):
            objectives = {str(k): str(m) for k, m in value.items()}
    except ValueError:
        pass
    with contextlib.suppress(ValueError):
        max_t = int(tags[TAG_MAX_T]) if tags.get(TAG_MAX_T) else None
    return objectives, max_t


def select_study(client: Any, experiment: str, study: str | None = None,
                 parent_run_id: str | None = None, job: Job | None = None) -> Study:
    """The study ``parent_run_id`` names, else ``study``: an id, ``"latest"``/None (the most recently started
    study) or ``"all"`` (every study; the definition is the newest one's). Raises ``ValueError`` naming the
    experiment's studies when the one asked for is not there.

    With ``job`` (a query through a job file) only the job's own studies count (``contract.study_conflict``):
    ``latest`` is its newest, ``all`` its studies only (``Study.studies``), and a study of another job that shares
    the experiment is refused with a ``ConfigError`` naming both jobs.
    """
    identity = job_identity(job) if job is not None else None
    with fast_http():
        if parent_run_id is not None:
            run = client.get_run(parent_run_id)
        else:
            run = latest_parent(client, experiment, None if study in (None, LATEST, ALL_STUDIES) else study,
                                identity=identity, label=job.label if job is not None else "<job>")
        own = job_study_ids(client, run.info.experiment_id, identity) if identity is not None else None
    objectives, max_t = study_definition(run.data.tags)
    if study == ALL_STUDIES and parent_run_id is None:
        return Study(experiment, ALL_STUDIES, None, objectives, max_t, experiment_id=run.info.experiment_id,
                     studies=own)
    return Study(experiment, run.data.tags.get(TAG_STUDY) or run.info.run_id, run.info.run_id, objectives, max_t,
                 dict(run.data.tags), dict(run.data.metrics), run.info.experiment_id)
