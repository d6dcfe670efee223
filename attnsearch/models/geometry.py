"""Analytic block geometry: channel counts and feature-map sizes per block, without building a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockInfo:
    """One residual / inverted-residual block as the insertion sites see it.

    ``mid_channels`` is the width at the block's ``mid`` site (ResNet: output of the 3x3 conv; MobileNetV2: the
    expanded width after the depthwise conv); ``out_channels`` the block output width. Both sites share
    ``spatial_size`` because every stride sits at or before the ``mid`` site.
    """

    path: str  # module path of the block inside the model, e.g. "layer3.2" or "features.7"
    stage: int  # 1-based
    index: int  # 0-based position inside its stage
    stage_len: int
    mid_channels: int
    out_channels: int
    spatial_size: tuple[int, int]
    has_residual: bool = True


def conv_out(size: tuple[int, int], kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Output size of a conv / pool with floor rounding (PyTorch's default, ceil_mode=False)."""
    return tuple((s + 2 * padding - kernel) // stride + 1 for s in size)  # type: ignore[return-value]


