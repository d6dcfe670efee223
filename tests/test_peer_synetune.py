"""The Syne Tune MOASHA peer (benchmarks/_peer_synetune.py) on crafted results: no Ray cluster needed.

Skipped without syne-tune (a benchmark-only dependency: ``pip install --no-deps syne-tune==0.16.0 dill``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("syne_tune")

from attnsearch.search import MOASHAScheduler, rung_milestones

ROOT = Path(__file__).resolve().parents[1]
CONTINUE, STOP = "CONTINUE", "STOP"
OBJ = {"val_acc": "max", "flops": "min"}


def _load_peer():
    spec = importlib.util.spec_from_file_location("bench_peer_synetune", ROOT / "benchmarks" / "_peer_synetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer = _load_peer()


def trial(trial_id, **config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def result(epoch, acc, flops):
    return {"epoch": epoch, "val_acc": acc, "flops": flops}


def feed(scheduler, trial_id, epoch, acc, flops, **config):
    """One Ray-style result for ``trial_id`` (added on first sight, as Ray does before its first result)."""
    t = trial(trial_id, **config)
    seen = scheduler.__dict__.setdefault("_added_by_test", set())
    if trial_id not in seen:
        seen.add(trial_id)
        scheduler.on_trial_add(None, t)
    return scheduler.on_trial_result(None, t, result(epoch, acc, flops))


def test_version_and_rungs_match_ours():
    import syne_tune

    assert syne_tune.__version__ == peer.SYNE_TUNE_VERSION
    for max_t, grace, rf in [(9, 1, 3), (10, 1, 3), (90, 1, 3), (10, 2, 2), (243, 1, 3), (16, 1, 2)]:
        s = peer.SyneTuneMOASHA(OBJ, max_t=max_t, grace_period=grace, reduction_factor=rf)
        assert s.milestones == rung_milestones(max_t, grace, rf), (max_t, grace, rf)


def test_bad_modes_rejected():
    with pytest.raises(ValueError):
        peer.SyneTuneMOASHA({"val_acc": "maximize"}, max_t=9)
    with pytest.raises(ValueError):
        peer.SyneTuneMOASHA({}, max_t=9)


def test_dominated_trials_stopped_first_kept():
    s = peer.SyneTuneMOASHA(OBJ, max_t=9)
    assert feed(s, "a", 1, 0.90, 1e9) == CONTINUE  # first at the rung: nothing to compare with
    assert feed(s, "b", 1, 0.50, 2e9) == STOP  # dominated by "a"
    assert feed(s, "c", 1, 0.40, 3e9) == STOP  # dominated by both
    assert s.stopped == {"b": 1, "c": 1}
    # "a" goes on: epoch 2 is no rung, epoch 3 is the next one (first there: continues)
    assert feed(s, "a", 2, 0.91, 1e9) == CONTINUE
    assert feed(s, "a", 3, 0.92, 1e9) == CONTINUE
    # at max_t the peer says STOP to a finished trial: not counted as an early stop
    assert feed(s, "a", 9, 0.93, 1e9) == STOP
    assert "a" not in s.stopped


def test_maximised_objective_is_negated():
    # minimise both: a higher val_loss is worse. If the orientation were wrong, "b" would continue.
    s = peer.SyneTuneMOASHA({"val_loss": "min", "params": "max"}, max_t=9)
    t_a, t_b = trial("a"), trial("b")
    s.on_trial_add(None, t_a)
    s.on_trial_add(None, t_b)
    assert s.on_trial_result(None, t_a, {"epoch": 1, "val_loss": 0.5, "params": 20}) == CONTINUE
    assert s.on_trial_result(None, t_b, {"epoch": 1, "val_loss": 1.0, "params": 10}) == STOP


def test_protected_trial_never_stopped():
    baseline = {"attn": "none"}
    s = peer.SyneTuneMOASHA(OBJ, max_t=9, protected=[baseline])
    assert feed(s, "a", 1, 0.90, 1e9) == CONTINUE
    assert feed(s, "base", 1, 0.10, 5e9, attn="none", lr=0.1) == CONTINUE  # dominated, but protected
    assert feed(s, "x", 1, 0.10, 5e9, attn="cbam") == STOP  # same result, not protected
    assert "base" not in s.stopped
    assert "base" in s.peer.brackets[0].rungs[-1][1]  # still recorded at rung 1


def test_missing_objective_continues_without_asking_the_peer():
    s = peer.SyneTuneMOASHA(OBJ, max_t=9)
    t = trial("a")
    s.on_trial_add(None, t)
    assert s.on_trial_result(None, t, {"epoch": 1, "val_acc": 0.9}) == CONTINUE  # MOASHA would assert
    assert s.on_trial_result(None, t, {"val_acc": 0.9, "flops": 1e9}) == CONTINUE
    assert all(not recorded for _, recorded in s.peer.brackets[0].rungs)


def test_global_numpy_rng_untouched():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    s = peer.SyneTuneMOASHA(OBJ, max_t=9)
    for i in range(5):
        feed(s, f"t{i}", 1, 0.5 + i / 10, 1e9)
    assert np.random.random() == expected


def test_complete_and_remove_forwarded():
    s = peer.SyneTuneMOASHA(OBJ, max_t=9)
    feed(s, "a", 1, 0.9, 1e9)
    s.on_trial_complete(None, trial("a"), result(1, 0.9, 1e9))
    assert "a" not in s.peer.trial_info
    s.on_trial_complete(None, trial("a"), result(1, 0.9, 1e9))  # a second notification is harmless
    s.on_trial_add(None, trial("b"))
    s.on_trial_error(None, trial("b"))
    assert "b" not in s.peer.trial_info


RUNG1 = [("r0", 0.90, 2e9), ("r1", 0.95, 3e9), ("r2", 0.30, 4e9)]


def test_new_trial_dominating_the_rung():
    """The claim: Syne Tune 0.16.0 stops a new trial that dominates every record of its rung. Ours continues it.

    Bracket.on_result ranks ``priorities[-1]`` where ``priorities`` is ``nondominated_sort``'s *ordering* of row
    indices ([3, 1, 0, 2] here: the new trial first, the 0.30 record last), so the value ranked is 2, the index
    of the worst record, at 2/4 = 0.5 > 1/3. This assertion documents the peer's bug, not a wanted behaviour.
    """
    st = peer.SyneTuneMOASHA(OBJ, max_t=9)
    ours = MOASHAScheduler(OBJ, max_t=9)
    for trial_id, acc, flops in RUNG1:
        feed(st, trial_id, 1, acc, flops)
        ours.on_trial_result(None, trial(trial_id), result(1, acc, flops))
    assert feed(st, "new", 1, 0.99, 0.5e9) == STOP  # the peer's bug
    assert st.stopped == {"r2": 1, "new": 1}
    assert ours.on_trial_result(None, trial("new"), result(1, 0.99, 0.5e9)) == CONTINUE


def test_peer_decision_ignores_the_new_trials_own_rank():
    """The other face of the same bug: a poor new trial continues when the worst record is an early row.

    Records: r2-like worst first, then two good ones; the new trial is second worst (dominated by both good
    records) but the ordering ends in row 0, ranked 0/4, so the peer continues it. Ours stops it.
    """
    rung = [("w", 0.30, 4e9), ("g1", 0.90, 2e9), ("g2", 0.95, 3e9)]
    st = peer.SyneTuneMOASHA(OBJ, max_t=9)
    ours = MOASHAScheduler(OBJ, max_t=9)
    for trial_id, acc, flops in rung:
        feed(st, trial_id, 1, acc, flops)
        ours.on_trial_result(None, trial(trial_id), result(1, acc, flops))
    assert feed(st, "poor", 1, 0.31, 3.9e9) == CONTINUE  # the peer's bug
    assert ours.on_trial_result(None, trial("poor"), result(1, 0.31, 3.9e9)) == STOP
