"""``build_model``: a backbone, attention modules at the chosen sites, and optional weights."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..attention.registry import build_attention
from .backbones import BACKBONES, Backbone, get_backbone
from .sites import Placement, Site, resolve_placement
from .slots import is_attention_key, slot_name


def build_model(
    backbone: str,
    num_classes: int = 1000,
    attention: Mapping[str, Any] | None = None,
    input_size: int | Sequence[int] | None = None,
    width_mult: float = 1.0,
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
) -> nn.Module:
    """Build ``backbone`` with ``attention`` inserted; see :mod:`attnsearch.models.sites` for the dict's keys.

    ``input_size`` (default: the backbone's native size) only matters for modules sized by the feature map
    (NAM's spatial branch) and for the feature-map checks. ``pretrained`` loads torchvision's DEFAULT ImageNet
    weights (downloaded once into the torch hub cache); ``weights_path`` loads a local state dict. Either way the
    backbone keys must match exactly, attention keys may be missing, and the classifier is left freshly
    initialised when ``num_classes`` differs from the file's.

    Args:
        backbone: a registered backbone (``attnsearch sites --help`` lists them), e.g. ``"resnet20"``.
        num_classes: the classifier's outputs.
        attention: where and which attention to insert (``type``, ``stages``, ``blocks``, ``position`` and the
            type's knobs); None for the plain backbone.
        input_size: the image side (or (height, width)) the model sees.
        width_mult: the backbone's channel multiplier.
        pretrained: load torchvision's ImageNet weights for the backbone.
        weights_path: load the backbone's weights from this local state dict instead.
    """
    bb = get_backbone(backbone)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be true or false, got {pretrained!r}")
    if pretrained and weights_path is not None:
        raise ValueError("give either pretrained: true or weights_path, not both")
    if pretrained and bb.tv_weights is None:
        with_weights = [n for n, b in BACKBONES.items() if b.tv_weights]
        raise ValueError(
            f"pretrained: torchvision has no ImageNet weights for {backbone}; backbones with weights: {with_weights} "
            "(or load your own with weights_path)"
        )
    placement, sites = resolve_placement(backbone, attention, input_size, width_mult)
    model = bb.build(num_classes, float(width_mult))
    if placement is not None:
        insert_attention(model, placement, sites)
    if pretrained:
        load_weights(model, _torchvision_state_dict(bb), bb.classifier, source=f"torchvision {bb.tv_weights}")
    elif weights_path is not None:
        load_weights(model, read_state_dict(weights_path), bb.classifier, source=str(weights_path))
    return model


def insert_attention(model: nn.Module, placement: Placement, sites: Sequence[Site]) -> None:
    """Put one ``placement.type`` module into the slot of every site."""
    for site in sites:
        module = build_attention(placement.type, site.channels, spatial_size=site.spatial_size, **placement.knobs)
        # plain attributes survive deepcopy/pickle; the FLOPs counter attributes work to sites through them
        module._attnsearch_site = site.name
        module._attnsearch_type = placement.type
        setattr(model.get_submodule(site.block_path), slot_name(site.position), module)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Site name -> inserted attention module, in network order."""
    return {m._attnsearch_site: m for m in model.modules() if hasattr(m, "_attnsearch_site")}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (tensors only, ``weights_only=True``); unwraps ``{"model": sd}`` /
    ``{"state_dict": sd}`` checkpoints and a DataParallel ``module.`` prefix."""
    if not os.path.isfile(path):
        raise ValueError(f"weights_path {str(path)!r} does not exist or is not a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path {str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], classifier: str, source: str) -> None:
    """Load ``state`` strictly on the backbone keys; attention keys may be missing; a classifier of another
    size is skipped (the model keeps its new one)."""
    own = model.state_dict()
    cls_keys = [k for k in own if k.startswith(classifier)]
    replace_classifier = any(k in state and state[k].shape != own[k].shape for k in cls_keys)
    skip = set(cls_keys) if replace_classifier else set()

    def optional(key: str) -> bool:  # old checkpoints may lack BN's counter
        return is_attention_key(key) or key in skip or key.endswith("num_batches_tracked")

    missing = [k for k in own if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and k not in skip and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label}: {keys[:5]}{more}")
    if problems:
        raise ValueError(f"weights from {source} do not fit this model: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)


def _torchvision_state_dict(bb: Backbone) -> Mapping[str, torch.Tensor]:
    import torchvision.models

    weights = getattr(torchvision.models, bb.tv_weights).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # offline, proxy, corrupt download: say where the file is expected
        raise RuntimeError(
            f"pretrained: could not load torchvision weights {weights} from the cache "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} or {weights.url}: {e}. "
            "Download them once with network access, or set weights_path to a local state dict."
        ) from e
