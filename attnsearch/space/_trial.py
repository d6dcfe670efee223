"""From a space to trials and back: the Optuna define-by-run function, a trial's settings, the static checks."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .._schema_messages import format_validation_error
from .._yaml import parse_yaml
from ..attention import get_spec
from ..config import Job, TrainConfig
from ..models import check_attention_placement, list_sites
from ._cost import check_constraints, knob_combos, placements
from ._model import Param, SearchSpace, parse_stages_key, stages_key
from ._parse import NAM_PENALTY, SCALE_FIELDS, _Problems, load_space

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DefineByRun",
    "TrialSettings",
    "baseline_point",
    "check_space",
    "define_by_run",
    "feasible",
    "is_point",
    "materialize",
    "space_to_dict",
    "job_identity",
    "space_digest",
]


@dataclass
class TrialSettings:
    """A trial config turned back into what ``build_model`` and the training loop take."""

    attention: dict[str, Any] | None  # build_model's attention dict; None = plain backbone
    train: TrainConfig
    nam_penalty: float = 0.0  # NAM's sparsity weight p (0: off)
    width_mult: float = 1.0  # the backbone's width multiplier for this trial
    image_size: int | None = None  # the side of the images this trial sees (None: the dataset's)


# --------------------------------------------------------------------------------------------------- Optuna


class DefineByRun:
    """Optuna define-by-run function for a space; a module-level class so that it pickles (Ray's OptunaSearch
    pickles its ``space`` with the searcher state when it checkpoints the experiment)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        space, out = self.space, {}

        def take(param: Param) -> Any:
            out[param.name] = param.sample(trial)
            return out[param.name]

        for param in space.scale.values():
            take(param)
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


def baseline_point(job: Job, space: SearchSpace) -> dict[str, Any]:
    """The params of the study's baseline: ``attention: none`` with the job's own training settings wherever the
    space lets a value be chosen (a dimension whose range does not hold the job's value is left to the sampler).
    """
    point: dict[str, Any] = {space.types.name: "none"}
    defaults = {**{f"train.{name}": getattr(job.train, name) for name in space.train},
                "backbone.width_mult": job.backbone.width_mult, "data.image_size": job.data.resolved_image_size}
    for param in [*space.scale.values(), *space.train.values()]:
        value = defaults[param.name]
        if not param.is_const and param.contains(value):
            point[param.name] = value
    return point


def is_point(config: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    """Whether a trial config holds every value of ``point`` (e.g. the baseline's)."""
    return all(config.get(key) == value for key, value in point.items())


def define_by_run(space: SearchSpace) -> Callable[[optuna.trial.Trial], dict[str, Any]]:
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
    """Trial config (Optuna/Ray params) -> build_model's attention dict, the trial's TrainConfig and NAM's p.

    ``train.seed`` in ``params`` sets the seed even when the space does not search it (the runs of
    ``attnsearch retrain`` carry one per run); other keys outside the space are ignored.
    """
    space = load_space(job)
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
    if "seed" not in space.train and "train.seed" in params:  # a fixed-config run's seed (attnsearch retrain)
        updates["seed"] = _coerce(params["train.seed"])
    try:
        train = TrainConfig.model_validate({**job.train.model_dump(), **updates})
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, "trial", TrainConfig, "train.")) from None
    scale = {name: _value(params, param, numeric=True) for name, param in space.scale.items()}
    return TrialSettings(
        attention=attention, train=train, nam_penalty=nam_penalty,
        width_mult=float(scale.get("backbone.width_mult", job.backbone.width_mult)),
        image_size=int(scale.get("data.image_size", job.data.resolved_image_size)),
    )


# --------------------------------------------------------------------------------------------------- checks


def _place(job: Job, attention: dict[str, Any], width_mult: float, size: int) -> list[Any]:
    return check_attention_placement(job.backbone.name, attention, input_size=size, width_mult=width_mult)


def _scales(job: Job, space: SearchSpace) -> list[tuple[float, int]]:
    """Every (width multiplier, image size) a trial may get: both ends of a range, every choice."""
    widths = space.scale["backbone.width_mult"].values() if "backbone.width_mult" in space.scale else [
        job.backbone.width_mult]
    sizes = space.scale["data.image_size"].values() if "data.image_size" in space.scale else [
        job.data.resolved_image_size]
    return [(float(w), int(s)) for w in widths for s in sizes]


def feasible(job: Job, params: Mapping[str, Any]) -> str | None:
    """None when this trial's combination can be built, else the reason (the trial reports it as infeasible)."""
    try:
        settings = materialize(job, params)
        if settings.attention is None:
            return None
        if not _place(job, settings.attention, settings.width_mult, settings.image_size):
            return f"{settings.attention['type']}: no insertion site for {settings.attention}"
    except ValueError as exc:
        return str(exc)
    return None


def _site_channels(job: Job, stages: Sequence[str], scales: Sequence[tuple[float, int]]) -> list[int]:
    wanted = {s for key in stages for s in parse_stages_key(key)}
    return sorted({s.channels for w, size in scales for s in list_sites(job.backbone.name, size, w)
                   if s.stage in wanted})


def _unplaceable(job: Job, space: SearchSpace, attention: Mapping[str, Any],
                 scales: Sequence[tuple[float, int]]) -> str | None:
    """None when some scale and placement of the space holds ``attention`` (a type and its knobs), else the
    first placement's reason."""
    reasons = []
    for (width, size), where in itertools.product(scales, placements(space)):
        try:
            if _place(job, {**attention, **where}, width, size):
                return None
            reasons.append(f"stages {stages_key(where['stages'])}, blocks {where['blocks']}, position "
                           f"{where['position']}: no insertion site")
        except ValueError as exc:
            reasons.append(str(exc))
    return reasons[0]


def _knob_path(space: SearchSpace, type_name: str) -> str:
    """Where a type's placement problem lies: the one knob it varies, its knobs, or the type itself."""
    params = {k: p for k, p in space.knobs.get(type_name, {}).items() if k != NAM_PENALTY}
    varied = [k for k, p in params.items() if not p.is_const] or list(params)
    if len(varied) == 1:
        return f"attention.knobs.{type_name}.{varied[0]}"
    return f"attention.knobs.{type_name}" if params else "attention.type"


def check_space(job: Job, space: SearchSpace | None = None) -> None:
    """Static check: every type, with every categorical knob value (and both ends of every knob range), has at
    least one valid placement among the stage/block/position choices, and some configuration meets the job's
    ``constraints`` (``check_constraints``). Raises one ``ConfigError``."""
    space = space or load_space(job)
    problems = _Problems(space.source, space.prefix)
    scales = _scales(job, space)
    for type_name in space.types.values():
        if type_name == "none":
            continue
        for knobs in knob_combos(space, type_name)[0]:
            reason = _unplaceable(job, space, {"type": type_name, **knobs}, scales)
            if reason is None:
                continue
            what = ", ".join(f"{type_name}.{k}={v!r}" for k, v in knobs.items()) or f"type {type_name!r}"
            problems.add(_knob_path(space, type_name),
                         f"{what} has no valid placement on {job.backbone.name} for stages {space.stages.values()}, "
                         f"blocks {space.blocks.values()}, positions {space.position.values()} (site channels "
                         f"{_site_channels(job, space.stages.values(), scales)}): {reason}")
    problems.raise_if_any()
    check_constraints(job, space)


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
    out: dict[str, Any] = {}
    for section in SCALE_FIELDS:
        params = {name.split(".", 1)[1]: p.to_yaml() for name, p in space.scale.items() if name.startswith(section)}
        if params:
            out[section] = params
    out["attention"] = attention
    if space.train:
        out["train"] = {name: p.to_yaml() for name, p in space.train.items()}
    return out


def space_digest(space: SearchSpace) -> str:
    """SHA-256 of the resolved space (``space_to_dict``, keys sorted): equal for two files that search the same."""
    text = json.dumps(space_to_dict(space), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def job_identity(job: Job, space: SearchSpace | None = None) -> dict[str, str]:
    """What makes a study this job's: its name and the digest of its resolved search space (``space_digest``), so a
    ``--set`` of a training setting keeps the job the same and another space makes it another job.

    Args:
        job: the validated job.
        space: its search space (default: ``load_space(job)``).
    """
    return {"name": job.name, "space": space_digest(space if space is not None else load_space(job))}
