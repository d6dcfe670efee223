"""Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv 1709.01507)."""

from __future__ import annotations

import torch
from torch import nn

from ._ops import channel_gate, spatial_mean
from .registry import AttentionSpec, Knob, register_attention


class SqueezeExcite(nn.Module):
    """s = sigmoid(W2 relu(W1 GAP(x) + b1) + b2); y = x * s.

    FCs are 1x1 convs with bias, hidden width C // r, as in the official Caffe prototxt (hujie-frank/SENet).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(spatial_mean(x))))
        return channel_gate(x, s.sigmoid())


def _se_params(channels: int, spatial_size, reduction: int) -> int:
    hidden = max(1, channels // reduction)
    return 2 * channels * hidden + hidden + channels


SE = register_attention(
    AttentionSpec(
        name="se",
        cls=SqueezeExcite,
        knobs={"reduction": Knob("reduction", "int", 16, low=1, high=1024, doc="hidden width = C // r")},
        slot="residual_end",
        param_count=_se_params,
        summary="Squeeze-and-Excitation: channel gate from GAP -> FC -> ReLU -> FC -> sigmoid",
    )
)
