"""The identity: the baseline every search compares against."""

from __future__ import annotations

from torch import nn

from .registry import AttentionSpec, register_attention


class NoAttention(nn.Identity):
    def __init__(self, channels: int) -> None:
        super().__init__()


NONE = register_attention(
    AttentionSpec(
        name="none",
        cls=NoAttention,
        knobs={},
        slot="residual_end",
        param_count=lambda channels, spatial_size: 0,
        summary="no attention (baseline)",
    )
)
