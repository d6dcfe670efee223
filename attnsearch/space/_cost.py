"""What a trial's model costs, counted as the trial counts it, and the refusal of a constraint that no trial of the
space can meet (the cheapest configuration it allows, named with its cost).

The cheapest configuration is found without enumerating the space: counts grow with the backbone's width and the
image side (every convolution's work does), so the narrowest width and the smallest side are taken; an attention
module only adds to the backbone, so ``attention: none`` is the cheapest type when the space offers it and the bare
backbone bounds every other configuration from below. Only a space without ``none`` is searched over its types,
knobs (each varied alone, the others at their cheapest) and placements, stopping at the first configuration that
meets every constraint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..attention import get_spec
from ..config import Job
from ..contract import STATIC_METRICS, ConfigError
from ..data import dataset_info
from ..flops import count
from ..models import build_model, check_attention_placement
from ._model import SearchSpace, parse_stages_key
from ._parse import NAM_PENALTY

if TYPE_CHECKING:
    from torch import nn

__all__ = ["COST_METRICS", "build_trial_model", "cheapest", "check_constraints", "count_model", "over_budget"]

# What ``constraints.max_<metric>`` limits.
COST_METRICS = ("flops", "macs", "params")
# Models built at most while a space without ``none`` is searched for a configuration within the constraints.
_MAX_BUILDS = 2000


def build_trial_model(job: Job, attention: Mapping[str, Any] | None, width_mult: float, num_classes: int,
                      image_size: int, *, load_weights: bool = True) -> nn.Module:
    """The model of one trial of ``job`` (its attention dict and width multiplier); ``load_weights=False`` skips
    the job's pretrained weights (counting needs the architecture only)."""
    return build_model(
        job.backbone.name,
        num_classes=num_classes,
        attention=attention,
        input_size=image_size,
        width_mult=width_mult,
        pretrained=job.backbone.pretrained and load_weights,
        weights_path=job.backbone.weights_path if load_weights else None,
    )


def count_model(model: nn.Module, image_size: int) -> dict[str, int]:
    """The static counts a trial reports (``contract.STATIC_METRICS``) for one image of side ``image_size``."""
    c = count(model, input_size=(1, 3, image_size, image_size))
    return {k: int(c[k]) for k in STATIC_METRICS if k in c}


def _limits(job: Job) -> dict[str, float]:
    return {m: limit for m in COST_METRICS if (limit := getattr(job.constraints, f"max_{m}", None)) is not None}


def over_budget(job: Job, counts: Mapping[str, int]) -> str | None:
    """Reason string when the model breaks a constraint of the job, else None."""
    for metric, limit in _limits(job).items():
        if counts.get(metric, 0) > limit:
            return f"{metric}={counts[metric]:,} exceeds constraints.max_{metric}={limit:,.0f}"
    return None


@dataclass(frozen=True)
class Candidate:
    """One configuration of the space and its counts."""

    attention: dict[str, Any] | None
    width_mult: float
    image_size: int
    counts: dict[str, int]

    def describe(self) -> str:
        if self.attention is None:
            what = "attention none"
        else:
            rest = {k: v for k, v in self.attention.items() if k != "type"}
            what = f"attention {self.attention['type']} ({', '.join(f'{k} {v}' for k, v in rest.items())})"
        return f"{what}, backbone.width_mult={self.width_mult:g}, data.image_size={self.image_size}"


class _Counter:
    """Builds and counts configurations at one (width, side), caching by configuration."""

    def __init__(self, job: Job, width: float, size: int, num_classes: int) -> None:
        self.job, self.width, self.size, self.num_classes = job, width, size, num_classes
        self.builds = 0
        self._cache: dict[str, Candidate | None] = {}

    def __call__(self, attention: dict[str, Any] | None) -> Candidate | None:
        """The candidate, or None when this placement puts no module anywhere or is invalid."""
        key = repr(sorted((attention or {}).items()))
        if key not in self._cache:
            self._cache[key] = self._count(attention)
        return self._cache[key]

    def _count(self, attention: dict[str, Any] | None) -> Candidate | None:
        try:
            if attention is not None and not check_attention_placement(
                    self.job.backbone.name, attention, input_size=self.size, width_mult=self.width):
                return None
        except ValueError:
            return None
        self.builds += 1
        model = build_trial_model(self.job, attention, self.width, self.num_classes, self.size, load_weights=False)
        return Candidate(attention, self.width, self.size, count_model(model, self.size))


def knob_combos(space: SearchSpace, type_name: str, limit: int = 256) -> tuple[list[dict[str, Any]], bool]:
    """The knob settings of ``type_name`` worth trying (every categorical value, both ends of every range; NAM's
    training knob left out) and whether they are all of them: beyond ``limit`` combinations each knob is varied
    alone, the others at their first value."""
    params = {k: p for k, p in space.knobs.get(type_name, {}).items() if k != NAM_PENALTY}
    grids = {k: p.values() for k, p in params.items()}
    n = 1
    for grid in grids.values():
        n *= len(grid)
    if n <= limit:
        return [dict(zip(grids, values, strict=False)) for values in itertools.product(*grids.values())], True
    first = {k: g[0] for k, g in grids.items()}
    return [{**first, k: v} for k, g in grids.items() for v in g], False


def placements(space: SearchSpace) -> list[dict[str, Any]]:
    """Every (stages, blocks, position) choice of the space, as the keys of build_model's attention dict."""
    return [{"stages": parse_stages_key(stages), "blocks": blocks, "position": position}
            for stages, blocks, position in itertools.product(
                space.stages.values(), space.blocks.values(), space.position.values())]


def _attention(type_name: str, knobs: Mapping[str, Any], where: Mapping[str, Any]) -> dict[str, Any]:
    spec = get_spec(type_name)
    return {"type": type_name, **where, **{k: spec.knobs[k].validate(type_name, v) for k, v in knobs.items()}}


def _attention_candidates(space: SearchSpace, count_one: _Counter) -> tuple[Iterator[Candidate], list[bool]]:
    complete = [True]

    def gen() -> Iterator[Candidate]:
        for type_name in space.types.values():
            combos, whole = knob_combos(space, type_name)
            complete[0] &= whole
            for knobs, where in itertools.product(combos, placements(space)):
                if count_one.builds >= _MAX_BUILDS:
                    complete[0] = False
                    return
                try:
                    candidate = count_one(_attention(type_name, knobs, where))
                except ValueError:  # a knob value the module refuses: check_space names it
                    continue
                if candidate is not None:
                    yield candidate

    return gen(), complete


def _smallest(space: SearchSpace, name: str, default: float) -> float:
    return min(space.scale[name].values()) if name in space.scale else default


def cheapest(job: Job, space: SearchSpace) -> dict[str, Candidate] | None:
    """Per metric that ``job.constraints`` limits, the cheapest configuration of ``space`` found; None when some
    configuration meets every constraint (or none is set). See the module docstring for how it is searched; a
    metric whose cheapest is over its limit cannot be met by any trial."""
    limits = _limits(job)
    info = dataset_info(job.data)
    if not limits or info.num_classes < 1:  # no class folders: check_data names the data root
        return None
    width = float(_smallest(space, "backbone.width_mult", job.backbone.width_mult))
    size = int(_smallest(space, "data.image_size", job.data.resolved_image_size))
    count_one = _Counter(job, width, size, info.num_classes)
    bare = count_one(None)
    assert bare is not None  # the backbone without attention always builds

    def meets(c: Candidate) -> bool:
        return all(c.counts[m] <= limit for m, limit in limits.items())

    if "none" in space.types.values():  # attention only adds: the bare backbone is the cheapest configuration
        return None if meets(bare) else {m: bare for m in limits}
    best: dict[str, Candidate] = {}
    candidates, complete = _attention_candidates(space, count_one)
    for candidate in candidates:
        if meets(candidate):
            return None
        for m in limits:
            if m not in best or candidate.counts[m] < best[m].counts[m]:
                best[m] = candidate
    if not complete[0] and meets(bare):  # not every configuration was counted, and the lower bound fits
        return None
    return best or {m: bare for m in limits}


def check_constraints(job: Job, space: SearchSpace) -> None:
    """Refuse ``constraints`` that no configuration of ``space`` can meet: a ``ConfigError`` naming each constraint,
    the cheapest configuration the space allows and its count (a trial's count: ``count_model``)."""
    best = cheapest(job, space)
    if best is None:
        return
    limits = _limits(job)
    unmet = [m for m, limit in limits.items() if best[m].counts[m] > limit] or list(limits)
    lines = []
    for m in unmet:
        c = best[m]
        lines.append(f"{job.label}: constraints.max_{m}={limits[m]:,.0f}: no configuration of the search space "
                     f"meets it; the cheapest, {c.describe()}, has {m}={c.counts[m]:,} (counted as a trial counts "
                     f"it); raise constraints.max_{m} to at least {c.counts[m]:,} or offer smaller models in the "
                     "space (backbone.width_mult, data.image_size)")
    if len(unmet) == len(limits) and all(best[m].counts[m] <= limits[m] for m in unmet):
        lines = [f"{job.label}: constraints {', '.join(f'max_{m}={limits[m]:,.0f}' for m in limits)}: no "
                 "configuration of the search space meets them together; the cheapest for each: "
                 + "; ".join(f"{m}: {best[m].describe()} ({', '.join(f'{k}={best[m].counts[k]:,}' for k in limits)})"
                             for m in limits)]
    raise ConfigError("\n".join(lines))
