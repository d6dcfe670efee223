"""A study's models in MLflow: the final weights of its front (or of every completed trial) as MLflow PyTorch
models, logged by the driver, and the way back from a run id or a ``models:/``/``runs:/`` URI to a spec and weights.

Each model is an MLflow 3 *logged model* named after its run (``model_name``; ``mlflow.pytorch.log_model`` with a
signature and an input example of batch 2) whose source run is the trial's child run, linked to the study's parent
run too (its "Logged models"), registered in the Model Registry under the experiment's name, the trial's metrics
as tags of the version. The
flavor's own file is the pickled module (``serialization_format="pickle"``: MLflow's default ``pt2`` format fixes
the batch size to the input example's and loads a module without ``.eval()``); next to it,
as the flavor's extra files, the build spec ``spec.yaml`` and the state dict ``weights.pt``, which
``attnsearch.export.load_model`` reads without unpickling any code.

Logging is idempotent, keyed by the trial's child run: a model already logged (status READY, tag
``attnsearch.trial_id``) is not logged again, only registered or linked where that is missing; a model whose
logging was cut short (status PENDING) is completed under the same id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import infer_signature

from ..config import Job
from ..contract import (
    COMPLETED,
    LATENCY_LOAD,
    LOG_MODELS,
    METRICS,
    TAG_STUDY,
    TAG_TRIAL,
    UsageError,
)
from ..pareto import load_runs
from ..tracking import fast_http, first_line, quote, run_params
from ._checkpoint import final_weights
from ._spec import (
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    read_weights,
    rebuild,
    spec_for_trial,
    write_weights,
)

__all__ = ["ModelsLogged", "log_study_models", "log_model", "registered_name", "resolve_logged_model",
           "download_model", "model_name", "trial_params", "logged_model_of", "tracking_context"]

logger = logging.getLogger(__name__)

_MODEL_NAME_UNSAFE = re.compile(r"[/:.%\"']")  # what MLflow refuses in a logged model's name
EXTRA_DIR = "extra_files"  # where MLflow's PyTorch flavor keeps extra files inside the model
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # MLflow's tag on a logged model: its registered versions (JSON)


@dataclass
class ModelsLogged:
    """What ``log_study_models`` did, by run name: logged now, already there, or skipped with the reason."""

    mode: str
    logged: dict[str, str] = field(default_factory=dict)  # run name -> model URI
    present: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # run name -> registered version
    registered_as: str | None = None

    def line(self) -> str:
        if self.mode == "none":
            return "MLflow models: none logged (tracking.log_models: none)"
        versions = sorted(self.versions.values(), key=int)
        parts = [f"{len(self.logged)} logged", f"{len(self.present)} already there"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped ({'; '.join(f'{k}: {v}' for k, v in self.skipped.items())})")
        where = f", registered as {self.registered_as!r} versions {', '.join(versions)}" if versions else ""
        return f"MLflow models of the {self.mode} trials: {', '.join(parts)}{where}"


def model_name(run_name: str | None) -> str:
    """A trial's logged model is named after its run (``gc-r4-s13-default-w0_5-px12``: MLflow refuses ``.``, ``/``,
    ``:``, ``%`` and quotes there), so the study's "Logged models" say which is which;
    ``runs:/<child run id>/<that name>`` is its runs URI."""
    return _MODEL_NAME_UNSAFE.sub("_", run_name or "") or "model"


def registered_name(experiment: str) -> str:
    """The Model Registry name of an experiment's models: the experiment's name (``/`` and ``:`` would break
    ``models:/NAME/VERSION`` URIs, so they become ``_``)."""
    return re.sub(r"[/:]", "_", experiment)


@contextlib.contextmanager
def tracking_context(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` (``mlflow.pytorch.log_model`` and ``mlflow.register_model``
    write through it), quiet progress bars and short HTTP retries; restored afterwards."""
    before = mlflow.get_tracking_uri()
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    added = [k for k in quiet if k not in os.environ]
    os.environ.update({k: quiet[k] for k in added})
    mlflow.set_tracking_uri(uri)
    try:
        with fast_http():
            yield
    finally:
        mlflow.set_tracking_uri(before)
        for key in added:
            os.environ.pop(key, None)


def _present(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _metric_tags(row: pd.Series) -> dict[str, str]:
    """The trial's metrics (final values), as the registered version's tags."""
    keys = [*METRICS, LATENCY_LOAD, "budget"]
    return {k: repr(float(row[k])) if k != "budget" else str(int(row[k]))
            for k in keys if k in row.index and _present(row[k])}


def trial_params(client: MlflowClient, row: pd.Series) -> dict[str, Any]:
    """A child run's params (the trial's config), typed as the trial had them (``tracking.run_params``)."""
    return run_params(client.get_run(row["run_id"]))


def logged_model_of(client: MlflowClient, experiment_id: str, run_id: str, trial_id: str | None = None,
                    ready: bool = True) -> Any | None:
    """The newest logged model of a child run (its source run), READY ones only unless ``ready`` is False."""
    flt = f"source_run_id = {quote(run_id)}"
    models = client.search_logged_models(experiment_ids=[experiment_id], filter_string=flt,
                                         order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    if trial_id is not None:
        models = [m for m in models if m.tags.get(TAG_TRIAL) == trial_id]
    if ready:
        models = [m for m in models if m.status == LoggedModelStatus.READY]
    return models[0] if models else None


def _versions(model: Any, name: str) -> list[str]:
    try:
        return [str(v["version"]) for v in json.loads(model.tags.get(_MODEL_VERSIONS_TAG) or "[]")
                if v.get("name") == name]
    except (ValueError, TypeError, AttributeError):
        return []


def _rows(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    if df.empty or "state" not in df.columns:
        return df.iloc[0:0]
    done = df[df["state"] == COMPLETED]
    if mode == "front":
        return done[done["pareto"].fillna(False).astype(bool)]
    return done


def log_study_models(
    job: Job,
    parent_run_id: str,
    experiment_path: str,
    *,
    mode: str | None = None,
) -> ModelsLogged:
    """Log the final weights of the study's front (``tracking.log_models: front``, the trials tagged
    ``attnsearch.pareto=true`` by the study's own recorded front) or of every completed trial (``completed``) as
    MLflow models, from the checkpoints in ``experiment_path`` (the study's Ray experiment directory). Models
    already logged are not logged again. Returns what was done; a trial whose final checkpoint is missing is
    skipped with the reason (the others are logged)."""
    mode = mode or job.tracking.log_models
    if mode not in LOG_MODELS:
        raise UsageError(f"tracking.log_models: {mode!r} is not one of {list(LOG_MODELS)}")
    done = ModelsLogged(mode)
    if mode == "none":
        return done
    uri, experiment = job.tracking.uri, job.experiment
    name = registered_name(experiment)
    done.registered_as = name
    with tracking_context(uri):
        client = MlflowClient(uri)
        parent = client.get_run(parent_run_id)
        experiment_id, study_id = parent.info.experiment_id, parent.data.tags.get(TAG_STUDY, "")
        linked = {o.model_id for o in (parent.outputs.model_outputs if parent.outputs else [])}
        df = load_runs(experiment, tracking_uri=uri, parent_run_id=parent_run_id)
        for _, row in _rows(df, mode).iterrows():
            label = str(row["run_name"] or row["run_id"])
            try:
                model = logged_model_of(client, experiment_id, row["run_id"], row["trial_id"])
                if model is None:
                    model = _log_one(client, job, row, experiment_id, experiment, study_id, experiment_path)
                    done.logged[label] = model.model_uri
                else:
                    done.present[label] = model.model_uri
                versions = _versions(model, name)
                if not versions:
                    mv = mlflow.register_model(model.model_uri, name, tags=_metric_tags(row))
                    versions = [str(mv.version)]
                done.versions[label] = versions[0]
                if model.model_id not in linked:  # the parent run's "Logged models" list the front's
                    client.log_outputs(parent_run_id, models=[LoggedModelOutput(model.model_id,
                                                                                step=int(row["budget"]))])
                    linked.add(model.model_id)
            except (FileNotFoundError, ValueError) as exc:
                done.skipped[label] = first_line(exc)
    return done


def _log_one(client: MlflowClient, job: Job, row: pd.Series, experiment_id: str, experiment: str, study_id: str,
             experiment_path: str) -> Any:
    budget = int(row["budget"])
    weights = final_weights(experiment_path, row["trial_id"], budget)
    source = {"experiment": experiment, "study": study_id, "run_id": row["run_id"], "run_name": row["run_name"],
              "trial_id": row["trial_id"], "epoch": weights.epoch}
    spec = spec_for_trial(job, trial_params(client, row), state=weights.state, source=source)
    tags = {TAG_TRIAL: str(row["trial_id"]), TAG_STUDY: study_id, **_metric_tags(row)}
    return log_model(client, spec, weights.state, experiment_id=experiment_id, run_id=row["run_id"],
                     name=model_name(row["run_name"]), step=budget, tags=tags)


def log_model(client: MlflowClient, spec: ModelSpec, state: dict[str, torch.Tensor], *, experiment_id: str,
              run_id: str, name: str, step: int, tags: dict[str, str]) -> Any:
    """Log the model ``spec`` and ``state`` make as an MLflow logged model of run ``run_id`` (call inside the
    tracking URI's context, as ``log_study_models`` does): the pickled module with a signature and an input example
    of batch 2, the spec and the weights as extra files; a PENDING model of the run left by an interrupted call is
    completed. Returns the READY logged model. ``tags`` should carry ``attnsearch.trial_id`` (what finds it again)."""
    model = rebuild(spec, state)
    example = np.zeros((2, 3, spec.image_size, spec.image_size), dtype=np.float32)  # batch > 1: see the docstring
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    tags = {**tags, "attention": spec.describe_attention()}
    pending = logged_model_of(client, experiment_id, run_id, tags.get(TAG_TRIAL), ready=False)
    if pending is None:
        pending = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags,
                                             model_type="attnsearch")
    with tempfile.TemporaryDirectory(prefix="attnsearch-model-") as tmp:
        spec_path = Path(tmp, SPEC_FILE)
        spec_path.write_text(spec.to_yaml())
        weights_path = write_weights(state, Path(tmp, WEIGHTS_FILE))
        flavor_log = logging.getLogger("mlflow.pytorch")
        level = flavor_log.level
        flavor_log.setLevel(logging.ERROR)  # its warning about pickle: the weights_only route is next to it
        try:
            mlflow.pytorch.log_model(
                model, name=pending.name, model_id=pending.model_id, run_id=run_id, step=step,
                serialization_format="pickle", signature=infer_signature(example, output), input_example=example,
                extra_files=[str(spec_path), str(weights_path)], pip_requirements=_requirements(),
                metadata={"attnsearch": spec.to_dict()},
            )
        finally:
            flavor_log.setLevel(level)
    return client.get_logged_model(pending.model_id)


def _requirements() -> list[str]:
    out = []
    for package in ("torch", "torchvision", "attnsearch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{package}=={metadata.version(package).split('+')[0]}")
    return out


# --------------------------------------------------------------------------------------------------- reading back


def resolve_logged_model(client: MlflowClient, source: str) -> Any:
    """The logged model ``source`` names: ``models:/<model id>``, ``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``runs:/<run id>[/<name>]`` or a bare run id (its newest READY model)."""
    if source.startswith("models:/"):
        rest = source[len("models:/"):].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return client.get_logged_model(rest)
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = rest.partition("/")
            if not number or number == "latest":
                found = client.search_model_versions(f"name = {quote(name)}")
                if not found:
                    raise ValueError(f"{source}: no registered model {name!r} with a version")
                version = max(found, key=lambda v: int(v.version))
            else:
                version = client.get_model_version(name, number)
        # MLflow 3.17's sqlite registry leaves model_id empty; the version's source is the logged model's URI
        model_id = getattr(version, "model_id", None) or (version.source or "").removeprefix("models:/")
        if not model_id.startswith("m-"):
            raise ValueError(f"{source}: version {version.version} of {version.name!r} is not a logged model "
                             f"(source {version.source!r})")
        return client.get_logged_model(model_id)
    run_id = source[len("runs:/"):].strip("/").split("/")[0] if source.startswith("runs:/") else source
    run = client.get_run(run_id)
    model = logged_model_of(client, run.info.experiment_id, run_id)
    if model is None:
        raise ValueError(f"run {run_id} has no logged model: only the trials tracking.log_models names get one "
                         "(front, by default); attnsearch export JOB --run RUN_ID writes any completed trial's "
                         "model from its checkpoint")
    return model


def download_model(source: str, tracking_uri: str | None = None) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the weights of the MLflow model ``source`` (``resolve_logged_model``), tensors only."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    with tracking_context(uri), tempfile.TemporaryDirectory(prefix="attnsearch-load-") as tmp:
        client = MlflowClient(uri)
        model = resolve_logged_model(client, source)
        base = model.artifact_location.rstrip("/")
        try:
            spec_path = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{EXTRA_DIR}/{SPEC_FILE}",
                                                            dst_path=tmp, tracking_uri=uri)
            weights_path = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{EXTRA_DIR}/{WEIGHTS_FILE}",
                                                               dst_path=tmp, tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 - a model logged by something else
            raise ValueError(f"{source}: model {model.model_id} has no attnsearch spec and weights "
                             f"({EXTRA_DIR}/{SPEC_FILE}, {EXTRA_DIR}/{WEIGHTS_FILE}): {first_line(exc)}") from None
        return ModelSpec.read(spec_path), read_weights(weights_path)


def is_mlflow_source(source: str) -> bool:
    """Whether ``source`` names an MLflow model: a ``models:/`` or ``runs:/`` URI, or a run id."""
    return source.startswith(("models:/", "runs:/")) or bool(_RUN_ID.match(source))
