"""BAM: Bottleneck Attention Module (Park et al., BMVC 2018, arXiv 1807.06514)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import in_input_precision, spatial_mean, use_fused
from .registry import AttentionSpec, Knob, register_attention


class _BamGate(torch.autograd.Function):
    """y = x * (1 + sigmoid(att)), att = mc + ms (sum) or mc * ms (product); mc (B,C,1,1), ms (B,1,H,W).

    Autograd's addcmul backward multiplies by the scalar value and accumulates x's two uses (extra full passes);
    here backward is dx = g + g * s and the branch gradients are reductions of q = g * x * s * (1 - s)
    (batched dot products for the product form).
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor, mc: torch.Tensor, ms: torch.Tensor, product: bool):  # type: ignore[override]
        sig = (mc * ms if product else mc + ms).sigmoid_()
        ctx.product = product
        ctx.save_for_backward(x, sig, mc, ms)
        return torch.addcmul(x, x, sig)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, sig, mc, ms = ctx.saved_tensors
        b, c, h, w = x.shape
        q = x * g
        q = torch.ops.aten.sigmoid_backward.grad_input(q, sig, grad_input=q)  # dL/d att, in place
        if ctx.product:
            qf = q.view(b, c, h * w)
            d_mc = torch.bmm(qf, ms.reshape(b, 1, h * w).transpose(1, 2)).view(b, c, 1, 1)
            d_ms = torch.bmm(mc.reshape(b, 1, c), qf).view(b, 1, h, w)
        else:
            d_mc = q.sum((2, 3), keepdim=True)
            d_ms = q.sum(1, keepdim=True)
        return torch.addcmul(g, g, sig), d_mc, d_ms, None


class BAM(nn.Module):
    """y = x * (1 + M), M = sigmoid(Mc + Ms) (paper, ``combine="sum"``) or sigmoid(Mc * Ms) (official code).

    Layers follow Jongchan/attention-module MODELS/bam.py: channel branch GAP -> Linear -> BN1d -> ReLU -> Linear;
    spatial branch 1x1 reduce -> BN -> ReLU -> 2 x (3x3 dilated -> BN -> ReLU) -> 1x1 to one map; all with bias.
    The paper's sum is the default because the official product is the acknowledged deviation (issues #39, #52).
    Works on non-square maps (the official GAP used kernel = H). Placed between stages, not inside blocks.
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, combine: str = "sum") -> None:
        super().__init__()
        if combine not in ("sum", "product"):
            raise ValueError(f"bam.combine must be one of ['sum', 'product'], got {combine!r}")
        hidden = max(1, channels // reduction)
        self.combine = combine
        self.channel_fc1 = nn.Linear(channels, hidden)
        self.channel_bn = nn.BatchNorm1d(hidden)
        self.channel_fc2 = nn.Linear(hidden, channels)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.spatial = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        if self.training and b == 1:
            # BatchNorm1d over a batch of one pooled vector has no variance; PyTorch's own error is cryptic here
            raise ValueError(
                "bam: the channel branch uses BatchNorm1d, which needs a batch size of at least 2 in training "
                "mode (got batch size 1); use a larger batch or call .eval()"
            )
        gap = spatial_mean(x).flatten(1)
        mc = self.channel_fc2(torch.relu(self.channel_bn(self.channel_fc1(gap))))
        mc = mc.view(b, c, 1, 1)
        ms = self.spatial(x)
        if not use_fused(x):
            att = (mc + ms) if self.combine == "sum" else (mc * ms)
            return x * (1.0 + att.sigmoid())
        return _BamGate.apply(x, mc, ms, self.combine == "product")


def _bam_params(channels: int, spatial_size: Any, reduction: int, dilation: int, combine: str) -> int:
    h = max(1, channels // reduction)
    channel = channels * h + h + 2 * h + h * channels + channels  # Linear, BN1d, Linear
    spatial = channels * h + h + 2 * h + 2 * (9 * h * h + h + 2 * h) + h + 1  # 1x1+BN, 2x(3x3+BN), 1x1 -> 1
    return channel + spatial


BAM_SPEC = register_attention(
    AttentionSpec(
        name="bam",
        cls=BAM,
        knobs={
            "reduction": Knob("reduction", "int", 16, low=1, high=1024, doc="hidden width = C // r"),
            "dilation": Knob("dilation", "int", 4, low=1, high=16, doc="dilation of the two 3x3 convs"),
            "combine": Knob(
                "combine", "choice", "sum", choices=("sum", "product"),
                doc="sum: paper sigmoid(Mc + Ms); product: official code sigmoid(Mc * Ms)",
            ),
        },
        slot="stage_end",
        param_count=_bam_params,
        summary="BAM: (1 + sigmoid(channel MLP + dilated-conv spatial map)) * x, between stages",
    )
)
