"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021, arXiv 2103.02907)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import directional_gate, directional_pool
from .registry import AttentionSpec, Knob, register_attention


class CoordAttention(nn.Module):
    """y = x * a_h(C x H x 1) * a_w(C x 1 x W) from direction-wise average pools.

    As Andrew-Qibin/CoordAttention coordatt.py: shared 1x1 conv C -> mip (bias) -> BN -> h-swish on the
    concatenated H and W pools, then one 1x1 conv mip -> C (bias) + sigmoid per direction; mip = max(8, C // r).
    Works on non-square maps (the split sizes are read from the input).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish(inplace=True)  # h_swish(x) = x * relu6(x + 3) / 6
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pool_h, pool_w = directional_pool(x)  # (B, C, H) pooled along W, (B, C, W) pooled along H
        # (B, C, H + W, 1): the official concat along the spatial axis
        y = self.act(self.bn1(self.conv1(torch.cat((pool_h, pool_w), 2).unsqueeze(3))))
        y_h, y_w = torch.split(y, (h, w), 2)
        a_h = self.conv_h(y_h).sigmoid()  # (B, C, H, 1)
        a_w = self.conv_w(y_w).sigmoid().view(b, c, 1, w)  # (B, C, 1, W)
        return directional_gate(x, a_h, a_w)


def _coord_params(channels: int, spatial_size: Any, reduction: int) -> int:
    mip = max(8, channels // reduction)
    return 3 * channels * mip + 3 * mip + 2 * channels  # conv1 + BN + conv_h + conv_w, all with bias


COORD = register_attention(
    AttentionSpec(
        name="coord",
        cls=CoordAttention,
        knobs={"reduction": Knob("reduction", "int", 32, low=1, high=1024, doc="mip = max(8, C // r)")},
        slot="mid",
        param_count=_coord_params,
        summary="Coordinate Attention: gates along H and along W from direction-wise pooling",
    )
)
