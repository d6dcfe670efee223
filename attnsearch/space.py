"""Search-space files -> a validated ``SearchSpace`` -> an Optuna define-by-run function, and back to a trial.

Format (a file referenced by ``search.space`` or the same mapping inline)::

    attention:
      type: [none, se, sa, nam]          # attention types to choose from
      stages: [[1, 2, 3], [3]]           # stage sets; or "all" (fixed) or "subsets" (every non-empty subset)
      blocks: [all]                      # subset of all|first|last
      position: [default]                # subset of default|residual_end|mid|post_add|stage_end
      knobs:                             # per type; sampled only when that type is chosen
        sa: {groups: [2, 4, 8]}
        nam: {penalty: {low: 1.0e-4, high: 1.0e-2, log: true}}
    train:                               # any TrainConfig field except epochs (the budget)
      lr: {low: 0.01, high: 0.3, log: true}

Value forms: a scalar is a constant, a list is a categorical choice (a one-element list is a constant),
``{low, high, log?, step?}`` is a range (int when low and high are both ints, else float).

Decisions: knobs given for a type that is not in ``attention.type`` are an error (a typo or a stale list would
otherwise silently search something else). ``nam.penalty`` is NAM's sparsity weight p, a training knob; it must
be > 0 when given and is 0 (the official code's default: regularisation off) when not. The type ``none``
samples no stages/blocks/position. Optuna parameter names are flat: ``attention``, ``stages`` ("1,2,3"),
``blocks``, ``position``, ``<type>.<knob>``, ``train.<field>``; no name contains "/" (Ray's nesting separator).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from .config import (
    NATIVE_IMAGE_SIZE,
    ConfigError,
    Job,
    TrainConfig,
    did_you_mean,
    format_validation_error,
    parse_yaml,
    read_yaml,
)

if TYPE_CHECKING:
    import optuna

BLOCKS = ("all", "first", "last")
POSITIONS = ("default", "residual_end", "mid", "post_add", "stage_end")
# TrainConfig fields a space may not sample: epochs is the budget (ASHA's max_t) and must be the same for all trials.
FIXED_TRAIN_FIELDS = ("epochs",)
_SCALARS = (type(None), bool, int, float, str)


# --------------------------------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a constant, a categorical choice or an int/float range."""

    name: str
    kind: str  # "const" | "categorical" | "int" | "float"
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def sample(self, trial: "optuna.trial.Trial") -> Any:
        if self.kind == "const":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """The values a static check should try: all of a categorical, both ends of a range."""
        if self.kind == "const":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.low != self.high else [self.low]

    def contains(self, value: Any) -> bool:
        if self.kind == "const":
            return value == self.value
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    @property
    def is_const(self) -> bool:
        return self.kind == "const"

    def to_yaml(self) -> Any:
        """The value form this parameter was written in."""
        if self.kind == "const":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
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

    def type_names(self) -> list[str]:
        return self.types.values()

    def params(self) -> list[Param]:
        """Every parameter of the space (constants included), in sampling order."""
        out = [self.types, self.stages, self.blocks, self.position]
        out += [p for knobs in self.knobs.values() for p in knobs.values()]
        return out + list(self.train.values())

    def where(self, path: str) -> str:
        return f"{self.source}: {self.prefix}{path}"


@dataclass
class TrialSettings:
    """A trial config turned back into what ``build_model`` and the training loop take."""

    attention: dict[str, Any] | None  # build_model's attention dict; None = plain backbone
    train: TrainConfig
    nam_penalty: float


def stages_key(stages: Sequence[int]) -> str:
    """Compact Optuna-categorical form of a stage set: ``[3, 1, 2]`` -> ``"1,2,3"``."""
    return ",".join(str(s) for s in sorted(set(stages)))


def parse_stages_key(key: str) -> list[int]:
    return [int(s) for s in str(key).split(",") if s.strip()]


# --------------------------------------------------------------------------------------------------- parsing


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _AttentionRaw(_Strict):
    type: Any
    stages: Any = "all"
    blocks: Any = "all"
    position: Any = "default"
    knobs: dict[str, dict[str, Any] | None] | None = None


class _SpaceRaw(_Strict):
    attention: _AttentionRaw | None = None
    train: dict[str, Any] | None = None


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
            problems.add(path, f"a range needs both low and high (got {raw})")
            return None
        low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
        for key, val in (("low", low), ("high", high), ("step", step)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))):
                problems.add(f"{path}.{key}", f"must be a number (got {val!r})")
                return None
        if not isinstance(log, bool):
            problems.add(f"{path}.log", f"must be true or false (got {log!r})")
            return None
        is_int = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
        if low > high:
            problems.add(path, f"low ({low}) must be <= high ({high})")
            return None
        if log and low <= 0:
            problems.add(f"{path}.low", f"a log range needs low > 0 (got {low})")
            return None
        if step is not None:
            if step <= 0:
                problems.add(f"{path}.step", f"must be > 0 (got {step})")
                return None
            if log:
                problems.add(path, "log and step cannot be combined (Optuna samples either on a log scale or a grid)")
                return None
            if is_int and (high - low) % step:
                problems.add(path, f"high - low ({high - low}) must be a multiple of step ({step})")
                return None
        if is_int:
            return Param(name, "int", low=int(low), high=int(high), log=log, step=step)
        return Param(name, "float", low=float(low), high=float(high), log=log,
                     step=None if step is None else float(step))
    if isinstance(raw, (list, tuple)):
        if not raw:
            problems.add(path, "an empty list leaves nothing to choose; give at least one value")
            return None
        bad = [v for v in raw if not isinstance(v, _SCALARS)]
        if bad:
            problems.add(path, f"categorical choices must be scalars (null, bool, number or string), got {bad[0]!r}")
            return None
        choices = tuple(dict.fromkeys(raw))
        if len(choices) == 1:
            return Param(name, "const", value=choices[0])
        return Param(name, "categorical", choices=choices)
    if isinstance(raw, _SCALARS):
        return Param(name, "const", value=raw)
    problems.add(path, f"expected a constant, a list of choices or {{low, high}} (got {raw!r})")
    return None


def _map_values(param: Param, fn: Callable[[Any], Any]) -> Param:
    """Apply a coercion to every value of a const/categorical Param (ranges are returned unchanged)."""
    if param.kind == "const":
        return Param(param.name, "const", value=fn(param.value))
    if param.kind == "categorical":
        return Param(param.name, "categorical", choices=tuple(dict.fromkeys(fn(v) for v in param.choices)))
    return param


def _check_each(param: Param, check: Callable[[Any], Any], path: str, problems: _Problems) -> Param | None:
    """Run ``check`` (returns the coerced value or raises ValueError) on every const/choice/range end."""
    try:
        if param.kind in ("const", "categorical"):
            return _map_values(param, check)
        lo, hi = check(param.low), check(param.high)
        return Param(param.name, param.kind, low=lo, high=hi, log=param.log, step=param.step)
    except ValueError as exc:
        problems.add(path, str(exc))
        return None


def _parse_knob(type_name: str, knob: str, raw: Any, path: str, problems: _Problems) -> Param | None:
    from .attention import get_spec

    param = _parse_value(f"{type_name}.{knob}", raw, path, problems)
    if param is None:
        return None
    if knob == NAM_PENALTY and type_name == "nam":
        def check(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"nam.penalty (the sparsity weight p) must be a number > 0, got {v!r}")
            return float(v)
        if param.kind == "int":
            param = Param(param.name, "float", low=float(param.low), high=float(param.high), log=param.log,
                          step=None if param.step is None else float(param.step))
        return _check_each(param, check, path, problems)
    spec_knob = get_spec(type_name).knobs[knob]
    if param.kind in ("int", "float"):
        if spec_knob.kind not in ("int", "float"):
            problems.add(path, f"{type_name}.{knob} is a {spec_knob.kind} knob: list its values instead of a range"
                         + (f", e.g. {list(spec_knob.choices)}" if spec_knob.choices else ", e.g. [false, true]"))
            return None
        if spec_knob.kind == "int" and param.kind == "float":
            problems.add(path, f"{type_name}.{knob} is an integer knob: low and high must be integers "
                         f"(got {param.low:g}..{param.high:g})")
            return None
        if spec_knob.kind == "float" and param.kind == "int":
            param = Param(param.name, "float", low=float(param.low), high=float(param.high), log=param.log,
                          step=None if param.step is None else float(param.step))
    return _check_each(param, lambda v: spec_knob.validate(type_name, v), path, problems)


def _parse_train(name: str, raw: Any, base: TrainConfig, path: str, problems: _Problems) -> Param | None:
    if name not in TrainConfig.model_fields:
        valid = [f for f in TrainConfig.model_fields if f not in FIXED_TRAIN_FIELDS]
        problems.add(path, f"unknown train field {name!r}{did_you_mean(name, valid)}; valid: {sorted(valid)}")
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
        if annotation in (float, float | None) and param.kind == "int":
            param = Param(param.name, "float", low=float(param.low), high=float(param.high), log=param.log,
                          step=None if param.step is None else float(param.step))
    base_dict = base.model_dump()

    def check(value: Any) -> Any:
        try:
            return getattr(TrainConfig.model_validate({**base_dict, name: value}), name)
        except ValidationError as exc:
            msg = format_validation_error(exc, "", TrainConfig).split("\n")[0].removeprefix(": ")
            msg = msg.removeprefix(f"{name}: ")
            raise ValueError(msg if "(got" in msg else f"{msg} (got {value!r})") from None

    return _check_each(param, check, path, problems)


def _parse_stages(raw: Any, all_stages: tuple[int, ...], backbone: str, problems: _Problems) -> Param | None:
    path = "attention.stages"
    full = stages_key(all_stages)
    if raw == "all":
        return Param("stages", "const", value=full)
    if raw == "subsets":
        subsets = [c for n in range(1, len(all_stages) + 1) for c in itertools.combinations(all_stages, n)]
        return Param("stages", "categorical", choices=tuple(stages_key(s) for s in subsets))
    if not isinstance(raw, list) or not raw:
        problems.add(path, f'expected "all", "subsets" or a non-empty list of stage sets like [[1, 2, 3], [3]] '
                     f"(got {raw!r})")
        return None
    if all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        problems.add(path, f"{raw} is ambiguous: write [{raw}] for one fixed stage set or "
                     f"{[[s] for s in raw]} to choose one stage")
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
                problems.add(where, f'expected a list of stages or "all" (got {item!r})')
                continue
        if isinstance(item, int) and not isinstance(item, bool):
            item = [item]
        if not isinstance(item, list) or not item or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in item):
            problems.add(where, f'expected a non-empty list of stage numbers or "all" (got {item!r})')
            continue
        bad = [s for s in item if s not in all_stages]
        if bad:
            problems.add(where, f"stage {bad[0]} does not exist in {backbone}; its stages are {list(all_stages)}")
            continue
        keys.append(stages_key(item))
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    return Param("stages", "const", value=keys[0]) if len(keys) == 1 else Param("stages", "categorical",
                                                                                  choices=tuple(keys))


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
            problems.add(path, f"unknown {what or name} {v!r}{did_you_mean(v, valid)}; valid: {sorted(valid)}")
            ok = False
    if not ok:
        return None
    choices = tuple(dict.fromkeys(values))
    return Param(name, "const", value=choices[0]) if len(choices) == 1 else Param(name, "categorical",
                                                                                  choices=choices)


def input_size(job: Job) -> int:
    """The image size the models of this job see (``data.image_size`` or the dataset's native size)."""
    return job.data.image_size or NATIVE_IMAGE_SIZE[job.data.dataset]


def backbone_stages(job: Job) -> tuple[int, ...]:
    from .models import list_sites

    sites = list_sites(job.backbone.name, input_size=input_size(job), width_mult=job.backbone.width_mult)
    return tuple(sorted({s.stage for s in sites}))


def parse_space(raw: Any, job: Job, source: str, prefix: str = "") -> SearchSpace:
    """Validate a raw space mapping for ``job``'s backbone; every problem is reported in one ``ConfigError``."""
    from .attention import ATTENTION_TYPES, get_spec

    problems = _Problems(source, prefix)
    if not isinstance(raw, dict):
        where = f"{source}: {prefix.rstrip('.')}" if prefix else source
        raise ConfigError(f"{where}: expected a mapping with keys attention, train (got {type(raw).__name__})")
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
    types = _parse_choice_list("attention", types_raw, list(ATTENTION_TYPES), "attention.type", problems,
                               "attention type")

    all_stages = backbone_stages(job)
    stages = _parse_stages(att.stages, all_stages, job.backbone.name, problems)
    blocks = _parse_choice_list("blocks", att.blocks, BLOCKS, "attention.blocks", problems)
    position = _parse_choice_list("position", att.position, POSITIONS, "attention.position", problems)

    chosen = types.values() if types else []
    knobs: dict[str, dict[str, Param]] = {}
    for type_name, entries in (att.knobs or {}).items():
        where = f"attention.knobs.{type_name}"
        if type_name not in ATTENTION_TYPES:
            problems.add(where, f"unknown attention type {type_name!r}{did_you_mean(type_name, ATTENTION_TYPES)}; "
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
                problems.add(f"{where}.{knob}", f"attention type {type_name!r} has no knob {knob!r}"
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

    problems.raise_if_any()
    return SearchSpace(source, prefix, job.backbone.name, all_stages, types, stages, blocks, position, knobs, train)


_CACHE: dict[str, SearchSpace] = {}


def load_space(job: Job) -> SearchSpace:
    """The validated search space of ``job`` (a file named by ``search.space`` or the inline mapping)."""
    ref = job.search.space
    job_file = job.label
    if isinstance(ref, str):
        if not os.path.isfile(ref):
            hint = (" (a relative search.space is looked up in the working directory, then next to the job file)"
                    if job.source else "")
            raise ConfigError(f"{job_file}: search.space: no such search-space file: {ref}{hint}")
        mtime = os.path.getmtime(ref)
    else:
        mtime = 0.0
    key = json.dumps([ref, mtime, job_file, job.backbone.name, job.backbone.width_mult, input_size(job),
                      job.train.model_dump(mode="json")], sort_keys=True, default=str)
    if key not in _CACHE:
        if len(_CACHE) >= 32:
            _CACHE.clear()
        if isinstance(ref, str):
            _CACHE[key] = parse_space(read_yaml(ref, "search-space file"), job, ref)
        else:
            _CACHE[key] = parse_space(ref, job, job_file, "search.space.")
    return _CACHE[key]


def load_space_file(path: str, job: Job) -> SearchSpace:
    """Validate a space file against ``job``'s backbone (without touching ``job.search.space``)."""
    return parse_space(read_yaml(path, "search-space file"), job, str(path))


# --------------------------------------------------------------------------------------------------- Optuna


class DefineByRun:
    """Optuna define-by-run function for a space; a module-level class so that it pickles (Ray's OptunaSearch
    pickles its ``space`` with the searcher state when it checkpoints the experiment)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: "optuna.trial.Trial") -> dict[str, Any]:
        space, out = self.space, {}

        def take(param: Param) -> Any:
            out[param.name] = param.sample(trial)
            return out[param.name]

        chosen = take(space.types)
        if chosen != "none":
            take(space.stages)
            take(space.blocks)
            take(space.position)
            for param in space.knobs.get(chosen, {}).values():
                take(param)
        for param in space.train.values():
            take(param)
        return out


def define_by_run(space: SearchSpace) -> Callable[["optuna.trial.Trial"], dict[str, Any]]:
    """Optuna define-by-run function for ``space`` (Ray ``OptunaSearch(space=...)``).

    A type's knobs are suggested only when that type is chosen; ``none`` samples no placement. The returned
    dict holds every value of the trial, constants included (Ray merges it over the captured suggestions).
    """
    return DefineByRun(space)


def _coerce(value: Any) -> Any:
    """Params read back from MLflow are strings: parse them as YAML scalars."""
    return parse_yaml(value, "trial param") if isinstance(value, str) else value


def _value(params: Mapping[str, Any], param: Param, numeric: bool = False) -> Any:
    if param.name in params:
        value = params[param.name]
        return _coerce(value) if numeric else value
    if param.is_const:
        return param.value
    raise ValueError(f"trial config has no {param.name!r} (keys: {sorted(params)})")


def materialize(job: Job, params: Mapping[str, Any]) -> TrialSettings:
    """Trial config (Optuna/Ray params) -> build_model's attention dict, the trial's TrainConfig and NAM's p."""
    from .attention import get_spec

    space = job.space
    type_name = _value(params, space.types)
    if type_name not in space.types.values():
        raise ValueError(f"attention {type_name!r} is not in the search space {space.types.values()}")
    attention: dict[str, Any] | None = None
    nam_penalty = 0.0
    if type_name != "none":
        stages = _value(params, space.stages)
        attention = {
            "type": type_name,
            "stages": parse_stages_key(stages) if isinstance(stages, str) else [int(s) for s in stages],
            "blocks": _value(params, space.blocks),
            "position": _value(params, space.position),
        }
        spec = get_spec(type_name)
        for knob, param in space.knobs.get(type_name, {}).items():
            value = _value(params, param, numeric=True)
            if knob == NAM_PENALTY and type_name == "nam":
                nam_penalty = float(value)
            else:
                attention[knob] = spec.knobs[knob].validate(type_name, value)
    updates = {name: _value(params, param, numeric=True) for name, param in space.train.items()}
    try:
        train = TrainConfig.model_validate({**job.train.model_dump(), **updates})
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, "trial", TrainConfig, "train.")) from None
    return TrialSettings(attention=attention, train=train, nam_penalty=nam_penalty)


# --------------------------------------------------------------------------------------------------- checks


def _place(job: Job, attention: dict[str, Any]) -> list[Any]:
    from .models import check_attention_placement

    return check_attention_placement(job.backbone.name, attention, input_size=input_size(job),
                                     width_mult=job.backbone.width_mult)


def feasible(job: Job, params: Mapping[str, Any]) -> str | None:
    """None when this trial's combination can be built, else the reason (the trial reports it as infeasible)."""
    try:
        settings = materialize(job, params)
        if settings.attention is None:
            return None
        if not _place(job, settings.attention):
            return f"{settings.attention['type']}: no insertion site for {settings.attention}"
    except ValueError as exc:
        return str(exc)
    return None


def _site_channels(job: Job, stages: Sequence[str]) -> list[int]:
    from .models import list_sites

    wanted = {s for key in stages for s in parse_stages_key(key)}
    sites = list_sites(job.backbone.name, input_size=input_size(job), width_mult=job.backbone.width_mult)
    return sorted({s.channels for s in sites if s.stage in wanted})


_MAX_COMBOS = 256


def check_space(job: Job, space: SearchSpace | None = None) -> None:
    """Static check: every type, with every categorical knob value (and both ends of every knob range), has at
    least one valid placement among the stage/block/position choices. Raises one ``ConfigError``."""
    space = space or job.space
    problems = _Problems(space.source, space.prefix)
    placements = list(itertools.product(space.stages.values(), space.blocks.values(), space.position.values()))
    for type_name in space.types.values():
        if type_name == "none":
            continue
        knob_params = {k: p for k, p in space.knobs.get(type_name, {}).items() if k != NAM_PENALTY}
        names = list(knob_params)
        grids = [knob_params[k].values() for k in names]
        n_combos = 1
        for g in grids:
            n_combos *= len(g)
        if n_combos <= _MAX_COMBOS:
            combos = [dict(zip(names, values)) for values in itertools.product(*grids)]
        else:  # too many: vary one knob at a time, the others at their first value
            first = {k: g[0] for k, g in zip(names, grids)}
            combos = [{**first, k: v} for k, g in zip(names, grids) for v in g]
        for knobs in combos:
            reasons = []
            for stages, blocks, position in placements:
                attention = {"type": type_name, "stages": parse_stages_key(stages), "blocks": blocks,
                             "position": position, **knobs}
                try:
                    if _place(job, attention):
                        break
                    reasons.append(f"stages {stages}, blocks {blocks}, position {position}: no insertion site")
                except ValueError as exc:
                    reasons.append(str(exc))
            else:
                varied = [k for k in names if not knob_params[k].is_const] or names
                path = f"attention.knobs.{type_name}.{varied[0]}" if len(varied) == 1 else (
                    f"attention.knobs.{type_name}" if names else "attention.type")
                what = ", ".join(f"{type_name}.{k}={v!r}" for k, v in knobs.items()) or f"type {type_name!r}"
                channels = _site_channels(job, space.stages.values())
                problems.add(path, f"{what} has no valid placement on {job.backbone.name} for stages "
                             f"{space.stages.values()}, blocks {space.blocks.values()}, positions "
                             f"{space.position.values()} (site channels {channels}): {reasons[0]}")
    problems.raise_if_any()


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """The resolved space in its own YAML format (stage sets expanded), for logging; it loads back unchanged."""
    attention: dict[str, Any] = {
        "type": space.types.values(),
        "stages": [parse_stages_key(k) for k in space.stages.values()],
        "blocks": space.blocks.values(),
        "position": space.position.values(),
    }
    knobs = {t: {k: p.to_yaml() for k, p in ks.items()} for t, ks in space.knobs.items() if ks}
    if knobs:
        attention["knobs"] = knobs
    out: dict[str, Any] = {"attention": attention}
    if space.train:
        out["train"] = {name: p.to_yaml() for name, p in space.train.items()}
    return out
