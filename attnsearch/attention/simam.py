"""SimAM: parameter-free 3-D attention from an energy function (Yang et al., ICML 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._ops import in_input_precision, spatial_dot, use_fused
from .registry import AttentionSpec, Knob, register_attention


class _SimAMFunction(torch.autograd.Function):
    """y = x * sigmoid(e), e = d * s + 0.5, d = (x - mu)^2, s = 1 / (4 (sum(d) / n + lambda)), per (b, c).

    Autograd would keep ~25 full-size ops around for this chain; the hand-derived backward needs 8:
    dL/dx = g sigma + 2 s q (x - mu) - (8 s^2 / n) (x - mu) sum(q (x - mu)^2) - (2 s / M) sum(q (x - mu)),
    with q = g x sigma (1 - sigma) and M = H*W (the mean's own gradient term cancels because sum(x - mu) = 0).
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor, e_lambda: float):  # type: ignore[override]
        m = x.shape[2] * x.shape[3]
        xc = x - x.mean((2, 3), keepdim=True)
        sum_sq = spatial_dot(xc, xc)
        s = 1.0 / (4.0 * (sum_sq / (m - 1) + e_lambda))
        sig = (xc * s).mul_(xc).add_(0.5).sigmoid_()
        ctx.save_for_backward(x, xc, sig, s)
        return x * sig

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, xc, sig, s = ctx.saved_tensors
        m = x.shape[2] * x.shape[3]
        q = x * g  # then dL/de in place, and q (x - mu) in place: every temporary is a fresh allocation on CPU
        qx = torch.ops.aten.sigmoid_backward.grad_input(q, sig, grad_input=q).mul_(xc)
        sum_q = qx.sum((2, 3), keepdim=True)
        sum_q2 = spatial_dot(qx, xc)
        dx = torch.addcmul(-2.0 * s * sum_q / m, g, sig)
        dx.addcmul_(qx, 2.0 * s)
        dx.addcmul_(xc, -8.0 * s * s * sum_q2 / (m - 1))
        return dx, None


class SimAM(nn.Module):
    """y = x * sigmoid((x - mu)^2 / (4 (v + lambda)) + 0.5), v = sum (x - mu)^2 / (H*W - 1) per (b, c).

    As ZjjConan/SimAM simam_module. n = H*W - 1 is 0 on 1x1 maps (the official code returns NaN there), so
    maps with fewer than 2 pixels raise ValueError, at construction when ``spatial_size`` is known.
    """

    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < 2:
            raise ValueError(
                f"simam needs at least 2 pixels per channel (variance over H*W - 1), got a "
                f"{x.shape[2]}x{x.shape[3]} map; do not place simam where maps are 1x1"
            )
        if use_fused(x):
            return _SimAMFunction.apply(x, self.e_lambda)
        # other layouts (channels-last): the same formula through autograd
        d = (x - x.mean((2, 3), keepdim=True)).square()
        v = d.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - 1)
        return x * torch.sigmoid(d / (4.0 * (v + self.e_lambda)) + 0.5)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"


def _check_simam(channels: int, spatial_size: Any, *, e_lambda: float) -> None:
    if spatial_size is not None and spatial_size[0] * spatial_size[1] < 2:
        raise ValueError(
            f"simam needs feature maps with at least 2 pixels (n = H*W - 1 divides the variance), "
            f"got {spatial_size[0]}x{spatial_size[1]}"
        )


SIMAM = register_attention(
    AttentionSpec(
        name="simam",
        cls=SimAM,
        knobs={"e_lambda": Knob("e_lambda", "float", 1e-4, low=1e-8, high=100.0, doc="energy regulariser")},
        slot="mid",
        param_count=lambda channels, spatial_size, e_lambda: 0,
        summary="SimAM: parameter-free per-neuron gate from a closed-form energy",
        check=_check_simam,
    )
)
