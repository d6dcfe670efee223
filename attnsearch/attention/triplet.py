"""Triplet Attention (Misra et al., WACV 2021, arXiv 2010.03045)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import max_mean_pools, zpool_image
from .registry import AttentionSpec, Knob, register_attention


class _ZGate(nn.Module):
    """sigmoid(BN(conv_kxk([max, mean]))) on a 2-map Z-pool: conv without bias, BN momentum 0.01."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(pooled)).sigmoid()


class TripletAttention(nn.Module):
    """y = mean of three gated copies of x: C-W gate (pooled over H), H-C gate (pooled over W), H-W gate
    (pooled over C), as landskape-ai/triplet-attention.

    The official code permutes x twice with contiguous copies and gates each permuted copy; here each branch
    pools x along its axis directly (one fused pooling op with an index-based max backward), and the three
    gates (B,C,1,W), (B,C,H,1), (B,1,H,W) are summed by broadcasting before one multiply. Same math, no
    full-size permute copies.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 7, no_spatial: bool = False) -> None:
        super().__init__()
        _check_triplet(channels, None, kernel_size=kernel_size, no_spatial=no_spatial)
        self.cw = _ZGate(kernel_size)
        self.hc = _ZGate(kernel_size)
        self.hw = None if no_spatial else _ZGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (2, 3) if self.hw is None else (2, 3, 1)
        pools = max_mean_pools(x, dims)
        scale = 1.0 / len(dims)  # the average of the branches, folded into the small gate maps
        # C-W branch: official permutes to (B, H, C, W) and Z-pools over H -> a (C, W) image
        g_cw = self.cw(zpool_image(pools[0], pools[1])).mul(scale).transpose(1, 2)  # (B, C, 1, W)
        # H-C branch: official permutes to (B, W, H, C) and Z-pools over W -> an (H, C) image
        g_hc = self.hc(zpool_image(pools[2].transpose(1, 2), pools[3].transpose(1, 2)))
        g_hc = g_hc.mul(scale).permute(0, 3, 2, 1)  # (B, C, H, 1)
        gate = g_cw + g_hc
        if self.hw is not None:
            gate = gate.add_(self.hw(zpool_image(pools[4], pools[5])).mul(scale))  # (B, 1, H, W)
        return x * gate


def _check_triplet(channels: Any, spatial_size: Any, *, kernel_size: int, no_spatial: bool) -> None:
    if kernel_size % 2 == 0:
        raise ValueError(f"triplet.kernel_size must be odd (same-size padding), e.g. 3, 5, 7; got {kernel_size}")


def _triplet_params(channels: int, spatial_size: Any, kernel_size: int, no_spatial: bool) -> int:
    return (2 if no_spatial else 3) * (2 * kernel_size * kernel_size + 2)  # per gate: conv 2->1 + BN(1)


TRIPLET = register_attention(
    AttentionSpec(
        name="triplet",
        cls=TripletAttention,
        knobs={
            "kernel_size": Knob("kernel_size", "int", 7, low=1, high=15, odd=True, doc="odd Z-gate conv size"),
            "no_spatial": Knob("no_spatial", "bool", False, doc="drop the H-W branch (average of 2 branches)"),
        },
        slot="residual_end",
        param_count=_triplet_params,
        summary="Triplet Attention: three Z-pool conv gates over (C,W), (H,C), (H,W) planes, averaged",
        check=_check_triplet,
    )
)
