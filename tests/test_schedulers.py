"""MOASHA's rung rule on crafted results, and its rungs rebuilt after a restore (no Ray cluster needed)."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray")

from attnsearch.search import (
    MOASHAScheduler,
    rung_milestones,
    rung_order,
    rung_position,
)

CONTINUE, STOP = "CONTINUE", "STOP"
OBJ = {"val_acc": "max", "flops": "min"}


def result(epoch, acc, flops):
    return {"epoch": epoch, "val_acc": acc, "flops": flops}


def test_milestones():
    assert rung_milestones(6, 1, 3) == [1, 3]
    assert rung_milestones(90, 1, 3) == [1, 3, 9, 27, 81]
    assert rung_milestones(10, 2, 2) == [2, 4, 8]
    assert rung_milestones(1, 1, 3) == []  # the budget itself is no rung


def test_order_fronts_first_then_spread():
    # minimisation columns: -acc, flops. Row 3 dominates every other row; rows 0-2 form the second front.
    pts = np.array([[-0.90, 2e9], [-0.95, 3e9], [-0.50, 1e9], [-0.99, 0.5e9]])
    order = rung_order(pts)
    assert order[0] == 3
    # inside the front: the most accurate first, then the farthest (the cheap extreme), then the middle
    assert order[1:] == [1, 2, 0]


def test_normalisation_keeps_flops_from_swamping_accuracy():
    pts = np.array([[-0.90, 2.0], [-0.95, 3.0], [-0.50, 1.0], [-0.92, 2.6]])
    scaled = pts * np.array([1.0, 1e9])
    assert rung_order(pts) == rung_order(scaled)
    # unnormalised, the FLOPs gap (1e9) would decide every distance; normalised, accuracy counts as much
    assert rung_order(scaled)[:2] == [1, 2]


def test_mixed_directions():
    s = MOASHAScheduler({"val_loss": "min", "params": "max"}, max_t=9)
    assert s.decide("a", {"epoch": 1, "val_loss": 1.0, "params": 10}) == CONTINUE
    # lower loss and more params: dominates "a" in the oriented space
    assert s.decide("b", {"epoch": 1, "val_loss": 0.5, "params": 20}) == CONTINUE
    # higher loss and fewer params than both: dominated, stopped
    assert s.decide("c", {"epoch": 1, "val_loss": 2.0, "params": 5}) == STOP


def test_a_trial_dominating_the_rung_is_never_stopped():
    # The scenario that trips Syne Tune's MOASHA: it reads nondominated_sort's output (an ordering of row
    # indices, best first) as per-row priorities, so the new trial (the last row) gets the rank of whatever
    # row index comes *last* in the ordering. Here the worst record is row 2: the ordering ends in 2, and the
    # new trial, which dominates every record, is ranked 2/4 > 1/3 and stopped.
    records = [result(1, 0.90, 2e9), result(1, 0.95, 3e9), result(1, 0.30, 4e9)]
    new = result(1, 0.99, 0.5e9)
    pts = np.array([[-r["val_acc"], r["flops"]] for r in [*records, new]])
    ordering = rung_order(pts)
    as_priority = np.array(ordering)  # the misreading: priority of row i = ordering[i]
    ranks = np.searchsorted(np.sort(as_priority), as_priority) / len(as_priority)
    assert ranks[-1] > 1 / 3, "the scenario must stop the new trial under the misreading"
    s = MOASHAScheduler(OBJ, max_t=6)
    for i, r in enumerate(records):
        s.decide(f"t{i}", r)
    assert rung_position(pts, 3) == 0
    assert s.decide("new", new) == CONTINUE


@pytest.mark.parametrize("n_before", range(0, 12))
def test_dominating_trial_continues_whatever_the_rung_holds(n_before):
    rng = np.random.default_rng(n_before)
    s = MOASHAScheduler(OBJ, max_t=6, reduction_factor=4)
    for i in range(n_before):
        s.decide(f"t{i}", result(1, float(rng.uniform(0.1, 0.9)), float(rng.uniform(1e9, 5e9))))
    assert s.decide("best", result(1, 0.95, 0.9e9)) == CONTINUE


def test_keeps_the_top_fraction():
    s = MOASHAScheduler({"val_acc": "max"}, max_t=9, reduction_factor=3)
    decisions = [s.decide(f"t{i}", {"epoch": 1, "val_acc": acc}) for i, acc in enumerate([0.5, 0.4, 0.6, 0.3, 0.9])]
    # position counting itself < n / 3: first always; 0.4 is 2nd of 2; 0.6 1st of 3; 0.3 4th of 4; 0.9 1st of 5
    assert decisions == [CONTINUE, STOP, CONTINUE, STOP, CONTINUE]


def test_ties_are_not_ahead_of_each_other():
    pts = np.array([[-0.9, 1.0], [-0.9, 1.0], [-0.9, 1.0]])
    assert rung_position(pts, 2) == 0
    s = MOASHAScheduler(OBJ, max_t=6)
    assert [s.decide(f"t{i}", result(1, 0.9, 1e9)) for i in range(4)] == [CONTINUE] * 4


def test_nan_objective_is_the_worst():
    pts = np.array([[math.nan, 1.0], [-0.2, 5.0], [-0.1, 6.0]])
    assert rung_order(pts)[-1] == 0
    s = MOASHAScheduler(OBJ, max_t=6, reduction_factor=2)
    s.decide("a", result(1, 0.2, 5e9))
    assert s.decide("b", result(1, math.nan, 1e9)) == STOP
    # a result without any objective value is not a rung record at all
    assert s.decide("c", {"epoch": 1}) == CONTINUE and "c" not in s.rungs[1]


def test_single_record_continues_and_static_objectives_count():
    s = MOASHAScheduler(OBJ, max_t=6)
    assert s.decide("only", result(1, 0.1, 9e9)) == CONTINUE
    # same accuracy, a third of the FLOPs: dominates; the expensive copy then ranks behind it
    assert s.decide("cheap", result(1, 0.1, 3e9)) == CONTINUE
    assert s.decide("costly", result(1, 0.1, 12e9)) == STOP


def test_decides_once_per_rung_at_the_highest_rung_reached():
    s = MOASHAScheduler({"val_acc": "max"}, max_t=27, reduction_factor=3)
    assert s.decide("a", {"epoch": 1, "val_acc": 0.5}) == CONTINUE
    assert s.decide("a", {"epoch": 2, "val_acc": 0.6}) == CONTINUE  # between rungs: no decision
    assert "a" in s.rungs[1] and "a" not in s.rungs[3]
    s.decide("b", {"epoch": 9, "val_acc": 0.1})  # buffered results jump rungs: recorded at 9 only
    assert "b" in s.rungs[9] and "b" not in s.rungs[1] and "b" not in s.rungs[3]


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="reduction_factor"):
        MOASHAScheduler(OBJ, max_t=6, reduction_factor=1)
    with pytest.raises(ValueError, match="'max' or 'min'"):
        MOASHAScheduler({"val_acc": "maximise"}, max_t=6)
    with pytest.raises(ValueError, match="grace_period"):
        MOASHAScheduler(OBJ, max_t=6, grace_period=7)


def _trial(trial_id, history):
    return SimpleNamespace(trial_id=trial_id, last_result=history[-1] if history else {}, history=history)


def test_rungs_rebuilt_after_restore_decide_like_the_original():
    histories = {
        "a": [result(1, 0.70, 2e9), result(2, 0.72, 2e9)],
        "b": [result(1, 0.60, 1e9)],            # stopped at rung 1
        "c": [result(1, 0.80, 3e9), result(2, 0.81, 3e9), result(3, 0.85, 3e9)],
    }
    original = MOASHAScheduler(OBJ, max_t=9)
    for tid, hist in histories.items():
        for r in hist:
            original.decide(tid, r)
    # the driver dies mid-rung; Tuner.restore hands a fresh scheduler the trials with their result files
    restored = MOASHAScheduler(OBJ, max_t=9, read_results=lambda trial: trial.history)
    for tid, hist in histories.items():
        restored.on_trial_add(None, _trial(tid, hist))
    restored.on_trial_add(None, _trial("new-pending", []))  # not started yet: nothing to replay
    assert {m: set(r) for m, r in restored.rungs.items()} == {m: set(r) for m, r in original.rungs.items()}
    for m in original.rungs:
        for tid in original.rungs[m]:
            np.testing.assert_array_equal(restored.rungs[m][tid], original.rungs[m][tid])
    for new in (result(1, 0.65, 1.5e9), result(1, 0.2, 4e9), result(3, 0.9, 1e9)):
        a, b = MOASHAScheduler(OBJ, max_t=9), restored
        a.rungs = {m: dict(r) for m, r in original.rungs.items()}
        assert b.decide(f"d{new['epoch']}{new['val_acc']}", dict(new)) == a.decide("x", dict(new))
    # a restored trial already recorded at rung 3 is not decided again there
    assert restored.decide("c", result(3, 0.1, 9e9)) == CONTINUE


def test_restored_trial_history_read_from_its_result_file(tmp_path):
    # the default reader: the trial's result.json on its storage filesystem (what Ray wrote)
    import json

    import pyarrow.fs

    trial_dir = tmp_path / "trial_a"
    trial_dir.mkdir()
    lines = [json.dumps(r) for r in (result(1, 0.7, 2e9), result(2, 0.75, 2e9), result(3, 0.8, 2e9))]
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n{\"epoch\": 4, \"val_a")  # torn last line
    storage = SimpleNamespace(trial_fs_path=str(trial_dir), storage_filesystem=pyarrow.fs.LocalFileSystem())
    trial = SimpleNamespace(trial_id="a", last_result=result(3, 0.8, 2e9), storage=storage)
    s = MOASHAScheduler(OBJ, max_t=9)
    s.on_trial_add(None, trial)
    assert set(s.rungs[1]) == {"a"} and set(s.rungs[3]) == {"a"}


def test_epoch_budget_counts_the_epochs_every_trial_trained():
    from attnsearch.search import EpochBudget

    budget = EpochBudget(7)
    for trial, epochs in (("a", 3), ("b", 2)):
        for e in range(1, epochs + 1):
            assert budget(trial, {"epoch": e}) is False  # never stops one trial on its own
    assert budget.used == 5 and not budget.stop_all()
    budget("a", {"epoch": 3})  # a repeated result (a restored trial) counts once
    budget("c", {"epoch": 0, "attnsearch_state": "infeasible"})  # trained nothing
    assert budget.used == 5
    budget("c", {"epoch": 1})
    budget("b", {"epoch": 3})
    assert budget.used == 7 and budget.stop_all()
    with pytest.raises(ValueError, match="positive number of epochs"):
        EpochBudget(0)


def test_progress_counts_what_ray_runs():
    # reused actors start trials without the callbacks' start/complete pairing: count Ray's trial states
    from attnsearch.search import ProgressPrinter, StudyProgress

    progress = StudyProgress(num_samples=4, max_t=3, objectives=OBJ)
    printer = ProgressPrinter(progress, stream=io.StringIO())
    trials = [SimpleNamespace(trial_id=t, status=s, last_result=None)
              for t, s in (("a", "RUNNING"), ("b", "RUNNING"), ("c", "PENDING"), ("d", "TERMINATED"))]
    printer.on_step_end(0, trials)
    assert "2 running" in progress.line()
    done = trials[0]
    printer.on_trial_complete(0, trials, done)  # Ray calls this while the trial is still marked RUNNING
    assert "1 running" in progress.line()
    import pickle

    assert pickle.loads(pickle.dumps(printer)).stream is None  # the open stream stays out of tuner.pkl
    assert progress.unfinished is None and not progress.interrupted  # until the experiment ends
    done.status = "TERMINATED"  # as Ray marks it after the callback
    trials[1].status = "TERMINATED"  # Ctrl-C: Ray's clean-up marks b TERMINATED without a callback; c pending
    printer.on_experiment_end(trials)
    assert progress.unfinished == 2 and progress.interrupted  # b and c
    printer.on_step_end(1, trials)  # a normal end: the last step saw every trial ended (c errored)
    trials[2].status = "ERROR"
    printer.on_step_end(2, trials)
    printer.on_experiment_end(trials)
    assert progress.unfinished == 0 and not progress.interrupted
