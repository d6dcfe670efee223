"""A study's Optuna record: the searcher's storage, what a resumed driver finds there, and the rebuild from the
Ray record (no Ray started: the searcher and the records are driven directly)."""

from __future__ import annotations

import pickle

import optuna
import pytest
from _helpers import write_job
from optuna.trial import TrialState

from attnsearch.config import ConfigError, load_job
from attnsearch.contract import REASON_KEY, STATE_KEY
from attnsearch.search import (
    INFEASIBLE_CONSTRAINT,
    TRIAL_ID_ATTR,
    StudySearcher,
    load_optuna_study,
    make_sampler,
    open_optuna_storage,
    optuna_record_exists,
    optuna_storage_url,
    reconcile_optuna_record,
)
from attnsearch.space import define_by_run, load_space
from attnsearch.tracking import TrialRecord

SPACE = """\
attention:
  type: [none, se]
  stages: [[3]]
  position: [default]
  knobs:
    se: {reduction: [4, 8]}
train:
  lr: {low: 0.01, high: 0.2, log: true}
"""
OBJECTIVES = {"val_acc": "max", "flops": "min"}


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return load_job(write_job(tmp_path, SPACE, ray={"storage_path": str(tmp_path / "ray_results")}))


def searcher_for(job, study_id: str) -> StudySearcher:
    return StudySearcher(space=define_by_run(load_space(job)), metric=list(OBJECTIVES), mode=list(OBJECTIVES.values()),
                         sampler=make_sampler("random", 0), max_t=2, study_name=study_id,
                         storage=open_optuna_storage(optuna_storage_url(job, study_id)))


def test_storage_location_and_config_key(job, tmp_path):
    assert optuna_storage_url(job, "tiny-1") == str(tmp_path / "ray_results" / "tiny-1" / "optuna.journal")
    shared = load_job(write_job(tmp_path, SPACE, job_file="shared.yaml",
                                search={"optuna_storage": "sqlite:///optuna.db"}))
    assert optuna_storage_url(shared, "tiny-1") == f"sqlite:///{tmp_path}/optuna.db"  # absolute on the driver
    with pytest.raises(ConfigError, match=r"search.optuna_storage.*RDB URL.*got 'redis://host'"):
        load_job(write_job(tmp_path, SPACE, job_file="bad.yaml", search={"optuna_storage": "redis://host"}))
    remote = load_job(write_job(tmp_path, SPACE, job_file="s3.yaml", ray={"storage_path": "s3://bucket/results"}))
    with pytest.raises(ConfigError, match="search.optuna_storage: ray.storage_path=s3://bucket/results is not a local"):
        optuna_storage_url(remote, "tiny-1")


def test_searcher_keeps_its_study_in_the_storage_and_a_resumed_one_adds_nothing(job):
    url = optuna_storage_url(job, "tiny-1")
    searcher = searcher_for(job, "tiny-1")
    for trial_id in ("t0", "t1", "t2"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("t0", {"epoch": 2, "val_acc": 0.9, "flops": 100.0})
    saved = pickle.dumps(searcher)  # what Ray saves; then t1 ends before the driver is killed
    searcher.on_trial_complete("t1", {"epoch": 1, "val_acc": 0.5, "flops": 100.0})

    study = load_optuna_study(url, "tiny-1")  # another process (optuna-dashboard) sees it all
    assert study.metric_names == ["val_acc", "flops"]
    t0, t1, t2 = study.get_trials()
    assert (t0.state, t0.values, t0.user_attrs[TRIAL_ID_ATTR]) == (TrialState.COMPLETE, [0.9, 100.0], "t0")
    assert (t1.state, t2.state) == (TrialState.PRUNED, TrialState.RUNNING)

    restored = pickle.loads(saved)  # --resume: Ray restores the searcher as saved, Ray reruns t1 and t2
    restored.on_trial_complete("t1", {"epoch": 2, "val_acc": 0.7, "flops": 100.0})  # told already: kept
    restored.on_trial_complete("t2", {"epoch": 2, "val_acc": 0.8, "flops": 50.0})
    restored.suggest("t3")
    trials = load_optuna_study(url, "tiny-1").get_trials()
    assert [t.user_attrs[TRIAL_ID_ATTR] for t in trials] == ["t0", "t1", "t2", "t3"]
    assert trials[1].state == TrialState.PRUNED and trials[2].values == [0.8, 50.0]


def _record(trial_id: str, config: dict, state: str, start: int, **metrics) -> TrialRecord:
    record = TrialRecord(trial_id, config, start_ms=start)
    epochs = 2 if state == "completed" else 1
    for epoch in range(1, epochs + 1):
        record.add_result({"epoch": epoch, "timestamp": start / 1000 + epoch, **metrics,
                           **({STATE_KEY: state, REASON_KEY: "too big"} if state == "infeasible" else {})})
    record.finish(2, errored=state == "failed", error="RuntimeError: boom" if state == "failed" else None)
    assert record.state == state
    return record


def test_rebuild_from_the_ray_record_and_reconcile(job, tmp_path):
    space = load_space(job)
    base = {"attention": "none", "train.lr": 0.05, "stages": "3", "blocks": "all", "position": "default"}
    records = [
        _record("r0", base, "completed", 1_000, val_acc=0.9, flops=2e6),
        _record("r1", {**base, "attention": "se", "se.reduction": 8}, "early_stopped", 2_000, val_acc=0.4, flops=3e6),
        _record("r2", {**base, "attention": "se", "se.reduction": 4}, "infeasible", 3_000, flops=9e6),
        _record("r3", {**base, "train.lr": 0.1}, "failed", 4_000, val_acc=0.1, flops=2e6),
    ]
    url = str(tmp_path / "rebuilt.journal")
    assert not optuna_record_exists(url, "s")
    assert reconcile_optuna_record(url, "s", records, space, OBJECTIVES) == {
        "trials": 4, "added": 4, "told": 0, "lost": 0}
    t0, t1, t2, t3 = load_optuna_study(url, "s").get_trials()
    assert (t0.state, t0.values, t0.params) == (TrialState.COMPLETE, [0.9, 2e6], {"attention": "none",
                                                                                 "train.lr": 0.05})
    assert t0.constraints == {INFEASIBLE_CONSTRAINT: 0.0} and t0.datetime_start.timestamp() == 1.0
    assert (t1.state, t1.params["se.reduction"], t1.user_attrs[STATE_KEY]) == (TrialState.PRUNED, 8, "early_stopped")
    assert (t2.state, t2.values, t2.constraints) == (TrialState.COMPLETE, [0.0, 9e6], {INFEASIBLE_CONSTRAINT: 1.0})
    assert t3.state == TrialState.FAIL
    # again: nothing added; a trial asked for but never in the Ray record ends failed with why
    study = load_optuna_study(url, "s")
    orphan = study.ask()
    assert reconcile_optuna_record(url, "s", records, space, OBJECTIVES) == {
        "trials": 5, "added": 0, "told": 0, "lost": 1}
    lost = load_optuna_study(url, "s").get_trials()[orphan.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs[REASON_KEY].startswith("lost")
    assert reconcile_optuna_record(url, "s", records, space, OBJECTIVES)["lost"] == 0


def test_a_running_trial_whose_ray_trial_ended_is_told(job, tmp_path):
    searcher = searcher_for(job, "tiny-2")
    config = searcher.suggest("t0")
    record = _record("t0", config, "completed", 1_000, val_acc=0.75, flops=5e6)
    url = optuna_storage_url(job, "tiny-2")
    counts = reconcile_optuna_record(url, "tiny-2", [record], load_space(job), OBJECTIVES)
    assert counts == {"trials": 1, "added": 0, "told": 1, "lost": 0}
    (trial,) = optuna.load_study(study_name="tiny-2", storage=open_optuna_storage(url)).get_trials()
    assert (trial.state, trial.values, trial.user_attrs[STATE_KEY]) == (TrialState.COMPLETE, [0.75, 5e6], "completed")


def _noop(config):
    pass


@pytest.mark.slow  # starts `attnsearch dashboard` (optuna-dashboard)
def test_dashboard_serves_the_study_and_stops_on_sigterm(job, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    from _helpers import BIN, alive, children_of, free_port, group_alive, group_members, stop_server
    from ray import tune

    from attnsearch.tracking import wait_for_port

    pytest.importorskip("optuna_dashboard")
    study_id = "tiny-20261201-000000"
    tune.Tuner(_noop, run_config=tune.RunConfig(name=study_id, storage_path=job.ray.storage_path))  # its Ray folder
    searcher = searcher_for(job, study_id)
    for i in range(3):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"epoch": 2, "val_acc": 0.5 + i / 10, "flops": 100.0 * (i + 1)})
    port, log = free_port(), tmp_path / "dashboard.log"
    proc = subprocess.Popen([str(BIN / "attnsearch"), "dashboard", str(tmp_path / "job.yaml"), "--port", str(port)],
                            cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    groups: set[int] = set()  # the server's process group, once known: the teardown kills it whatever happened
    pids: set[int] = set()  # its processes while it served
    try:
        assert wait_for_port("127.0.0.1", port, 120, alive=lambda: proc.poll() is None), log.read_text()[-3000:]
        group = os.getpgid(children_of(proc.pid)[0])
        groups.add(group)
        pids.update(group_members(group))
        assert group != os.getpgid(proc.pid) and pids  # its own process group
        assert f"optuna-dashboard: http://127.0.0.1:{port}/dashboard/studies/" in log.read_text()

        def get(path: str) -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{path}", timeout=30) as response:
                return json.load(response)

        (summary,) = get("studies")["study_summaries"]  # the study, and its trials with their values
        assert summary["study_name"] == study_id and log.read_text().count(f"/studies/{summary['study_id']}")
        detail = get(f"studies/{summary['study_id']}")
        assert [t["values"] for t in detail["trials"]] == [[0.5, 100.0], [0.6, 200.0], [0.7, 300.0]]
        assert detail["objective_names"] == ["val_acc", "flops"]
        pids.update(group_members(group))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 15
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(group), "optuna-dashboard outlived attnsearch dashboard"
        assert not alive(pids), f"optuna-dashboard processes {alive(pids)} outlived attnsearch dashboard"
        assert not wait_for_port("127.0.0.1", port, 1.0), "the port is still held"
    finally:
        left = stop_server(proc, groups)
    assert not left and not alive(pids), f"processes left after the test: {left or alive(pids)}"


def test_importance_command_reads_the_record_and_names_the_fix(job, tmp_path, capsys):
    from ray import tune

    from attnsearch.cli import main

    study_id = "tiny-20261201-000001"
    job_file = str(tmp_path / "job.yaml")
    assert main(["importance", job_file]) == 2  # no study yet
    assert "has no study under ray.storage_path" in capsys.readouterr().err
    tune.Tuner(_noop, run_config=tune.RunConfig(name=study_id, storage_path=job.ray.storage_path))
    assert main(["importance", job_file]) == 2  # a study without its Optuna record
    assert f"attnsearch sync JOB --study {study_id}" in capsys.readouterr().err
    searcher = searcher_for(job, study_id)
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"epoch": 2, "val_acc": config["train.lr"], "flops": 100.0})
    assert main(["importance", job_file, "--evaluator", "mdi", "--objective", "val_acc"]) == 0
    out = capsys.readouterr().out
    assert f"Parameter importances of study {study_id} (mean decrease in impurity" in out
    assert "train.lr" in out and "UNRELIABLE, ranks only: only 4 trial(s)" in out
    assert main(["importance", job_file, "--objective", "latency_ms"]) == 2
    assert "not an objective of the job; its objectives: val_acc, flops" in capsys.readouterr().err
