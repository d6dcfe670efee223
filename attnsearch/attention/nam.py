"""NAM: Normalization-based Attention Module (Liu et al., arXiv 2111.12419)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ._ops import spatial_dot, use_fused
from .registry import AttentionSpec, Knob, register_attention


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of NCHW ``x`` over (N, H, W) in two reads.

    Two passes instead of CPU ``native_batch_norm``'s (timings: benchmarks/results/attention_modules_1thread.md).
    """
    n = x.numel() // x.shape[1]
    sum_sq = spatial_dot(x, x).sum(0).flatten()
    mean = x.sum((0, 2, 3)) / n
    return mean, (sum_sq / n - mean * mean).clamp_min_(0)


def _well_conditioned(mean: torch.Tensor, var: torch.Tensor) -> bool:
    """E[x^2] - E[x]^2 and x * k - mean * k keep float precision only while |mean| is not >> std."""
    return bool((var >= 1e-3 * mean * mean).all())


class _NormGate(torch.autograd.Function):
    """y = x * sigmoid(scale * xhat + shift), xhat the batch-normalised x (per channel = dim 1).

    ``scale``/``shift`` are NAM's w * gamma and w * beta (computed outside, so autograd handles w's own
    gradient). Forward on CPU NCHW: batch statistics in two reads (``_channel_moments``, which also update the
    running statistics), one fused multiply-add, an in-place sigmoid and a multiply; elsewhere one
    native_batch_norm call. Backward, with q = g * x * s * (1 - s), S1 = sum q, S2 = sum q * xhat per channel
    and N values per channel: dx = g * s + k * (q - S1 / N - xhat * S2 / N) in training (k = scale * rstd) or
    g * s + k * q in eval; d scale = S2, d shift = S1. Two full-size allocations instead of autograd's five.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x, scale, shift, running_mean, running_var, training: bool, momentum: float, eps: float
    ) -> torch.Tensor:
        # CPU batch norm is slow on NCHW input (fast on the pixel branch's 2-D view): there the statistics come
        # from two reads and the affine is one fused multiply-add, unless |mean| >> std would cost precision.
        # Under a dispatch mode (the FLOP counter, tracing) the canonical batch-norm op is what should be seen.
        fast = (x.dim() == 4 and x.device.type == "cpu" and x.dtype == running_mean.dtype == scale.dtype
                and not is_in_torch_dispatch_mode())
        if fast:
            mean, var = _channel_moments(x) if training else (running_mean.clone(), running_var)
            fast = _well_conditioned(mean, var)
        if fast:
            if training:
                n = x.numel() // x.shape[1]
                running_mean.lerp_(mean, momentum)
                running_var.lerp_(var * (n / (n - 1)), momentum)  # unbiased, as batch norm keeps it
            rstd = torch.rsqrt(var + eps)
            k = scale * rstd
            sig = torch.addcmul((shift - mean * k).view(1, -1, 1, 1), x, k.view(1, -1, 1, 1)).sigmoid_()
        else:
            pre, mean, rstd = torch.native_batch_norm(
                x, scale, shift, running_mean, running_var, training, momentum, eps
            )
            if not training:  # eval: normalised with the running statistics
                mean, rstd = running_mean.clone(), torch.rsqrt(running_var + eps)
            sig = pre.sigmoid_()
        ctx.training = training
        ctx.save_for_backward(x, sig, mean, rstd, scale)
        return x * sig

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, sig, mean, rstd, scale = ctx.saved_tensors
        shape = (1, -1) + (1,) * (x.dim() - 2)  # per-channel coefficients broadcast over dim 1
        q = x * g
        q = torch.ops.aten.sigmoid_backward.grad_input(q, sig, grad_input=q)  # dL/dpre, in place
        if x.dim() == 4:
            s1 = q.sum((0, 2, 3))
            sqx = spatial_dot(q, x).sum(0).flatten()
        else:  # (N, C) or (N, C, L): the pixel branch
            dims = (0,) + tuple(range(2, x.dim()))
            s1 = q.sum(dims)
            sqx = (q * x).sum(dims)
        s2 = rstd * (sqx - mean * s1)  # sum q * xhat
        k1 = scale * rstd
        if ctx.training:
            n = x.numel() // x.shape[1]
            kx = -k1 * rstd * s2 / n  # the xhat term, folded onto x
            dx = torch.addcmul((-k1 * s1 / n - kx * mean).view(shape), g, sig)
            dx.addcmul_(x, kx.view(shape))
        else:
            dx = g * sig
        dx.addcmul_(q, k1.view(shape))
        return dx, s2, s1, None, None, None, None, None


class NormalizationBasedAttention(nn.Module):
    """Channel gate sigmoid(w_c * BN(x)_c), w = |gamma| / sum |gamma|; optional per-pixel ("spatial") gate next.

    Channel branch as the released Christian-lyc/NAM Channel_Att. The spatial branch is the paper's pixel
    normalization, as in the repo's first upload: BatchNorm1d(H*W) with statistics per position over batch and
    channels, weighted by |lambda| / sum |lambda|; it needs the map size at construction (``spatial_size``).
    ``detach_weights=True`` takes w from the detached scale factors (official ``.data``), so no gradient flows
    through the normaliser; gamma and lambda still train through the affine term.
    """

    def __init__(
        self,
        channels: int,
        spatial: bool = False,
        detach_weights: bool = True,
        spatial_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_nam(channels, spatial_size, spatial=spatial, detach_weights=detach_weights)
        self.detach_weights = detach_weights
        self.bn = nn.BatchNorm2d(channels)
        self.spatial_size: tuple[int, int] | None = None
        self.pixel_bn: nn.BatchNorm1d | None = None
        if spatial:
            self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
            self.pixel_bn = nn.BatchNorm1d(self.spatial_size[0] * self.spatial_size[1])

    def _norm_weights(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.detach_weights:
            gamma = gamma.detach()
        a = gamma.abs()
        return a / a.sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._gate(x, self.bn)
        if self.pixel_bn is not None:
            x = self._pixel_gate(x)
        return x

    def _pixel_gate(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.spatial_size:
            exp = self.spatial_size
            raise ValueError(
                f"nam.spatial=True was built for {exp[0]}x{exp[1]} maps (spatial_size) but got {h}x{w}; "
                f"build it with spatial_size=({h}, {w}) or use nam.spatial=False"
            )
        # BatchNorm1d(H*W) on the official (B, HW, C) transpose: each pixel is a feature with statistics over
        # batch and channels. Same as batch norm of the (B*C, HW) view, which is free for NCHW memory; the
        # (B, HW, C) form is free for channels-last memory.
        if x.is_contiguous():
            return self._gate(x.view(b * c, h * w), self.pixel_bn).view(b, c, h, w)
        t = self._gate(x.permute(0, 2, 3, 1).reshape(b, h * w, c), self.pixel_bn)
        return t.view(b, h, w, c).permute(0, 3, 1, 2)

    def _gate(self, x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
        """x * sigmoid(w * BN(x)), w = |gamma| / sum |gamma|, statistics over every dim but dim 1."""
        training = self.training or not bn.track_running_stats
        if training and x.numel() == x.shape[1]:
            raise ValueError(
                f"nam needs more than 1 value per channel to normalise in training, got input {tuple(x.shape)}; "
                "use a batch size > 1 or a larger feature map"
            )
        if self.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
        w = self._norm_weights(bn.weight)
        # w * (gamma * xhat + beta) == (w * gamma) * xhat + w * beta: one batch-norm call with folded affine
        scale, shift = w * bn.weight, w * bn.bias
        momentum = bn.momentum if bn.momentum is not None else 0.1  # cumulative averaging is not supported
        if use_fused(x):
            return _NormGate.apply(x, scale, shift, bn.running_mean, bn.running_var, training, momentum, bn.eps)
        pre = F.batch_norm(x, bn.running_mean, bn.running_var, scale, shift, training, momentum, bn.eps)
        return x * pre.sigmoid_()

    def extra_repr(self) -> str:
        return f"spatial_size={self.spatial_size}, detach_weights={self.detach_weights}"


def _check_nam(channels: int, spatial_size: Any, *, spatial: bool, detach_weights: bool) -> None:
    if spatial:
        if spatial_size is None:
            raise ValueError("nam.spatial=True needs spatial_size=(H, W) at construction (one BN scale per pixel)")
        if len(spatial_size) != 2 or min(int(s) for s in spatial_size) < 1:
            raise ValueError(f"nam.spatial=True needs spatial_size=(H, W) with H, W >= 1, got {spatial_size!r}")


def _nam_params(channels: int, spatial_size: Any, spatial: bool, detach_weights: bool) -> int:
    return 2 * channels + (2 * spatial_size[0] * spatial_size[1] if spatial else 0)


_NAM_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[NormalizationBasedAttention, ...]] = (
    weakref.WeakKeyDictionary()
)


def nam_penalty(model: nn.Module, refresh: bool = False) -> torch.Tensor:
    """L1 norm of the scale factors (gamma, and lambda when spatial) of every NAM module in ``model``.

    Only NAM's own normalisation layers count (not their beta, not the backbone's BNs); training adds p times
    this to the loss (paper: p * sum g(gamma) + p * sum g(lambda)). The NAM modules are found once per model and
    cached; pass ``refresh=True`` after adding or removing NAM modules.
    """
    mods = None if refresh else _NAM_CACHE.get(model)
    if mods is None:
        mods = tuple(m for m in model.modules() if isinstance(m, NormalizationBasedAttention))
        _NAM_CACHE[model] = mods
    weights = [m.bn.weight for m in mods] + [m.pixel_bn.weight for m in mods if m.pixel_bn is not None]
    if not weights:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.cat(weights).abs().sum()


NAM = register_attention(
    AttentionSpec(
        name="nam",
        cls=NormalizationBasedAttention,
        knobs={
            "spatial": Knob("spatial", "bool", False, doc="paper's per-pixel branch (not in the released code)"),
            "detach_weights": Knob(
                "detach_weights", "bool", True, doc="w = |gamma|/sum|gamma| from detached gamma (official .data)"
            ),
        },
        slot="residual_end",
        param_count=_nam_params,
        summary="NAM: sigmoid(BN(x) weighted by |gamma|/sum|gamma|) gate; sparsity via nam_penalty",
        uses_spatial_size=True,
        needs_spatial_size=lambda knobs: bool(knobs["spatial"]),
        check=_check_nam,
    )
)
