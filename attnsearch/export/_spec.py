"""A trial's model as a build spec (backbone, width, resolution, attention dict, input normalisation) and its
weights, and the folder format both are kept in (``spec.yaml`` + ``weights.pt``).

The spec is everything ``attnsearch.models.build_model`` needs to rebuild the architecture; the weights are a plain
state dict, read with ``torch.load(..., weights_only=True)`` (tensors only: no code runs when a model is loaded).
A pruned model's spec (``attnsearch prune``) adds ``pruning``: the ratio, the importance, the pruned convolutions'
widths and torch-pruning's pruning history, which ``attnsearch.prune.replay`` applies to the freshly built
unpruned architecture (format ``attnsearch-model/2``; a spec without ``pruning`` stays ``attnsearch-model/1``,
and both load).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..config import Job
from ..data import build_datasets, dataset_info
from ..models import build_model, get_backbone
from ..prune import replay
from ..space import materialize

__all__ = ["ModelSpec", "SPEC_FILE", "WEIGHTS_FILE", "SPEC_FORMAT", "spec_for_trial", "read_weights",
           "write_weights", "rebuild"]

SPEC_FILE = "spec.yaml"
WEIGHTS_FILE = "weights.pt"
SPEC_FORMAT = "attnsearch-model/1"
PRUNED_SPEC_FORMAT = "attnsearch-model/2"  # a spec with ``pruning``
_PRUNING_KEYS = ("ratio", "importance", "history")
# Datasets whose normalisation is computed from their own (small, local) training split, not a fixed table.
_COMPUTED_NORMALISATION = ("digits", "fake")


@dataclass
class ModelSpec:
    """What rebuilds a trial's model: ``build_model(backbone, num_classes, attention, input_size=image_size,
    width_mult=width_mult)``. ``mean``/``std`` normalise the input as the trial's data did (per channel, after
    scaling pixels to [0, 1]); ``source`` says where the weights came from (experiment, study, run, trial, epoch).
    ``pruning`` (a pruned model's): ``ratio``, ``importance``, ``history`` (torch-pruning's, replayed by ``build``),
    ``widths`` (output channels per convolution) and ``source_run`` (the unpruned model's run)."""

    backbone: str
    num_classes: int
    image_size: int
    width_mult: float = 1.0
    attention: dict[str, Any] | None = None
    dataset: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None

    def build(self) -> nn.Module:
        """The architecture, freshly initialised (``rebuild`` loads weights into it); pruned when ``pruning``."""
        model = build_model(self.backbone, num_classes=self.num_classes, attention=self.attention,
                            input_size=self.image_size, width_mult=self.width_mult)
        if self.pruning:
            replay(model, self.pruning["history"], self.image_size)
        return model

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["pruning"] is None:  # what attnsearch-model/1 readers know
            data.pop("pruning")
        return {"format": PRUNED_SPEC_FORMAT if self.pruning else SPEC_FORMAT, **data}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = SPEC_FILE) -> ModelSpec:
        """The spec a ``to_dict`` wrote; a ``ValueError`` names ``where`` and the key that is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: not a model spec (a mapping with backbone, num_classes, image_size, ...)")
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt not in (SPEC_FORMAT, PRUNED_SPEC_FORMAT):
            raise ValueError(f"{where}: format: expected {SPEC_FORMAT!r} or {PRUNED_SPEC_FORMAT!r}, got {fmt!r} "
                             "(written by another tool or a newer attnsearch?)")
        pruning = data.get("pruning")
        if (fmt == PRUNED_SPEC_FORMAT) != bool(pruning):
            raise ValueError(f"{where}: format {fmt!r} with{'out' if pruning is None else ''} a pruning section: "
                             f"{PRUNED_SPEC_FORMAT} specs (pruned models) have one, {SPEC_FORMAT} specs do not")
        if pruning is not None and (not isinstance(pruning, Mapping)
                                    or any(k not in pruning for k in _PRUNING_KEYS)):
            raise ValueError(f"{where}: pruning: must be a mapping with {list(_PRUNING_KEYS)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        for key in ("backbone", "num_classes", "image_size"):
            if key not in data:
                raise ValueError(f"{where}: {key}: missing")
        if not isinstance(data["num_classes"], int) or not isinstance(data["image_size"], int):
            raise ValueError(f"{where}: num_classes and image_size must be integers")
        if data.get("attention") is not None and not isinstance(data["attention"], Mapping):
            raise ValueError(f"{where}: attention: must be a mapping (build_model's attention dict) or null")
        return cls(**data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelSpec:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data, str(path))

    def describe_attention(self) -> str:
        """One line: ``none``, or the type with its knobs and placement (``se reduction=8, stages [3], ...``)."""
        if not self.attention or self.attention.get("type") in (None, "none"):
            return "none"
        att = dict(self.attention)
        kind = att.pop("type")
        place = {k: att.pop(k) for k in ("stages", "blocks", "position") if k in att}
        knobs = ", ".join(f"{k}={v}" for k, v in att.items())
        where = ", ".join(f"{k} {v}" for k, v in place.items())
        return f"{kind}" + (f" ({knobs})" if knobs else "") + (f" at {where}" if where else "")


def _num_classes(backbone: str, state: Mapping[str, torch.Tensor] | None) -> int | None:
    # the classifier's rows: what the trial actually trained (whatever the job's num_classes said)
    if not state:
        return None
    weight = state.get(f"{get_backbone(backbone).classifier}weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _normalisation(job: Job, image_size: int) -> tuple[int, list[float], list[float]]:
    cfg = job.data.model_copy(update={"image_size": image_size})
    info = build_datasets(cfg)[2] if cfg.dataset in _COMPUTED_NORMALISATION else dataset_info(cfg)
    return info.num_classes, [float(v) for v in info.mean], [float(v) for v in info.std]


def spec_for_trial(
    job: Job,
    params: Mapping[str, Any],
    *,
    state: Mapping[str, torch.Tensor] | None = None,
    source: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """The spec of the trial with these params (its config: a child run's params as ``pareto.load_runs`` types
    them): ``space.materialize`` gives its attention dict, width and image size; the number of classes is the
    classifier's in ``state`` when given (else the dataset's)."""
    settings = materialize(job, dict(params))  # a None is a value too (eca.kernel_size: adaptive)
    image_size = int(settings.image_size or dataset_info(job.data).image_size)
    classes, mean, std = _normalisation(job, image_size)
    return ModelSpec(
        backbone=job.backbone.name,
        num_classes=_num_classes(job.backbone.name, state) or classes,
        image_size=image_size,
        width_mult=float(settings.width_mult),
        attention=_plain(settings.attention),
        dataset=job.data.dataset,
        mean=mean,
        std=std,
        source=_plain(dict(source or {})),
    )


def _plain(value: Any) -> Any:
    """YAML-safe: tuples to lists, numpy/pandas scalars to Python's."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def write_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """A state dict on the CPU, contiguous (a channels_last trial's tensors load into any model)."""
    path = Path(path)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
    return path


def read_weights(source: str | os.PathLike | bytes) -> dict[str, torch.Tensor]:
    """A state dict from a file (or its bytes), tensors only (``weights_only=True``)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    state = torch.load(stream, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source if not isinstance(source, bytes) else 'weights'}: not a state dict (a mapping "
                         "of names to tensors)")
    return dict(state)


def rebuild(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The spec's architecture with ``state`` loaded (strictly: every key, every shape), in eval mode."""
    model = spec.build()
    what = f"the weights do not fit the spec's model ({spec.backbone} x{spec.width_mult:g}, attention " \
           f"{spec.describe_attention()})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ValueError(f"{what}: {len(lines)} shape mismatch(es), e.g. {lines[0] if lines else exc}") from None
    if missing or unexpected:
        raise ValueError(f"{what}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval()
