"""The simulated-time replay (benchmarks/_replay.py, benchmarks/replay.py) on small tables with known answers.

No Ray cluster is started: the replay drives the study's own searcher and schedulers through their hooks with
stub ``ray.tune.experiment.Trial`` objects. The Syne Tune peer's tests skip without syne-tune (a benchmark-only
dependency).
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray")

from attnsearch.config import load_job
from attnsearch.space import baseline_point, is_point, load_space
from tests._helpers import load_benchmark, write_job

R = load_benchmark("_replay")
HAS_PEER = all(importlib.util.find_spec(m) is not None for m in ("syne_tune", "huggingface_hub", "dill"))

SPACE = """\
backbone:
  width_mult: [0.5, 1.0]
attention:
  type: [none, se, eca]
  stages: [[3]]
  blocks: [all]
  position: [default]
  knobs:
    se: {reduction: [4, 8]}
    eca: {kernel_size: [3, 5]}
train:
  lr: {low: 0.01, high: 1.0, log: true}
"""
BEST = {"backbone.width_mult": 0.5, "attention": "eca", "stages": "3", "blocks": "all", "position": "default",
        "eca.kernel_size": 5, "train.lr": 0.1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    path = write_job(folder, SPACE, train={"epochs": 9}, scheduler={"type": "moasha", "grace_period": 1,
                                                                      "reduction_factor": 3})
    job = load_job(path)
    return job, load_space(job), path


def _table(job, space, configs=40, seed=0, best=None):
    return R.read_table(R.synthetic_table(job, space, configs=configs, seed=seed, best=best), space)


# ------------------------------------------------------------------------------------------- the nearest map


def _crafted(rows):
    out = []
    for i, cfg in enumerate(rows):
        for epoch in (1, 2):
            out.append({"config_id": f"k{i}", **cfg, "flops": 1e6 * (i + 1), "params": 10.0, "epoch": epoch,
                        "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.0, "epoch_time_s": 1.0})
    return pd.DataFrame(out)


def test_nearest_config_exact_on_categorical_nearest_on_log_numeric_ties_first(setup, tmp_path):
    job, space, _ = setup
    common = {"backbone.width_mult": 1.0, "stages": "3", "blocks": "all", "position": "default"}
    rows = [
        {"attention": "none", "backbone.width_mult": 1.0, "train.lr": 0.01},         # 0
        {**common, "attention": "se", "se.reduction": 4, "train.lr": 0.1},           # 1
        {**common, "attention": "se", "se.reduction": 8, "train.lr": 0.1},           # 2
        {**common, "attention": "se", "se.reduction": 8, "train.lr": 0.5},           # 3
        {**common, "attention": "se", "se.reduction": 8, "train.lr": 0.5},           # 4: a tie of 3
        {**common, "attention": "eca", "eca.kernel_size": 3, "train.lr": 0.1},       # 5
    ]
    table = R.read_table(_crafted(rows), space)
    near = R.NearestConfig(table, space)
    se8 = {**common, "attention": "se", "se.reduction": 8}
    # categorical exact even when another row is closer in lr
    assert near({**common, "attention": "se", "se.reduction": 4, "train.lr": 0.5}) == 1
    # log scale: lr 0.25 is nearer 0.5 than 0.1 (ln 2 < ln 2.5), though linearly nearer 0.1
    assert near({**se8, "train.lr": 0.25}) == 3
    assert near({**se8, "train.lr": 0.15}) == 2
    # ties go to the configuration first in the table
    assert near({**se8, "train.lr": 0.5}) == 3
    # a combination never recorded: the fewest categorical mismatches (se 8 is one away, eca and none more)
    assert near({**common, "attention": "eca", "eca.kernel_size": 5, "train.lr": 0.1}) == 5
    assert near({"attention": "none", "backbone.width_mult": 0.5, "train.lr": 0.01}) == 0
    assert near.calls == 6 and near.exact == 4
    # numbers read back from a CSV (an int knob as float, a stage set as a string) map the same
    csv = tmp_path / "t.csv"
    _crafted(rows).to_csv(csv, index=False)
    again = R.NearestConfig(R.read_table(csv, space), space)
    assert again({**se8, "train.lr": 0.25}) == 3 and again({**common, "attention": "se", "se.reduction": 4}) == 1


def test_nearest_config_prefers_a_configuration_the_run_has_not_trained(setup):
    job, space, _ = setup
    common = {"backbone.width_mult": 1.0, "stages": "3", "blocks": "all", "position": "default", "attention": "se"}
    rows = [{**common, "se.reduction": 8, "train.lr": lr} for lr in (0.1, 0.12, 0.5)]
    rows.append({**common, "se.reduction": 4, "train.lr": 0.1})
    near = R.NearestConfig(R.read_table(_crafted(rows), space), space)
    proposal = {**common, "se.reduction": 8, "train.lr": 0.1}
    assert near(proposal) == 0
    assert near(proposal, used={0}) == 1  # the next nearest of the same categorical combination
    assert near(proposal, used={0, 1}) == 2  # even far in lr: unused first within the combination
    # every row of the combination used: the nearest of them again, never another combination
    assert near(proposal, used={0, 1, 2}) == 0


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_replay_trains_each_recorded_configuration_once_while_it_can(setup, method):
    job, space, _ = setup
    table = _table(job, space, configs=30)
    run = R.replay(table, job, space, method=method, seed=0, workers=2,
                   budget_s=0.6 * table.curves["epoch_time_s"].sum())  # time for about 18 of the 30
    near = R.NearestConfig(table, space)
    seen: set[int] = set()
    for trial in run.trials:  # in start order
        if trial["row"] in seen:  # a repeat only once its categorical combination has no untrained row left
            mismatches, _ = near.distances(trial["config"])
            assert set(np.flatnonzero(mismatches == mismatches.min())) <= seen
        seen.add(trial["row"])
    assert len(run.trials) > 10 and len(seen) > 10


def test_read_table_refuses_a_table_without_the_space_columns(setup):
    job, space, _ = setup
    df = R.synthetic_table(job, space, configs=5).drop(columns=["train.lr"])
    with pytest.raises(R.ConfigError, match=r"train\.lr"):
        R.read_table(df, space)
    df = R.synthetic_table(job, space, configs=12)
    assert (df["attention"] == "se").any()
    with pytest.raises(R.ConfigError, match=r"se\.reduction"):  # se was recorded: its knob is needed
        R.read_table(df.drop(columns=["se.reduction"]), space)
    only_none = df[df["attention"] == "none"].drop(columns=["se.reduction", "eca.kernel_size"])
    assert len(R.read_table(only_none, space)) == only_none["config_id"].nunique() > 0  # none recorded: no knobs
    renamed = R.read_table(R.synthetic_table(job, space, configs=5).rename(columns={"config_id": "run_id"}), space)
    assert len(renamed) == 5 and renamed.max_t == job.train.epochs
    with pytest.raises(R.ConfigError, match="epoch_time_s"):
        R.read_table(R.synthetic_table(job, space, configs=5).drop(columns=["epoch_time_s"]), space)


def test_ids_that_look_like_numbers_read_back_as_the_same_strings(setup, tmp_path):
    """A table file whose every trial id is all digits, or hex with an ``e`` (``1234e567``), as a recording split
    in two files can hold: the ids stay strings, and the two files join as one table."""
    job, space, path = setup
    df = R.synthetic_table(job, space, configs=3)
    ids = ("00012345", "1234e567", "abc_00001")
    df["config_id"] = df["config_id"].map(dict(zip(df["config_id"].unique(), ids, strict=True)))
    parts = []
    for i, cid in enumerate(ids):
        parts.append(str(tmp_path / f"part{i}.csv"))
        df[df["config_id"] == cid].to_csv(parts[-1], index=False)
    assert R.read_frame(parts[1])["config_id"].tolist()[0] == "1234e567"
    one = R.read_table(parts[0], space)
    assert one.configs["config_id"].tolist() == ["00012345"]
    joined = load_benchmark("replay").load_table(parts, job, space)
    assert sorted(joined.configs["config_id"]) == sorted(ids)


# ------------------------------------------------------------------------------------------------ the replay


def test_events_in_simulated_time_order_and_stopped_trials_cost_nothing(setup):
    job, space, _ = setup
    table = _table(job, space)
    secs = table.curves["epoch_time_s"]
    run = R.replay(table, job, space, method="tpe+moasha", seed=3, workers=4, budget_s=30 * secs.sum(1).mean())
    times = [t for t, _, _ in run.events]
    assert times == sorted(times) and len(times) > 20
    stopped = [t for t in run.trials if t["state"] == "early_stopped"]
    assert stopped, "MOASHA stopped nothing: the test cannot check what a stop saves"
    for rec in run.trials:  # each trial's results are its epochs 1..n, in order, each at the end of its epoch
        mine = [(t, e) for t, tid, e in run.events if tid == rec["trial_id"]]
        assert [e for _, e in mine] == list(range(1, rec["epochs"] + 1))
        ends = rec["start"] + np.cumsum(secs[rec["row"], :rec["epochs"]])
        assert np.allclose([t for t, _ in mine], ends)
    for rec in stopped:  # the worker is free at the stop: no later epoch, its end is its last epoch's
        assert rec["epochs"] < table.max_t
        assert math.isclose(rec["end"], rec["start"] + secs[rec["row"], :rec["epochs"]].sum())
    charged = sum(secs[r["row"], :r["epochs"]].sum() for r in run.trials if r["state"] != "running")
    cut = sum(run.horizon_s - r["start"] - secs[r["row"], :r["epochs"]].sum() for r in run.trials
              if r["state"] == "running")
    assert math.isclose(run.worker_seconds, charged + cut, rel_tol=1e-9)
    assert set(run.scheduler.stopped) == {r["trial_id"] for r in stopped}


def test_one_worker_runs_trials_back_to_back_and_the_budget_is_respected(setup):
    job, space, _ = setup
    table = _table(job, space)
    budget = 12 * table.curves["epoch_time_s"].sum(1).mean()
    run = R.replay(table, job, space, method="random+moasha", seed=0, workers=1, budget_s=budget)
    starts = [r["start"] for r in run.trials]
    ends = [r["end"] for r in run.trials]
    assert starts[0] == 0 and np.allclose(starts[1:], ends[:-1])  # a freed worker starts the next trial at once
    for workers in (1, 4, 8):
        for method in ("random", "tpe+moasha"):
            run = R.replay(table, job, space, method=method, seed=1, workers=workers, budget_s=budget)
            assert all(t <= run.horizon_s for t, _, _ in run.events)
            assert run.worker_seconds <= budget * (1 + 1e-9)
            assert run.worker_seconds == pytest.approx(budget)  # every worker busy to the end
            assert math.isclose(run.horizon_s, budget / workers)


def test_a_dominating_configuration_is_found_by_every_method(setup):
    job, space, _ = setup
    df = R.synthetic_table(job, space, configs=30, seed=1, best=BEST)
    last = df["config_id"].iloc[-1]
    same = np.logical_and.reduce([df[k] == v for k, v in BEST.items() if k != "train.lr"])
    table = R.read_table(df[~same | (df["config_id"] == last)], space)  # its combination maps to it alone
    objectives = dict(job.search.objectives)
    ref = R.table_reference(table, objectives)
    hv_star = R.true_hypervolume(table, objectives, ref)
    best_row = len(table) - 1
    budget = 30 * table.curves["epoch_time_s"].sum(1).mean()
    # Not st-moasha: Syne Tune 0.16's MOASHA can stop a trial that dominates its rung (the bug described in
    # benchmarks/_peer_synetune.py); here it does.
    # Not gp+moasha: a GP fit per proposal makes it a minute here; the short replay below runs it.
    methods = [m for m in R.METHODS if m != "gp+moasha"] + (["st-random"] if HAS_PEER else [])
    for method in methods:
        if method.startswith("st-"):
            peer = load_benchmark("_replay_peer")
            run = peer.peer_replay(table, job, space, method=method, seed=0, workers=4, budget_s=budget)
        else:
            run = R.replay(table, job, space, method=method, seed=0, workers=4, budget_s=budget)
        assert best_row in [r for _, r in run.full], method
        hv = R.hv_curve(table, run, objectives, ref, [run.horizon_s])[-1]
        assert hv == pytest.approx(hv_star), method  # it dominates the table: the front is that one point


def test_short_replay_goes_through_the_real_searcher_and_schedulers(setup):
    from ray.tune.schedulers import FIFOScheduler

    from attnsearch.search import MOASHAScheduler, StudySearcher
    from attnsearch.search._schedulers import BaselineASHAScheduler

    job, space, _ = setup
    table = _table(job, space, configs=20)
    budget = 10 * table.curves["epoch_time_s"].sum(1).mean()
    kinds = {"random": FIFOScheduler, "tpe+asha": BaselineASHAScheduler, "tpe+moasha": MOASHAScheduler,
             "gp+moasha": MOASHAScheduler}
    base = baseline_point(job, space)
    for method, kind in kinds.items():
        run = R.replay(table, job, space, method=method, seed=0, workers=2, budget_s=budget)
        assert isinstance(run.searcher, StudySearcher) and type(run.scheduler) is kind
        first = run.trials[0]
        assert first["trial_id"] == "00000" and first["state"] == "completed" and first["epochs"] == table.max_t
        assert is_point(first["config"], base)  # the baseline first, trained to the full budget
        assert not any(is_point(t["config"], base) for t in run.trials[1:])
        if method != "random":
            assert any(t["state"] == "early_stopped" for t in run.trials), method


def test_replay_is_deterministic_given_the_seed(setup):
    job, space, _ = setup
    table = _table(job, space)
    budget = 15 * table.curves["epoch_time_s"].sum(1).mean()
    a, b = (R.replay(table, job, space, method="tpe+moasha", seed=5, workers=4, budget_s=budget) for _ in "ab")
    c = R.replay(table, job, space, method="tpe+moasha", seed=6, workers=4, budget_s=budget)
    assert a.events == b.events and a.full == b.full
    assert a.events != c.events


# --------------------------------------------------------------------------------------------------- the CLI


def test_cli_writes_the_report_json_and_plot_and_refuses_bad_input(setup, tmp_path, capsys):
    job, space, job_path = setup
    cli = load_benchmark("replay")
    table = tmp_path / "t.parquet"
    R.synthetic_table(job, space, configs=25).to_parquet(table)
    out, js, png = tmp_path / "r.md", tmp_path / "r.json", tmp_path / "r.png"
    rc = cli.main(["--table", str(table), "--job", str(job_path), "--methods", "random,tpe+moasha", "--seeds", "3",
                   "--budget", "8x", "--json", str(js), "--out", str(out), "--plot", str(png),
                   "--write-table", str(tmp_path / "back.csv")])
    assert rc == 0
    back, first = R.read_table(tmp_path / "back.csv", space), R.read_table(table, space)
    assert np.allclose(back.curves["val_acc"], first.curves["val_acc"]) and len(back) == 25
    data = json.loads(js.read_text())
    pairs = [(m, s) for s in range(3) for m in ("random", "tpe+moasha")]
    assert [(r["method"], r["seed"]) for r in data["runs"]] == pairs
    assert data["meta"]["configs"] == 25 and len(data["runs"][0]["hv"]) == cli.GRID
    assert "| tpe+moasha | 3 |" in out.read_text() and png.stat().st_size > 0
    assert "p_vs_random" in data["summary"]["methods"]["tpe+moasha"]
    for bad, fix in ((["--table", str(tmp_path / "nope.csv")], "no such file"),
                     (["--table", str(table), "--methods", "bogus"], "unknown"),
                     (["--table", str(table), "--budget", "-3"], "--budget")):
        assert cli.main([*bad, "--job", str(job_path), "--seeds", "1", "--json", str(tmp_path / "x.json")]) == 2
        assert fix in capsys.readouterr().err
        assert not (tmp_path / "x.json").exists()


def test_oracle_rungs_rank_by_the_final_answer_and_need_training_loss_rungs(setup, tmp_path, capsys):
    job, space, job_path = setup
    table = _table(job, space, configs=12)
    oracle = R.oracle_rungs(table)
    final = table.curves["val_acc"][:, -1]
    assert np.allclose(oracle.curves["train_loss"], (1 - final)[:, None] * np.ones((1, table.max_t)))
    assert not np.allclose(table.curves["train_loss"], oracle.curves["train_loss"])  # the original is kept
    assert np.array_equal(oracle.curves["val_acc"], table.curves["val_acc"])
    cli, path = load_benchmark("replay"), tmp_path / "t.csv"
    R.synthetic_table(job, space, configs=12).to_csv(path, index=False)
    common = ["--table", str(path), "--job", str(job_path), "--seeds", "1", "--methods", "random+moasha",
              "--budget", "6x", "--oracle-rungs"]
    assert cli.main([*common, "--json", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["meta"]["oracle_rungs"] is True
    assert cli.main([*common, "--set", "scheduler.rung_metric=objectives"]) == 2
    assert "--oracle-rungs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- tables from a study


@pytest.mark.slow
def test_a_finished_study_reads_back_as_the_same_table_from_ray_and_from_mlflow(ray_driver, tmp_path, monkeypatch):
    """The recorder's two readers: a real `scheduler: none` study (digits, three trials, two epochs)."""
    from attnsearch.search import run_study

    space = ("backbone:\n  width_mult: [0.5, 1.0]\nattention:\n  type: [none, se]\n"
             "  knobs:\n    se: {reduction: [4, 8]}\ntrain:\n  lr: {low: 0.05, high: 0.2, log: true}\n")
    path = write_job(tmp_path, space, data={"dataset": "digits", "image_size": 8, "batch_size": 128},
                     train={"epochs": 2, "threads": 1}, scheduler={"type": "none"},
                     search={"sampler": "random", "num_samples": 3, "max_concurrent": 1, "seed": 1},
                     tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
                     ray={"storage_path": str(tmp_path / "ray_results"), "num_cpus": 1})
    monkeypatch.chdir(tmp_path)
    job = load_job(path)
    outcome = run_study(job)
    job_space = load_space(job)
    from_ray = R.read_table(R.table_from_ray(outcome.experiment_path, 2), job_space, max_t=2)
    from_mlflow = R.read_table(R.table_from_mlflow(job.tracking.uri, job.experiment, "latest", 2), job_space, max_t=2)
    assert len(from_ray) == len(from_mlflow) == 3
    order = from_ray.configs["config_id"].tolist()
    mine = from_mlflow.configs.set_index("config_id").loc[order].reset_index()
    for knob in from_ray.knobs:
        assert [R.canonical(v) for v in from_ray.configs[knob]] == [R.canonical(v) for v in mine[knob]], knob
    assert np.allclose(from_ray.configs["flops"], mine["flops"])
    index = [from_mlflow.configs["config_id"].tolist().index(c) for c in order]
    for name in R.CURVE_COLUMNS:
        assert np.allclose(from_ray.curves[name], from_mlflow.curves[name][index]), name
    # replay.py takes the study by name and several recordings as one table (their ids must not repeat)
    benchmark = load_benchmark("replay")
    with pytest.raises(R.ConfigError, match="more than one table"):
        benchmark.load_table([f"mlflow:{outcome.study_id}", str(outcome.experiment_path)], job, job_space)
    half = tmp_path / "half.csv"
    frame = R.table_from_ray(outcome.experiment_path, 2)
    frame[frame["config_id"] == order[0]].to_csv(half, index=False)
    rest = tmp_path / "rest.csv"
    frame[frame["config_id"] != order[0]].to_csv(rest, index=False)
    joined = benchmark.load_table([str(half), str(rest)], job, job_space)
    assert sorted(joined.configs["config_id"]) == sorted(order)
    with pytest.raises(R.ConfigError, match="no-such-study"):
        benchmark.load_table(["mlflow:no-such-study"], job, job_space)
    # live_regret.py scores a live study against a table: against its own recording, its front is the true front
    out = tmp_path / "live.md"
    assert load_benchmark("live_regret").main(["--table", str(half), "--table", str(rest), "--job", str(path),
                                               "--live", "random", outcome.study_id, "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| random |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == outcome.study_id and cells[2:5] == ["3", "3", "6"] and float(cells[5]) == 0.0
    # scored against only part of its own recording, the live study's front is better: a negative regret
    assert load_benchmark("live_regret").main(["--table", str(rest), "--job", str(path), "--live", "random",
                                               outcome.study_id, "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| random |"))
    assert float(row.strip("|").split("|")[5]) <= 0.0
    # a study in another store is named with its URI; a --live without its study is refused (exit 2)
    assert load_benchmark("live_regret").main(["--table", str(rest), "--job", str(path), "--live", "random",
                                               outcome.study_id, job.tracking.uri, "--uri", "sqlite:///nowhere.db",
                                               "--out", str(out)]) == 0
    assert load_benchmark("live_regret").main(["--table", str(rest), "--job", str(path), "--live", "random"]) == 2


def test_headroom_reports_the_spread_the_rank_correlations_the_front_and_the_seed_noise(setup):
    job, space, _ = setup
    frame = R.synthetic_table(job, space, configs=30, seed=4)
    twin = frame[frame["config_id"] == frame["config_id"].iloc[0]].copy()
    twin["config_id"] = "twin"
    twin["val_acc"] = twin["val_acc"] - 0.01  # the same knobs recorded again, 1 point lower at every epoch
    table = R.read_table(pd.concat([frame, twin], ignore_index=True), space)
    H = load_benchmark("table_headroom")
    h = H.headroom(table, job, n_val=2500)
    final = table.final()
    assert h["configs"] == 31 and h["rho"][table.max_t] == pytest.approx(1.0)
    assert h["rho"][1] == pytest.approx(final["val_acc"].rank().corr(pd.Series(table.curves["val_acc"][:, 0]).rank()))
    loss_rank = pd.Series(-table.curves["train_loss"][:, 1]).rank()
    assert h["rho_train_loss"][2] == pytest.approx(loss_rank.corr(final["val_acc"].rank()))
    p = final["val_acc"].median()
    assert h["se"] == pytest.approx(math.sqrt(p * (1 - p) / 2500))
    assert h["twins"] == [pytest.approx(0.01)]
    front = h["front"]
    for _, row in front.iterrows():  # no recorded configuration dominates a front member
        better = (final["val_acc"] >= row["val_acc"]) & (final["flops"] <= row["flops"])
        strictly = (final["val_acc"] > row["val_acc"]) | (final["flops"] < row["flops"])
        assert not (better & strictly).any()
    assert final["val_acc"].idxmax() in front.index or final["val_acc"].max() in front["val_acc"].values
    text = H.markdown(h, table, job, "cmd")
    assert "Repeats: 1 knob combinations" in text and f"{len(front)} of 31" in text
