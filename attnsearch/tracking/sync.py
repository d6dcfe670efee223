"""Offline sync: write to MLflow whatever a study's Ray experiment directory has and MLflow lacks.

Ray's ``ExperimentAnalysis`` reads the experiment (its newest ``experiment_state`` file: every trial with its
status, config, failure count and error file) from any storage Ray supports (a local folder, ``s3://``...). The
results are read line by line from each trial's ``result.json`` on the same filesystem rather than through
``ExperimentAnalysis.trial_dataframes``, which keeps every result as reported (a metric a result lacks stays
absent instead of becoming NaN) and skips a line torn by a killed writer instead of dropping the whole trial.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import ExperimentAnalysis
from ray.tune.utils import flatten_dict

from ..contract import RUNNING, TrackingError
from ..uris import redact_uri
from ._connection import fast_http, first_line
from ._parent_run import open_or_create_parent
from ._records import TrialRecord
from ._store import Store

__all__ = ["read_ray_trials", "sync_study", "trial_results"]

logger = logging.getLogger(__name__)

_RESULT_FILE = "result.json"


def trial_results(trial: Any) -> list[dict[str, Any]]:
    """Every result a Ray trial reported, in order, from its ``result.json`` on the experiment's filesystem."""
    storage = trial.storage
    path = Path(storage.trial_fs_path, _RESULT_FILE).as_posix()
    try:
        with storage.storage_filesystem.open_input_stream(path) as f:
            text = f.readall().decode("utf-8")
    except (FileNotFoundError, OSError):
        return []
    results = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except ValueError:
            logger.warning("%s line %d is not JSON (interrupted write?); skipped", redact_uri(str(path)), n)
    return results


def read_ray_trials(experiment_dir: str | os.PathLike, max_t: int) -> list[TrialRecord]:
    """Rebuild every trial's record from a Ray Tune experiment directory (what ``ray.tune.Tuner`` wrote).

    Trials Ray still lists as running, pending or paused keep the ``running`` state; a trial the experiment
    state does not list yet (the driver died before saving it) is not read: ``--resume`` runs it again.
    """
    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
    except (ValueError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{redact_uri(str(experiment_dir))} is not a Ray experiment directory: "
                                f"{first_line(e)}") from None
    records = []
    for trial in sorted(analysis.trials, key=lambda t: str(t.trial_id)):
        meta = trial.run_metadata
        record = TrialRecord(str(trial.trial_id), flatten_dict(dict(trial.config or {}), delimiter="."))
        if meta.start_time:
            record.start_ms = int(float(meta.start_time) * 1000)
        for result in trial_results(trial):
            record.add_result(result)
        record.failures = int(meta.num_failures or 0)
        if trial.status in (trial.RUNNING, trial.PENDING, trial.PAUSED):
            record.state = RUNNING
        else:
            errored = trial.status == trial.ERROR
            error = (trial.get_error() or "") if errored else None
            record.finish(max_t, errored=errored, error=str(error) if error is not None else None)
        records.append(record)
    return records


def sync_study(
    experiment_dir: str | os.PathLike,
    uri: str,
    experiment: str,
    study_id: str,
    max_t: int,
    *,
    objectives: Mapping[str, str] | None = None,
    datasets: Sequence[Mapping[str, Any]] = (),
    identity: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Write whatever MLflow is missing for a study from its Ray experiment directory (``attnsearch sync JOB``).

    Creates the parent run if needed (with the study's definition, ``objectives`` and ``max_t``, as tags it lacks);
    never duplicates runs, params, metric steps or tags, so running it twice writes nothing the second time.
    Returns counts: trials, runs_created, params, metrics, tags, finished.

    Args:
        experiment_dir: the study's Ray experiment directory.
        uri: the MLflow tracking URI.
        experiment: the study's MLflow experiment.
        study_id: the study's id.
        max_t: the full budget in epochs.
        objectives: the study's objectives, for a parent run created here.
        datasets: the dataset inputs each child run gets when it lacks them (``dataset_inputs``).
        identity: the job the study's Ray folder records (tag ``attnsearch.job``, when the parent lacks it).
    """
    records = read_ray_trials(experiment_dir, max_t)
    totals = {"trials": len(records), "runs_created": 0, "params": 0, "metrics": 0, "tags": 0, "finished": 0}
    with fast_http():
        try:
            parent = open_or_create_parent(uri, experiment, study_id, objectives=objectives, max_t=max_t,
                                           identity=identity)
            store = Store(uri, parent, datasets)
        except Exception as e:
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line(e)}") from e
        for record in records:
            for key, value in store.reconcile(record).items():
                totals[key] += value
    return totals
