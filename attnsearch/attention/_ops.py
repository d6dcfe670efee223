"""Memory-bound building blocks shared by several modules, with cheaper backward passes than autograd's.

Attention gates are elementwise work on full feature maps: in eager mode every op is a full read/write of the
tensor, so the cost is the number of full-size passes. These functions compute the same math as the plain
PyTorch expressions they replace, with fewer passes in backward. Each public helper falls back to the plain
expression under torch.compile and for non-NCHW-contiguous input (see ``use_fused``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch


def use_fused(x: torch.Tensor) -> bool:
    """Hand-fused autograd Functions are for eager mode on NCHW-contiguous input.

    Under torch.compile the plain expressions are used instead (inductor fuses them better, and explicit output
    layouts do not survive functionalization); other memory layouts (channels-last) also take the plain path.
    """
    return x.is_contiguous() and not torch.compiler.is_compiling()


def in_input_precision(forward: Callable) -> Callable:
    """Run a fused Function's forward with autocast off and every floating tensor argument in x's dtype.

    Under autocast the small gate maps arrive in half precision while x may be float32, and autocast would
    downcast the batched products; the hand-written backward passes need one dtype (autograd casts each returned
    gradient back to its input's dtype). Not for Functions that update buffers in place (a cast would copy them).
    """

    @functools.wraps(forward)
    def wrapper(ctx, x: torch.Tensor, *args):
        args = tuple(
            a.to(x.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != x.dtype else a
            for a in args
        )
        device = x.device.type
        if device in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return forward(ctx, x, *args)
        return forward(ctx, x, *args)

    return wrapper


def spatial_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over H, W of a * b per (sample, channel), shape (B, C, 1, 1), for contiguous NCHW a and b.

    One batched dot product: each operand is read once and no full-size product is written. b goes in as a
    transposed (1, HW) view; the plain (HW, 1) view takes a much slower CPU bmm path.
    """
    n, c, h, w = a.shape
    return torch.bmm(a.reshape(n * c, 1, h * w), b.reshape(n * c, 1, h * w).transpose(1, 2)).view(n, c, 1, 1)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)`` whose input gradient is a broadcast view, not a full-size tensor.

    mean's backward divides an expanded gradient into a new full-size tensor (a slow strided pass on CPU); sum's
    backward returns the expanded view itself, which autograd then adds in place into the other gradient of x.
    """
    return x.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3])


class _MaxMeanPools(torch.autograd.Function):
    """For each dim in ``dims``: (max over dim, mean over dim) of x.

    Autograd's amax backward builds an equality mask, casts, counts and divides over the full tensor (~5 passes
    per pooled dim) and every mean adds its own full-size gradient. Here the backward writes one buffer with all
    mean gradients broadcast into it and scatters the max gradients to the argmax positions (as torch.max(dim) and
    max_pool2d do in the official code, so ties go to one element).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...]):  # type: ignore[override]
        outs, idxs = [], []
        for d in dims:
            mx, idx = x.max(d)
            outs += [mx, x.mean(d)]
            idxs.append(idx)
        ctx.dims = dims
        ctx.shape = x.shape
        ctx.save_for_backward(*idxs)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        dims, shape = ctx.dims, ctx.shape
        grad = None
        for i, d in enumerate(dims):
            g_mean = grads[2 * i + 1]
            if g_mean is None:
                continue
            term = (g_mean / shape[d]).unsqueeze(d)
            if grad is None:  # copy_ of a broadcast view: cheaper on CPU than expand().contiguous()
                grad = term.new_empty(shape).copy_(term.expand(shape))
            else:
                grad.add_(term)
        if grad is None:
            grad = grads[0].new_zeros(shape)
        for i, (d, idx) in enumerate(zip(dims, ctx.saved_tensors, strict=False)):
            g_max = grads[2 * i]
            if g_max is not None:
                grad.scatter_add_(d, idx.unsqueeze(d), g_max.unsqueeze(d))
        return grad, None


def max_mean_pools(x: torch.Tensor, dims: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """(max_d0, mean_d0, max_d1, mean_d1, ...) of ``x`` over each single dim in ``dims`` (dims kept out)."""
    if not use_fused(x):
        return tuple(t for d in dims for t in (x.amax(d), x.mean(d)))
    return _MaxMeanPools.apply(x, tuple(dims))


def zpool_image(mx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Stack [max, mean] as a 2-channel image (B, 2, H', W') in channels-last memory.

    CPU convolutions with 2 input channels are several times faster in backward on channels-last input.
    """
    return torch.stack((mx, mean), -1).permute(0, 3, 1, 2)


class _ChannelGate(torch.autograd.Function):
    """y = x * s for a per-(sample, channel) gate s of shape (B, C, 1, 1).

    Backward gets ds = sum_HW(g * x) from ``spatial_dot`` instead of a full-size product and a separate
    reduction.
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor, s: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, s = ctx.saved_tensors
        ds = None
        if ctx.needs_input_grad[1]:
            # a contiguous g: x is contiguous too (use_fused)
            ds = spatial_dot(g, x) if g.is_contiguous() else (g * x).sum((2, 3), keepdim=True)
        return (g * s if ctx.needs_input_grad[0] else None), ds


def channel_gate(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x * s`` with ``s`` of shape (B, C, 1, 1)."""
    if not use_fused(x):
        return x * s
    return _ChannelGate.apply(x, s)


def rank2_outer(
    u1: torch.Tensor, v1: torch.Tensor, u2: torch.Tensor, v2: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """u1 v1^T + u2 v2^T per sample as one bmm: (B, C) x (B, N) pairs -> a new tensor of ``shape`` (B*C*N values).

    The result is not a view, so autograd can add x's other gradient into it in place.
    """
    out = u1.new_empty(shape)
    torch.bmm(torch.stack((u1, u2), 2), torch.stack((v1, v2), 1), out=out.view(u1.shape[0], u1.shape[1], -1))
    return out


class _DirectionalPool(torch.autograd.Function):
    """(mean over W, mean over H) of x; backward writes both broadcast gradients in one pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):  # type: ignore[override]
        ctx.hw = x.shape[2:]
        return x.mean(3), x.mean(2)

    @staticmethod
    def backward(ctx, g_h: torch.Tensor, g_w: torch.Tensor):  # type: ignore[override]
        h, w = ctx.hw
        return torch.add((g_h / w).unsqueeze(3), (g_w / h).unsqueeze(2))


def directional_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x.mean(3), x.mean(2)): pooled along W (B, C, H) and along H (B, C, W)."""
    if not use_fused(x):
        return x.mean(3), x.mean(2)
    return _DirectionalPool.apply(x)


class _DirectionalGate(torch.autograd.Function):
    """y = x * a_h * a_w with a_h (B, C, H, 1), a_w (B, C, 1, W) (Coordinate Attention's output).

    Backward: the two gate gradients are batched matrix-vector products of g * x with the other gate, instead
    of two products and two reductions per gate.
    """

    @staticmethod
    @in_input_precision
    def forward(ctx, x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor):  # type: ignore[override]
        gate = a_h * a_w
        ctx.save_for_backward(x, a_h, a_w, gate)
        return x * gate

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, a_h, a_w, gate = ctx.saved_tensors
        b, c, h, w = x.shape
        t = (x * g).view(b * c, h, w)  # x (contiguous, see use_fused) first: the product is contiguous too
        d_h = torch.bmm(t, a_w.reshape(b * c, 1, w).transpose(1, 2)).view(b, c, h, 1)
        d_w = torch.bmm(a_h.reshape(b * c, 1, h), t).view(b, c, 1, w)
        return g * gate, d_h, d_w


def directional_gate(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    """``x * a_h * a_w``."""
    if not use_fused(x):
        return x * a_w * a_h
    return _DirectionalGate.apply(x, a_h, a_w)
