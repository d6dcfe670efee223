"""Search-space files and inline mappings -> a validated ``SearchSpace``; every problem in one ``ConfigError``."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from .._schema_messages import did_you_mean, format_validation_error
from .._yaml import read_yaml, short_repr
from ..attention import ATTENTION_TYPES, get_spec
from ..config import ConfigError, Job, StrictModel, TrainConfig
from ..contract import is_number
from ..models import (
    BACKBONES,
    BLOCK_CHOICES,
    POSITION_CHOICES,
    get_backbone,
    list_sites,
)
from ._model import Param, SearchSpace, parse_stages_key, stages_key

__all__ = ["load_space", "parse_space", "backbone_stages", "NAM_PENALTY", "FIXED_TRAIN_FIELDS",
           "SCALE_FIELDS"]

FIXED_TRAIN_FIELDS = ("epochs",)
_SCALARS = (type(None), bool, int, float, str)


class _AttentionRaw(StrictModel):
    type: Any
    stages: Any = "all"
    blocks: Any = "all"
    position: Any = "default"
    knobs: dict[str, dict[str, Any] | None] | None = None


class _SpaceRaw(StrictModel):
    backbone: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    attention: _AttentionRaw | None = None
    train: dict[str, Any] | None = None


# Searchable settings outside attention and training: what a trial's model and input cost.
SCALE_FIELDS = {"backbone": ("width_mult",), "data": ("image_size",)}


class _Problems:
    """Collects every problem of a space so that the user gets them all in one message."""

    def __init__(self, source: str, prefix: str) -> None:
        self.source, self.prefix, self.lines = source, prefix, []

    def add(self, path: str, msg: str) -> None:
        self.lines.append(f"{self.source}: {self.prefix}{path}: {msg}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(dict.fromkeys(self.lines)))


# The NAM sparsity weight p is a training knob (L1 on NAM's BN scale factors), not a module argument.
NAM_PENALTY = "penalty"


def _extra_knobs(type_name: str) -> dict[str, str]:
    return {NAM_PENALTY: "NAM's sparsity weight p (> 0): a training knob"} if type_name == "nam" else {}


def _parse_value(name: str, raw: Any, path: str, problems: _Problems) -> Param | None:
    """Value form -> Param (no knob/field-specific checks yet)."""
    if isinstance(raw, dict):
        unknown = set(raw) - {"low", "high", "log", "step"}
        if unknown:
            key = sorted(map(str, unknown))[0]
            problems.add(f"{path}.{key}", f"unknown key in a range{did_you_mean(key, ['low', 'high', 'log', 'step'])}; "
                         "a range is {low, high, log?, step?}")
            return None
        if "low" not in raw or "high" not in raw:
            problems.add(path, f"a range needs both low and high (got {short_repr(raw)})")
            return None
        low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
        for key, val in (("low", low), ("high", high), ("step", step)):
            if val is not None and not is_number(val):
                problems.add(f"{path}.{key}", f"must be a number (got {short_repr(val)})")
                return None
        if not isinstance(log, bool):
            problems.add(f"{path}.log", f"must be true or false (got {short_repr(log)})")
            return None
        is_int = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
        try:
            return Param.range(name, low, high, log=log, step=step, integer=is_int)
        except ValueError as exc:
            problems.add(path, str(exc))
            return None
    if isinstance(raw, (list, tuple)):
        if not raw:
            problems.add(path, "an empty list leaves nothing to choose; give at least one value")
            return None
        bad = [v for v in raw if not isinstance(v, _SCALARS)]
        if bad:
            problems.add(path, "categorical choices must be scalars (null, bool, number or string), got "
                         f"{short_repr(bad[0])}")
            return None
        return Param.choice(name, raw)
    if isinstance(raw, _SCALARS):
        return Param.const(name, raw)
    problems.add(path, f"expected a constant, a list of choices or {{low, high}} (got {short_repr(raw)})")
    return None


def _check_each(param: Param, check: Callable[[Any], Any], path: str, problems: _Problems) -> Param | None:
    """Run ``check`` (returns the coerced value or raises ValueError) on every const/choice/range end."""
    try:
        return param.map(check)
    except ValueError as exc:
        problems.add(path, str(exc))
        return None


def _parse_knob(type_name: str, knob: str, raw: Any, path: str, problems: _Problems) -> Param | None:
    param = _parse_value(f"{type_name}.{knob}", raw, path, problems)
    if param is None:
        return None
    if knob == NAM_PENALTY and type_name == "nam":
        def check(v: Any) -> float:
            if not is_number(v) or v <= 0:
                raise ValueError(f"nam.penalty (the sparsity weight p) must be a number > 0, got {short_repr(v)}")
            return float(v)
        return _check_each(param.as_float(), check, path, problems)
    spec_knob = get_spec(type_name).knobs[knob]
    if param.kind in ("int", "float"):
        if spec_knob.kind not in ("int", "float"):
            problems.add(path, f"{type_name}.{knob} is a {spec_knob.kind} knob: list its values instead of a range"
                         + (f", e.g. {list(spec_knob.choices)}" if spec_knob.choices else ", e.g. [false, true]"))
            return None
        if spec_knob.kind == "int" and param.kind == "float":
            problems.add(path, f"{type_name}.{knob} is an integer knob: low and high must be integers "
                         f"(got {param.dist.low:g}..{param.dist.high:g})")
            return None
        if spec_knob.kind == "float":
            param = param.as_float()
        if spec_knob.odd and (param.dist.low % 2 == 0 or param.dist.step % 2):
            problems.add(path, f"{type_name}.{knob} takes odd values only: give a range with an odd low and an "
                         f"even step (e.g. {{low: 3, high: 7, step: 2}}) or list the values (e.g. [3, 5, 7])")
            return None
    return _check_each(param, lambda v: spec_knob.validate(type_name, v), path, problems)


def _parse_train(name: str, raw: Any, base: TrainConfig, path: str, problems: _Problems) -> Param | None:
    if name not in TrainConfig.model_fields:
        valid = [f for f in TrainConfig.model_fields if f not in FIXED_TRAIN_FIELDS]
        problems.add(path, f"unknown train field {short_repr(name)}{did_you_mean(name, valid)}; valid: {sorted(valid)}")
        return None
    if name in FIXED_TRAIN_FIELDS:
        problems.add(path, f"train.{name} is the budget of every trial (ASHA's max_t); set it in the job, "
                     "not in the search space")
        return None
    param = _parse_value(f"train.{name}", raw, path, problems)
    if param is None:
        return None
    annotation = TrainConfig.model_fields[name].annotation
    if param.kind in ("int", "float"):
        numeric = annotation in (int, float, int | None, float | None)
        if not numeric:
            problems.add(path, f"train.{name} is not numeric: list its values instead of a range")
            return None
        if annotation in (int, int | None) and param.kind == "float":
            problems.add(path, f"train.{name} is an integer: low and high must be integers")
            return None
        if annotation in (float, float | None):
            param = param.as_float()
    base_dict = base.model_dump()

    def check(value: Any) -> Any:
        try:
            return getattr(TrainConfig.model_validate({**base_dict, name: value}), name)
        except ValidationError as exc:
            msg = format_validation_error(exc, "", TrainConfig).split("\n")[0].removeprefix(": ")
            msg = msg.removeprefix(f"{name}: ")
            raise ValueError(msg if "(got" in msg else f"{msg} (got {short_repr(value)})") from None

    return _check_each(param, check, path, problems)


def _missing_stage(stages: list[int], all_stages: tuple[int, ...], backbone: str) -> str | None:
    bad = [s for s in stages if s not in all_stages]
    return f"stage {bad[0]} does not exist in {backbone}; its stages are {list(all_stages)}" if bad else None


def _parse_stages(raw: Any, all_stages: tuple[int, ...], backbone: str, problems: _Problems) -> Param | None:
    path = "attention.stages"
    full = stages_key(all_stages)
    if raw == "all":
        return Param.const("stages", full)
    if raw == "subsets":
        subsets = [c for n in range(1, len(all_stages) + 1) for c in itertools.combinations(all_stages, n)]
        return Param.choice("stages", [stages_key(s) for s in subsets])
    if not isinstance(raw, list) or not raw:
        problems.add(path, f'expected "all", "subsets" or a non-empty list of stage sets like [[1, 2, 3], [3]] '
                     f"(got {short_repr(raw)})")
        return None
    if all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        missing = _missing_stage(raw, all_stages, backbone)
        if missing:
            problems.add(path, missing)
        elif len(raw) == 1:
            problems.add(path, f"{short_repr(raw)} is a list of stages, expected a list of stage sets: write "
                         f"[{short_repr(raw)}] for attention at stage {raw[0]} only")
        else:
            problems.add(path, f"{short_repr(raw)} is ambiguous: write [{short_repr(raw)}] for one fixed stage set "
                         f"or {short_repr([[s] for s in raw])} to choose one stage")
        return None
    keys = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if item == "all":
            keys.append(full)
            continue
        if isinstance(item, str):
            try:
                item = parse_stages_key(item)
            except ValueError:
                problems.add(where, f'expected a list of stages or "all" (got {short_repr(item)})')
                continue
        if isinstance(item, int) and not isinstance(item, bool):
            item = [item]
        if not isinstance(item, list) or not item or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in item):
            problems.add(where, f'expected a non-empty list of stage numbers or "all" (got {short_repr(item)})')
            continue
        missing = _missing_stage(item, all_stages, backbone)
        if missing:
            problems.add(where, missing)
            continue
        keys.append(stages_key(item))
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    return Param.choice("stages", keys)


def _parse_choice_list(
    name: str, raw: Any, valid: Sequence[str], path: str, problems: _Problems, what: str | None = None
) -> Param | None:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        problems.add(path, f"an empty list leaves nothing to choose; valid: {list(valid)}")
        return None
    ok = True
    for v in values:
        if v not in valid:
            problems.add(path, f"unknown {what or name} {short_repr(v)}{did_you_mean(v, valid)}; "
                         f"valid: {sorted(valid)}")
            ok = False
    if not ok:
        return None
    return Param.choice(name, values)


def backbone_stages(job: Job) -> tuple[int, ...]:
    sites = list_sites(job.backbone.name, input_size=job.data.resolved_image_size, width_mult=job.backbone.width_mult)
    return tuple(sorted({s.stage for s in sites}))


def parse_space(raw: Any, job: Job, source: str, prefix: str = "") -> SearchSpace:
    """Validate a raw space mapping for ``job``'s backbone; every problem is reported in one ``ConfigError``."""
    problems = _Problems(source, prefix)
    if not isinstance(raw, dict):
        where = f"{source}: {prefix.rstrip('.')}" if prefix else source
        raise ConfigError(f"{where}: expected a mapping with keys backbone, data, attention, train "
                          f"(got {type(raw).__name__})")
    try:
        spec = _SpaceRaw.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, _SpaceRaw, prefix)) from None
    if spec.attention is None:
        raise ConfigError(f"{source}: {prefix}attention: empty search space: give attention.type, e.g. "
                          f"type: [none, se, eca] (valid: {sorted(ATTENTION_TYPES)})")
    att = spec.attention
    types_raw = att.type if isinstance(att.type, list) else [att.type]
    if not types_raw or att.type is None:
        raise ConfigError(f"{source}: {prefix}attention.type: empty search space: list at least one attention "
                          f"type (valid: {sorted(ATTENTION_TYPES)})")
    if job.search.baseline and "none" not in types_raw:
        types_raw = ["none", *types_raw]  # the baseline is trained in every study (search.baseline)
    types = _parse_choice_list("attention", types_raw, list(ATTENTION_TYPES), "attention.type", problems,
                               "attention type")

    all_stages = backbone_stages(job)
    stages = _parse_stages(att.stages, all_stages, job.backbone.name, problems)
    blocks = _parse_choice_list("blocks", att.blocks, BLOCK_CHOICES, "attention.blocks", problems)
    position = _parse_choice_list("position", att.position, POSITION_CHOICES, "attention.position", problems)

    chosen = types.values() if types else []
    knobs: dict[str, dict[str, Param]] = {}
    for type_name, entries in (att.knobs or {}).items():
        where = f"attention.knobs.{type_name}"
        if type_name not in ATTENTION_TYPES:
            problems.add(where, f"unknown attention type {short_repr(type_name)}"
                         f"{did_you_mean(type_name, ATTENTION_TYPES)}; "
                         f"valid: {sorted(ATTENTION_TYPES)}")
            continue
        if types and type_name not in chosen:
            problems.add(where, f"knobs for {type_name!r}, which is not in attention.type {chosen}; add it to "
                         f"attention.type or remove these knobs")
            continue
        valid = sorted([*get_spec(type_name).knobs, *_extra_knobs(type_name)])
        knobs[type_name] = {}
        for knob, value in (entries or {}).items():
            if knob not in valid:
                problems.add(f"{where}.{knob}", f"attention type {type_name!r} has no knob {short_repr(knob)}"
                             f"{did_you_mean(knob, valid)}; its knobs are {valid or '[] (none)'}")
                continue
            param = _parse_knob(type_name, knob, value, f"{where}.{knob}", problems)
            if param is not None:
                knobs[type_name][knob] = param

    train: dict[str, Param] = {}
    for name, value in (spec.train or {}).items():
        param = _parse_train(str(name), value, job.train, f"train.{name}", problems)
        if param is not None:
            train[str(name)] = param

    scale: dict[str, Param] = {}
    for section in SCALE_FIELDS:
        for name, value in (getattr(spec, section) or {}).items():
            param = _parse_scale(section, str(name), value, job, problems)
            if param is not None:
                scale[param.name] = param

    problems.raise_if_any()
    return SearchSpace(source, prefix, job.backbone.name, all_stages, types, stages, blocks, position, knobs, train,
                       scale)


def _parse_scale(section: str, name: str, raw: Any, job: Job, problems: _Problems) -> Param | None:
    """``backbone.width_mult`` (> 0, on a backbone with a width multiplier) or ``data.image_size`` (int >= 4)."""
    path = f"{section}.{name}"
    valid = SCALE_FIELDS[section]
    if name not in valid:
        problems.add(path, f"{section}.{name} cannot be searched{did_you_mean(name, valid)}; searchable under "
                     f"{section!r}: {list(valid)}")
        return None
    param = _parse_value(path, raw, path, problems)
    if param is None:
        return None
    if name == "image_size":
        if param.kind == "float":
            problems.add(path, "data.image_size is an integer: low and high must be integers")
            return None

        def check(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < 4:
                raise ValueError(f"data.image_size must be an integer >= 4, got {short_repr(v)}")
            return v

        return _check_each(param, check, path, problems)
    if not get_backbone(job.backbone.name).width_mult:
        supported = [n for n, b in BACKBONES.items() if b.width_mult]
        problems.add(path, f"{job.backbone.name} has no width multiplier; backbones with one: {supported}")
        return None

    def check_width(v: Any) -> float:
        if not is_number(v) or not 0 < v <= 4:
            raise ValueError(f"backbone.width_mult must be a number in (0, 4], got {short_repr(v)}")
        return float(v)

    return _check_each(param.as_float(), check_width, path, problems)


def load_space(job: Job) -> SearchSpace:
    """The validated search space of ``job`` (a file named by ``search.space`` or the inline mapping).

    Cached per job content (and the file's modification time), so repeated calls in one process parse once.
    """
    ref = job.search.space
    mtime = 0.0
    if isinstance(ref, str):
        if not os.path.isfile(ref):
            hint = (" (a relative search.space is looked up in the working directory, then next to the job file)"
                    if job.source else "")
            raise ConfigError(f"{job.label}: search.space: no such search-space file: {ref}{hint}")
        mtime = os.path.getmtime(ref)
    return _load_space(job.model_dump_json(), job.label, mtime)


@functools.lru_cache(maxsize=32)
def _load_space(job_json: str, label: str, mtime: float) -> SearchSpace:  # mtime: an edited file is read again
    job = Job.model_validate_json(job_json)
    job._label = label
    ref = job.search.space
    if isinstance(ref, str):
        return parse_space(read_yaml(ref, "search-space file"), job, ref)
    return parse_space(ref, job, label, "search.space.")
