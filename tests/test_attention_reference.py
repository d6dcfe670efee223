"""The fast implementations equal straightforward transcriptions of the official forward passes.

Each ``ref_*`` below follows the official repository's order of operations (permutes, chunk/cat, channel-last
multiplies, separate BN calls) using the module's own parameters; outputs, input gradients and parameter
gradients must agree in float64, in training mode (batch statistics) and in eval mode (running statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnsearch.attention import build_attention, get_spec


def _bn(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, training: bool) -> torch.Tensor:
    # functional BN on cloned running stats, so the module's own update is not applied twice
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, training,
                        bn.momentum, bn.eps)


def ref_cbam(m, x, training):
    b, c = x.shape[:2]

    def mlp(v):
        return m.fc2(F.relu(m.fc1(v)))

    att = mlp(F.avg_pool2d(x, x.shape[2:]).flatten(1)) + mlp(F.max_pool2d(x, x.shape[2:]).flatten(1))
    x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
    pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), 1)
    return x * torch.sigmoid(_bn(m.spatial_conv(pooled), m.spatial_bn, training))


def ref_bam(m, x, training):
    v = F.avg_pool2d(x, x.shape[2:]).flatten(1)
    mc = m.channel_fc2(F.relu(_bn(m.channel_fc1(v), m.channel_bn, training)))
    mc = mc.unsqueeze(2).unsqueeze(3).expand_as(x)
    s = x
    for layer in m.spatial:
        s = _bn(s, layer, training) if isinstance(layer, nn.BatchNorm2d) else layer(s)
    ms = s.expand_as(x)
    att = 1 + torch.sigmoid(mc * ms if m.combine == "product" else mc + ms)
    return att * x


def ref_eca(m, x, training):
    y = F.adaptive_avg_pool2d(x, 1)
    y = m.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y).expand_as(x)


def ref_coord(m, x, training):
    n, c, h, w = x.shape
    x_h = F.adaptive_avg_pool2d(x, (h, 1))
    x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)
    y = torch.cat([x_h, x_w], dim=2)
    y = F.hardswish(_bn(m.conv1(y), m.bn1, training))
    x_h, x_w = torch.split(y, [h, w], dim=2)
    a_h = torch.sigmoid(m.conv_h(x_h))
    a_w = torch.sigmoid(m.conv_w(x_w.permute(0, 1, 3, 2)))
    return x * a_w * a_h


def ref_simam(m, x, training):
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    y = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + m.e_lambda)) + 0.5
    return x * torch.sigmoid(y)


def ref_na(m, x, training):
    b, c, h, w = x.shape
    mean_map = x.mean(dim=1, keepdim=True).view(b, 1, h * w)
    sim = -torch.abs(mean_map - mean_map.mean(dim=2, keepdim=True))
    a = torch.softmax(sim, dim=2)  # over positions
    g = (x.view(b, c, h * w) * a).sum(dim=2)
    g = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + 1e-5)
    return x * torch.sigmoid(m.weight * g + m.bias).view(b, c, 1, 1)


def ref_nam(m, x, training):
    residual = x
    x = _bn(x, m.bn, training)
    gw = m.bn.weight.detach() if m.detach_weights else m.bn.weight
    wbn = gw.abs() / torch.sum(gw.abs())
    x = x.permute(0, 2, 3, 1).contiguous()
    x = torch.mul(wbn, x)
    x = x.permute(0, 3, 1, 2).contiguous()
    x = torch.sigmoid(x) * residual
    if m.pixel_bn is not None:
        b, c, h, w = x.shape
        residual = x
        t = x.view(b, c, h * w).transpose(1, 2)  # (B, HW, C): each pixel is a BN1d channel
        t = _bn(t, m.pixel_bn, training)
        lw = m.pixel_bn.weight.detach() if m.detach_weights else m.pixel_bn.weight
        wl = lw.abs() / torch.sum(lw.abs())
        t = (t.transpose(1, 2) * wl).view(b, c, h, w)
        x = torch.sigmoid(t) * residual
    return x


def _channel_shuffle(x, groups):
    b, c, h, w = x.shape
    x = x.reshape(b, groups, -1, h, w).permute(0, 2, 1, 3, 4)
    return x.reshape(b, -1, h, w)


def ref_sa(m, x, training):
    b, c, h, w = x.shape
    x = x.reshape(b * m.groups, -1, h, w)
    x_0, x_1 = x.chunk(2, dim=1)
    xn = F.adaptive_avg_pool2d(x_0, 1)
    xn = x_0 * torch.sigmoid(m.cweight * xn + m.cbias)
    xs = F.group_norm(x_1, m.gn.num_groups, m.gn.weight, m.gn.bias, m.gn.eps)
    xs = x_1 * torch.sigmoid(m.sweight * xs + m.sbias)
    out = torch.cat([xn, xs], dim=1).reshape(b, -1, h, w)
    return _channel_shuffle(out, 2)


def _zgate(gate, x, training):
    pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    return x * torch.sigmoid(_bn(gate.conv(pooled), gate.bn, training))


def ref_triplet(m, x, training):
    x_perm1 = x.permute(0, 2, 1, 3).contiguous()
    x_out11 = _zgate(m.cw, x_perm1, training).permute(0, 2, 1, 3).contiguous()
    x_perm2 = x.permute(0, 3, 2, 1).contiguous()
    x_out21 = _zgate(m.hc, x_perm2, training).permute(0, 3, 2, 1).contiguous()
    if m.hw is None:
        return 1 / 2 * (x_out11 + x_out21)
    return 1 / 3 * (_zgate(m.hw, x, training) + x_out11 + x_out21)


def ref_gc(m, x, training):
    b, c, h, w = x.shape
    input_x = x.view(b, c, h * w).unsqueeze(1)
    mask = m.conv_mask(x).view(b, 1, h * w)
    mask = F.softmax(mask, dim=2).unsqueeze(-1)
    context = torch.matmul(input_x, mask).view(b, c, 1, 1)
    t = m.transform(context)
    return x + t if m.fusion == "add" else x * torch.sigmoid(t)


REFS: dict[str, Callable] = {
    "cbam": ref_cbam, "bam": ref_bam, "eca": ref_eca, "coord": ref_coord, "simam": ref_simam, "na": ref_na,
    "nam": ref_nam, "sa": ref_sa, "triplet": ref_triplet, "gc": ref_gc,
}
CASES = [
    ("cbam", 32, {}), ("cbam", 24, {"kernel_size": 3, "reduction": 4}),
    ("bam", 32, {}), ("bam", 32, {"combine": "product"}),
    ("eca", 64, {}), ("eca", 20, {"kernel_size": 7}),
    ("coord", 32, {}), ("coord", 40, {"reduction": 4}),
    ("simam", 16, {}), ("simam", 5, {"e_lambda": 0.1}),
    ("na", 16, {}),
    ("nam", 16, {}), ("nam", 16, {"detach_weights": False}), ("nam", 12, {"spatial": True}),
    ("nam", 12, {"spatial": True, "detach_weights": False}),
    ("sa", 128, {}), ("sa", 48, {"groups": 4}), ("sa", 16, {"groups": 8}),
    ("triplet", 16, {}), ("triplet", 16, {"kernel_size": 3, "no_spatial": True}),
    ("gc", 32, {}), ("gc", 32, {"fusion": "mul"}),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,channels,knobs", CASES, ids=[f"{t}-{c}-{k}" for t, c, k in CASES])
def test_matches_official_transcription(name, channels, knobs, training) -> None:
    hw = (5, 7)
    torch.manual_seed(0)
    size = hw if get_spec(name).uses_spatial_size else None
    m = build_attention(name, channels, spatial_size=size, **knobs).double().train(training)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.2)
        for bname, buf in m.named_buffers():
            if bname.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif bname.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    x = torch.randn(3, channels, *hw, dtype=torch.float64) * 1.5 + 0.3
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    g = torch.randn_like(x)

    y_ref = REFS[name](m, x2, training)
    (y_ref * g).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    y = m(x1)
    (y * g).sum().backward()

    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-11)
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-9, atol=1e-11, msg=n)


def test_batchnorm_state_follows_module_convention() -> None:
    # NAM drives its BNs functionally: running stats and counters must move exactly like nn.BatchNorm's
    torch.manual_seed(0)
    m = build_attention("nam", 8, spatial_size=(3, 4), spatial=True)
    bn_c, bn_p = nn.BatchNorm2d(8), nn.BatchNorm1d(12)
    for _ in range(3):
        x = torch.randn(4, 8, 3, 4) * 2 + 1
        y = m(x)
        x1 = x * torch.sigmoid(bn_c(x) / 8)
        bn_p(x1.flatten(2).transpose(1, 2))
    for mine, ref in ((m.bn, bn_c), (m.pixel_bn, bn_p)):
        torch.testing.assert_close(mine.running_mean, ref.running_mean)
        torch.testing.assert_close(mine.running_var, ref.running_var)
        assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    assert y.shape == x.shape


@pytest.mark.parametrize("name,channels,knobs", CASES, ids=[f"{t}-{c}-{k}" for t, c, k in CASES])
def test_channels_last_input_matches(name, channels, knobs) -> None:
    """Channels-last input (training with channels_last=True) takes the plain-autograd paths: same results."""
    hw = (5, 7)
    torch.manual_seed(1)
    size = hw if get_spec(name).uses_spatial_size else None
    m = build_attention(name, channels, spatial_size=size, **knobs).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.2)
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    g = torch.randn_like(x)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.clone(memory_format=fmt).requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = m(xi)
        (y * g).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad.clone() for n, p in m.named_parameters()}))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-9, atol=1e-11)
    for n in gp0:
        torch.testing.assert_close(gp1[n], gp0[n], rtol=1e-9, atol=1e-11, msg=n)
