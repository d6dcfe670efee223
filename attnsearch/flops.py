"""FLOPs, MACs and parameters of one forward pass, counted at the aten level, with a per-attention-site breakdown.

Counting runs the model once in eval mode under ``torch.no_grad`` inside a ``TorchDispatchMode``, so functional
code inside attention modules (``x * torch.sigmoid(a)``, ``mean``, ``softmax``, ``GroupNorm``, pools, ``max`` over
a dim, ...) is counted, unlike module-hook counters (thop, ptflops, fvcore) that make parameter-free gates look
free. The pass runs on meta tensors (shapes only, no arithmetic, no copy of the weights); a model whose forward
needs real values (``.item()``, CPU-created tensors) is re-run on real zeros on its own device.

Conventions (per element of the op's output unless stated; ``N_in`` = input elements):

==============================================  ==========================================  ==================
op                                              flops                                       macs
==============================================  ==========================================  ==================
convolution (any dim, groups, transposed)       2 * macs + output (bias, if any)            out * Cin/g * prod(k)
addmm / mm / bmm / baddbmm (linear, matmul)     2 * macs + output (the added term, if any)  M * K * N (per batch)
pointwise ops (tagged ``pointwise`` by aten:    1 (a sigmoid, a hardswish, an add: each 1)  0
add, mul, div, relu, hardtanh/relu6, sigmoid,
exp, abs, where, ...; plus hardswish,
hardsigmoid, gelu, ...)
batch_norm, inference (running statistics)      2 (folded per-channel scale and shift)      0
norms computing statistics (group_norm,         5 (statistics 3: sum, square, sum;          0
layer_norm, instance_norm, batch_norm in          normalise 2: subtract, scale)
training) ; affine                                + 2 if affine (scale, shift)
sum, amax, amin, max/min over a dim, prod       N_in                                         0
mean                                            N_in + output (the division)                0
var, std                                        3 * N_in + output (+ output for std's sqrt) 0
softmax, log_softmax                            5 * N_in (max, subtract, exp, sum, divide)  0
max_pool, avg_pool (kernel k)                   output * prod(k)                             0
adaptive_avg_pool                               N_in + output                                0
adaptive_max_pool                               N_in                                         0
views, copies, cat, pad, permute, slicing,      0                                            0
shuffles, creation of tensors
==============================================  ==========================================  ==================

So ``macs`` (conv/linear/matmul multiply-accumulates only) is the figure torchvision documents as GFLOPS and most
papers print as "FLOPs", and ``flops`` is the full count of the design's metrics table. Ops outside this table are
counted as 0 and listed in ``FlopCounter.uncounted`` (tests assert it stays empty for every registered module).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _packets(*names: str) -> frozenset:
    """aten overload packets by name, skipping names this PyTorch version lacks."""
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


_ZERO = _packets(
    "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "transpose_", "t", "t_", "expand",
    "expand_as", "slice", "select", "cat", "stack", "split", "split_with_sizes", "unsafe_split", "chunk", "unbind",
    "unsqueeze", "unsqueeze_", "squeeze", "squeeze_", "flatten", "narrow", "as_strided", "alias", "detach",
    "detach_", "clone", "copy", "copy_", "_to_copy", "contiguous", "constant_pad_nd", "pad", "reflection_pad2d",
    "replication_pad2d", "repeat", "roll", "flip", "index_select", "gather", "index", "_unsafe_index",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros", "ones", "ones_like",
    "new_ones", "full", "full_like", "new_full", "fill", "fill_", "zero_", "arange", "scalar_tensor", "lift_fresh",
    "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_", "masked_fill", "masked_fill_", "dropout",
    "native_dropout", "feature_dropout", "alpha_dropout", "view_as", "unfold", "_assert_async", "sym_size",
)
_CONV = _packets("convolution", "_convolution", "conv2d", "conv1d", "conv3d")
_CONV_GENERIC = _packets("convolution", "_convolution")  # the ones with a ``transposed`` argument
_ELEMENTWISE = _packets(  # activations aten does not tag as pointwise
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "gelu", "gelu_", "elu", "elu_", "leaky_relu",
    "leaky_relu_", "softplus", "mish", "mish_", "silu", "silu_", "log_sigmoid_forward", "prelu", "_prelu_kernel",
    "rrelu_with_noise", "threshold", "glu",
)
_SUM_LIKE = _packets("sum", "amax", "amin", "max", "min", "prod", "argmax", "argmin", "any", "all", "aminmax")
_VAR_LIKE = _packets("var", "std", "var_mean", "std_mean")
_SOFTMAX = _packets("_softmax", "_log_softmax", "softmax", "log_softmax", "logsumexp")
_POOL = _packets("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
                 "avg_pool1d", "avg_pool2d", "avg_pool3d")
_ADAPTIVE_AVG = _packets("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d")
_ADAPTIVE_MAX = _packets("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
_BN_INFER = _packets("_native_batch_norm_legit_no_training")
_BN_INFER = _BN_INFER | _packets("_batch_norm_no_update")
_BN_TRAIN = _packets("_batch_norm_with_update")
_BN_MAYBE = _packets("native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm",
                     "batch_norm")  # argument 5 is ``training``
_STAT_NORM = _packets("native_group_norm", "native_layer_norm", "group_norm", "layer_norm", "instance_norm",
                      "rms_norm", "_fused_rms_norm")
_GROUP_NORM = _packets("native_group_norm", "group_norm")  # weight is argument 1 (layer_norm: 2)
_STD = _packets("std", "std_mean")


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0].numel()
    return 0


def _arg(args: Sequence[Any], kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def op_cost(func: Any, args: Sequence[Any], kwargs: dict, out: Any) -> tuple[int, int] | None:
    """``(flops, macs)`` of one aten call, or ``None`` if the op is not in the table above."""
    packet = func.overloadpacket
    n_out = _numel(out)
    if packet in _ZERO:
        return 0, 0
    if packet in _CONV:
        x, w, bias = args[0], args[1], _arg(args, kwargs, 2, "bias")
        transposed = packet in _CONV_GENERIC and bool(_arg(args, kwargs, 6, "transposed", False))
        per = w.shape[1] * math.prod(w.shape[2:])  # (Cout, Cin/g, k...) or transposed (Cin, Cout/g, k...)
        macs = (x.numel() if transposed else n_out) * per
        return 2 * macs + (n_out if bias is not None else 0), macs
    if packet in (aten.mm, aten.addmm):
        a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
        macs = a.shape[0] * a.shape[1] * b.shape[1]
        return 2 * macs + (n_out if packet is aten.addmm else 0), macs
    if packet in (aten.bmm, aten.baddbmm):
        a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
        macs = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return 2 * macs + (n_out if packet is aten.baddbmm else 0), macs
    if packet in _BN_INFER or packet in _BN_TRAIN or packet in _BN_MAYBE:
        x, weight = args[0], _arg(args, kwargs, 1, "weight")
        training = packet in _BN_TRAIN or (packet in _BN_MAYBE and bool(_arg(args, kwargs, 5, "training", False)))
        if not training:
            return 2 * x.numel(), 0
        return (5 + (2 if weight is not None else 0)) * x.numel(), 0
    if packet in _STAT_NORM:
        x = args[0]
        weight = _arg(args, kwargs, 1 if packet in _GROUP_NORM else 2, "weight")
        return (5 + (2 if weight is not None else 0)) * x.numel(), 0
    if torch.Tag.pointwise in func.tags or packet in _ELEMENTWISE:
        return n_out, 0
    n_in = _numel(args[0]) if args else 0
    if packet is aten.mean:
        return n_in + n_out, 0
    if packet in _VAR_LIKE:
        return 3 * n_in + n_out * (2 if packet in _STD else 1), 0
    if packet in _SUM_LIKE or torch.Tag.reduction in func.tags and packet not in _SOFTMAX:
        return n_in, 0
    if packet in _SOFTMAX:
        return 5 * n_in, 0
    if packet in _POOL:
        kernel = _arg(args, kwargs, 1, "kernel_size")
        return n_out * math.prod(kernel if isinstance(kernel, (list, tuple)) else [kernel]), 0
    if packet in _ADAPTIVE_AVG:
        return n_in + n_out, 0
    if packet in _ADAPTIVE_MAX:
        return n_in, 0
    return None


class FlopCounter(TorchDispatchMode):
    """Accumulates :func:`op_cost` of every aten call; ``site`` is the attention site running now (or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.macs = 0
        self.site_flops: dict[str, int] = defaultdict(int)
        self.site_macs: dict[str, int] = defaultdict(int)
        self.uncounted: Counter[str] = Counter()
        self.stack: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cost = op_cost(func, args, kwargs, out)
        if cost is None:
            self.uncounted[str(func.overloadpacket)] += 1
            return out
        flops, macs = cost
        self.flops += flops
        self.macs += macs
        if self.stack:
            self.site_flops[self.stack[-1]] += flops
            self.site_macs[self.stack[-1]] += macs
        return out


def _input_shape(input_size: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        return (1, 3, input_size, input_size)
    shape = tuple(int(s) for s in input_size)
    if len(shape) == 2:
        return (1, 3, *shape)
    if len(shape) == 3:
        return (1, *shape)
    if len(shape) == 4:
        return shape  # type: ignore[return-value]
    raise ValueError(f"input_size must be S, (H, W), (C, H, W) or (N, C, H, W), got {input_size!r}")


def _run(model: nn.Module, shape: tuple[int, ...], meta: bool, sites: dict[nn.Module, str]) -> FlopCounter:
    counter = FlopCounter()

    def enter(module: nn.Module, args: Any) -> None:
        counter.stack.append(sites[module])

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        counter.stack.pop()

    handles = []
    for module in sites:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        if meta:
            state = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict(keep_vars=True).items()}
            x = torch.zeros(shape, device="meta")
            with torch.no_grad(), counter:
                torch.func.functional_call(model, state, (x,), tie_weights=True, strict=False)
        else:
            p = next(iter(model.parameters()), None)
            x = torch.zeros(shape, device=p.device if p is not None else "cpu")
            with torch.no_grad(), counter:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return counter


def count(model: nn.Module, input_size: int | Sequence[int] = (1, 3, 224, 224)) -> dict[str, Any]:
    """macs, flops, params and their attention parts for one forward pass at ``input_size``.

    Returns ``{"macs", "flops", "params", "attn_flops", "attn_macs", "attn_params", "sites"}`` with
    ``sites = {site_name: {"type", "flops", "macs", "params"}}`` for every module inserted by ``build_model``,
    and ``uncounted = {aten op: calls}`` for ops outside the cost table (empty for every registered module).
    Works for models on any device, including ``meta``.

    Args:
        model: the module to count (run once in eval mode, without gradients; its mode is restored).
        input_size: the input's shape ``(N, C, H, W)``, or an image side (batch 1, 3 channels).
    """
    shape = _input_shape(input_size)
    sites = {m: m._attnsearch_site for m in model.modules() if hasattr(m, "_attnsearch_site")}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:
            result = _run(model, shape, meta=True, sites=sites)
        except Exception:  # noqa: BLE001 - a forward that needs real values: run it for real on zeros
            result = _run(model, shape, meta=False, sites=sites)
    finally:
        for m, mode in modes.items():
            m.training = mode
    params = sum(p.numel() for p in model.parameters())
    site_info = {}
    for module, name in sites.items():
        site_info[name] = {
            "type": getattr(module, "_attnsearch_type", type(module).__name__),
            "flops": int(result.site_flops.get(name, 0)),
            "macs": int(result.site_macs.get(name, 0)),
            "params": sum(p.numel() for p in module.parameters()),
        }
    return {
        "macs": int(result.macs),
        "flops": int(result.flops),
        "params": int(params),
        "attn_flops": sum(s["flops"] for s in site_info.values()),
        "attn_macs": sum(s["macs"] for s in site_info.values()),
        "attn_params": sum(s["params"] for s in site_info.values()),
        "sites": site_info,
        "uncounted": dict(result.uncounted),
    }
