"""Registry of attention modules: name -> class, knobs, official slot and parameter-count formula."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..contract import is_number

SLOTS = ("mid", "residual_end", "post_add", "stage_end")


@dataclass(frozen=True)
class Knob:
    """One constructor argument a search may set.

    ``kind`` is ``"int"``, ``"float"``, ``"bool"`` or ``"choice"``; ``low``/``high`` bound numbers (inclusive),
    ``choices`` lists the legal values of a ``"choice"`` knob. ``default=None`` on a number means "derived"
    (e.g. ECA's adaptive kernel size). ``odd=True`` on an int knob admits odd values only (same-size padding
    (k - 1) / 2 of a conv kernel). Numbers must be finite (NaN passes every comparison, inf no ``int()``).

    Every rule a module's constructor enforces on a knob value alone belongs here, and every rule that depends
    on the channels or the map size in the spec's ``check``: the search space validates knobs with ``validate``
    and placements with ``AttentionSpec.validate`` before any trial starts (tests/test_knob_rules.py).
    """

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    odd: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.odd and self.kind != "int":
            raise ValueError(f"knob {self.name!r}: odd=True needs kind 'int', got {self.kind!r}")

    def validate(self, module: str, value: Any) -> Any:
        """Return ``value`` coerced to the knob's type or raise ``ValueError`` naming module, knob and range."""
        where = f"{module}.{self.name}"
        if value is None and self.default is None:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if not is_number(value):
            raise ValueError(f"{where} must be a number ({self._valid()}), got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN would pass the range check below
            raise ValueError(f"{where} must be a finite number ({self._valid()}), got {value!r}")
        if self.kind == "int" and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where} must be an integer ({self._valid()}), got {value!r}")
        # compared before any conversion: int vs float comparison is exact, float(10**400) would overflow
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{where} must be in {self._valid()}, got {value!r}")
        try:
            value = int(value) if self.kind == "int" else float(value)
        except OverflowError:  # only without bounds
            raise ValueError(f"{where} must be in {self._valid()}, got {value!r}") from None
        if self.odd and value % 2 == 0:
            raise ValueError(f"{where} must be odd, {self._odd_values()}{self._null()}, got {value!r}")
        return value

    def _valid(self) -> str:
        """The legal values in words, for messages: the range, odd-only, and null where the default is derived."""
        return f"{self._range()}{' and odd' if self.odd else ''}{self._null()}"

    def _null(self) -> str:
        return " or null (default: derived)" if self.default is None else ""

    def _odd_values(self) -> str:
        lo = -math.inf if self.low is None else math.ceil(self.low)
        hi = math.inf if self.high is None else math.floor(self.high)
        if math.isfinite(lo) and math.isfinite(hi) and hi - lo < 48:
            lo += 1 - lo % 2  # first odd value
            return f"one of {list(range(int(lo), int(hi) + 1, 2))}"
        return f"an odd integer in {self._range()}"

    def _range(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"[{lo}, {hi}]"

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={self.default!r} {{{', '.join(map(repr, self.choices))}}}"
        if self.kind == "bool":
            return f"{self.name}={self.default}"
        default = "auto" if self.default is None else self.default
        return f"{self.name}={default} {'odd ' if self.odd else ''}{self.kind}{self._range()}"


@dataclass(frozen=True)
class AttentionSpec:
    """Everything the models, the FLOPs counter and the search space need to know about one module type.

    ``param_count(channels, spatial_size, **knobs)`` returns the learnable-parameter count; ``check`` raises
    ``ValueError`` for a combination the module cannot handle (called by ``build_attention`` and by the search
    space before any model is built). ``uses_spatial_size`` means the constructor takes ``spatial_size=(H, W)``;
    ``needs_spatial_size(knobs)`` says whether it must be given for these knobs.
    """

    name: str
    cls: type[nn.Module]
    knobs: Mapping[str, Knob]
    slot: str
    param_count: Callable[..., int]
    summary: str
    uses_spatial_size: bool = False
    needs_spatial_size: Callable[[Mapping[str, Any]], bool] = field(default=lambda knobs: False)
    check: Callable[..., None] | None = None
    min_spatial: int = 1

    def resolve(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``knobs`` and return them merged over the defaults."""
        unknown = set(knobs) - set(self.knobs)
        if unknown:
            valid = sorted(self.knobs) or "none"
            raise ValueError(
                f"attention type {self.name!r} has no knob {sorted(unknown)[0]!r}; its knobs are: {valid}"
            )
        out = {k: spec.default for k, spec in self.knobs.items()}
        for key, value in knobs.items():
            out[key] = self.knobs[key].validate(self.name, value)
        return out

    def validate(self, channels: int, spatial_size: Sequence[int] | None = None, **knobs: Any) -> dict[str, Any]:
        """Check a (channels, spatial_size, knobs) combination without building anything; return resolved knobs."""
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"{self.name}: channels must be a positive integer, got {channels!r}")
        resolved = self.resolve(knobs)
        if spatial_size is not None:
            spatial_size = as_hw(spatial_size, "spatial_size")
            if min(spatial_size) < self.min_spatial:
                raise ValueError(
                    f"{self.name} needs feature maps of at least {self.min_spatial}x{self.min_spatial}, "
                    f"got {spatial_size[0]}x{spatial_size[1]}"
                )
        elif self.needs_spatial_size(resolved):
            set_knobs = [f"{self.name}.{k}={v!r}" for k, v in resolved.items() if v != self.knobs[k].default]
            raise ValueError(
                f"{', '.join(set_knobs) or self.name} needs spatial_size=(H, W), the feature-map size at the "
                "insertion site, at construction"
            )
        if self.check is not None:
            self.check(channels, spatial_size, **resolved)
        return resolved

    def count_params(self, channels: int, spatial_size: Sequence[int] | None = None, **knobs: Any) -> int:
        resolved = self.validate(channels, spatial_size, **knobs)
        hw = as_hw(spatial_size, "spatial_size") if spatial_size else None
        return int(self.param_count(channels, hw, **resolved))


ATTENTION_TYPES: dict[str, AttentionSpec] = {}


def register_attention(spec: AttentionSpec) -> AttentionSpec:
    if spec.slot not in SLOTS:
        raise ValueError(f"{spec.name}: slot must be one of {SLOTS}, got {spec.slot!r}")
    ATTENTION_TYPES[spec.name] = spec
    return spec


def get_spec(name: str) -> AttentionSpec:
    try:
        return ATTENTION_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown attention type {name!r}; valid types: {sorted(ATTENTION_TYPES)}"
        ) from None


def build_attention(
    name: str, channels: int, *, spatial_size: Sequence[int] | None = None, **knobs: Any
) -> nn.Module:
    """Build attention module ``name`` for ``channels`` input channels; output shape equals input shape.

    Args:
        name: a registered type (``attnsearch modules`` lists them), e.g. ``"se"``.
        channels: the channels of the feature map the module sees.
        spatial_size: the feature map's (height, width) or side, for modules sized by it (NAM's spatial branch).
        **knobs: the type's knobs (``reduction=8``...), validated by the registry; unknown ones raise ``ValueError``.
    """
    spec = get_spec(name)
    resolved = spec.validate(channels, spatial_size, **knobs)
    if spec.uses_spatial_size:
        resolved["spatial_size"] = as_hw(spatial_size, "spatial_size") if spatial_size is not None else None
    return spec.cls(channels, **resolved)


def as_hw(size: int | Sequence[int], field: str = "input_size") -> tuple[int, int]:
    """``224`` or ``(H, W)`` -> ``(H, W)``; raise ``ValueError`` naming ``field`` otherwise."""
    if isinstance(size, bool):
        raise ValueError(f"{field} must be an int or (H, W), got {size!r}")
    if isinstance(size, int):
        hw = (size, size)
    else:
        try:
            hw = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be an int or (H, W), got {size!r}") from None
        if len(hw) != 2 or any(float(a) != b for a, b in zip(size, hw, strict=False)):
            raise ValueError(f"{field} must be an int or (H, W), got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"{field} must be positive, got {size!r}")
    return hw  # type: ignore[return-value]
