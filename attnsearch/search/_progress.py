"""What the terminal shows while a study runs: a tally of trial states and a Tune callback that prints it."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pandas as pd
from ray.tune import Callback

from ..contract import COMPLETED, FAILED, INFEASIBLE, REASON_KEY, STATES, TIME_ATTR, is_number, result_state
from ..pareto import pareto_front

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


@dataclass
class StudyProgress:
    """What the terminal shows while a study runs."""

    num_samples: int
    max_t: int
    objectives: Mapping[str, str]
    states: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    finals: dict[str, dict] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # why a trial ended infeasible or failed, when it said
    started: float = field(default_factory=time.monotonic)
    # trials that had not ended when the experiment did (ProgressPrinter.on_experiment_end): Ray Tune returns from
    # fit() on Ctrl-C with its state saved and those trials unfinished; None until the experiment ends
    unfinished: int | None = None

    @property
    def interrupted(self) -> bool:
        """Whether the study ended with trials unfinished (interrupted: ``--resume`` continues it)."""
        return bool(self.unfinished)

    def record(self, trial_id: str, result: dict | None, errored: bool) -> None:
        self.running.discard(trial_id)
        self.states[trial_id] = result_state(result, self.max_t, errored)
        if result and result.get(REASON_KEY):
            self.reasons[trial_id] = str(result[REASON_KEY])
        if result:
            keys = dict.fromkeys(("val_acc", "flops", "params", TIME_ATTR, *self.objectives))
            self.finals[trial_id] = {k: result.get(k) for k in keys}

    def best_acc(self) -> float | None:
        accs = [r["val_acc"] for t, r in self.finals.items()
                if self.states.get(t) == COMPLETED and is_number(r.get("val_acc"))]
        return max(accs) if accs else None

    def front_size(self) -> int:
        objs = [m for m in self.objectives]
        rows = [r for t, r in self.finals.items()
                if self.states.get(t) == COMPLETED
                and all(is_number(r.get(m)) and math.isfinite(r[m]) for m in objs)]
        if not rows:
            return 0
        return len(pareto_front(pd.DataFrame(rows).assign(state=COMPLETED, budget=self.max_t),
                                dict(self.objectives), budget="any"))

    def nothing_trained(self) -> str | None:
        """What to tell the user when no trial trained (each ended infeasible or failed), else None: such a study
        has no result to analyse and its command exits 1."""
        states = list(self.states.values())
        if not states or any(s not in (INFEASIBLE, FAILED) for s in states):
            return None
        n, infeasible = len(states), states.count(INFEASIBLE)
        if infeasible == n:
            head = f"every trial was infeasible ({n} of {n}): no configuration it tried met the job's constraints"
        elif infeasible == 0:
            head = f"every trial failed ({n} of {n})"
        else:
            head = f"no trial trained ({n - infeasible} failed, {infeasible} infeasible)"
        reasons = Counter(self.reasons.values()).most_common(1)
        return head + (f"; the most common reason: {reasons[0][0]}" if reasons else "")

    def line(self) -> str:
        counts = {s: sum(1 for v in self.states.values() if v == s) for s in STATES}
        best = self.best_acc()
        elapsed = time.monotonic() - self.started
        return (
            f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] trials {len(self.states)}/{self.num_samples} done "
            f"({counts['completed']} completed, {counts['early_stopped']} stopped early, "
            f"{counts['infeasible']} infeasible, {counts['failed']} failed), {len(self.running)} running | "
            f"best val_acc {'-' if best is None else f'{best:.4f}'} | Pareto front {self.front_size()}"
        )


class ProgressPrinter(Callback):
    """Tune callback on the driver: records each finished trial in a ``StudyProgress`` and prints its line
    when a trial ends, and at most every ``every_s`` seconds otherwise."""

    def __init__(self, progress: StudyProgress, stream: IO[str] | None = None, every_s: float = 15.0):
        self.progress, self.stream, self.every_s = progress, stream, every_s
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the callbacks into tuner.pkl: not the open stream
        return {**self.__dict__, "stream": None}

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            print(self.progress.line(), file=self.stream or sys.stdout, flush=True)

    def _count_running(self, trials: list[Trial], ended: Trial | None = None) -> None:
        # what Ray runs now (reused actors start a trial without a fresh actor: count states, not starts)
        self.progress.running = {t.trial_id for t in trials if t.status == "RUNNING" and t is not ended}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._count_running(trials)
        self.progress.running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.progress.record(trial.trial_id, trial.last_result, errored=False)
        self._count_running(trials, ended=trial)
        self._print(force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.progress.record(trial.trial_id, trial.last_result, errored=True)
        self._count_running(trials, ended=trial)
        self._print(force=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Interrupted, Ray's clean-up marks the running trials TERMINATED without a completion callback: they are
        # still in the running set of the last step (a trial the budget or the scheduler stopped is not), beside
        # any trial left pending
        left = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}
        self.progress.unfinished = len(self.progress.running | left)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._count_running(trials)
        self._print()
