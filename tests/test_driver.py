"""The one driver of every Ray Tune run (``attnsearch.search._driver``): the searcher and scheduler a job asks
for, the Tuner's shared settings, and the study and the retrain assembling their Tuner through it alike."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from _helpers import SE_SPACE, write_job  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402

from attnsearch.config import load_job  # noqa: E402
from attnsearch.search import (  # noqa: E402
    FixedConfigs,
    MOASHAScheduler,
    StudySearcher,
    asha_metric,
    build_tuner,
    searcher_and_scheduler,
    study_params,
)
from attnsearch.search._schedulers import BaselineASHAScheduler  # noqa: E402
from attnsearch.space import baseline_point, is_point, load_space  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "attnsearch"
SPACE = SE_SPACE


def _job(tmp_path, **sections):
    defaults = dict(train={"epochs": 4}, search={"objectives": {"val_acc": "max", "flops": "min"}, "seed": 1},
                    ray={"storage_path": f"{tmp_path}/ray_results", "max_failures": 2})
    job = load_job(write_job(tmp_path, SPACE, **{**defaults, **sections}))
    return job, load_space(job)


@pytest.mark.parametrize("kind, scheduler_class", [("moasha", MOASHAScheduler), ("asha", BaselineASHAScheduler),
                                                     ("none", FIFOScheduler)])
def test_searcher_and_scheduler_enqueue_and_protect_the_baseline(tmp_path, kind, scheduler_class):
    job, space = _job(tmp_path, scheduler={"type": kind, "grace_period": 1, "reduction_factor": 2},
                      search={"objectives": {"val_acc": "max", "flops": "min"}, "seed": 1, "baseline": True})
    searcher, scheduler = searcher_and_scheduler(job, space)
    assert type(searcher) is StudySearcher  # not wrapped: build_tuner limits the concurrency
    assert type(scheduler) is scheduler_class
    baseline = baseline_point(job, space)
    assert baseline == {"attention": "none", "train.lr": 0.1}  # the job's own lr is in the space
    first = searcher.suggest("trial_1")
    assert is_point(first, baseline)  # the baseline starts first
    if kind != "none":
        assert scheduler.protected == [baseline]
        time_attr = scheduler._time_attr if kind == "asha" else scheduler.time_attr  # Ray's ASHA keeps it private
        assert time_attr == "epoch"
    assert searcher.metric == ["val_acc", "flops"] and searcher.mode == ["max", "min"]


def test_without_baseline_nothing_is_enqueued_or_protected(tmp_path):
    job, space = _job(tmp_path, scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2},
                      search={"objectives": {"val_acc": "max"}, "seed": 1, "baseline": False,
                              "sampler": "random"})
    searcher, scheduler = searcher_and_scheduler(job, space)
    assert scheduler.protected == []
    # seeded random sampling, nothing enqueued: some of the first suggestions are not the baseline
    assert any(not is_point(searcher.suggest(f"t{i}"), baseline_point(job, space)) for i in range(8))


def _noop(config):
    pass


def test_build_tuner_holds_the_settings_every_run_shares(tmp_path):
    job, _ = _job(tmp_path, search={"max_concurrent": 3, "objectives": {"val_acc": "max"}})
    tuner = build_tuner(job, _noop, search_alg=FixedConfigs([{"a": 1}]), scheduler=FIFOScheduler(), name="x",
                        storage=str(tmp_path / "ray"), callbacks=[], num_samples=1)
    tune_config, run_config = _configs(tuner)
    assert isinstance(tune_config.search_alg, ConcurrencyLimiter) and tune_config.search_alg.max_concurrent == 3
    assert run_config.checkpoint_config == tune.CheckpointConfig(num_to_keep=1)  # export's final-weights rule
    assert run_config.failure_config.max_failures == 2


def _configs(tuner):
    local = tuner._local_tuner  # what Tuner.__init__ keeps; read here only (as _restored_run_config does)
    return local._tune_config, local.get_run_config()


def test_the_tuner_is_assembled_only_in_the_driver():
    """A second ``tune.Tuner(...)``/``CheckpointConfig``/``ConcurrencyLimiter`` elsewhere would be a second
    driver whose settings can drift from this one."""
    names = {"Tuner", "CheckpointConfig", "ConcurrencyLimiter", "FailureConfig", "with_parameters"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in names:
                    found.append((path.relative_to(PACKAGE).as_posix(), name))
    assert found and {where for where, _ in found} == {"search/_driver.py"}, found


@pytest.mark.parametrize("epochs, given, expected", [(9, None, 3), (2, None, 2), (9, 1, 1), (9, 5, 5)])
def test_grace_period_defaults_to_three_epochs_or_the_budget(tmp_path, epochs, given, expected):
    job, _ = _job(tmp_path, train={"epochs": epochs}, scheduler={"type": "asha", "grace_period": given})
    assert job.grace_period == expected  # what ASHA and the Syne Tune peer start their ladder at
    params = study_params(job, load_space(job))
    assert params["scheduler.grace_period"] == str(expected)
    assert min(json.loads(params["scheduler.rungs"]), key=float, default=str(expected)) == str(expected)


@pytest.mark.parametrize("epochs, scheduler, expected", [
    (9, {}, {1: 1.5, 3: 3}),  # the default: a lenient rung at epoch 1 before the ladder from 3 by 3
    (30, {}, {1: 1.5, 3: 3, 9: 3, 27: 3}),
    (2, {}, {1: 1.5}),
    (1, {}, {}),
    (9, {"grace_period": 1}, {1: 3, 3: 3}),  # a ladder given: only the ladder
    (9, {"reduction_factor": 2}, {3: 2, 6: 2}),
    (9, {"rungs": {2: 4, 1: 1.2}}, {1: 1.2, 2: 4}),
])
def test_moasha_decides_at_the_jobs_rungs_with_their_factors(tmp_path, epochs, scheduler, expected):
    job, _ = _job(tmp_path, train={"epochs": epochs}, scheduler={"type": "moasha", **scheduler})
    assert job.rungs == expected
    _, sched = searcher_and_scheduler(job, load_space(job))
    assert sched.factors == expected and sorted(sched.rungs) == sorted(expected)


def test_a_rung_keeps_the_share_its_own_factor_says():
    """Rung 1 with factor 1.5 lets the second-best of three through; rung 3 with factor 3 does not."""
    sched = MOASHAScheduler({"val_acc": "max"}, max_t=9, rungs={1: 1.5, 3: 3})
    decide = [sched.decide(f"t{i}", {"epoch": 1, "val_acc": acc}) for i, acc in enumerate((0.9, 0.8, 0.7))]
    assert decide == ["CONTINUE", "CONTINUE", "STOP"]  # positions 0 < 1/1.5, 1 < 2/1.5, not 2 < 3/1.5
    later = [sched.decide(f"t{i}", {"epoch": 3, "val_acc": acc}) for i, acc in enumerate((0.9, 0.8, 0.7))]
    assert later == ["CONTINUE", "STOP", "STOP"]  # positions 0 < 1/3, not 1 < 2/3, not 2 < 3/3
    with pytest.raises(ValueError, match=r"\{9: 2\} is not a rung"):
        MOASHAScheduler({"val_acc": "max"}, max_t=9, rungs={9: 2})


@pytest.mark.parametrize("rung_metric, objectives, expected", [
    ("train_loss", {"val_acc": "max", "flops": "min"}, {"train_loss": "min", "flops": "min"}),
    ("train_loss", {"flops": "min", "val_acc": "max", "val_loss": "min"}, {"flops": "min", "train_loss": "min"}),
    ("objectives", {"val_acc": "max", "flops": "min"}, {"val_acc": "max", "flops": "min"}),
])
def test_rungs_rank_by_the_training_loss_in_place_of_per_epoch_objectives(tmp_path, rung_metric, objectives,
                                                                          expected):
    job, space = _job(tmp_path, scheduler={"type": "moasha", "rung_metric": rung_metric},
                      search={"objectives": objectives, "seed": 1})
    assert job.rung_objectives == expected
    searcher, scheduler = searcher_and_scheduler(job, space)
    assert scheduler.objectives == expected
    assert searcher.metric == list(objectives)  # the sampler still learns the study's own objectives


@pytest.mark.parametrize("rung_metric, kept", [("train_loss", "CONTINUE"), ("objectives", "STOP")])
def test_moasha_keeps_the_trials_with_the_lower_training_loss(tmp_path, rung_metric, kept):
    job, space = _job(tmp_path, train={"epochs": 9}, scheduler={"type": "moasha", "rung_metric": rung_metric},
                      search={"objectives": {"val_acc": "max", "flops": "min"}, "seed": 1, "baseline": False})
    _, scheduler = searcher_and_scheduler(job, space)
    same = {"epoch": 3, "flops": 1e6}
    # a and b arrive last at the rung with the lowest training losses and the lowest accuracies
    records = [("c", 0.70, 1.4), ("d", 0.72, 1.5), ("e", 0.71, 1.45), ("f", 0.69, 1.3), ("a", 0.60, 0.9),
               ("b", 0.61, 0.95)]
    decisions = {tid: scheduler.decide(tid, {**same, "val_acc": acc, "train_loss": loss})
                 for tid, acc, loss in records}
    assert decisions["a"] == decisions["b"] == kept


@pytest.mark.parametrize("rung_metric, metric", [("train_loss", ("train_loss", "min")),
                                                 ("objectives", ("val_acc", "max"))])
def test_asha_ranks_by_the_rung_metric(tmp_path, rung_metric, metric):
    job, space = _job(tmp_path, scheduler={"type": "asha", "rung_metric": rung_metric},
                      search={"objectives": {"val_acc": "max"}, "seed": 1})
    assert asha_metric(job) == metric
    _, scheduler = searcher_and_scheduler(job, space)
    assert (scheduler.metric, scheduler._mode) == metric  # Ray's ASHA keeps its mode private
