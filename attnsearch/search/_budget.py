"""A study's budget in training epochs: a Ray Tune ``Stopper`` that ends the study once its trials have trained
``budget`` epochs in total (the unit a cluster's cost is counted in, whatever early stopping saves)."""

from __future__ import annotations

import numbers
from typing import Any

from ray.tune.stopper import Stopper

from ..contract import TIME_ATTR

__all__ = ["EpochBudget"]


class EpochBudget(Stopper):
    """Stop the whole study once the epochs its trials reported add up to ``budget``.

    Args:
        budget: total training epochs over all trials (> 0).
        time_attr: the result key counting a trial's epochs.

    Trials running when the budget is reached are stopped where they are (they end ``early_stopped``). The
    count lives in the driver: a study resumed with ``--resume`` counts from zero again.
    """

    def __init__(self, budget: int, time_attr: str = TIME_ATTR) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be a positive number of epochs, got {budget!r}")
        self.budget, self.time_attr = budget, time_attr
        self.trained: dict[str, int] = {}  # trial id -> epochs reported

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        epoch = result.get(self.time_attr)
        if isinstance(epoch, numbers.Real) and not isinstance(epoch, bool) and epoch == epoch:
            self.trained[trial_id] = max(self.trained.get(trial_id, 0), int(epoch))
        return False

    @property
    def used(self) -> int:
        return sum(self.trained.values())

    def stop_all(self) -> bool:
        return self.used >= self.budget
