"""The idempotent store: a study's child runs, reconciled with what its trials reported.

Every write goes through one step, ``Store.reconcile(record)``: it compares what a trial reported with what the
store already holds (params present, last logged epoch, tags, run status) and writes only the difference. The
Ray callback, a resumed study and ``sync_study`` (which replays a Ray experiment directory) all use it, so
replaying the same results twice adds nothing and a retried trial keeps one run and one value per step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from ..contract import (
    FAILED,
    LOST_REASON,
    RUNNING,
    STATES,
    STATIC_METRICS,
    TAG_BASELINE,
    TAG_BUDGET,
    TAG_FAILURES,
    TAG_PARAM_TYPES,
    TAG_PARENT,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    TIME_ATTR,
)
from ._datasets import input_entities
from ._params import encode_params, run_name
from ._records import TrialRecord, tail

__all__ = ["Store", "quote", "search_all"]

# MLflow's log_batch limits (mlflow/utils/validation.py).
MAX_METRICS, MAX_PARAMS_TAGS = 1000, 100


def quote(value: str) -> str:
    """``value`` as a string literal of MLflow's search filter language."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs



@dataclass
class RunState:
    run_id: str
    params: set[str]
    last_epoch: int | None
    static: set[str]
    tags: dict[str, str]
    status: str
    inputs: bool = False  # the run has its dataset inputs

    @classmethod
    def of(cls, run: Any) -> RunState:
        metrics = run.data.metrics
        epoch = metrics.get(TIME_ATTR)
        return cls(
            run_id=run.info.run_id,
            params=set(run.data.params),
            last_epoch=int(epoch) if epoch is not None and math.isfinite(epoch) else None,
            static={k for k in STATIC_METRICS if k in metrics},
            tags=dict(run.data.tags),
            status=run.info.status,
            inputs=bool(run.inputs and run.inputs.dataset_inputs),
        )



class Store:
    """A study's child runs in one tracking store, cached by trial id.

    Args:
        uri: the tracking URI.
        parent_run_id: the study's parent run; its child runs are read once, then cached.
        datasets: the dataset inputs every child run gets once (``dataset_inputs``: what the trials train on).
    """

    def __init__(self, uri: str, parent_run_id: str, datasets: Sequence[Mapping[str, Any]] = ()) -> None:
        self.uri = uri
        self.datasets = list(datasets)
        self.client = MlflowClient(uri)
        parent = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = parent.info.experiment_id
        self.study_id = parent.data.tags.get(TAG_STUDY, "")
        self.runs: dict[str, RunState] = {}
        for run in sorted(self._children(), key=lambda r: r.info.start_time or 0):
            tid = run.data.tags.get(TAG_TRIAL)
            if tid and tid not in self.runs:  # oldest wins if a race ever made two
                self.runs[tid] = RunState.of(run)

    def _children(self, trial_id: str | None = None) -> list[Any]:
        flt = f"tags.`{TAG_PARENT}` = {quote(self.parent_run_id)}"
        if trial_id is not None:
            flt += f" and tags.`{TAG_TRIAL}` = {quote(trial_id)}"
        return search_all(self.client, [self.experiment_id], flt)

    def _run_for(self, record: TrialRecord, counts: dict[str, int]) -> RunState:
        state = self.runs.get(record.trial_id)
        if state is not None:
            return state
        found = sorted(self._children(record.trial_id), key=lambda r: r.info.start_time or 0)
        if found:
            state = RunState.of(found[0])
        else:
            _, types = encode_params(record.config)
            tags = {
                TAG_PARENT: self.parent_run_id, TAG_STUDY: self.study_id, TAG_ROLE: "trial",
                TAG_TRIAL: record.trial_id, TAG_STATE: RUNNING,
                TAG_PARAM_TYPES: json.dumps(types, sort_keys=True),
                **({TAG_BASELINE: "true"} if record.baseline else {}),
            }
            run = self.client.create_run(
                self.experiment_id, start_time=record.start_ms, tags=tags, run_name=run_name(record.config)
            )
            counts["runs_created"] += 1
            state = RunState(run.info.run_id, set(), None, set(), {**tags}, run.info.status)
        self.runs[record.trial_id] = state
        return state

    def reconcile(self, record: TrialRecord) -> dict[str, int]:
        """Write what the store is missing for this trial; return what was written."""
        counts = {"runs_created": 0, "params": 0, "metrics": 0, "tags": 0, "finished": 0}
        rs = self._run_for(record, counts)
        if self.datasets and not rs.inputs:
            self.client.log_inputs(rs.run_id, datasets=input_entities(self.datasets))
            rs.inputs = True
        values, types = encode_params(record.config)
        params = [Param(k, v) for k, v in values.items() if k not in rs.params]
        for i in range(0, len(params), MAX_PARAMS_TAGS):
            chunk = params[i:i + MAX_PARAMS_TAGS]
            self.client.log_batch(rs.run_id, params=chunk)
            rs.params.update(p.key for p in chunk)
            counts["params"] += len(chunk)

        now = int(time.time() * 1000)
        static = [
            Metric(k, v, record.start_ms or now, 0) for k, v in record.static.items() if k not in rs.static
        ]
        # One group per epoch with "epoch" last, chunks cut between epochs: the stored "epoch" metric (its value
        # at the highest step) is then always the last completely written epoch, which is what a resume reads.
        chunks, cur, cur_epoch, last = [], static, rs.last_epoch, rs.last_epoch
        for res in record.pending:
            if last is not None and res["epoch"] <= last:
                continue  # a retried trial repeating epochs: keep the first value of each step
            ms = res["ms"] or now
            group = [Metric(k, v, ms, res["epoch"]) for k, v in res["metrics"].items()]
            group.append(Metric(TIME_ATTR, float(res["epoch"]), ms, res["epoch"]))
            if cur and len(cur) + len(group) > MAX_METRICS - MAX_PARAMS_TAGS:  # room for the tags
                chunks.append((cur, cur_epoch))
                cur = []
            cur, cur_epoch, last = cur + group, res["epoch"], res["epoch"]
        chunks.append((cur, cur_epoch))

        budget = max(record.budget, cur_epoch or 0)
        desired = {TAG_STATE: record.state, TAG_BUDGET: str(budget)}
        if record.reason:
            desired[TAG_REASON] = tail(record.reason)
        if record.failures:
            desired[TAG_FAILURES] = str(record.failures)
        if record.baseline:
            desired[TAG_BASELINE] = "true"
        known = json.loads(rs.tags.get(TAG_PARAM_TYPES) or "{}")
        if not set(types) <= set(known):
            desired[TAG_PARAM_TYPES] = json.dumps({**known, **types}, sort_keys=True)
        tags = [RunTag(k, v) for k, v in desired.items() if rs.tags.get(k) != v]
        # Tags travel with the last metrics in one log_batch (one transaction): state/budget never run ahead.
        for i, (metrics, epoch) in enumerate(chunks):
            batch_tags = tags if i == len(chunks) - 1 else []
            if not metrics and not batch_tags:
                continue
            self.client.log_batch(rs.run_id, metrics=metrics, tags=batch_tags)
            counts["metrics"] += len(metrics)
            counts["tags"] += len(batch_tags)
            rs.static.update(m.key for m in metrics if m.step == 0 and m.key in STATIC_METRICS)
            rs.last_epoch = epoch
            rs.tags.update({t.key: t.value for t in batch_tags})
        record.pending.clear()

        final = record.state in STATES
        if final and rs.status in ("RUNNING", "SCHEDULED"):
            status = "FAILED" if record.state == FAILED else "FINISHED"
            self.client.set_terminated(rs.run_id, status, end_time=record.end_ms)
            rs.status = status
            counts["finished"] += 1
        elif not final and rs.status not in ("RUNNING", "SCHEDULED"):
            self.client.update_run(rs.run_id, status="RUNNING")  # a restarted trial (resume --restart-errored)
            rs.status = "RUNNING"
        return counts

    def end_lost(self, trial_ids: set[str]) -> list[str]:
        """End, as ``failed`` with ``LOST_REASON`` and MLflow status ``KILLED``, every child run still ``running``
        whose trial is not in ``trial_ids`` (every trial Ray knows at the end of the study): a trial a killed
        driver started after Ray last saved the study's state. Its epochs stay recorded. Returns their trial ids.
        """
        lost = []
        for tid, rs in self.runs.items():
            if tid in trial_ids or rs.tags.get(TAG_STATE) != RUNNING:
                continue
            tags = [RunTag(TAG_STATE, FAILED), RunTag(TAG_REASON, tail(LOST_REASON))]
            self.client.log_batch(rs.run_id, tags=tags)
            rs.tags.update({t.key: t.value for t in tags})
            if rs.status in ("RUNNING", "SCHEDULED"):
                self.client.set_terminated(rs.run_id, "KILLED")
                rs.status = "KILLED"
            lost.append(tid)
        return lost
