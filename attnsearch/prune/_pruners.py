"""torch-pruning layer pruners for what its autograd tracer cannot see into: attnsearch's attention modules and the
option-A shortcut of the CIFAR ResNets (``attnsearch.models.resnet.PadShortcut``).

torch-pruning finds coupled channels by tracing the autograd graph, which would walk through an attention module's
gate branch (fused autograd Functions, views, per-group reshapes) as element-wise ops. Registered as customized
layers (``DependencyGraph.register_customized_layer``), each module is one node instead: its channels are coupled
in to out (it gates, it does not mix widths), and the pruner below removes a channel from every parameter of the
module that is indexed by it. The hidden widths of the modules' own bottlenecks (SE's C // r, ...) are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

try:  # the `prune` extra; attnsearch.export imports this package to rebuild pruned models
    import torch_pruning as tp
    from torch_pruning.pruner.function import BasePruningFunc
except ImportError:  # pragma: no cover - exercised where the extra is missing
    tp = None
    BasePruningFunc = object  # type: ignore[assignment,misc]

from ..models.resnet import PadShortcut

__all__ = ["AttentionPruner", "PadShortcutPruner", "CHANNEL_LAYERS", "UNPRUNABLE", "require_torch_pruning"]

# attention type -> (submodules whose input channels are the gated channels, submodules whose output channels are)
CHANNEL_LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "se": (("fc1",), ("fc2",)),
    "cbam": (("fc1",), ("fc2",)),
    "bam": (("channel_fc1", "spatial.0"), ("channel_fc2",)),
    "coord": (("conv1",), ("conv_h", "conv_w")),
    "gc": (("conv_mask", "transform.0"), ("transform.3",)),
    "nam": ((), ("bn",)),  # NAM's channel BN (gamma, beta, running statistics); the pixel branch is per position
    "eca": ((), ()),  # a k-tap conv across channels: no per-channel parameter
    "simam": ((), ()),
    "na": ((), ()),
    "triplet": ((), ()),
}

# attention types that cannot be pruned, and why (checked before anything is pruned)
UNPRUNABLE: dict[str, str] = {
    "sa": (
        "Shuffle Attention ends with a channel shuffle (output channel 2i + s is input channel s * C/2 + i) and "
        "shares its gate parameters across its G groups: removing channel k after it means removing another "
        "channel before it, in units of 2G channels that the shuffle scatters, which no index-preserving "
        "dependency graph (torch-pruning's) can express; a pruned SA model would be half-pruned"
    ),
}


def require_torch_pruning():
    """The torch_pruning module, or an ImportError that says how to install it."""
    if tp is None:
        raise ImportError("channel pruning needs torch-pruning: pip install 'attnsearch[prune]' (or torch-pruning)")
    return tp


def _in_fn(layer: nn.Module):
    if isinstance(layer, nn.Linear):
        return tp.prune_linear_in_channels
    if isinstance(layer, nn.modules.conv._ConvNd):
        return tp.prune_conv_in_channels
    raise TypeError(f"no input-channel pruner for {type(layer).__name__}")


def _out_fn(layer: nn.Module):
    if isinstance(layer, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(layer, nn.modules.conv._ConvNd):
        return tp.prune_conv_out_channels
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return tp.prune_batchnorm_out_channels
    raise TypeError(f"no output-channel pruner for {type(layer).__name__}")


class AttentionPruner(BasePruningFunc):
    """Prunes the gated channels of an inserted attention module (``_attnsearch_type`` names its type).

    Args:
        channels: module -> its current channel count; filled while the dependency graph is traced
            (``attnsearch.prune`` records each module's input width) and kept current here.
    """

    def __init__(self, channels: dict[nn.Module, int]) -> None:
        super().__init__(pruning_dim=1)
        self.channels = channels

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        kind = layer._attnsearch_type
        if kind in UNPRUNABLE or kind not in CHANNEL_LAYERS:
            raise ValueError(f"{kind}: {UNPRUNABLE.get(kind, 'no pruning rule for this attention type')}")
        idxs = sorted(int(i) for i in idxs)
        ins, outs = CHANNEL_LAYERS[kind]
        for name in ins:
            sub = layer.get_submodule(name)
            _in_fn(sub)(sub, idxs)
        for name in outs:
            sub = layer.get_submodule(name)
            _out_fn(sub)(sub, idxs)
        self.channels[layer] -= len(idxs)
        return layer

    prune_in_channels = prune_out_channels  # in and out are the same channels: torch-pruning couples them

    def get_out_channels(self, layer: nn.Module) -> int:
        return self.channels[layer]

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.channels[layer]


def _renumber(values: Sequence[int], removed: Sequence[int]) -> list[int]:
    removed = sorted(removed)
    return [v - sum(1 for r in removed if r < v) for v in values]


class PadShortcutPruner(BasePruningFunc):
    """The option-A shortcut's input (the previous stage's stream) and output (this stage's) are pruned
    independently: it keeps a channel map (``PadShortcut.channel_map``: output ``dst[i]`` = input ``src[i]``, the
    rest zeros), from which a pruned input channel or a pruned output channel drops its pair."""

    TARGET_MODULES = (PadShortcut,)

    @staticmethod
    def _pairs(layer: PadShortcut) -> tuple[list[int], list[int]]:
        if layer.channel_map is None:
            n = min(layer.in_channels, layer.out_channels)
            return list(range(n)), list(range(n))
        src, dst = layer.channel_map
        return list(src), list(dst)

    def prune_in_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        src, dst = self._pairs(layer)
        gone = {int(i) for i in idxs}
        keep = [(s, d) for s, d in zip(src, dst, strict=True) if s not in gone]
        layer.channel_map = (tuple(_renumber([s for s, _ in keep], gone)), tuple(d for _, d in keep))
        layer.in_channels -= len(gone)
        return layer

    def prune_out_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        src, dst = self._pairs(layer)
        gone = {int(i) for i in idxs}
        keep = [(s, d) for s, d in zip(src, dst, strict=True) if d not in gone]
        layer.channel_map = (tuple(s for s, _ in keep), tuple(_renumber([d for _, d in keep], gone)))
        layer.out_channels -= len(gone)
        return layer

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: PadShortcut) -> int:
        return layer.in_channels


def shortcut_weight(layer: PadShortcut, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The shortcut as a 1x1 conv weight (out, in, 1, 1): what the tracer sees in its place."""
    weight = torch.zeros(layer.out_channels, layer.in_channels, 1, 1, device=device, dtype=dtype)
    src, dst = PadShortcutPruner._pairs(layer)
    if src:
        weight[list(dst), list(src)] = 1.0
    return weight
