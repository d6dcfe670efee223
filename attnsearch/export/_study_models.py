"""``attnsearch export`` and ``load_model``: a study's models out of MLflow and the Ray checkpoints, into folders,
and any of them back into PyTorch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from torch import nn

from ..config import Job
from ..contract import COMPLETED, EARLY_STOPPED, LATEST, TAG_PARENT, TAG_ROLE, TAG_STUDY, UsageError
from ..pareto import load_runs, select_study
from ..tracking import fast_http, first_line
from ._checkpoint import final_weights
from ._folder import FORMATS, ExportedModel, export_model, folder_name
from ._mlflow import download_model, is_mlflow_source, logged_model_of, trial_params
from ._spec import (
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    read_weights,
    rebuild,
    spec_for_trial,
)

__all__ = ["export_study", "load_model", "load_spec_and_weights", "trained_model"]

_CARD_METRICS = ("val_acc", "val_loss", "train_loss", "flops", "macs", "params", "attn_flops", "attn_params",
                 "latency_ms", "throughput", "latency_load", "budget")


def load_spec_and_weights(source: str | os.PathLike, *, tracking_uri: str | None = None
                          ) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec and state dict ``source`` names: an export folder (``spec.yaml`` + ``weights.pt``; also a
    downloaded MLflow model folder, which keeps them under ``extra_files/``), an MLflow run id (a trial's child
    run), ``runs:/<run id>/<model name>`` or ``models:/...`` (a logged model's id, ``NAME/VERSION`` or
    ``NAME@ALIAS``)."""
    path = Path(os.fspath(source))
    if path.is_dir():
        for folder in (path, path / "extra_files"):
            if (folder / SPEC_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
                return ModelSpec.read(folder / SPEC_FILE), read_weights(folder / WEIGHTS_FILE)
        raise ValueError(f"{path}: no {SPEC_FILE} and {WEIGHTS_FILE} in it (an attnsearch export folder holds both)")
    text = os.fspath(source)
    if isinstance(text, str) and is_mlflow_source(text):
        return download_model(text, tracking_uri)
    raise ValueError(f"{text!r}: neither a folder nor an MLflow run id, runs:/ or models:/ URI")


def load_model(source: str | os.PathLike, *, tracking_uri: str | None = None) -> nn.Module:
    """A trial's model, rebuilt from its spec (backbone, width, image size, attention dict) with its weights read
    ``weights_only=True``, in eval mode. ``source``: an ``attnsearch export`` folder, an MLflow child run id,
    ``runs:/<run id>/<model name>`` or ``models:/...`` (then from ``tracking_uri``, default MLflow's own).

    Args:
        source: an export folder, a child run id, ``runs:/RUN_ID/MODEL_NAME`` or ``models:/NAME/VERSION`` (or an
            alias, or a logged model's id).
        tracking_uri: the MLflow store a run or model source lives in (default: MLflow's own).
    """
    spec, state = load_spec_and_weights(source, tracking_uri=tracking_uri)
    return rebuild(spec, state)


def _metrics(row: pd.Series) -> dict[str, Any]:
    out = {}
    for key in _CARD_METRICS:
        value = row.get(key)
        if value is not None and value is not pd.NA and not (isinstance(value, float) and value != value):
            out[key] = int(value) if key == "budget" else float(value)
    return out


def _select(client: MlflowClient, job: Job, experiment: str, *, run_id: str | None, front: bool,
            study: str | None) -> tuple[pd.DataFrame, str]:
    uri = job.tracking.uri
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"--run {run_id}: no such run in {uri} ({first_line(exc)}); the trials' run ids are in "
                             f"attnsearch pareto {experiment} --out front.csv (column run_id) and the MLflow "
                             "UI") from None
        exp = client.get_experiment(run.info.experiment_id)
        if exp.name != experiment or run.data.tags.get(TAG_ROLE) != "trial":
            raise UsageError(f"--run {run_id}: not a trial of experiment {experiment!r} (its experiment: {exp.name!r}, "
                             f"role: {run.data.tags.get(TAG_ROLE)!r}); give a child run of one of its studies")
        parent = run.data.tags[TAG_PARENT]
        df = load_runs(experiment, tracking_uri=uri, parent_run_id=parent)
        rows = df[df["run_id"] == run_id]
        state = rows["state"].iloc[0] if len(rows) else None
        if state not in (COMPLETED, EARLY_STOPPED):
            raise UsageError(f"--run {run_id}: trial {rows['run_name'].iloc[0] if len(rows) else run_id} is "
                             f"{state or 'unknown'}: only a trained trial (completed or early_stopped) has weights")
        return rows, parent
    if not front:
        raise UsageError("export: give --front (the study's recorded front) or --run RUN_ID (one trial)")
    try:
        chosen = select_study(client, experiment, study or LATEST, job=job)
    except ValueError as exc:
        raise UsageError(f"--study: {exc}") from None
    df = load_runs(experiment, tracking_uri=uri, parent_run_id=chosen.parent_run_id)
    if "pareto" not in df.columns or not df["pareto"].fillna(False).astype(bool).any():
        raise UsageError(f"export --front: study {chosen.study} has no recorded Pareto front yet; record it with "
                         f"attnsearch pareto JOB (or attnsearch sync JOB), or export one trial with --run RUN_ID")
    rows = df[df["pareto"].fillna(False).astype(bool) & (df["state"] == COMPLETED)]
    return rows, chosen.parent_run_id


def trained_model(client: MlflowClient, job: Job, row: pd.Series, experiment_id: str, study_id: str,
                  experiment_path: str) -> tuple[ModelSpec, dict[str, Any], dict[str, str]]:
    """The spec and final weights of a trained trial (a ``load_runs`` row): from its MLflow model when it has one,
    else from its final Ray checkpoint in ``experiment_path`` (``UsageError`` when neither is usable); and what to
    say about where they came from (``{"MLflow model": uri}`` or nothing)."""
    logged = logged_model_of(client, experiment_id, row["run_id"], row["trial_id"])
    if logged is not None:
        spec, state = download_model(logged.model_uri, job.tracking.uri)
        return spec, state, {"MLflow model": f"`{logged.model_uri}`"}
    try:
        weights = final_weights(experiment_path, row["trial_id"], int(row["budget"]))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{row['run_name']} ({row['run_id']}) has no MLflow model and its checkpoint is not "
                         f"usable: {exc}") from None
    source = {"experiment": job.tracking.experiment or job.name, "study": study_id, "run_id": row["run_id"],
              "run_name": row["run_name"], "trial_id": row["trial_id"], "epoch": weights.epoch}
    spec = spec_for_trial(job, trial_params(client, row), state=weights.state, source=source)
    return spec, weights.state, {}


def export_study(
    job: Job,
    out: str | os.PathLike,
    *,
    run_id: str | None = None,
    front: bool = False,
    study: str | None = None,
    formats: Sequence[str] = FORMATS,
    storage_path: str | None = None,
) -> list[ExportedModel]:
    """``attnsearch export``: one folder per model under ``out`` (``<run name>-<trial id>``), for the study's
    recorded front (``front``; the newest study unless ``study``) or for the trial ``run_id``. Weights and spec
    come from the trial's MLflow model when it has one, else from its final Ray checkpoint under
    ``storage_path`` (default the job's ``ray.storage_path``)."""
    uri, experiment = job.tracking.uri, job.experiment
    storage = (storage_path or job.ray.storage_path).rstrip("/")
    with fast_http():
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            raise UsageError(f"export: no MLflow experiment {experiment!r} at {uri}; run the study first "
                             "(attnsearch run JOB)")
        rows, parent = _select(client, job, experiment, run_id=run_id, front=front, study=study)
        parent_run = client.get_run(parent)
        study_id = parent_run.data.tags.get(TAG_STUDY, "")
        exported = []
        for _, row in rows.iterrows():
            spec, state, extra = trained_model(client, job, row, parent_run.info.experiment_id, study_id,
                                               f"{storage}/{study_id}")
            model = rebuild(spec, state)
            folder = Path(out) / folder_name(row["run_name"], row["trial_id"])
            exported.append(export_model(model, spec, folder, metrics=_metrics(row), formats=formats, extra=extra))
    return exported
