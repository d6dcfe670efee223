"""A constraint no configuration of the space can meet is refused before anything starts, naming the cheapest
configuration and its count; a study whose trials were all infeasible exits 1 (attnsearch.space._cost)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from _helpers import write_job

from attnsearch import cli
from attnsearch.config import load_job
from attnsearch.contract import ConfigError
from attnsearch.flops import count
from attnsearch.models import build_model
from attnsearch.search import StudyProgress
from attnsearch.space import cheapest, check_space, load_space

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs" / "quickstart.yaml"


def counted(attention, width, size, num_classes=10) -> dict[str, int]:
    """A configuration's counts, built and counted here directly (not through attnsearch.space)."""
    model = build_model("resnet20", num_classes=num_classes, attention=attention, input_size=size, width_mult=width)
    return count(model, input_size=(1, 3, size, size))


@pytest.mark.parametrize("metric, limit", [("flops", "1000"), ("params", "1000"), ("macs", "10")])
def test_an_unmeetable_constraint_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, metric, limit):
    monkeypatch.chdir(tmp_path)  # the quickstart's mlflow.db and ray_results are relative to the working directory
    assert cli.main(["run", str(QUICKSTART), "--set", f"constraints.max_{metric}={limit}"]) == 2
    err = capsys.readouterr().err
    # the quickstart's cheapest configuration: no attention, its narrowest width (0.5) and smallest side (12)
    cost = counted(None, 0.5, 12)[metric]
    assert f"constraints.max_{metric}={int(limit):,}" in err
    assert "attention none, backbone.width_mult=0.5, data.image_size=12" in err
    assert f"{metric}={cost:,}" in err, err
    assert list(tmp_path.iterdir()) == [], "a refused job must create nothing (no mlflow.db, no ray_results)"


SPACE_WITHOUT_NONE = """\
backbone: {width_mult: [0.5, 1.0]}
data: {image_size: [8, 12]}
attention:
  type: [se, eca]
  stages: [[3], [2, 3]]
  blocks: [all, last]
  knobs:
    se: {reduction: [4, 16]}
    eca: {kernel_size: [3, 5]}
"""


def brute_force_minimum(metric: str) -> int:
    """Every configuration of SPACE_WITHOUT_NONE counted: the truth the search must find."""
    configs = [{"type": "se", "reduction": r} for r in (4, 16)] + [{"type": "eca", "kernel_size": k} for k in (3, 5)]
    return min(
        counted({**attention, "stages": stages, "blocks": blocks, "position": "default"}, width, size)[metric]
        for attention, stages, blocks, width, size in itertools.product(
            configs, ([3], [2, 3]), ("all", "last"), (0.5, 1.0), (8, 12))
    )


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_a_space_without_none_is_searched_for_its_cheapest_configuration(tmp_path, metric):
    truth = brute_force_minimum(metric)
    path = write_job(tmp_path, SPACE_WITHOUT_NONE, search={"baseline": False})  # the baseline would add none
    job = load_job(path, overrides=[f"constraints.max_{metric}={truth - 1}"])
    found = cheapest(job, load_space(job))
    assert found is not None and found[metric].counts[metric] == truth
    with pytest.raises(ConfigError) as err:
        check_space(job, load_space(job))
    assert f"constraints.max_{metric}={truth - 1:,}" in str(err.value) and f"{metric}={truth:,}" in str(err.value)
    # the cheapest configuration itself meets a limit equal to its cost: the job is accepted
    job = load_job(path, overrides=[f"constraints.max_{metric}={truth}"])
    check_space(job, load_space(job))


def test_a_constraint_only_some_configurations_break_is_accepted():
    # the full-width 16 px ResNet-20 breaks it, the half-width 12 px one does not: the trials decide
    limit = (counted(None, 0.5, 12)["flops"] + counted(None, 1.0, 16)["flops"]) // 2
    job = load_job(QUICKSTART, overrides=[f"constraints.max_flops={limit}"])
    check_space(job, load_space(job))
    assert cheapest(job, load_space(job)) is None


def test_constraints_that_each_fit_but_not_together_are_refused(tmp_path):
    # SE at stage 1 (16 channels, 16x16 px) costs fewer params and more FLOPs than at stage 3 (64 channels, 4x4)
    space = "attention: {type: [se], stages: [[1], [3]], knobs: {se: {reduction: [4]}}}\n"
    path = write_job(tmp_path, space, data={"image_size": 16}, search={"baseline": False})
    one, three = (counted({"type": "se", "stages": s, "blocks": "all", "position": "default", "reduction": 4}, 1.0, 16)
                  for s in ([1], [3]))
    assert one["params"] < three["params"] and three["flops"] < one["flops"]  # the premise
    limits = [f"constraints.max_flops={three['flops']}", f"constraints.max_params={one['params']}"]
    job = load_job(path, overrides=limits)
    with pytest.raises(ConfigError, match="meets them together") as err:
        check_space(job, load_space(job))
    assert f"flops={three['flops']:,}" in str(err.value) and f"params={one['params']:,}" in str(err.value)
    job = load_job(path, overrides=[f"constraints.max_flops={one['flops']}", f"constraints.max_params={one['params']}"])
    check_space(job, load_space(job))  # stage 1 meets both


def test_every_trial_infeasible_is_said_plainly_and_exits_1(tmp_path, monkeypatch, capsys):
    from attnsearch import search

    progress = StudyProgress(num_samples=3, max_t=2, objectives={"val_acc": "max", "flops": "min"})
    for i in range(3):
        progress.record(f"t{i}", {"attnsearch_state": "infeasible", "epoch": 0,
                                  "attnsearch_reason": "flops=5 exceeds constraints.max_flops=4"}, errored=False)

    class Outcome:
        experiment_path, parent_run_id = str(tmp_path / "study"), "p"

    Outcome.progress = progress
    monkeypatch.setattr(search, "run_study", lambda job, **kw: Outcome)
    path = write_job(tmp_path, "attention: {type: [none]}\n")
    assert cli.main(["run", str(path), "--no-pareto"]) == 1
    err = capsys.readouterr().err
    assert "every trial was infeasible (3 of 3)" in err and "exceeds constraints.max_flops=4" in err
    # one that trained makes it a study with an answer
    progress.record("t3", {"epoch": 2, "val_acc": 0.5}, errored=False)
    assert progress.nothing_trained() is None
