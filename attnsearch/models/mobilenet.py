"""MobileNetV2 with attention slots, built by torchvision's own ``MobileNetV2`` class (same keys, init, FLOPs).

Sites in an inverted residual (``x`` = block input; the expansion 1x1 is absent in stage 1, t = 1):
    [pw 1x1 ConvBNReLU6] dw 3x3 ConvBNReLU6 [mid] pw-linear 1x1 conv-BN [residual_end] (+ x) [post_add] [stage_end]
``mid`` is CoordAttention's official slot (after the depthwise 3x3 conv+BN+ReLU6, before the 1x1 projection;
Andrew-Qibin/CoordAttention attpos.png). SimAM's official MobileNetV2 slot is one step earlier (after the dw conv,
before its BN; ZjjConan/SimAM); we use one ``mid`` site for every module. ``residual_end`` is ECA's, Triplet's and
NA's slot (after the pw-linear BN, before the add); blocks without a residual connection (stride 2 or a width
change) still have it, and there ``post_add`` sees the same tensor.
Stages are the seven rows (t, c, n, s) of the MobileNetV2 table (Sandler et al. 2018, Table 2).
"""

from __future__ import annotations

import torch
from torchvision.models import mobilenetv2 as tv

from .geometry import BlockInfo, conv_out
from .slots import init_slots

# (expansion t, channels c, blocks n, stride s): torchvision's default inverted_residual_setting
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(tv.InvertedResidual):
    """torchvision InvertedResidual + attention slots."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._dw_index = len(self.conv) - 3  # conv = [pw ConvBNReLU6]? + dw ConvBNReLU6 + pw-linear conv + BN
        init_slots(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, layer in enumerate(self.conv):
            out = layer(out)
            if i == self._dw_index and self.attn_mid is not None:
                out = self.attn_mid(out)
        if self.attn_residual_end is not None:
            out = self.attn_residual_end(out)
        if self.use_res_connect:
            out = x + out
        if self.attn_post_add is not None:
            out = self.attn_post_add(out)
        if self.attn_stage_end is not None:
            out = self.attn_stage_end(out)
        return out


def build_mobilenet_v2(num_classes: int, width_mult: float = 1.0) -> tv.MobileNetV2:
    return tv.MobileNetV2(num_classes=num_classes, width_mult=width_mult, block=InvertedResidual)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never below 90 % of ``v`` (TF-slim's rule, as torchvision's)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def mobilenet_v2_blocks(input_size: tuple[int, int], width_mult: float = 1.0) -> list[BlockInfo]:
    inp = make_divisible(32 * width_mult)
    hw = conv_out(input_size, 3, 2, 1)  # stem 3x3/2 ConvBNReLU6 = features.0
    out: list[BlockInfo] = []
    index = 1
    for stage, (t, c, n, s) in enumerate(SETTINGS, start=1):
        oup = make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hw = conv_out(hw, 3, stride, 1)
            hidden = int(round(inp * t))
            residual = stride == 1 and inp == oup
            out.append(BlockInfo(f"features.{index}", stage, i, n, hidden, oup, hw, residual))
            inp = oup
            index += 1
    return out
