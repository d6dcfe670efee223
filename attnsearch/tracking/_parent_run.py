"""The study's parent run: found by its study id, created once, reopened on ``--resume``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Param

from ..contract import (
    EXPERIMENT_KIND_MODELS,
    ROLE_PRUNE,
    ROLE_RETRAIN,
    TAG_EXPERIMENT_KIND,
    TAG_JOB,
    TAG_MAX_T,
    TAG_OBJECTIVES,
    TAG_PRUNE_PARENT,
    TAG_PRUNE_STUDY,
    TAG_RETRAIN_PARENT,
    TAG_RETRAIN_SEEDS,
    TAG_RETRAIN_STUDY,
    TAG_ROLE,
    TAG_STUDY,
    ConfigError,
    TrackingError,
    study_conflict,
)
from ..uris import redact_text, redact_uri, sqlite_path
from ._connection import fast_http, first_line
from ._store import MAX_PARAMS_TAGS, quote, search_all

__all__ = [
    "start_study", "open_or_create_parent", "ensure_experiment", "find_parent", "latest_parent", "study_ids",
    "definition_tags", "start_retrain", "start_prune", "recorded_job",
    "job_study_ids",
]

logger = logging.getLogger(__name__)


def _artifact_location(uri: str, experiment: str) -> str | None:
    # MLflow would put a local store's artifacts under the *current* directory (./mlruns); pin them next to the db.
    db = sqlite_path(uri)
    if db is None:
        return None
    # one folder name, never "." or ".." (which would put the artifacts beside or above mlartifacts/)
    safe = re.sub(r"^\.", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)) or "default"
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def ensure_experiment(client: MlflowClient, uri: str, experiment: str) -> str:
    """The experiment's id, created when missing; either way tagged as model development
    (``mlflow.experimentKind``), which MLflow 3's UI reads to open the runs instead of a GenAI traces page."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment),
                                            tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_MODELS})
        except Exception:  # created meanwhile by another process
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", experiment)
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_MODELS:  # made before attnsearch set it, or by hand
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_MODELS)
    return exp.experiment_id


def find_parent(client: MlflowClient, experiment_id: str, study_id: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_STUDY}` = {quote(study_id)} and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0] if runs else None


def definition_tags(objectives: Mapping[str, str] | None, max_t: int | None,
                    identity: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent-run tags that record a study's own definition: its objectives (JSON, the job's order) and its
    full budget in epochs, what its recorded Pareto front means (``attnsearch pareto EXPERIMENT`` reads them); and
    the job it belongs to (``identity``: ``space.job_identity``, JSON), when known."""
    tags = {TAG_JOB: json.dumps(dict(identity), sort_keys=True)} if identity else {}
    if objectives:
        tags[TAG_OBJECTIVES] = json.dumps(dict(objectives))
    if max_t is not None:
        tags[TAG_MAX_T] = str(int(max_t))
    return tags


def _add_missing_tags(client: MlflowClient, parent: Any, tags: Mapping[str, str]) -> None:
    # A study's definition is written once: a resume or a sync with an edited job file does not rewrite it.
    for key, value in tags.items():
        if key not in parent.data.tags:
            client.set_tag(parent.info.run_id, key, value)


def _add_missing_params(client: MlflowClient, run_id: str, logged: Mapping[str, str],
                        params: Mapping[str, str]) -> None:
    # MLflow refuses to change a logged param: a resumed study keeps the values it started with
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
    if changed:
        logger.warning("the study's parent run keeps the params it started with; changed in this job: %s",
                       ", ".join(f"{k} ({logged[k]} -> {params[k]})" for k in changed))
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), MAX_PARAMS_TAGS):
        client.log_batch(run_id, params=new[i:i + MAX_PARAMS_TAGS])


def start_study(
    uri: str,
    experiment: str,
    study_id: str,
    job_yaml_text: str,
    space_dict: Mapping[str, Any],
    resume: bool,
    *,
    objectives: Mapping[str, str] | None = None,
    max_t: int | None = None,
    params: Mapping[str, str] | None = None,
    identity: Mapping[str, str] | None = None,
) -> str:
    """Create (or, with ``resume``, reuse) the study's parent run; return its run id.

    Logs ``job.yaml`` and ``search_space.yaml`` as artifacts of the parent run, tags it with the study's
    definition (``objectives``, ``max_t``: ``definition_tags``) and logs ``params`` (the study's settings, e.g.
    ``attnsearch.search.study_params``) as its MLflow params; a reused parent keeps the definition and the params
    it has (MLflow params cannot change: a resume with an edited job adds only the params that are new).
    Raises ``TrackingError`` when the study already exists and ``resume`` is false (two searches would otherwise
    share one parent run).

    Args:
        uri: the tracking URI (``tracking.uri``, resolved).
        experiment: the MLflow experiment (created when missing).
        study_id: the study's id (the parent run's ``attnsearch.study`` tag and name).
        job_yaml_text: the job file's text (credentials in it are redacted before logging).
        space_dict: the resolved search space (``attnsearch.space.space_to_dict``).
        resume: reuse the study's parent run instead of refusing a second one.
        objectives: the study's objectives, ``{metric: "max"|"min"}``.
        max_t: the study's full budget in epochs.
        params: the study's settings, logged once as params of the parent run.
        identity: the job the study belongs to (``space.job_identity``), tagged ``attnsearch.job``.
    """
    definition = definition_tags(objectives, max_t, identity)
    with fast_http():
        client = MlflowClient(uri)
        try:
            experiment_id = ensure_experiment(client, uri, experiment)
            parent = find_parent(client, experiment_id, study_id)
        except Exception as e:
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
                experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study", **definition}, run_name=study_id
            )
            run_id = run.info.run_id
            _add_missing_params(client, run_id, {}, params or {})
        else:
            run_id = parent.info.run_id
            _add_missing_tags(client, parent, definition)
            _add_missing_params(client, run_id, parent.data.params, params or {})
            if parent.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        client.log_text(run_id, redact_text(job_yaml_text), "job.yaml")
        client.log_text(run_id, yaml.safe_dump(dict(space_dict), sort_keys=False), "search_space.yaml")
    return run_id


def open_or_create_parent(
    uri: str,
    experiment: str,
    study_id: str,
    *,
    objectives: Mapping[str, str] | None = None,
    max_t: int | None = None,
    identity: Mapping[str, str] | None = None,
) -> str:
    """The study's parent run id, created when missing; the definition tags it lacks are added (``identity``: the
    job the study records in its Ray folder, when it records one)."""
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, uri, experiment)
    parent = find_parent(client, experiment_id, study_id)
    definition = definition_tags(objectives, max_t, identity)
    if parent is not None:
        _add_missing_tags(client, parent, definition)
        return parent.info.run_id
    run = client.create_run(
        experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study", **definition}, run_name=study_id
    )
    return run.info.run_id


def recorded_job(run: Any) -> dict[str, str] | None:
    """The job identity a parent run records (tag ``attnsearch.job``), None for a study made before it did."""
    try:
        ident = json.loads(run.data.tags[TAG_JOB])
    except (KeyError, ValueError):
        return None
    return {str(k): str(v) for k, v in ident.items()} if isinstance(ident, dict) else None


def _job_runs(client: MlflowClient, experiment_id: str, identity: Mapping[str, str]) -> tuple[list[Any], list[Any]]:
    # (every study's parent run, the job's own), newest first
    runs = sorted(search_all(client, [experiment_id], f"tags.`{TAG_ROLE}` = 'study'"),
                  key=lambda r: r.info.start_time or 0, reverse=True)
    return runs, [r for r in runs if study_conflict(identity, r.data.tags.get(TAG_STUDY, ""), recorded_job(r)) is None]


def job_study_ids(client: MlflowClient, experiment_id: str, identity: Mapping[str, str]) -> list[str]:
    """The ids of the job's own studies among the experiment's parent runs (``contract.study_conflict``), oldest
    first."""
    return [r.data.tags.get(TAG_STUDY, "") for r in reversed(_job_runs(client, experiment_id, identity)[1])]


def _job_parent(client: MlflowClient, exp: Any, study_id: str | None, identity: Mapping[str, str],
                label: str) -> Any:
    # the study's parent when it is the job's (ConfigError naming both jobs when it is another's), or the job's
    # most recently started one
    runs, own = _job_runs(client, exp.experiment_id, identity)
    own_ids = {r.info.run_id for r in own}
    mine = ", ".join(reversed([r.data.tags.get(TAG_STUDY, "") for r in own])) or "none"
    if study_id is None:
        if not own:
            raise ValueError(f"no study of job {identity['name']!r} in MLflow experiment {exp.name!r}; its studies "
                             f"(oldest first): {', '.join(study_ids(client, exp.experiment_id)) or 'none'}")
        return own[0]
    named = [r for r in runs if r.data.tags.get(TAG_STUDY) == study_id]
    if named and not own_ids & {r.info.run_id for r in named}:
        reason = study_conflict(identity, study_id, recorded_job(named[0]))
        raise ConfigError(f"--study {study_id}: {reason}, not job {identity['name']!r}'s ({label}); a study belongs "
                          "to the job that started it: give that job's file instead of this one, or one of job "
                          f"{identity['name']!r}'s own studies: {mine}")
    if not named:
        raise ValueError(f"no study {study_id!r} in MLflow experiment {exp.name!r}; studies of job "
                         f"{identity['name']!r} (oldest first): {mine}")
    return named[0]


def latest_parent(client: MlflowClient, experiment: str, study_id: str | None = None,
                  identity: Mapping[str, str] | None = None, label: str = "<job>") -> Any:
    """The parent run of study ``study_id`` in ``experiment``, or of its most recently started study.

    With ``identity`` (``space.job_identity``: a job's query) only the job's own studies count: the newest is the
    job's newest, and a study of another job sharing the experiment is refused.

    Raises ``ValueError`` naming the experiment when there is none; ``ConfigError`` (naming both jobs, ``label``
    the job's file) when the study named is another job's.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    if identity is not None:
        return _job_parent(client, exp, study_id, identity, label)
    flt = f"tags.`{TAG_ROLE}` = 'study'"
    if study_id is not None:
        flt += f" and tags.`{TAG_STUDY}` = {quote(study_id)}"
    parents = client.search_runs([exp.experiment_id], flt, max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        if study_id is None:
            raise ValueError(f"no parent run for any study in MLflow experiment {experiment!r}")
        known = study_ids(client, exp.experiment_id)
        raise ValueError(f"no study {study_id!r} in MLflow experiment {experiment!r}; its studies (oldest first): "
                         f"{', '.join(known) or 'none'}")
    return parents[0]


def study_ids(client: MlflowClient, experiment_id: str, limit: int = 1000) -> list[str]:
    """The study ids of an experiment's parent runs, oldest first."""
    runs = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'study'", max_results=limit,
                              order_by=["attributes.start_time ASC"])
    return [r.data.tags.get(TAG_STUDY) or r.info.run_id for r in runs]


def start_retrain(
    uri: str,
    experiment: str,
    retrain_id: str,
    *,
    source_study: str,
    source_parent_run_id: str,
    job_yaml_text: str,
    objectives: Mapping[str, str],
    max_t: int,
    seeds: list[int],
) -> str:
    """Create the parent run of an ``attnsearch retrain`` (role ``retrain``, ``attnsearch.study`` = its own id,
    linked to the source study by tags) and return its run id; logs ``job.yaml``. A retrain is never resumed."""
    tags = {
        TAG_STUDY: retrain_id, TAG_ROLE: ROLE_RETRAIN, TAG_RETRAIN_STUDY: source_study,
        TAG_RETRAIN_PARENT: source_parent_run_id, TAG_RETRAIN_SEEDS: json.dumps(list(seeds)),
        **definition_tags(objectives, max_t),
    }
    with fast_http():
        client = MlflowClient(uri)
        try:
            experiment_id = ensure_experiment(client, uri, experiment)
            run_id = client.create_run(experiment_id, tags=tags, run_name=retrain_id).info.run_id
        except Exception as e:
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line(e)}") from e
        client.log_text(run_id, redact_text(job_yaml_text), "job.yaml")
    return run_id


def start_prune(
    uri: str,
    experiment: str,
    prune_id: str,
    *,
    source_study: str,
    source_parent_run_id: str,
    objectives: Mapping[str, str],
    max_t: int | None,
    params: Mapping[str, str],
) -> str:
    """Create the parent run of an ``attnsearch prune`` (role ``prune``, ``attnsearch.study`` = its own id, linked
    to the source study by tags, the study's objectives) with ``params``; return its run id."""
    tags = {TAG_STUDY: prune_id, TAG_ROLE: ROLE_PRUNE, TAG_PRUNE_STUDY: source_study,
            TAG_PRUNE_PARENT: source_parent_run_id, **definition_tags(objectives, max_t)}
    with fast_http():
        client = MlflowClient(uri)
        try:
            experiment_id = ensure_experiment(client, uri, experiment)
            run_id = client.create_run(experiment_id, tags=tags, run_name=prune_id).info.run_id
            for key, value in params.items():
                client.log_param(run_id, key, value)
        except Exception as e:
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line(e)}") from e
    return run_id
