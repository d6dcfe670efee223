"""Syne Tune's MOASHA stopping rule as a Ray Tune scheduler: the peer that ``search_quality`` compares ours with.

Written against syne-tune 0.16.0. Syne Tune is a benchmark-only dependency, never a runtime one; in the
``.[search]`` environment (which already has numpy and pandas) install it with::

    pip install --no-deps syne-tune==0.16.0 dill

``dill`` is needed by ``syne_tune.backend``; without it ``syne_tune``'s own ``__init__`` swallows the ImportError
and the MOASHA import below only works by accident (modules cached from that failed import).

What is delegated: every stopping decision. Each Ray result becomes a Syne Tune result (the objectives oriented
to Syne Tune's single direction: ``do_minimize=True``, maximised objectives negated) and is passed to
``syne_tune.optimizer.schedulers.multiobjective.MOASHA.on_trial_result`` for a Syne Tune ``Trial`` made from
the Ray trial id (registered with ``MOASHA.on_trial_add`` on first sight). Its ``CONTINUE`` is Ray's CONTINUE,
its ``STOP`` (and ``PAUSE``, which MOASHA does not return) Ray's STOP. One bracket; rungs at
``grace_period * reduction_factor**k`` as ``attnsearch.search.MOASHAScheduler``'s (``milestones``). MOASHA's
``suggest`` (its own config sampling) is never called: our searcher proposes configs, so its ``config_space``
is empty. What is ours, not Syne Tune's: ``protected`` trials are never stopped; a result missing an objective
or ``time_attr`` is not passed on (MOASHA would fail an assert) and the trial continues; Ray's restore replay
is not reproduced (the peer starts with empty rungs).

Known bug of the peer (0.16.0), kept as is since it is what is being compared: ``Bracket.on_result``
(``syne_tune/optimizer/schedulers/asha.py``) takes ``NonDominatedPriority``'s output, which is
``nondominated_sort``'s ordering of row indices, as if it were a per-row priority and ranks its last entry
(the index of the worst-sorted row) instead of the new trial: a new trial that dominates every record of a rung
is stopped whenever the worst record sits past the first ``1 / reduction_factor`` of the rung.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from syne_tune.backend.trial_status import Trial as SyneTrial
from syne_tune.optimizer.scheduler import SchedulerDecision
from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

from attnsearch.search import check_rung_arguments
from attnsearch.space import is_point

__all__ = ["SYNE_TUNE_VERSION", "SyneTuneMOASHA"]

SYNE_TUNE_VERSION = "0.16.0"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class SyneTuneMOASHA(FIFOScheduler):
    """Ray Tune scheduler whose stopping decisions are Syne Tune ``MOASHA``'s (see the module docstring).

    Args: as ``attnsearch.search.MOASHAScheduler``'s: ``objectives`` (``{metric: "max" | "min"}``), ``max_t``,
    ``grace_period``, ``reduction_factor``, ``time_attr``, ``protected`` (trial configs, or parts of them, that
    are never stopped; their results still fill the peer's rungs).
    """

    def __init__(
        self,
        objectives: Mapping[str, str],
        *,
        max_t: float,
        grace_period: float = 1,
        reduction_factor: float = 3,
        time_attr: str = "epoch",
        protected: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        check_rung_arguments(objectives, max_t, grace_period, reduction_factor)
        self.objectives = dict(objectives)
        self.max_t, self.time_attr = max_t, time_attr
        self.protected = [dict(p) for p in protected]
        # 0.16.0 has a single direction for all metrics (do_minimize); orient each objective to minimisation.
        self._sign = {m: -1.0 if mode == "max" else 1.0 for m, mode in self.objectives.items()}
        self.peer = MOASHA(
            config_space={},  # never sampled from: suggest() is not called
            metrics=list(self.objectives),
            do_minimize=True,
            time_attr=time_attr,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
            random_seed=0,  # else its __init__ draws a seed from numpy's global RNG
        )
        self._trials: dict[str, SyneTrial] = {}
        self.stopped: dict[str, float] = {}  # trial id -> the rung it was stopped at (before max_t)

    @property
    def milestones(self) -> list[float]:
        """The peer's deciding rungs, ascending (its rung at ``max_t``, if any, never decides)."""
        return sorted(m for m, _ in self.peer.brackets[0].rungs if m < self.max_t)

    def _peer_trial(self, trial: Any) -> SyneTrial:
        trial_id = str(trial.trial_id)
        if trial_id not in self._trials:
            self._trials[trial_id] = SyneTrial(trial_id=trial_id, config=dict(trial.config or {}), creation_time=None)
            state = np.random.get_state()  # MOASHA.on_trial_add picks a bracket with numpy's global RNG
            try:
                self.peer.on_trial_add(self._trials[trial_id])
            finally:
                np.random.set_state(state)
        return self._trials[trial_id]

    def _peer_result(self, result: Mapping[str, Any]) -> dict[str, float] | None:
        """The result as the peer reads it, or None when it lacks ``time_attr`` or an objective."""
        t = result.get(self.time_attr)
        values = {m: result.get(m) for m in self.objectives}
        if not _is_number(t) or not all(_is_number(v) for v in values.values()):
            return None
        return {self.time_attr: float(t), **{m: self._sign[m] * float(v) for m, v in values.items()}}

    # -- Ray Tune hooks -----------------------------------------------------------------------------------
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self._peer_trial(trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        super().on_trial_result(tune_controller, trial, result)
        peer_result = self._peer_result(result)
        if peer_result is None:
            return TrialScheduler.CONTINUE
        decision = self.peer.on_trial_result(self._peer_trial(trial), peer_result)
        if decision == SchedulerDecision.CONTINUE:
            return TrialScheduler.CONTINUE
        # STOP, or PAUSE (not returned by MOASHA; we have nothing to resume a paused trial with)
        if any(is_point(trial.config or {}, point) for point in self.protected):
            return TrialScheduler.CONTINUE
        t = peer_result[self.time_attr]
        if t < self.max_t:  # at max_t the peer says STOP to a trial that has finished anyway
            self.stopped[str(trial.trial_id)] = max((m for m in self.milestones if m <= t), default=t)
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        trial_id = str(trial.trial_id)
        peer_result = self._peer_result(result or {})
        if trial_id in self.peer.trial_info and peer_result is not None:
            self.peer.on_trial_complete(self._trials[trial_id], peer_result)  # records, forgets the trial

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, trial)
        if str(trial.trial_id) in self.peer.trial_info:
            self.peer.on_trial_remove(self._trials[str(trial.trial_id)])

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_error(tune_controller, trial)
        if str(trial.trial_id) in self.peer.trial_info:
            self.peer.on_trial_remove(self._trials[str(trial.trial_id)])

    def debug_string(self) -> str:
        sizes = ", ".join(f"{m:g}: {len(r)}" for m, r in sorted(self.peer.brackets[0].rungs) if m < self.max_t)
        return (f"Syne Tune {SYNE_TUNE_VERSION} MOASHA on {list(self.objectives)}: rungs (epoch: records) "
                f"{sizes or 'none'}; {len(self.stopped)} stopped")
