"""Structured channel pruning of a built attnsearch model with torch-pruning's dependency graph.

``prune_model`` removes a ratio of the channels of every dependency group (a conv's outputs and everything coupled
to them: BNs, the next convs' inputs, residual streams across blocks, depthwise convs, the gated channels of every
attention module, the classifier's inputs), ranked by an importance (``nam``, ``bn``, ``l1``, ``random``). The
classifier's outputs and the input image's channels are never pruned. ``replay`` repeats a recorded pruning on a
freshly built model of the same spec, which is how a pruned model's spec rebuilds it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import PadShortcut
from ._importance import IMPORTANCES, make_importance
from ._pruners import UNPRUNABLE, AttentionPruner, PadShortcutPruner, require_torch_pruning, shortcut_weight

__all__ = ["PruneResult", "UnprunableError", "check_prunable", "check_ratio", "prune_model", "replay",
           "conv_widths"]


class UnprunableError(ValueError):
    """The model holds a module that cannot be pruned consistently (the message names its type, site and why)."""


@dataclass
class PruneResult:
    """A pruned model and what was removed.

    ``history`` is torch-pruning's pruning history (``[root layer, out-channel pruning?, indices]`` per group), which
    ``replay`` applies to a fresh model; ``removed`` maps every layer whose outputs shrank to the output indices it
    lost (indices of the unpruned layer); ``widths`` are the convolutions' output channels before and after.
    """

    model: nn.Module
    ratio: float
    importance: str
    history: list[list[Any]]
    removed: dict[str, list[int]] = field(default_factory=dict)
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)

    @property
    def channels_removed(self) -> int:
        return sum(self.widths_before.values()) - sum(self.widths_after.values())


def check_ratio(ratio: Any) -> float:
    """``ratio`` as a float in (0, 1), the fraction of each group's channels removed, or a ValueError."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"pruning ratio must be a number in (0, 1), the fraction of channels removed; got {ratio!r}")
    return float(ratio)


def _attention(model: nn.Module) -> dict[nn.Module, str]:
    return {m: m._attnsearch_type for m in model.modules() if hasattr(m, "_attnsearch_type")}


def check_prunable(model: nn.Module) -> None:
    """Raise ``UnprunableError`` naming the attention type, its sites and the reason when ``model`` cannot be
    pruned consistently (nothing is changed)."""
    bad: dict[str, list[str]] = {}
    for module, kind in _attention(model).items():
        if kind in UNPRUNABLE:
            bad.setdefault(kind, []).append(getattr(module, "_attnsearch_site", "?"))
    if bad:
        kind, sites = next(iter(bad.items()))
        more = f" (+{len(sites) - 3} more)" if len(sites) > 3 else ""
        raise UnprunableError(f"attention type {kind!r} (at {', '.join(sites[:3])}{more}) cannot be pruned: "
                              f"{UNPRUNABLE[kind]}")


def _classifier(model: nn.Module) -> nn.Module:
    inside = {id(s) for m in _attention(model) for s in m.modules()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    if not linears:
        raise UnprunableError("no classifier (nn.Linear) found: attnsearch prunes its own backbones' models")
    return linears[-1]


@contextlib.contextmanager
def _opaque(model: nn.Module, channels: dict[nn.Module, int]) -> Iterator[None]:
    """While the dependency graph is traced: every attention module's output is its input times one, and every
    option-A shortcut is a fixed 1x1 conv, so the tracer sees one node per module (the customized layers) and
    nothing of their insides. Records each attention module's width in ``channels``."""

    def attention_hook(module, inputs, output):
        channels[module] = int(inputs[0].shape[1])
        return inputs[0] * 1.0

    def shortcut_hook(module, inputs, output):
        x = inputs[0]
        return F.conv2d(x, shortcut_weight(module, x.device, x.dtype), stride=module.stride)

    hooks = [m.register_forward_hook(attention_hook) for m in _attention(model)]
    hooks += [m.register_forward_hook(shortcut_hook) for m in model.modules() if isinstance(m, PadShortcut)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _customized(model: nn.Module, channels: dict[nn.Module, int]) -> dict[type, Any]:
    attention = AttentionPruner(channels)
    out: dict[type, Any] = {type(m): attention for m in _attention(model)}
    out[PadShortcut] = PadShortcutPruner()
    return out


def _example(model: nn.Module, input_size: int | Sequence[int]) -> torch.Tensor:
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    p = next(model.parameters())
    return torch.zeros(1, 3, *hw, device=p.device, dtype=p.dtype)


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every backbone convolution (attention modules' own layers left out)."""
    inside = {id(s) for m in _attention(model) for s in m.modules()}
    return {name: m.out_channels for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and id(m) not in inside}


def prune_model(
    model: nn.Module,
    ratio: float,
    *,
    input_size: int | Sequence[int],
    importance: str = "nam",
    seed: int = 0,
    inplace: bool = False,
) -> PruneResult:
    """Remove ``ratio`` of the channels of every dependency group of ``model`` (each group keeps
    ``int(C * (1 - ratio))`` of its ``C`` channels), lowest ``importance`` first.

    Args:
        model: a model of ``attnsearch.models.build_model`` (any backbone, any attention type but ``sa``).
        ratio: the fraction of channels removed, in (0, 1).
        input_size: the side (or ``(H, W)``) of the images the model sees; traced once at batch 1.
        importance: ``nam`` (NAM's scaling factors where NAM gates a channel, the backbone's BN scales elsewhere),
            ``bn`` (BN scales, Network Slimming), ``l1`` (group L1 norm of the weights) or ``random``.
        seed: the seed of ``random``.
        inplace: prune ``model`` itself instead of a copy.

    Returns:
        A ``PruneResult``; its model keeps the training mode ``model`` had.
    """
    tp = require_torch_pruning()
    ratio = check_ratio(ratio)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {list(IMPORTANCES)}, got {importance!r}")
    check_prunable(model)
    training = model.training
    model = model if inplace else copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    before = conv_widths(model)
    channels: dict[nn.Module, int] = {}
    removed: dict[str, list[int]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _opaque(model, channels):
            pruner = tp.pruner.BasePruner(
                model, _example(model, input_size), importance=make_importance(importance), pruning_ratio=ratio,
                ignored_layers=[_classifier(model)], customized_pruners=_customized(model, channels),
            )
        for group in pruner.step(interactive=True):
            for item in group:
                if pruner.DG.is_out_channel_pruning_fn(item.dep.handler) and item.dep.target.module in names:
                    removed[names[item.dep.target.module]] = sorted(int(i) for i in item.idxs)
            group.prune()
    model.train(training)
    return PruneResult(model, ratio, importance, [list(h) for h in pruner.DG.pruning_history()], removed,
                       before, conv_widths(model))


def replay(model: nn.Module, history: Sequence[Sequence[Any]], input_size: int | Sequence[int]) -> nn.Module:
    """Apply a ``PruneResult.history`` to ``model`` (a fresh build of the unpruned spec), in place; returns it."""
    tp = require_torch_pruning()
    training = model.training
    channels: dict[nn.Module, int] = {}
    with _opaque(model, channels):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=_example(model, input_size), customized_pruners=_customized(model, channels),
            verbose=False,
        )
    try:
        graph.load_pruning_history([[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history])
    except (AttributeError, ValueError, IndexError, AssertionError) as exc:
        raise ValueError(f"the pruning history does not fit this model: {exc}") from None
    return model.train(training)
