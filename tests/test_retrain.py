"""`attnsearch retrain`: the statistics on crafted numbers, which configurations a retrain takes from a study
(a study written to MLflow directly, no Ray), its bad input, and end to end on digits (slow: starts Ray)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")
stats = pytest.importorskip("scipy.stats")

from _helpers import SE_SPACE, write_cifar, write_job  # noqa: E402

from attnsearch import contract as C  # noqa: E402
from attnsearch import tracking as T  # noqa: E402
from attnsearch.cli import main  # noqa: E402
from attnsearch.config import load_job  # noqa: E402
from attnsearch.pareto import load_runs, mean_std, select_study, welch_interval  # noqa: E402
from attnsearch.search import (  # noqa: E402
    RetrainConfig,
    format_retrain,
    retrain_seeds,
    select_configs,
    summarize,
)
from attnsearch.space import materialize  # noqa: E402

SPACE = SE_SPACE


def retrain_job(tmp_path, data=None, **sections):
    return write_job(tmp_path, SPACE, name="rt", data={"image_size": 16, "batch_size": 128, **(data or {})},
                     train={"epochs": 2},
                     search={"num_samples": 4, "seed": 3, "max_concurrent": 2},
                     tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
                     ray={"storage_path": f"{tmp_path}/ray_results", "max_failures": 0}, **sections)


# ------------------------------------------------------------------------------------------------ statistics


def test_welch_interval_known_values():
    # equal n and variances: df = 2(n - 1) = 4, t_{0.975, 4} = 2.776445 (every t table), se = sqrt(2/3)
    diff, low, high = welch_interval([1, 2, 3], [4, 5, 6])
    half = 2.7764451051977987 * math.sqrt(2 / 3)
    assert diff == pytest.approx(-3.0, abs=1e-12)
    assert (low, high) == pytest.approx((-3 - half, -3 + half), abs=1e-9)
    # unequal variances: s^2 = 4e-4 and 1e-4, n = 3 each: se = sqrt(5e-4 / 3), df = 50/17 (Welch-Satterthwaite)
    a, b = [0.90, 0.86, 0.88], [0.80, 0.82, 0.81]
    diff, low, high = welch_interval(a, b)
    half = stats.t.ppf(0.975, 50 / 17) * math.sqrt(5e-4 / 3)
    assert diff == pytest.approx(0.07, abs=1e-12)
    assert (low, high) == pytest.approx((0.07 - half, 0.07 + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.0284460, 0.1115540), abs=1e-6)  # t_{0.975, 2.94} = 3.2187
    # scipy's own Welch test gives the same interval
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    # unequal sizes
    a, b = [0.5, 0.7, 0.65, 0.61], [0.4, 0.6]
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch_interval(a, b)[1:] == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_welch_interval_edge_cases_and_mean_std():
    diff, low, high = welch_interval([0.9], [0.8, 0.81])  # one run: a difference, no interval
    assert diff == pytest.approx(0.095) and math.isnan(low) and math.isnan(high)
    assert welch_interval([0.9, 0.9], [0.8, 0.8]) == pytest.approx((0.1, 0.1, 0.1))  # no spread at all
    assert all(math.isnan(v) for v in welch_interval([], [0.8, 0.9]))
    assert mean_std([0.90, 0.86, 0.88]) == pytest.approx((0.88, 0.02))
    mean, std = mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)


def test_summarize_means_intervals_and_the_front_of_the_means():
    base = RetrainConfig("none", {"attention": "none"}, "b", baseline=True, study_front=True)
    x = RetrainConfig("se-r4", {"attention": "se"}, "x", study_front=True, study_metrics={"val_acc": 0.93})
    y = RetrainConfig("se-r8", {"attention": "se"}, "y", study_front=True)
    rows = [("b", True, 0.80, 1e6), ("b", True, 0.82, 1e6), ("b", True, 0.81, 1e6),
            ("x", False, 0.90, 2e6), ("x", False, 0.86, 2e6), ("x", False, 0.88, 2e6),
            ("y", False, 0.70, 1.5e6), ("y", False, 0.72, 1.5e6)]
    runs = pd.DataFrame([{"source": s, "baseline": bl, "seed": i, "state": "completed", "val_acc": v, "flops": f,
                          "params": f / 10} for i, (s, bl, v, f) in enumerate(rows)])
    runs.loc[len(runs)] = {"source": "y", "baseline": False, "seed": 9, "state": "failed", "val_acc": np.nan,
                           "flops": 1.5e6, "params": 1.5e5}
    table = summarize([base, x, y], runs, {"val_acc": "max", "flops": "min"})
    assert list(table["run_name"]) == ["none", "se-r4", "se-r8"]
    assert list(table["n"]) == [3, 3, 2] and list(table["failed"]) == [0, 0, 1]
    assert table["val_acc_mean"].tolist() == pytest.approx([0.81, 0.88, 0.71])
    assert table["val_acc_std"].tolist() == pytest.approx([0.01, 0.02, math.sqrt(2e-4)])
    row = table.iloc[1]
    assert (row["delta_val_acc"], row["delta_low"], row["delta_high"]) == pytest.approx(
        welch_interval([0.90, 0.86, 0.88], [0.80, 0.82, 0.81]))
    assert row["study_val_acc"] == 0.93 and row["flops"] == 2e6
    assert math.isnan(table.iloc[0]["delta_val_acc"])  # the baseline is the reference
    # y (0.71 at 1.5 MFLOPs) is dominated by the baseline's mean (0.81 at 1 MFLOP): it leaves the front
    assert table["on_front"].tolist() == [True, True, False]
    assert "test_acc_mean" not in table.columns and "test_acc" not in format_retrain(table)  # none reported


def test_summarize_and_format_add_test_acc_when_the_runs_report_it():
    base = RetrainConfig("none", {"attention": "none"}, "b", baseline=True)
    x = RetrainConfig("se-r4", {"attention": "se"}, "x", study_front=True)
    rows = [("b", True, 0.80, 0.75), ("b", True, 0.82, 0.77), ("x", False, 0.90, 0.70), ("x", False, 0.86, 0.74)]
    runs = pd.DataFrame([{"source": s, "baseline": bl, "seed": i, "state": "completed", "val_acc": v,
                          "test_acc": t, "flops": 1e6} for i, (s, bl, v, t) in enumerate(rows)])
    table = summarize([base, x], runs, {"val_acc": "max", "flops": "min"})
    assert table["test_acc_mean"].tolist() == pytest.approx([0.76, 0.72])
    assert table["test_acc_std"].tolist() == pytest.approx([mean_std([0.75, 0.77])[1], mean_std([0.70, 0.74])[1]])
    assert table["val_acc_mean"].tolist() == pytest.approx([0.81, 0.88])  # the selection figure is unchanged
    text = format_retrain(table)
    assert "test_acc mean +- std" in text and "0.7600 +- 0.0141" in text and "0.7200 +- 0.0283" in text


# ------------------------------------------------------------------------------------------------ from a study


def _record(tid, config, epochs, acc, flops, state=None):
    rec = T.TrialRecord(tid, config)
    for e in range(1, epochs + 1):
        rec.add_result({"epoch": e, "val_acc": acc, "flops": flops, "params": flops / 10,
                        "timestamp": 1_700_000_000 + 10 * int(tid[1:]) + e})
    if state:
        rec.add_result({"attnsearch_state": state, "attnsearch_reason": "over budget", "flops": flops,
                        "timestamp": 1_700_000_900})
    rec.finish(2)
    return rec


SE = {"attention": "se", "stages": "3", "blocks": "all", "position": "default"}


@pytest.fixture()
def study(tmp_path):
    """A finished study of the retrain job, written to MLflow directly: the baseline (none, lr 0.1), two
    front members, a dominated trial, an early-stopped and an infeasible one."""
    job = load_job(retrain_job(tmp_path))
    parent = T.start_study(job.tracking.uri, "rt", "rt-20260101-000000", "name: rt\n", {}, False,
                           objectives={"val_acc": "max", "flops": "min"}, max_t=2)
    store = T.Store(job.tracking.uri, parent)
    for rec in [
        _record("t0", {"attention": "none", "train.lr": 0.1}, 2, 0.80, 1.0e6),
        _record("t1", {**SE, "se.reduction": 4, "train.lr": 0.1}, 2, 0.90, 1.2e6),
        _record("t2", {**SE, "se.reduction": 8, "train.lr": 0.05}, 2, 0.85, 1.1e6),
        _record("t3", {**SE, "se.reduction": 8, "train.lr": 0.1}, 2, 0.70, 1.1e6),  # dominated by t2
        _record("t4", {**SE, "se.reduction": 4, "train.lr": 0.05}, 1, 0.95, 1.2e6),  # early stopped
        _record("t5", {**SE, "se.reduction": 4, "train.lr": 0.05}, 0, 0.0, 1.2e6, "infeasible"),
    ]:
        store.reconcile(rec)
    runs = load_runs("rt", job.tracking.uri, parent_run_id=parent)
    ids = dict(zip(runs["trial_id"], runs["run_id"], strict=True))
    return job, parent, ids


def _select(job, **kw):
    client = mlflow.MlflowClient(job.tracking.uri)
    source = select_study(client, "rt", "latest")
    df = load_runs("rt", job.tracking.uri, parent_run_id=source.parent_run_id)
    return select_configs(client, job, source, df, {"val_acc": "max", "flops": "min"}, **kw)


def test_select_configs_takes_the_baseline_and_the_front_once_each(study):
    job, _, ids = study
    configs = _select(job)
    # the baseline is on the front too (the cheapest): it is retrained once, as the baseline
    assert [(c.source_run_id, c.baseline, c.study_front) for c in configs] == [
        (ids["t0"], True, True), (ids["t1"], False, True), (ids["t2"], False, True)]
    assert configs[0].params == {"attention": "none", "train.lr": 0.1}
    assert configs[1].params == {**SE, "se.reduction": 4, "train.lr": 0.1}  # typed, as the trial had them
    assert configs[2].study_metrics == {"val_acc": 0.85, "flops": 1.1e6}
    only = _select(job, front=False, runs=[ids["t3"], ids["t4"]])
    assert [c.source_run_id for c in only] == [ids["t0"], ids["t3"], ids["t4"]]
    both = _select(job, runs=[ids["t3"], ids["t1"]])
    assert [c.source_run_id for c in both] == [ids["t0"], ids["t1"], ids["t2"], ids["t3"]]
    # a trial's config plus a seed trains that seed, whether or not the space searches it
    assert materialize(job, {**configs[1].params, "train.seed": 7}).train.seed == 7
    assert materialize(job, configs[1].params).train.seed == job.train.seed
    assert retrain_seeds(job, 3) == [job.train.seed + 1, job.train.seed + 2, job.train.seed + 3]


def test_select_configs_refuses_unknown_and_infeasible_runs(study):
    job, _, ids = study
    with pytest.raises(C.UsageError, match=r"--runs: nope is not a trial run of study rt-20260101-000000"):
        _select(job, runs=["nope"])
    with pytest.raises(C.UsageError, match="--runs: .* is infeasible"):
        _select(job, runs=[ids["t5"]])


def _cli(capsys, *args):
    code = main(["retrain", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys):
    path = retrain_job(tmp_path)
    code, _, err = _cli(capsys, path)
    assert code == 2 and "no MLflow store at" in err and "run the study first" in err
    assert not (tmp_path / "mlflow.db").exists()  # a query never creates a store
    for args, message in [(["--seeds", "0"], "--seeds 0: give at least 1 seed"),
                          (["--epochs", "0"], "--epochs 0:"),
                          (["--out", "table.txt"], "--out table.txt: the suffix must be .csv, .parquet or .pq")]:
        code, _, err = _cli(capsys, path, *args)
        assert code == 2 and message in err, err


def test_bad_study_and_runs_exit_2(study, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    code, _, err = _cli(capsys, path, "--study", "rt-nope")
    assert code == 2 and "--study rt-nope: no study 'rt-nope'" in err and "rt-20260101-000000" in err
    code, _, err = _cli(capsys, path, "--study", "all")
    assert code == 2 and "--study all: a retrain re-evaluates the front of one study" in err
    code, _, err = _cli(capsys, path, "--runs", "abc,def")
    assert code == 2 and "--runs: abc, def is not a trial run of study rt-20260101-000000" in err
    assert not (tmp_path / "ray_results").exists()  # nothing started


def test_study_and_retrain_assemble_their_tuner_alike(study, monkeypatch, capsys):
    """The study and the retrain get one Tuner assembly (search._driver): the same checkpoint rule (the final
    weights export reads), retries, trial folders and concurrency limit; neither starts Ray here."""
    from ray import tune

    from attnsearch.search import _retrain, _run_study, retrain, run_study

    job, _, _ = study
    built = []

    class Built(Exception):
        pass

    def tuner(trainable, *, tune_config, run_config):  # ray.tune.Tuner, recorded instead of run
        built.append((tune_config, run_config))
        raise Built

    monkeypatch.setattr(tune, "Tuner", tuner)
    for module in (_retrain, _run_study):
        monkeypatch.setattr(module, "prepare_driver", lambda job: None)
    with pytest.raises(Built):
        retrain(job, seeds=2)
    with pytest.raises(Built):
        run_study(job)
    (retrain_tune, retrain_run), (study_tune, study_run) = built
    assert retrain_run.checkpoint_config == study_run.checkpoint_config == tune.CheckpointConfig(num_to_keep=1)
    assert retrain_run.failure_config == study_run.failure_config
    assert retrain_tune.trial_dirname_creator is study_tune.trial_dirname_creator
    assert retrain_tune.reuse_actors == study_tune.reuse_actors
    assert retrain_tune.search_alg.max_concurrent == study_tune.search_alg.max_concurrent == 2
    assert type(retrain_tune.search_alg.searcher).__name__ == "FixedConfigs"
    assert type(study_tune.search_alg.searcher).__name__ == "StudySearcher"
    assert retrain_run.storage_path.endswith("/retrain") and study_run.storage_path == job.ray.storage_path


def test_retrain_warns_when_the_study_was_searched_under_another_validation_protocol(study, capsys):
    from attnsearch.search import protocol_mismatch

    job, parent, _ = study
    client = mlflow.MlflowClient(job.tracking.uri)
    source = select_study(client, "rt", "latest", job=job)
    assert protocol_mismatch(client, source, job) is None  # a study from before the param: not judged
    client.log_param(parent, "data.validation", "split")
    assert protocol_mismatch(client, source, job) is None  # the same protocol
    other = job.model_copy(update={"data": job.data.model_copy(update={"dataset": "cifar10", "root": "c",
                                                                        "validation": "official"})})
    note = protocol_mismatch(client, source, other)
    assert "searched with data.validation: split, this job has official" in note
    assert "--set data.validation=split" in note


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # starts Ray: a 4-trial study, then the retrain of its front and baseline (2 seeds, 2 epochs)
def test_retrain_two_seeds_reports_test_acc_on_the_held_out_split(tmp_path, local_ray, capsys):
    """A tiny CIFAR-10 the test writes (160 training, 40 validation images split from the training batches, the
    test batch's 40 held out: data.validation: split, the default): the search never sees the test batch, the
    retrain reports test_acc on it."""
    from attnsearch.search import existing_studies, run_study

    write_cifar(tmp_path / "cifar", per_batch=40)
    path = retrain_job(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "cifar")},
                       scheduler={"type": "none"})
    job = load_job(path)
    study = run_study(job)
    capsys.readouterr()
    client = mlflow.MlflowClient(job.tracking.uri)
    df = load_runs("rt", job.tracking.uri, parent_run_id=study.parent_run_id)
    # one non-front trial named with --runs as well (when the study has one), so the union is exercised
    source = select_study(client, "rt", "latest")
    expected = select_configs(client, job, source, df, {"val_acc": "max", "flops": "min"})
    extra = [r for r in df.loc[df["state"] == "completed", "run_id"] if r not in {c.source_run_id for c in expected}]
    runs = extra[:1]
    expected = select_configs(client, job, source, df, {"val_acc": "max", "flops": "min"}, runs=runs)
    assert expected[0].baseline and expected[0].params["attention"] == "none"

    out_csv = tmp_path / "retrain.csv"
    args = ["--seeds", 2, "--epochs", 2, "--out", out_csv] + (["--front", "--runs", ",".join(runs)] if runs else [])
    code, out, err = _cli(capsys, path, *args)
    assert code == 0, err
    assert f"Re-evaluated front of study {study.study_id}" in out
    table = pd.read_csv(out_csv)
    assert list(table["source_run"]) == [c.source_run_id for c in expected]
    assert table["test_acc_mean"].between(0, 1).all() and table["test_acc_std"].notna().all()
    assert "test_acc mean +- std" in out
    assert table["baseline"].tolist() == [True] + [False] * (len(expected) - 1)

    # the retrain's parent run, linked to the study; one child run per configuration and seed
    exp = client.get_experiment_by_name("rt")
    parents = client.search_runs([exp.experiment_id], f"tags.`{C.TAG_ROLE}` = '{C.ROLE_RETRAIN}'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags[C.TAG_RETRAIN_STUDY] == study.study_id
    assert parent.data.tags[C.TAG_RETRAIN_PARENT] == study.parent_run_id
    seeds = retrain_seeds(job, 2)
    children = client.search_runs([exp.experiment_id], f"tags.`{C.TAG_PARENT}` = '{parent.info.run_id}'")
    assert len(children) == 2 * len(expected)
    values, tests = {}, {}
    for child in children:
        assert child.data.tags[C.TAG_STATE] == "completed" and child.data.tags[C.TAG_BUDGET] == "2"
        source_run = child.data.params[C.PARAM_RETRAIN_SOURCE]
        values.setdefault(source_run, {})[int(child.data.params["train.seed"])] = child.data.metrics["val_acc"]
        tests.setdefault(source_run, []).append(child.data.metrics["test_acc"])
        assert 0 <= child.data.metrics["test_acc"] <= 1 and child.data.metrics["test_loss"] > 0
    assert all(sorted(v) == seeds for v in values.values()) and len(values) == len(expected)

    # means, standard deviations and intervals are those of the child runs' val_acc
    base = list(values[expected[0].source_run_id].values())
    for _, row in table.iterrows():
        accs = list(values[row["source_run"]].values())
        assert row["n"] == 2
        assert (row["val_acc_mean"], row["val_acc_std"]) == pytest.approx(mean_std(accs), abs=1e-12)
        if row["baseline"]:
            assert math.isnan(row["delta_val_acc"])
        else:
            assert (row["delta_val_acc"], row["delta_low"], row["delta_high"]) == pytest.approx(
                welch_interval(accs, base), abs=1e-12, nan_ok=True)
    art = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/retrain.csv")
    assert pd.read_csv(io.StringIO(art))["source_run"].tolist() == table["source_run"].tolist()
    assert parent.info.status == "FINISHED" or client.get_run(parent.info.run_id).info.status == "FINISHED"
    parent_metrics = client.get_run(parent.info.run_id).data.metrics
    assert parent_metrics[C.METRIC_RETRAIN_BASELINE_MEAN] == pytest.approx(float(np.mean(base)))
    assert parent_metrics[C.METRIC_RETRAIN_BASELINE_TEST_MEAN] == pytest.approx(
        float(np.mean(tests[expected[0].source_run_id])))
    for _, row in table.iterrows():  # the table's test_acc is the child runs'
        assert row["test_acc_mean"] == pytest.approx(float(np.mean(tests[row["source_run"]])), abs=1e-12)
    # the study recorded its protocol; its own trials were never tested (the test batch stays out of a search)
    assert client.get_run(study.parent_run_id).data.params["data.validation"] == "split"
    assert "test_acc" not in df.columns or df["test_acc"].isna().all()

    # the study is untouched and still the job's only study
    assert existing_studies(job) == [study.study_id]
    assert select_study(client, "rt", "latest").study == study.study_id
    assert len(load_runs("rt", job.tracking.uri, parent_run_id=study.parent_run_id)) == len(df)
