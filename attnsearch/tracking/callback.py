"""The Ray Tune callback that mirrors every trial into a child run of the study's parent run (driver side only).

Only the driver writes: workers never need to reach the tracking server and a local SQLite store has a single
writer, so concurrent trials cannot hit a locked database.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.utils import flatten_dict

from ..contract import RUNNING
from ..uris import redact_uri, resolve_tracking_uri, without_credentials
from ._connection import fast_http, first_line
from ._parent_run import open_or_create_parent
from ._records import TrialRecord
from ._store import Store

__all__ = ["MLflowTracker"]

logger = logging.getLogger(__name__)


class MLflowTracker(Callback):
    """Ray Tune callback that mirrors every trial into a child run of the study's parent run (driver side only).

    ``experiment``/``study_id`` find (or recreate) the parent run should ``parent_run_id`` be gone, e.g. a
    restored search pointed at a new tracking server. MLflow errors never stop the search: the first one is
    logged as a warning, the tracker then retries at most every ``retry_interval_s`` seconds and, once the store
    answers again, writes everything it missed. Whatever is still missing at the end can be written later from
    the Ray experiment directory with ``sync_study``. ``strict=True`` raises instead (tests). Picklable (Ray
    stores it in ``tuner.pkl``, often on shared storage): the pickle holds the tracking URI without its userinfo;
    credentials of a ``http://user:password@host`` URI stay in this process's memory, and an unpickled tracker
    logs in with MLflow's own ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (or ``_TOKEN``).

    Args:
        tracking_uri: the MLflow tracking URI (a relative SQLite path is pinned to the driver's directory).
        experiment: the study's MLflow experiment.
        parent_run_id: the study's parent run (``start_study``).
        study_id: the study's id, to find the parent run again.
        max_t: the full budget in epochs (``completed`` against ``early_stopped``).
        retry_interval_s: seconds between two attempts while the store does not answer.
        strict: raise MLflow errors instead of carrying on without the store.
        datasets: the dataset inputs each child run gets (``attnsearch.tracking.dataset_inputs``).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        parent_run_id: str,
        study_id: str,
        max_t: int,
        *,
        retry_interval_s: float = 30.0,
        strict: bool = False,
        datasets: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        uri = resolve_tracking_uri(tracking_uri, os.getcwd())  # pin a relative store (driver cwd)
        self.tracking_uri = without_credentials(uri)  # what may be written anywhere (pickled, logged)
        self._uri = uri  # what this process connects with: never pickled
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study_id = study_id
        self.max_t = int(max_t)
        self.retry_interval_s = float(retry_interval_s)
        self.strict = strict
        self.datasets = [dict(d) for d in datasets]
        self._reset()

    def _reset(self) -> None:
        self._store: Store | None = None
        self._records: dict[str, TrialRecord] = {}
        self._dirty: set[str] = set()
        self._offline_until = 0.0
        self._outage = False
        self.errors = 0  # MLflow calls that failed (for reports and tests)

    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment", "parent_run_id", "study_id", "max_t", "retry_interval_s", "strict",
                "datasets")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._uri = self.tracking_uri  # credentials, if any, from the environment (MLflow's variables)
        self._reset()

    # -- store access ---------------------------------------------------------------------------------------
    def _open(self) -> Store:
        # reads back a resumed study's runs (last logged epoch, params, tags) so nothing is written twice
        try:
            return Store(self._uri, self.parent_run_id, self.datasets)
        except Exception as e:
            if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
        self.parent_run_id = open_or_create_parent(self._uri, self.experiment, self.study_id)
        logger.warning("parent run of study %r not found; using run %s", self.study_id, self.parent_run_id)
        return Store(self._uri, self.parent_run_id, self.datasets)

    def _reconcile(self, record: TrialRecord) -> None:
        if self._store is None:
            self._store = self._open()
        self._store.reconcile(record)

    def _flush(self, trial_ids: list[str], force: bool = False) -> None:
        if not force and time.monotonic() < self._offline_until:
            self._dirty.update(trial_ids)
            return
        todo = list(dict.fromkeys([*sorted(self._dirty), *trial_ids]))
        for i, tid in enumerate(todo):
            try:
                with fast_http():
                    self._reconcile(self._records[tid])
            except Exception as e:  # the search must go on without MLflow (strict: raise)
                if self.strict:
                    raise
                self.errors += 1
                self._dirty.update(todo[i:])
                self._offline_until = time.monotonic() + self.retry_interval_s
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "MLflow tracking at %s failed (%s: %s); the search goes on, results stay in the Ray "
                        "experiment directory; retrying every %.0f s (or run `attnsearch sync JOB` later)",
                        redact_uri(self.tracking_uri), type(e).__name__, first_line(e), self.retry_interval_s,
                    )
                return
            self._dirty.discard(tid)
        if self._outage:
            self._outage = False
            logger.warning("MLflow tracking at %s is back; caught up", redact_uri(self.tracking_uri))

    def _record(self, trial: Any) -> TrialRecord:
        tid = str(trial.trial_id)
        if tid not in self._records:
            record = TrialRecord(tid, flatten_dict(dict(trial.config), delimiter="."), start_ms=int(time.time() * 1000))
            self._records[tid] = record
        return self._records[tid]

    # -- Ray Tune hooks -------------------------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self._reset()
        try:
            with fast_http():
                self._store = self._open()
        except Exception as e:
            if self.strict:
                raise
            self.errors += 1
            self._outage = True
            self._offline_until = time.monotonic() + self.retry_interval_s
            logger.warning(
                "MLflow tracking at %s is unavailable (%s: %s); the search goes on; run `attnsearch sync JOB` "
                "once it is back", redact_uri(self.tracking_uri), type(e).__name__, first_line(e),
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.state != RUNNING:  # restarted after a final state (resume with restart_errored)
            record.state, record.reason = RUNNING, None
        self._flush([record.trial_id])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        record.add_result(result)
        self._flush([record.trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.nresults == 0 and trial.last_result:
            record.add_result(trial.last_result)  # restored trial that finished without a new result
        record.finish(self.max_t)
        self._flush([record.trial_id])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.failures = _num_failures(trial, record.failures + 1)
        self._flush([record.trial_id])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.failures = _num_failures(trial, record.failures + 1)
        record.finish(self.max_t, errored=True, error=_trial_error_text(trial))
        self._flush([record.trial_id])

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._dirty and time.monotonic() >= self._offline_until:
            self._flush([])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush([], force=True)
        if self._dirty:
            logger.warning(
                "%d trial(s) are incomplete in MLflow (%s unreachable); run `attnsearch sync JOB` when it is back",
                len(self._dirty), redact_uri(self.tracking_uri),
            )
            return
        try:
            with fast_http():
                if self._store is not None:
                    lost = self._store.end_lost({str(t.trial_id) for t in trials})
                    if lost:
                        logger.warning("%d MLflow run(s) of trials Ray no longer knows ended as failed (lost): %s",
                                       len(lost), ", ".join(lost))
                    self._store.client.set_terminated(self.parent_run_id, "FINISHED")
        except Exception as e:
            if self.strict:
                raise
            logger.warning("could not close the study's parent run: %s", first_line(e))


def _num_failures(trial: Any, default: int) -> int:
    # Ray's own count survives Tuner.restore (resume_errored) and is what sync_study reads back
    try:
        return int(trial.run_metadata.num_failures)
    except (AttributeError, TypeError, ValueError):
        return default


def _trial_error_text(trial: Any) -> str:
    for get in (lambda: trial.get_error(), lambda: Path(trial.error_file).read_text()):
        try:
            err = get()
        except Exception:  # noqa: BLE001 - best effort: the error file may be remote or gone
            continue
        if err:
            return str(err)
    return f"trial {trial.trial_id} errored (no error file)"
