"""The search space's model: a ``Param`` per dimension (a constant or an Optuna distribution) and ``SearchSpace``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ..contract import is_number

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "SearchSpace", "stages_key", "parse_stages_key"]


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a constant (``dist`` None) or an Optuna distribution (categorical, int, float).

    Ranges are Optuna's own ``IntDistribution``/``FloatDistribution``, so their rules (``low <= high``, ``low > 0``
    on a log scale, no ``step`` with ``log``) and their errors are Optuna's.
    """

    name: str
    dist: BaseDistribution | None = None
    value: Any = None  # the constant's value

    @classmethod
    def const(cls, name: str, value: Any) -> Param:
        return cls(name, None, value)

    @classmethod
    def choice(cls, name: str, choices: Sequence[Any]) -> Param:
        """A categorical choice; one distinct value is a constant."""
        unique = tuple(dict.fromkeys(choices))
        return cls.const(name, unique[0]) if len(unique) == 1 else cls(name, CategoricalDistribution(unique))

    @classmethod
    def range(cls, name: str, low: float, high: float, *, log: bool = False, step: float | None = None,
              integer: bool = False) -> Param:
        """An int or float range; raises Optuna's ``ValueError`` for an invalid one."""
        if integer:
            if step is not None and (high - low) % step:  # NOTE: Optuna would quietly lower high; say so instead
                raise ValueError(f"high - low ({high - low}) must be a multiple of step ({step})")
            return cls(name, IntDistribution(int(low), int(high), log=log, step=int(step or 1)))
        return cls(name, FloatDistribution(float(low), float(high), log=log,
                                           step=None if step is None else float(step)))

    @property
    def kind(self) -> str:
        """``const``, ``categorical``, ``int`` or ``float``."""
        if self.dist is None:
            return "const"
        if isinstance(self.dist, CategoricalDistribution):
            return "categorical"
        return "int" if isinstance(self.dist, IntDistribution) else "float"

    @property
    def is_const(self) -> bool:
        return self.dist is None

    @property
    def choices(self) -> tuple[Any, ...]:
        return tuple(self.dist.choices) if self.kind == "categorical" else ()

    def sample(self, trial: optuna.trial.Trial) -> Any:
        if self.dist is None:
            return self.value
        d = self.dist
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, list(d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)

    def values(self) -> list[Any]:
        """The values a static check should try: all of a categorical, both ends of a range."""
        if self.dist is None:
            return [self.value]
        if isinstance(self.dist, CategoricalDistribution):
            return list(self.dist.choices)
        return [self.dist.low, self.dist.high] if self.dist.low != self.dist.high else [self.dist.low]

    def contains(self, value: Any) -> bool:
        if self.dist is None:
            return value == self.value
        if isinstance(self.dist, CategoricalDistribution):
            return value in self.dist.choices
        if not is_number(value):
            return False
        if isinstance(self.dist, IntDistribution) and int(value) != value:
            return False
        return self.dist.low <= value <= self.dist.high

    def map(self, fn: Callable[[Any], Any]) -> Param:
        """The same dimension with ``fn`` applied to every value (both ends of a range); ``fn`` may raise."""
        if self.dist is None:
            return Param.const(self.name, fn(self.value))
        if isinstance(self.dist, CategoricalDistribution):
            return Param.choice(self.name, [fn(v) for v in self.dist.choices])
        d = self.dist
        return Param.range(self.name, fn(d.low), fn(d.high), log=d.log, step=d.step,
                           integer=isinstance(d, IntDistribution))

    def as_float(self) -> Param:
        """An int range as a float range (a float knob written with integer ends); others unchanged."""
        if not isinstance(self.dist, IntDistribution):
            return self
        d = self.dist
        return Param.range(self.name, d.low, d.high, log=d.log, step=None if d.step == 1 else d.step)

    def to_yaml(self) -> Any:
        """The value form this parameter was written in."""
        if self.dist is None:
            return self.value
        if isinstance(self.dist, CategoricalDistribution):
            return list(self.dist.choices)
        out: dict[str, Any] = {"low": self.dist.low, "high": self.dist.high}
        if self.dist.log:
            out["log"] = True
        if self.dist.step is not None and not (isinstance(self.dist, IntDistribution) and self.dist.step == 1):
            out["step"] = self.dist.step
        return out


@dataclass
class SearchSpace:
    """A validated search space for one backbone; see the module docstring for the file format."""

    source: str  # file (or job file) that errors name
    prefix: str  # key-path prefix inside ``source`` ("" for a space file, "search.space." inline)
    backbone: str
    backbone_stages: tuple[int, ...]
    types: Param
    stages: Param  # choices are compact strings "1,2,3"
    blocks: Param
    position: Param
    knobs: dict[str, dict[str, Param]] = field(default_factory=dict)
    train: dict[str, Param] = field(default_factory=dict)
    # what a trial costs besides its attention: "backbone.width_mult", "data.image_size" (absent: the job's)
    scale: dict[str, Param] = field(default_factory=dict)

    def type_names(self) -> list[str]:
        return self.types.values()

    def params(self) -> list[Param]:
        """Every parameter of the space (constants included), in sampling order."""
        out = [*self.scale.values(), self.types, self.stages, self.blocks, self.position]
        out += [p for knobs in self.knobs.values() for p in knobs.values()]
        return out + list(self.train.values())

    def where(self, path: str) -> str:
        return f"{self.source}: {self.prefix}{path}"


def stages_key(stages: Sequence[int]) -> str:
    """Compact Optuna-categorical form of a stage set: ``[3, 1, 2]`` -> ``"1,2,3"``."""
    return ",".join(str(s) for s in sorted(set(stages)))


def parse_stages_key(key: str) -> list[int]:
    return [int(s) for s in str(key).split(",") if s.strip()]
