"""The study's parent run: found by its study id, created once, reopened on ``--resume``."""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import yaml
from mlflow import MlflowClient

from ..contract import TAG_ROLE, TAG_STUDY, TrackingError
from ..uris import redact_text, redact_uri, sqlite_path
from ._connection import fast_http, first_line
from ._store import quote

__all__ = ["start_study", "open_or_create_parent", "ensure_experiment", "find_parent", "latest_parent"]

logger = logging.getLogger(__name__)


def _artifact_location(uri: str, experiment: str) -> str | None:
    # MLflow would put a local store's artifacts under the *current* directory (./mlruns); pin them next to the db.
    db = sqlite_path(uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "default"
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def ensure_experiment(client: MlflowClient, uri: str, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", experiment)
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def find_parent(client: MlflowClient, experiment_id: str, study_id: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_STUDY}` = {quote(study_id)} and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0] if runs else None


def start_study(
    uri: str,
    experiment: str,
    study_id: str,
    job_yaml_text: str,
    space_dict: Mapping[str, Any],
    resume: bool,
) -> str:
    """Create (or, with ``resume``, reuse) the study's parent run; return its run id.

    Logs ``job.yaml`` and ``search_space.yaml`` as artifacts of the parent run. Raises ``TrackingError`` when the
    study already exists and ``resume`` is false (two searches would otherwise share one parent run).
    """
    with fast_http():
        client = MlflowClient(uri)
        try:
            experiment_id = ensure_experiment(client, uri, experiment)
            parent = find_parent(client, experiment_id, study_id)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line(e)}") from e
        if parent is not None and not resume:
            raise TrackingError(
                f"study {study_id!r} already has a parent run ({parent.info.run_id}) in MLflow experiment "
                f"{experiment!r}; resume it (attnsearch run --resume) or start a new study"
            )
        if parent is None:
            if resume:
                logger.warning("resuming study %r: no parent run in %s; creating one", study_id, redact_uri(uri))
            run = client.create_run(
                experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study"}, run_name=study_id
            )
            run_id = run.info.run_id
        else:
            run_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        client.log_text(run_id, redact_text(job_yaml_text), "job.yaml")
        client.log_text(run_id, yaml.safe_dump(dict(space_dict), sort_keys=False), "search_space.yaml")
    return run_id


def open_or_create_parent(uri: str, experiment: str, study_id: str) -> str:
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, uri, experiment)
    parent = find_parent(client, experiment_id, study_id)
    if parent is not None:
        return parent.info.run_id
    run = client.create_run(experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study"}, run_name=study_id)
    return run.info.run_id


def latest_parent(client: MlflowClient, experiment: str, study_id: str | None = None) -> Any:
    """The parent run of study ``study_id`` in ``experiment``, or of its most recently started study.

    Raises ``ValueError`` naming the experiment when there is none.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    flt = f"tags.`{TAG_ROLE}` = 'study'"
    if study_id is not None:
        flt += f" and tags.`{TAG_STUDY}` = {quote(study_id)}"
    parents = client.search_runs([exp.experiment_id], flt, max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        which = f"study {study_id!r}" if study_id else "any study"
        raise ValueError(f"no parent run for {which} in MLflow experiment {experiment!r}")
    return parents[0]
