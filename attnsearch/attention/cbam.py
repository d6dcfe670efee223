"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv 1807.06521)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import channel_gate, max_mean_pools, zpool_image
from .registry import AttentionSpec, Knob, register_attention


class CBAM(nn.Module):
    """Channel gate then spatial gate: y' = x * Mc(x), y = y' * Ms(y').

    Mc = sigmoid(MLP(avg) + MLP(max)) with a shared C -> C//r -> C MLP with biases; Ms = sigmoid(BN(conv_kxk(
    [max_c, mean_c]))), conv without bias, BN momentum 0.01; all as in Jongchan/attention-module MODELS/cbam.py.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        _check_cbam(channels, None, reduction=reduction, kernel_size=kernel_size)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-apply the official init quirk (call again after a generic BN-weight=1 init loop)."""
        # official model_resnet.py init sets BN weights under "SpatialGate" to 0 -> spatial gate starts at 0.5
        nn.init.zeros_(self.spatial_bn.weight)
        nn.init.zeros_(self.spatial_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        mx, avg = max_mean_pools(x.flatten(2), (2,))
        # both pooled descriptors go through the shared MLP as one batch of 2B rows
        logits = self.fc2(self.act(self.fc1(torch.cat((avg, mx), 0)))).view(2, b, c).sum(0)
        x = channel_gate(x, logits.sigmoid().view(b, c, 1, 1))
        # official ChannelPool order: [max, mean]
        pooled = zpool_image(*max_mean_pools(x, (1,)))
        return x * self.spatial_bn(self.spatial_conv(pooled)).sigmoid()


def _check_cbam(channels: int, spatial_size: Any, *, reduction: int, kernel_size: int) -> None:
    if kernel_size % 2 == 0:
        raise ValueError(f"cbam.kernel_size must be odd (same-size padding), e.g. 3, 5, 7; got {kernel_size}")


def _cbam_params(channels: int, spatial_size: Any, reduction: int, kernel_size: int) -> int:
    hidden = max(1, channels // reduction)
    # shared MLP with biases + kxk conv 2->1 without bias + BN(1) weight and bias
    return 2 * channels * hidden + hidden + channels + 2 * kernel_size * kernel_size + 2


CBAM_SPEC = register_attention(
    AttentionSpec(
        name="cbam",
        cls=CBAM,
        knobs={
            "reduction": Knob("reduction", "int", 16, low=1, high=1024, doc="MLP hidden width = C // r"),
            "kernel_size": Knob("kernel_size", "int", 7, low=1, high=15, odd=True, doc="odd spatial conv size"),
        },
        slot="residual_end",
        param_count=_cbam_params,
        summary="CBAM: channel gate (shared MLP on avg+max pool) then spatial gate (kxk conv on [max, mean])",
        check=_check_cbam,
    )
)
