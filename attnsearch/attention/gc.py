"""GC: Global Context block (Cao et al., GCNet, arXiv 1904.11492)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import in_input_precision, rank2_outer, use_fused
from .registry import AttentionSpec, Knob, register_attention


class _AttentionPool(torch.autograd.Function):
    """GCNet attention pooling: context_c = sum_i softmax_i(w . x_i + b) x_ci.

    Backward writes the input gradient once: the context term g_c a_i and the mask-logit term w_c g_logit_i are
    a rank-2 outer product per sample (one bmm) instead of two full-size gradients that autograd would add.
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):  # type: ignore[override]
        b, c, h, w = x.shape
        xf = x.view(b, c, h * w)
        logits = torch.bmm(weight.view(1, 1, c).expand(b, 1, c), xf) + bias.view(1, 1, 1)  # 1x1 conv C -> 1
        attn = logits.softmax(2)  # (B, 1, HW), softmax over positions
        ctx.save_for_backward(x, weight, attn)
        return torch.bmm(xf, attn.transpose(1, 2)).view(b, c, 1, 1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, weight, attn = ctx.saved_tensors
        b, c, h, w = x.shape
        xf = x.view(b, c, h * w)
        gc = g.reshape(b, 1, c)
        g_attn = torch.bmm(gc, xf)  # (B, 1, HW)
        g_logit = attn * (g_attn - (attn * g_attn).sum(2, keepdim=True))  # softmax backward
        hw = h * w
        dx = rank2_outer(gc.view(b, c), attn.view(b, hw), weight.view(1, c).expand(b, c), g_logit.view(b, hw), x.shape)
        d_weight = torch.bmm(xf, g_logit.transpose(1, 2)).sum(0).view_as(weight)
        return dx, d_weight, g_logit.sum().view(1)


class GlobalContext(nn.Module):
    """y = x + T(ctx) ("add") or x * sigmoid(T(ctx)) ("mul"); ctx = sum_j softmax_j(W_k x_j) x_j.

    As xvjiarui/GCNet context_block.py with attention pooling: W_k is a 1x1 conv C -> 1 with bias; T is
    1x1 conv C -> C//r -> LayerNorm([C//r, 1, 1]) -> ReLU -> 1x1 conv -> C, whose last conv is zero-initialised
    (so the block starts as the identity for "add").
    """

    def __init__(self, channels: int, reduction: int = 16, fusion: str = "add") -> None:
        super().__init__()
        if fusion not in ("add", "mul"):
            raise ValueError(f"gc.fusion must be one of ['add', 'mul'], got {fusion!r}")
        hidden = max(1, channels // reduction)
        self.fusion = fusion
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # official reset_parameters: kaiming (fan_in) for the mask conv, zeros for the last transform conv
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooled context (B, C, 1, 1): softmax over the H*W positions of a 1x1 conv logit."""
        if use_fused(x):
            return _AttentionPool.apply(x, self.conv_mask.weight, self.conv_mask.bias)
        b, c = x.shape[:2]  # other layouts (channels-last): plain autograd
        attn = self.conv_mask(x).view(b, 1, -1).softmax(2)
        return torch.einsum("bcp,bp->bc", x.flatten(2), attn.view(b, -1)).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform(self.context(x))
        if self.fusion == "add":
            return x + t
        return x * t.sigmoid()

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}"


def _gc_params(channels: int, spatial_size: Any, reduction: int, fusion: str) -> int:
    h = max(1, channels // reduction)
    return (channels + 1) + (channels * h + h) + 2 * h + (h * channels + channels)  # mask, conv, LN, conv


GC = register_attention(
    AttentionSpec(
        name="gc",
        cls=GlobalContext,
        knobs={
            "reduction": Knob("reduction", "int", 16, low=1, high=1024, doc="transform width = C // r"),
            "fusion": Knob(
                "fusion", "choice", "add", choices=("add", "mul"), doc="add: x + T; mul: x * sigmoid(T)"
            ),
        },
        slot="residual_end",
        param_count=_gc_params,
        summary="GCNet global context: attention-pooled context, bottleneck transform, add/mul fusion",
    )
)
