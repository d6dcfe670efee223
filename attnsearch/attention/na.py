"""NA: Normalization-Attention (Ma et al., "Attention Meets Normalization and Beyond", ICME 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import channel_gate, in_input_precision, rank2_outer, use_fused
from .registry import AttentionSpec, register_attention


class _SimilarityContext(torch.autograd.Function):
    """g_c = sum_i a_i x_ci, a = softmax_HW(-|m - mean(m)|), m = channel mean of x (see NormalizationAttention).

    Backward writes the input gradient once, as the rank-2 outer product g_c a_i + (1/C) dL/dm_i (one bmm).
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor):  # type: ignore[override]
        b, c, h, w = x.shape
        xf = x.view(b, c, h * w)
        dev = xf.mean(1)
        dev = dev - dev.mean(1, keepdim=True)  # m_i - mean(m)
        attn = dev.abs().neg().softmax(1)  # (B, HW)
        ctx.save_for_backward(x, attn, dev)
        return torch.bmm(xf, attn.view(b, 1, h * w).transpose(1, 2)).view(b, c)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, attn, dev = ctx.saved_tensors
        b, c, h, w = x.shape
        g_attn = torch.bmm(g.reshape(b, 1, c), x.view(b, c, h * w)).view(b, h * w)
        g_sim = attn * (g_attn - (attn * g_attn).sum(1, keepdim=True))  # softmax backward
        g_dev = -g_sim * dev.sign()
        g_m = g_dev - g_dev.mean(1, keepdim=True)
        return rank2_outer(g, attn, g.new_full((b, c), 1.0 / c), g_m, x.shape)


class NormalizationAttention(nn.Module):
    """Channel gate sigmoid(w * standardize_C(g) + b) from a similarity-weighted spatial context g.

    Final variant of 13952522076/NANet (resnet_na6 / mobilenet_na): with m the channel-mean map,
    a = softmax_HW(-|m - mean(m)|), g_c = sum_i a_i x_ci, standardised across channels with the unbiased std
    (+1e-5). w, b are scalars initialised to 0 and 1, so the gate starts at sigmoid(1) everywhere.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_na(channels, None)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.ones(1))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.ones_(self.bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Return g (B, C): the input averaged over positions with weights softmax(-|m_i - mean(m)|)."""
        if use_fused(x):
            return _SimilarityContext.apply(x)
        m = x.mean(1).flatten(1)  # other layouts (channels-last): plain autograd
        attn = (m - m.mean(1, keepdim=True)).abs().neg().softmax(1)
        return torch.einsum("bcp,bp->bc", x.flatten(2), attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.context(x)
        std, mean = torch.std_mean(g, 1, correction=1, keepdim=True)
        g = (g - mean) / (std + 1e-5)
        gate = torch.sigmoid(g * self.weight + self.bias)
        return channel_gate(x, gate.view(*g.shape, 1, 1))


def _check_na(channels: int, spatial_size: Any) -> None:
    if channels < 2:
        raise ValueError(
            f"na needs channels >= 2 (the context is standardised with the unbiased std across channels), "
            f"got channels={channels}"
        )


NA = register_attention(
    AttentionSpec(
        name="na",
        cls=NormalizationAttention,
        knobs={},
        slot="residual_end",
        param_count=lambda channels, spatial_size: 2,
        summary="NA: channel gate from a standardised, similarity-weighted spatial context (2 scalars)",
        check=_check_na,
    )
)
