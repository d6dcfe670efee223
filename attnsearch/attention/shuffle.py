"""SA: Shuffle Attention (Zhang & Yang, ICASSP 2021, arXiv 2102.00240)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._ops import in_input_precision, spatial_dot, use_fused
from .registry import AttentionSpec, Knob, register_attention


class _ShuffleAttentionFunction(torch.autograd.Function):
    """Fused SA forward/backward (same math as the official sa_layer, see ShuffleAttention).

    Per (sample, channel) the pre-activation is affine in the instance-normalised map xhat: pre = P * xhat + Q,
    with P = 0, Q = cw * mean + cb on each group's channel half and P = sw * gn_w, Q = sw * gn_b + sb on its
    spatial half. Forward: one group-norm kernel, one addcmul, sigmoid, one multiply that also performs the
    channel shuffle (it writes the output in shuffled order). Backward, with q = g * x * s * (1 - s),
    S1 = sum_HW q, S2 = sum_HW q * xhat and M = H*W:
    dx = g * s + k1 * q + k2 * xhat + k3, k1 = P * rstd, k2 = -P * rstd * S2 / M,
    k3 = -P * rstd * S1 / M (spatial half) or cw * S1 / M (channel half, through the mean).
    """

    @staticmethod
    @in_input_precision
    def forward(  # type: ignore[override]
        ctx, x, cweight, cbias, sweight, sbias, gn_weight, gn_bias, groups: int, eps: float
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        g, n = groups, c // (2 * groups)
        xhat, mean, rstd = torch.native_group_norm(x, None, None, b, c, h * w, c, eps)  # one group per channel
        mean4 = mean.view(b, g, 2, n)
        cw, cb, sw, sb, gw, gb = (t.reshape(n) for t in (cweight, cbias, sweight, sbias, gn_weight, gn_bias))
        scale = torch.stack((torch.zeros_like(sw), sw * gw)).view(1, 1, 2, n).expand(b, g, 2, n)  # P
        shift = torch.stack((cw * mean4[:, :, 0] + cb, (sw * gb + sb).expand(b, g, n)), 2)  # Q
        # channel_shuffle(groups=2): output channel 2i + s is input channel s * C/2 + i
        scale = scale.reshape(b, 2, c // 2).transpose(1, 2).reshape(b, c // 2, 2, 1, 1)
        shift = shift.reshape(b, 2, c // 2).transpose(1, 2).reshape(b, c // 2, 2, 1, 1)
        xs = x.view(b, 2, c // 2, h, w).transpose(1, 2)
        xhat_s = xhat.view(b, 2, c // 2, h, w).transpose(1, 2)
        # outputs allocated contiguous in shuffled order: the strided reads do the shuffle, no copy pass
        sig = torch.addcmul(shift, xhat_s, scale, out=x.new_empty((b, c // 2, 2, h, w))).sigmoid_()
        out = torch.mul(sig, xs, out=x.new_empty((b, c // 2, 2, h, w)))
        ctx.save_for_backward(x, xhat, sig, mean, rstd, cw, sw, gw, gb)
        ctx.groups = groups
        return out.reshape(b, c, h, w)  # a view in eager (out is contiguous)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, xhat, sig, mean, rstd, cw, sw, gw, gb = ctx.saved_tensors
        b, c, h, w = x.shape
        g, n, m = ctx.groups, c // (2 * ctx.groups), h * w
        # everything below in the natural channel order (b, 2, C/2, H, W); grad and sig arrive shuffled
        g5 = grad.reshape(b, c // 2, 2, h, w).transpose(1, 2)
        sig5 = sig.transpose(1, 2)
        q = torch.mul(x.view(b, 2, c // 2, h, w), g5, out=x.new_empty((b, 2, c // 2, h, w)))
        q = torch.ops.aten.sigmoid_backward.grad_input(q, sig5, grad_input=q).reshape(b * c, 1, m)
        s1 = q.sum(2).view(b, g, 2, n)
        s2 = spatial_dot(q.view(b, c, h, w), xhat).view(b, g, 2, n)
        pr = (sw * gw) * rstd.view(b, g, 2, n)[:, :, 1]  # P * rstd on the spatial half
        zero = torch.zeros_like(pr)
        k1 = torch.stack((zero, pr), 2)
        k2 = torch.stack((zero, -pr * s2[:, :, 1] / m), 2)
        k3 = torch.stack((cw * s1[:, :, 0] / m, -pr * s1[:, :, 1] / m), 2)
        dx = torch.addcmul(k3.view(b, 2, c // 2, 1, 1), g5, sig5, out=x.new_empty((b, 2, c // 2, h, w)))
        dx.addcmul_(q.reshape(b, 2, c // 2, h, w), k1.view(b, 2, c // 2, 1, 1))
        dx.addcmul_(xhat.reshape(b, 2, c // 2, h, w), k2.view(b, 2, c // 2, 1, 1))
        s1c, s1s, s2s = s1[:, :, 0], s1[:, :, 1].sum((0, 1)), s2[:, :, 1].sum((0, 1))
        shape = (1, n, 1, 1)
        d_cw = (s1c * mean.view(b, g, 2, n)[:, :, 0]).sum((0, 1)).view(shape)
        d_cb = s1c.sum((0, 1)).view(shape)
        d_sw = (s2s * gw + s1s * gb).view(shape)
        d_sb = s1s.view(shape)
        return dx.reshape(b, c, h, w).to(x.dtype), d_cw, d_cb, d_sw, d_sb, s2s * sw, s1s * sw, None, None


class ShuffleAttention(nn.Module):
    """Per group of C/G channels: first half gated by sigmoid(cw * GAP + cb), second half by
    sigmoid(sw * GN(x) + sb); then a 2-group channel shuffle (wofmanaf/SA-Net sa_layer, G = 64 default).

    Both gates are affine in the per-channel normalised map, so one fused pass gates every channel and writes
    the result directly in shuffled order (no chunk, cat or permute copies); backward is hand-derived (see
    _ShuffleAttentionFunction). Parameters are shared across groups; cweight/sweight start at 0, biases at 1.
    """

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        _check_sa(channels, None, groups=groups)
        self.groups = groups
        n = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, n, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, n, 1, 1))
        self.gn = nn.GroupNorm(n, n)  # one group per channel, i.e. instance norm with affine (SA-Net#8)

    def reset_parameters(self) -> None:
        """Official init (re-apply after a generic init loop: weights 0, biases 1, GN identity)."""
        nn.init.zeros_(self.cweight)
        nn.init.ones_(self.cbias)
        nn.init.zeros_(self.sweight)
        nn.init.ones_(self.sbias)
        self.gn.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(x):
            return _ShuffleAttentionFunction.apply(
                x, self.cweight, self.cbias, self.sweight, self.sbias, self.gn.weight, self.gn.bias, self.groups,
                self.gn.eps,
            )
        # other layouts (channels-last): the same per-channel affine gate through autograd, then the shuffle
        b, c, h, w = x.shape
        g, n = self.groups, c // (2 * self.groups)
        xhat = F.group_norm(x, c, eps=self.gn.eps).view(b, g, 2, n, h, w)
        mean = x.mean((2, 3)).view(b, g, n * 2)[:, :, :n, None, None]
        gate_c = torch.sigmoid(self.cweight.view(n, 1, 1) * mean + self.cbias.view(n, 1, 1))
        gn = self.gn.weight.view(n, 1, 1) * xhat[:, :, 1] + self.gn.bias.view(n, 1, 1)
        gate_s = torch.sigmoid(self.sweight.view(n, 1, 1) * gn + self.sbias.view(n, 1, 1))
        gate = torch.stack((gate_c.expand(b, g, n, h, w), gate_s), 2).view(b, c, h, w)
        out = x * gate
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _check_sa(channels: int, spatial_size: Any, *, groups: int) -> None:
    if channels % (2 * groups):
        valid = [d for d in range(1, channels // 2 + 1) if channels % (2 * d) == 0]
        hint = f"valid sa.groups for {channels} channels: {valid}" if valid else "odd channel counts have none"
        raise ValueError(
            f"sa.groups={groups} needs channels divisible by 2 * groups = {2 * groups}, got channels={channels}; "
            f"{hint}"
        )


SA = register_attention(
    AttentionSpec(
        name="sa",
        cls=ShuffleAttention,
        knobs={"groups": Knob("groups", "int", 64, low=1, high=1024, doc="G; needs C % (2G) == 0")},
        slot="residual_end",
        param_count=lambda channels, spatial_size, groups: 3 * channels // groups,
        summary="Shuffle Attention: grouped channel + spatial (GN) gates, then channel shuffle",
        check=_check_sa,
    )
)
