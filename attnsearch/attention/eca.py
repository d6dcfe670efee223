"""ECA: Efficient Channel Attention (Wang et al., CVPR 2020, arXiv 1910.03151)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._ops import channel_gate, spatial_mean
from .registry import AttentionSpec, Knob, register_attention


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """Adaptive k = |log2(C)/gamma + b/gamma|_odd as timm computes it: t = int(|log2 C + b| / gamma), odd, >= 3."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nn.Module):
    """y = x * sigmoid(conv1d_k(GAP(x))): 1-D conv across channels, zero padding, no bias (BangguWu/ECANet)."""

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0
    ) -> None:
        super().__init__()
        _check_eca(channels, None, kernel_size=kernel_size, gamma=gamma, beta=beta)
        k = kernel_size if kernel_size is not None else eca_kernel_size(channels, gamma, beta)
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.conv(spatial_mean(x).view(b, 1, c))
        return channel_gate(x, y.sigmoid().view(b, c, 1, 1))


def _check_eca(channels: int, spatial_size: Any, *, kernel_size: int | None, gamma: float, beta: float) -> None:
    """The constructor's rules; the registry's knobs (odd, ranges, finite) enforce the same on the search space."""
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(
            f"eca.kernel_size must be odd (zero padding (k-1)/2): 1, 3, 5, ...; or None (adaptive), got {kernel_size}"
        )
    if not gamma > 0 or not math.isfinite(gamma):  # NaN fails every comparison
        raise ValueError(f"eca.gamma must be a finite number > 0, got {gamma}")
    if not math.isfinite(beta):
        raise ValueError(f"eca.beta must be a finite number, got {beta}")


def _eca_params(channels: int, spatial_size: Any, kernel_size: int | None, gamma: float, beta: float) -> int:
    return kernel_size if kernel_size is not None else eca_kernel_size(channels, gamma, beta)


ECA = register_attention(
    AttentionSpec(
        name="eca",
        cls=EfficientChannelAttention,
        knobs={
            "kernel_size": Knob(
                "kernel_size", "int", None, low=1, high=31, odd=True, doc="odd; None = adaptive from C"
            ),
            "gamma": Knob("gamma", "float", 2.0, low=0.1, high=16.0, doc="adaptive-k gamma"),
            "beta": Knob("beta", "float", 1.0, low=-16.0, high=16.0, doc="adaptive-k b"),
        },
        slot="residual_end",
        param_count=_eca_params,
        summary="ECA: channel gate from a k-tap 1-D conv over GAP(x), k adaptive in C",
        check=_check_eca,
    )
)
