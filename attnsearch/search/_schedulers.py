"""Multi-objective early stopping: asynchronous successive halving that decides on every objective at once.

MOASHA (Schmucker et al. 2021, "Multi-objective Asynchronous Successive Halving", arXiv:2106.12639): rungs at
``grace_period * reduction_factor**k`` epochs (below ``max_t``); when a trial reaches a rung, the rung's records
and the new one are ordered, and the new trial continues iff its own position, counting itself, lies in the
top ``1 / reduction_factor``. ``rungs`` gives the rungs and their factors one by one instead (``{1: 1.5, 3: 3}``:
at epoch 1 the top two thirds continue, at epoch 3 the top third), as Syne Tune's ``rung_levels`` gives the
epochs.

The order, in ``rung_order``:
1. every objective oriented to minimisation and min-max normalised over the rung's records (FLOPs in the 1e9
   range must not swamp an accuracy in [0, 1]); a NaN or missing value counts as the worst possible;
2. non-dominated sorting into fronts (``moocore.pareto_rank``): a trial in a better front is ahead;
3. inside a front, an epsilon-net order: first the member best in the first objective, then repeatedly the
   member farthest (Euclidean, normalised) from those already ordered. Chosen over NSGA-II's crowding distance
   because it is a total order whose head is what a 1/reduction_factor cut should keep: the extremes of the
   front first, then its widest spread; crowding distance scores a point by its two neighbours only and ties
   both extremes at infinity.

A trial that dominates every record of its rung is alone in the first front and so always first: it is never
stopped there. (Syne Tune's ``MOASHA`` ranks with the output of ``nondominated_sort``, an ordering of row
indices, as if it were a per-row priority, which can stop such a trial.) Identical records are ties: neither
is counted ahead of the other.

Ray does not persist a scheduler's state through ``Tuner.restore``: a restored trial brings its results in
its ``result.json``, and ``on_trial_add`` replays them into the rungs (recording, not deciding), so a study
resumed in the middle of a rung decides its next trials against the same records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import moocore
import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ..contract import TIME_ATTR, check_objectives, is_number, rung_milestones
from ..space import is_point
from ..tracking.sync import trial_results

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["MOASHAScheduler", "BaselineASHAScheduler", "check_rung_arguments", "check_rungs", "rung_order",
           "rung_position"]


def check_rungs(rungs: Mapping[float, float], max_t: float) -> dict[float, float]:
    """``rungs`` as ``{epoch: reduction factor}`` sorted by epoch; ``ValueError`` naming the rung that is not one."""
    out = {}
    for epoch, factor in sorted(rungs.items()):
        if not 0 < epoch < max_t or not factor > 1:
            raise ValueError(f"rungs: {{{epoch}: {factor}}} is not a rung: each needs 0 < epoch < max_t={max_t} and "
                             "a reduction factor > 1")
        out[float(epoch)] = float(factor)
    return out


def check_rung_arguments(objectives: Mapping[str, str], max_t: float, grace_period: float,
                         reduction_factor: float) -> None:
    """Raise ``ValueError`` naming the argument when a multi-objective rung rule could not work with these."""
    check_objectives(objectives)
    if reduction_factor <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    if not 0 < grace_period <= max_t:
        raise ValueError(f"grace_period must lie in (0, max_t={max_t}], got {grace_period}")


def _normalised(points: np.ndarray) -> np.ndarray:
    """Each column min-max scaled to [0, 1] over its finite values; NaN/inf -> +inf (the worst)."""
    out = np.full(points.shape, np.inf)
    for j in range(points.shape[1]):
        col = points[:, j]
        finite = np.isfinite(col)
        if not finite.any():
            continue
        lo, hi = col[finite].min(), col[finite].max()
        out[finite, j] = (col[finite] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _fronts(norm: np.ndarray) -> np.ndarray:
    """Front index per row (0 = non-dominated); rows with a non-finite value come after every finite front."""
    ranks = np.zeros(len(norm), dtype=int)
    finite = np.isfinite(norm).all(axis=1)
    if finite.any():
        ranks[finite] = moocore.pareto_rank(norm[finite])
    worst = ranks[finite].max() + 1 if finite.any() else 0
    for i in np.flatnonzero(~finite):  # the more objectives missing, the further back
        ranks[i] = worst + int(np.isinf(norm[i]).sum())
    return ranks


def _eps_net(norm: np.ndarray, members: Sequence[int]) -> list[int]:
    """Greedy farthest-point order of ``members``: best in the first objective first (ties: lower index)."""
    members = list(members)
    if len(members) <= 1:
        return members
    pts = np.where(np.isfinite(norm[members]), norm[members], 2.0)  # missing: beyond the normalised range
    first = min(range(len(members)), key=lambda k: (pts[k, 0], members[k]))
    order = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    dist[first] = -1.0
    while len(order) < len(members):
        nxt = int(np.argmax(dist))  # ties: the lower index
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
        dist[order] = -1.0
    return [members[k] for k in order]


def rung_order(points: np.ndarray) -> list[int]:
    """Row indices of ``points`` (rows: records, columns: objectives to minimise), best first."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be a (records, objectives) array, got shape {points.shape}")
    return _order(_normalised(points))


def _order(norm: np.ndarray) -> list[int]:
    fronts = _fronts(norm)
    order: list[int] = []
    for front in sorted(set(fronts.tolist())):
        order += _eps_net(norm, np.flatnonzero(fronts == front).tolist())
    return order


def rung_position(points: np.ndarray, row: int) -> int:
    """How many records are ahead of ``row`` in ``rung_order``; records identical to it are not counted."""
    norm = _normalised(np.asarray(points, dtype=float))
    same = [np.array_equal(norm[i], norm[row]) for i in range(len(norm))]  # inf == inf: missing alike
    order = _order(norm)
    ahead = order[: order.index(row)]
    return sum(1 for i in ahead if not same[i])


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving on several objectives at once (see the module docstring).

    Args:
        objectives: ``{metric: "max" | "min"}``; every one is compared at every rung. Static metrics (``flops``,
            ``params``) are known from a trial's first result; a trial must report at least one.
        max_t: the budget in ``time_attr`` units (``train.epochs``); no rung at or beyond it.
        grace_period: the first rung.
        reduction_factor: keep the top ``1 / reduction_factor`` of each rung (> 1).
        rungs: ``{epoch: reduction factor}``, every rung with its own factor, in place of the ladder that
            ``grace_period`` and ``reduction_factor`` make (``check_rungs``).
        time_attr: the result key that counts progress (``epoch``).
        read_results: ``trial -> list of its past results`` for trials restored by ``Tuner.restore``
            (default: the trial's ``result.json``).
        protected: trial configs (or parts of them) that are recorded at every rung but never stopped: the
            study's baseline trains to the full budget.
    """

    def __init__(
        self,
        objectives: Mapping[str, str],
        *,
        max_t: float,
        grace_period: float = 1,
        reduction_factor: float = 3,
        rungs: Mapping[float, float] | None = None,
        time_attr: str = TIME_ATTR,
        read_results: Callable[[Trial], list[dict]] | None = None,
        protected: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        check_rung_arguments(objectives, max_t, grace_period, reduction_factor)
        # milestone -> the reduction factor there
        self.factors = (check_rungs(rungs, max_t) if rungs is not None else
                        dict.fromkeys(rung_milestones(max_t, grace_period, reduction_factor), float(reduction_factor)))
        self.objectives = dict(objectives)
        self.max_t = max_t
        self.time_attr = time_attr
        self._read_results = read_results
        self.protected = [dict(p) for p in protected]
        # milestone -> {trial_id: objective vector oriented to minimisation}
        self.rungs: dict[float, dict[str, np.ndarray]] = {m: {} for m in self.factors}
        self.stopped: dict[str, float] = {}  # trial id -> the rung it was stopped at

    # -- the rule -----------------------------------------------------------------------------------------
    def _vector(self, result: Mapping[str, Any]) -> np.ndarray | None:
        values = []
        for metric, mode in self.objectives.items():
            v = result.get(metric)
            v = float(v) if is_number(v) else math.nan
            values.append(-v if mode == "max" else v)
        vec = np.array(values)
        return None if np.isnan(vec).all() else vec

    def _rung_reached(self, trial_id: str, t: float) -> float | None:
        """The highest rung ``t`` reached that has no record of this trial yet (as Ray's ASHA does)."""
        for milestone in sorted(self.rungs, reverse=True):
            if t >= milestone:
                return milestone if trial_id not in self.rungs[milestone] else None
        return None

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """Record ``result`` at the rung it reaches and return CONTINUE or STOP."""
        t = result.get(self.time_attr)
        vec = self._vector(result)
        if not is_number(t) or vec is None:
            return TrialScheduler.CONTINUE
        milestone = self._rung_reached(trial_id, float(t))
        if milestone is None:
            return TrialScheduler.CONTINUE
        rung = self.rungs[milestone]
        points = np.vstack([*rung.values(), vec])
        position = rung_position(points, len(points) - 1)
        rung[trial_id] = vec
        if position < len(points) / self.factors[milestone]:
            return TrialScheduler.CONTINUE
        self.stopped[trial_id] = milestone
        return TrialScheduler.STOP

    def record(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Put a past result into the rungs without deciding (a restored trial's history)."""
        t = result.get(self.time_attr)
        vec = self._vector(result)
        if not is_number(t) or vec is None:
            return
        milestone = self._rung_reached(trial_id, float(t))
        if milestone is not None:
            self.rungs[milestone][trial_id] = vec

    # -- Ray Tune hooks -----------------------------------------------------------------------------------
    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.last_result and self.time_attr in trial.last_result:  # restored with results: replay them
            history = (self._read_results or trial_results)(trial)
            for result in sorted(history, key=lambda r: r.get(self.time_attr) or 0):
                self.record(str(trial.trial_id), result)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        super().on_trial_result(tune_controller, trial, result)
        action = self.decide(str(trial.trial_id), result)
        if action == TrialScheduler.STOP and _protected(trial, self.protected):
            self.stopped.pop(str(trial.trial_id), None)
            return TrialScheduler.CONTINUE
        return action

    def debug_string(self) -> str:
        sizes = ", ".join(f"{m:g} (1/{self.factors[m]:g}): {len(r)}" for m, r in sorted(self.rungs.items()))
        return (f"MOASHA on {list(self.objectives)}: rungs (epoch (kept): records) {sizes or 'none'}; "
                f"{len(self.stopped)} stopped")


def _protected(trial: Trial, protected: Sequence[Mapping[str, Any]]) -> bool:
    config = trial.config or {}
    return any(is_point(config, point) for point in protected)


class BaselineASHAScheduler(ASHAScheduler):
    """Ray's ``ASHAScheduler`` (one metric), except that a trial whose config holds one of ``protected`` is never
    stopped before ``max_t``: its results still fill the rungs (Ray's own bookkeeping, through ``super()``).

    Args:
        protected: trial configs (or parts of them) to train to the full budget, e.g. the study's baseline.
        **kwargs: ``ASHAScheduler``'s arguments.
    """

    def __init__(self, *, protected: Sequence[Mapping[str, Any]] = (), time_attr: str = "training_iteration",
                 max_t: float = 100, **kwargs: Any) -> None:
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self.protected = [dict(p) for p in protected]
        self.time_attr, self.max_t = time_attr, max_t

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        t = result.get(self.time_attr)
        if action == TrialScheduler.STOP and _protected(trial, self.protected) and is_number(t) and t < self.max_t:
            return TrialScheduler.CONTINUE
        return action
