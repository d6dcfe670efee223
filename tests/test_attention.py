"""Attention zoo: shapes, gradients, parameter counts, known values, edge cases (all small, CPU, < 1 min)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attnsearch.attention import ATTENTION_TYPES, build_attention, get_spec, nam_penalty
from attnsearch.attention.eca import eca_kernel_size
from attnsearch.attention.na import NormalizationAttention
from attnsearch.attention.nam import NormalizationBasedAttention

HW = (6, 9)  # non-square everywhere

# (type, channels, knobs): channel counts that suit each module, odd ones where legal
CASES = [
    ("none", 32, {}),
    ("se", 32, {}), ("se", 64, {"reduction": 8}), ("se", 33, {}),
    ("cbam", 32, {}), ("cbam", 64, {"reduction": 4, "kernel_size": 3}), ("cbam", 33, {}),
    ("bam", 32, {}), ("bam", 64, {"dilation": 2, "combine": "product"}), ("bam", 33, {}),
    ("eca", 32, {}), ("eca", 256, {}), ("eca", 33, {"kernel_size": 5}),
    ("coord", 32, {}), ("coord", 256, {}), ("coord", 33, {"reduction": 4}),
    ("simam", 32, {}), ("simam", 7, {"e_lambda": 0.1}),
    ("na", 32, {}), ("na", 64, {}), ("na", 3, {}),
    ("nam", 32, {}), ("nam", 64, {"detach_weights": False}), ("nam", 33, {"spatial": True}),
    ("sa", 128, {}), ("sa", 256, {}), ("sa", 32, {"groups": 8}), ("sa", 6, {"groups": 3}),
    ("triplet", 32, {}), ("triplet", 64, {"kernel_size": 3, "no_spatial": True}), ("triplet", 5, {}),
    ("gc", 32, {}), ("gc", 64, {"fusion": "mul"}), ("gc", 33, {"reduction": 4}),
]
IDS = [f"{t}-{c}-{'-'.join(f'{k}={v}' for k, v in kn.items())}" for t, c, kn in CASES]


def _build(name: str, channels: int, knobs: dict, hw=HW) -> nn.Module:
    size = hw if get_spec(name).uses_spatial_size else None
    return build_attention(name, channels, spatial_size=size, **knobs)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Random parameters: the official inits zero some gradients on purpose (GC's zero last conv, CBAM's zero
    spatial BN weight, SA's zero cweight/sweight, NA's w = 0), which would hide a broken gradient path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 0.3)


def test_every_registered_type_is_covered() -> None:
    assert {t for t, _, _ in CASES} == set(ATTENTION_TYPES)
    expected = {"none", "se", "cbam", "bam", "eca", "coord", "simam", "na", "nam", "sa", "triplet", "gc"}
    assert set(ATTENTION_TYPES) == expected


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,channels,knobs", CASES, ids=IDS)
def test_mixed_precision_autocast(name: str, channels: int, knobs: dict, x_dtype: torch.dtype) -> None:
    # CPU autocast stands in for CUDA AMP: gate maps come out of convs/linears in bf16 while x may be float32
    # (or bf16 straight from a conv); forward and every hand-written backward must accept the mix
    torch.manual_seed(0)
    m = _build(name, channels, knobs)
    _randomize(m)
    x32 = torch.randn(4, channels, *HW)
    ref = m(x32.clone())  # float32 reference (train mode: batch statistics, as below)
    x = x32.clone().to(x_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y.float()).all()
    assert x.grad is not None and x.grad.dtype == x_dtype and torch.isfinite(x.grad.float()).all()
    for pname, p in m.named_parameters():
        assert p.grad is None or (p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()), pname
    # bf16 keeps ~3 significant digits; gates compound a few roundings
    torch.testing.assert_close(y.float(), ref.detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name,channels,knobs", CASES, ids=IDS)
def test_shape_grad_params_eval(name: str, channels: int, knobs: dict) -> None:
    torch.manual_seed(0)
    m = _build(name, channels, knobs)
    spec = get_spec(name)
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == spec.count_params(channels, HW, **knobs)

    _randomize(m)
    x = torch.randn(3, channels, *HW, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.pow(2).mean().backward()  # a non-linear loss, so sum-invariant gates still get gradients
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        if name == "gc" and pname == "conv_mask.bias":
            # a constant added to every softmax logit changes nothing: its gradient is 0 up to rounding
            assert p.grad.abs().sum() < 1e-5, f"gc: conv_mask.bias gradient should vanish, got {p.grad}"
            continue
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"

    m.eval()
    x = torch.randn(2, channels, *HW)
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    with torch.no_grad():
        y1, y2 = m(x), m(x)
    assert torch.equal(y1, y2)
    for k, v in m.named_buffers():
        assert torch.equal(v, buffers[k]), f"{name}: eval forward changed buffer {k}"


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
def test_spec_fields(name: str) -> None:
    spec = get_spec(name)
    official = {"se": "residual_end", "cbam": "residual_end", "eca": "residual_end", "nam": "residual_end",
                "na": "residual_end", "sa": "residual_end", "triplet": "residual_end", "gc": "residual_end",
                "simam": "mid", "coord": "mid", "bam": "stage_end", "none": "residual_end"}
    assert spec.slot == official[name]
    assert spec.summary
    # every knob default is valid and resolves
    spec.resolve({})


# ---------------------------------------------------------------------------------------------- param counts

R50_WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
R50_DELTAS = [
    ("se", {"reduction": 16}, 2_530_992),
    ("cbam", {"reduction": 16}, 2_532_592),
    ("coord", {"reduction": 32}, 1_917_832),
    ("nam", {}, 30_208),
    ("triplet", {"kernel_size": 7}, 4_800),
    ("sa", {"groups": 64}, 708),
    ("eca", {}, 86),
    ("na", {}, 32),
    ("simam", {}, 0),
    ("gc", {"reduction": 16}, 2_548_000),  # reference sheet table
]


@pytest.mark.parametrize("name,knobs,expected", R50_DELTAS, ids=[d[0] for d in R50_DELTAS])
def test_resnet50_param_deltas(name: str, knobs: dict, expected: int) -> None:
    spec = get_spec(name)
    assert sum(spec.count_params(c, None, **knobs) for c in R50_WIDTHS) == expected
    real = sum(sum(p.numel() for p in build_attention(name, c, **knobs).parameters()) for c in R50_WIDTHS)
    assert real == expected


def test_bam_resnet50_params() -> None:
    # three BAMs, after layer1-3 (reference sheet: 358,067 -> 25.92M)
    assert sum(get_spec("bam").count_params(c) for c in (256, 512, 1024)) == 358_067
    assert sum(sum(p.numel() for p in build_attention("bam", c).parameters()) for c in (256, 512, 1024)) == 358_067


def test_eca_kernel_sizes() -> None:
    expected = {2: 3, 4: 3, 16: 3, 64: 3, 96: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}
    for c, k in expected.items():
        assert eca_kernel_size(c) == k, c
        assert build_attention("eca", c).conv.weight.numel() == k
    assert build_attention("eca", 256, kernel_size=3).conv.weight.numel() == 3  # explicit override
    assert build_attention("eca", 2048, kernel_size=1).conv.weight.numel() == 1
    assert build_attention("eca", 64).conv.bias is None


def test_nam_spatial_params_and_size() -> None:
    m = build_attention("nam", 16, spatial_size=(5, 7), spatial=True)
    assert sum(p.numel() for p in m.pixel_bn.parameters()) == 2 * 5 * 7
    assert sum(p.numel() for p in m.parameters()) == 2 * 16 + 2 * 5 * 7
    assert m(torch.randn(2, 16, 5, 7)).shape == (2, 16, 5, 7)
    with pytest.raises(ValueError, match="spatial_size"):
        m(torch.randn(2, 16, 7, 5))
    with pytest.raises(ValueError, match=r"nam\.spatial=True needs spatial_size"):
        build_attention("nam", 16, spatial=True)
    with pytest.raises(ValueError, match=r"nam\.spatial"):
        NormalizationBasedAttention(16, spatial=True)
    assert build_attention("nam", 16).pixel_bn is None  # released code: channel branch only


# ---------------------------------------------------------------------------------------------- known values


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def test_simam_known_values() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5))
    lam = 1e-4
    n = 4 * 5 - 1
    mu = x.mean(axis=(2, 3), keepdims=True)
    d = (x - mu) ** 2
    v = d.sum(axis=(2, 3), keepdims=True) / n
    expected = x * _sigmoid(d / (4 * (v + lam)) + 0.5)
    out = build_attention("simam", 3, e_lambda=lam)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def _na_numpy(x: np.ndarray, w: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    bsz, c = x.shape[:2]
    xf = x.reshape(bsz, c, -1)
    m = xf.mean(axis=1)  # (B, HW)
    s = -np.abs(m - m.mean(axis=1, keepdims=True))
    a = np.exp(s - s.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    g = (xf * a[:, None, :]).sum(axis=2)
    gh = (g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    return g, x * _sigmoid(w * gh + b)[:, :, None, None]


def test_na_known_values() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3, 4))
    m = NormalizationAttention(5).double()
    with torch.no_grad():
        m.weight.fill_(0.7)
        m.bias.fill_(-0.2)
    g, expected = _na_numpy(x, 0.7, -0.2)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(m.context(xt).detach().numpy(), g, rtol=1e-10)
    np.testing.assert_allclose(m(xt).detach().numpy(), expected, rtol=1e-10)
    # official init: w = 0, b = 1 -> gate sigmoid(1) everywhere
    m0 = NormalizationAttention(5).double()
    np.testing.assert_allclose(m0(xt).detach().numpy(), x * _sigmoid(1.0), rtol=1e-12)


def test_na_context_depends_on_spatial_structure() -> None:
    # same per-channel means (GAP = [2, 2]) but different spatial layouts: the similarity-weighted context must
    # differ and must not be the constant 1 a softmax summed over its own axis would give
    x1 = torch.tensor([[[0.0, 0.0, 0.0, 8.0], [2.0, 2.0, 2.0, 2.0]]]).view(1, 2, 2, 2)
    x2 = torch.tensor([[[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 8.0]]]).view(1, 2, 2, 2)
    m = NormalizationAttention(2)
    assert torch.equal(x1.mean((2, 3)), x2.mean((2, 3)))
    g1, g2 = m.context(x1), m.context(x2)
    assert not torch.allclose(g1, g2)
    assert not torch.allclose(g1, torch.ones_like(g1))
    # the outlier pixel is dissimilar to the mean map, so it gets little weight: channel 0's context is small
    assert g1[0, 0] < 1.0 < g1[0, 1]
    np.testing.assert_allclose(g1.numpy(), _na_numpy(x1.double().numpy(), 0.0, 0.0)[0], rtol=1e-6)
    with torch.no_grad():
        m.weight.fill_(1.0)
    assert not torch.allclose(m(x1) / x1.clamp_min(1e-3), m(x2) / x2.clamp_min(1e-3))


def test_sa_channel_order_after_shuffle() -> None:
    for c, g in ((256, 64), (24, 3), (16, 2)):
        m = build_attention("sa", c, groups=g)
        x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(2, c, 3, 5).contiguous()
        with torch.no_grad():
            out = m(x)
        # at init both gates are sigmoid(1) (cweight = sweight = 0, biases 1), so out = shuffled(x) * sigmoid(1)
        idx = (out / torch.sigmoid(torch.tensor(1.0))).round()
        # official: per-group chunk/cat keeps channel order, then channel_shuffle(groups=2)
        expected = np.arange(c).reshape(2, c // 2).T.reshape(-1)
        expected = torch.from_numpy(expected).float().view(1, c, 1, 1).expand_as(idx)
        assert torch.equal(idx, expected)


def test_se_fixed_weights() -> None:
    c, r = 8, 4
    m = build_attention("se", c, reduction=r).double()
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(size=(c // r, c)), rng.normal(size=c // r)
    w2, b2 = rng.normal(size=(c, c // r)), rng.normal(size=c)
    with torch.no_grad():
        m.fc1.weight.copy_(torch.from_numpy(w1).view(c // r, c, 1, 1))
        m.fc1.bias.copy_(torch.from_numpy(b1))
        m.fc2.weight.copy_(torch.from_numpy(w2).view(c, c // r, 1, 1))
        m.fc2.bias.copy_(torch.from_numpy(b2))
    x = rng.normal(size=(2, c, 3, 4))
    z = x.mean(axis=(2, 3))
    s = _sigmoid(np.maximum(z @ w1.T + b1, 0) @ w2.T + b2)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), x * s[:, :, None, None], rtol=1e-10)


def _conv2d_numpy(img: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero 'same' padding; img (B, Cin, H, W), weight (1, Cin, k, k)."""
    k = weight.shape[-1]
    p = k // 2
    bsz, _, h, w = img.shape
    padded = np.pad(img, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((bsz, 1, h, w))
    for i in range(h):
        for j in range(w):
            out[:, 0, i, j] = (padded[:, :, i:i + k, j:j + k] * weight[0]).sum(axis=(1, 2, 3))
    return out


def test_cbam_fixed_weights() -> None:
    c, r, k = 8, 2, 3
    m = build_attention("cbam", c, reduction=r, kernel_size=k).double().eval()
    rng = np.random.default_rng(4)
    w1, b1 = rng.normal(size=(c // r, c)), rng.normal(size=c // r)
    w2, b2 = rng.normal(size=(c, c // r)), rng.normal(size=c)
    wc = rng.normal(size=(1, 2, k, k))
    bn_w, bn_b, rm, rv = 1.3, -0.4, 0.2, 2.0
    with torch.no_grad():
        for t, v in ((m.fc1.weight, w1), (m.fc1.bias, b1), (m.fc2.weight, w2), (m.fc2.bias, b2),
                     (m.spatial_conv.weight, wc)):
            t.copy_(torch.from_numpy(v))
        m.spatial_bn.weight.fill_(bn_w)
        m.spatial_bn.bias.fill_(bn_b)
        m.spatial_bn.running_mean.fill_(rm)
        m.spatial_bn.running_var.fill_(rv)
    x = rng.normal(size=(2, c, 4, 5))

    def mlp(z: np.ndarray) -> np.ndarray:
        return np.maximum(z @ w1.T + b1, 0) @ w2.T + b2

    mc = _sigmoid(mlp(x.mean(axis=(2, 3))) + mlp(x.max(axis=(2, 3))))
    x1 = x * mc[:, :, None, None]
    pooled = np.stack([x1.max(axis=1), x1.mean(axis=1)], axis=1)  # official order [max, mean]
    ms = _sigmoid((_conv2d_numpy(pooled, wc) - rm) / np.sqrt(rv + 1e-5) * bn_w + bn_b)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), x1 * ms, rtol=1e-10)


def test_cbam_and_gc_official_init() -> None:
    x = torch.randn(2, 32, 5, 6)
    cbam = build_attention("cbam", 32)
    assert torch.equal(cbam.spatial_bn.weight, torch.zeros(1))  # spatial gate starts at sigmoid(0) = 0.5
    cbam.spatial_bn.weight.data.fill_(1.0)
    cbam.reset_parameters()
    assert torch.equal(cbam.spatial_bn.weight, torch.zeros(1))
    gc = build_attention("gc", 32)
    assert torch.equal(gc(x), x)  # zero-initialised last conv: identity for add fusion
    gc_mul = build_attention("gc", 32, fusion="mul")
    torch.testing.assert_close(gc_mul(x), x * 0.5)


def test_gc_attention_pooling() -> None:
    torch.manual_seed(0)
    gc = build_attention("gc", 4).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    logits = torch.einsum("bchw,c->bhw", x, gc.conv_mask.weight.view(4)) + gc.conv_mask.bias
    a = torch.softmax(logits.flatten(1), 1)
    expected = (x.flatten(2) * a[:, None, :]).sum(2)
    torch.testing.assert_close(gc.context(x).view(2, 4), expected)


def _nam_channel_numpy(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean=None, var=None) -> np.ndarray:
    if mean is None:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    bn = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    w = np.abs(gamma) / np.abs(gamma).sum()
    return x * _sigmoid(w[None, :, None, None] * bn)


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e4])
def test_nam_float32_statistics_match_batch_norm(offset: float) -> None:
    # float32 moments from sums: a large mean must not cancel the variance away (the two-pass fallback)
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 7) * torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1) + offset
    m = NormalizationBasedAttention(8)
    ref = nn.BatchNorm2d(8)
    torch.testing.assert_close(m(x), x * torch.sigmoid(ref(x) / 8))
    torch.testing.assert_close(m.bn.running_mean, ref.running_mean)
    torch.testing.assert_close(m.bn.running_var, ref.running_var)


def test_nam_single_value_per_channel_is_rejected_in_training() -> None:
    m = NormalizationBasedAttention(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 4, 1, 1))
    m.eval()
    assert m(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)


def test_nam_channel_gate_fixed_gamma_beta() -> None:
    c = 6
    rng = np.random.default_rng(5)
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    x = rng.normal(size=(4, c, 3, 5)) * 2 + 1
    m = NormalizationBasedAttention(c).double()
    with torch.no_grad():
        m.bn.weight.copy_(torch.from_numpy(gamma))
        m.bn.bias.copy_(torch.from_numpy(beta))
    out = m(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, _nam_channel_numpy(x, gamma, beta), rtol=1e-10)
    # running statistics follow BatchNorm2d (momentum 0.1, unbiased running var)
    np.testing.assert_allclose(m.bn.running_mean.numpy(), 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(m.bn.running_var.numpy(), 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-10)
    assert int(m.bn.num_batches_tracked) == 1
    m.eval()
    rm, rv = m.bn.running_mean.numpy().copy(), m.bn.running_var.numpy().copy()
    out = m(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, _nam_channel_numpy(x, gamma, beta, rm, rv), rtol=1e-10)
    # official init: gamma = 1 -> w = 1/C, gate sigmoid(xhat / C)
    m0 = NormalizationBasedAttention(c).double()
    np.testing.assert_allclose(m0(torch.from_numpy(x)).detach().numpy(),
                               _nam_channel_numpy(x, np.ones(c), np.zeros(c)), rtol=1e-10)


def test_nam_spatial_branch_known_values() -> None:
    c, h, w = 5, 3, 4
    rng = np.random.default_rng(6)
    lam, beta = rng.normal(size=h * w), rng.normal(size=h * w)
    x = rng.normal(size=(3, c, h, w))
    m = build_attention("nam", c, spatial_size=(h, w), spatial=True).double()
    with torch.no_grad():
        m.pixel_bn.weight.copy_(torch.from_numpy(lam))
        m.pixel_bn.bias.copy_(torch.from_numpy(beta))
    x1 = _nam_channel_numpy(x, np.ones(c), np.zeros(c))
    # BatchNorm1d(H*W) on (B, HW, C): per pixel, statistics over batch and channels
    flat = x1.reshape(3, c, h * w)
    mean, var = flat.mean(axis=(0, 1)), flat.var(axis=(0, 1))
    bn = lam * (flat - mean) / np.sqrt(var + 1e-5) + beta
    wl = np.abs(lam) / np.abs(lam).sum()
    expected = (flat * _sigmoid(wl * bn)).reshape(x.shape)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(m.pixel_bn.running_var.numpy(), 0.9 + 0.1 * flat.var(axis=(0, 1), ddof=1),
                               rtol=1e-10)
    m.eval()
    bn = lam * (flat - m.pixel_bn.running_mean.numpy()) / np.sqrt(m.pixel_bn.running_var.numpy() + 1e-5) + beta
    x1e = _nam_channel_numpy(x, np.ones(c), np.zeros(c), m.bn.running_mean.numpy(), m.bn.running_var.numpy())
    flat = x1e.reshape(3, c, h * w)
    bn = lam * (flat - m.pixel_bn.running_mean.numpy()) / np.sqrt(m.pixel_bn.running_var.numpy() + 1e-5) + beta
    expected = (flat * _sigmoid(wl * bn)).reshape(x.shape)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-10)


def test_nam_detach_weights_gradient() -> None:
    c = 6
    torch.manual_seed(0)
    x = torch.randn(4, c, 3, 5, dtype=torch.float64)
    gamma = torch.randn(c, dtype=torch.float64)
    beta = torch.randn(c, dtype=torch.float64)
    grads = {}
    for detach in (True, False):
        m = build_attention("nam", c, detach_weights=detach).double()
        with torch.no_grad():
            m.bn.weight.copy_(gamma)
            m.bn.bias.copy_(beta)
        m(x).pow(2).sum().backward()
        grads[detach] = m.bn.weight.grad.clone()
        # reference: BN output scaled by w, with w from the detached (official .data) or live gamma
        g = gamma.clone().requires_grad_(True)
        b = beta.clone().requires_grad_(True)
        xhat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False,
                                                                           keepdim=True) + 1e-5)
        gw = g.detach() if detach else g
        w = gw.abs() / gw.abs().sum()
        ref = x * torch.sigmoid(w.view(1, c, 1, 1) * (g.view(1, c, 1, 1) * xhat + b.view(1, c, 1, 1)))
        ref.pow(2).sum().backward()
        torch.testing.assert_close(grads[detach], g.grad)
        assert grads[detach].abs().sum() > 0
    assert not torch.allclose(grads[True], grads[False])


def test_nam_penalty() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        build_attention("nam", 8),
        build_attention("nam", 8, spatial_size=(4, 5), spatial=True),
        nn.BatchNorm2d(8),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.normal_()
                mod.bias.normal_(5.0)
        net[1].weight.fill_(100.0)
        net[4].weight.fill_(-100.0)
    nam_scales = (net[2].bn.weight, net[3].bn.weight, net[3].pixel_bn.weight)
    expected = sum(float(t.detach().abs().sum()) for t in nam_scales)
    pen = nam_penalty(net)
    assert pen.dim() == 0
    assert math.isclose(pen.item(), expected, rel_tol=1e-6)
    pen.backward()
    torch.testing.assert_close(net[2].bn.weight.grad, net[2].bn.weight.sign())
    torch.testing.assert_close(net[3].pixel_bn.weight.grad, net[3].pixel_bn.weight.sign())
    assert net[1].weight.grad is None and net[4].weight.grad is None and net[2].bn.bias.grad is None
    # cached module list still reads the live weights
    with torch.no_grad():
        net[2].bn.weight.fill_(2.0)
    expected2 = 16.0 + sum(float(t.detach().abs().sum()) for t in (net[3].bn.weight, net[3].pixel_bn.weight))
    assert math.isclose(nam_penalty(net).item(), expected2, rel_tol=1e-6)
    # no NAM: a zero tensor; refresh picks up modules added after the first call
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert nam_penalty(plain).item() == 0.0
    plain.append(build_attention("nam", 4))
    assert nam_penalty(plain, refresh=True).item() == 4.0


# ---------------------------------------------------------------------------------------------- edge cases


def test_sa_groups_error_names_knob_and_valid_values() -> None:
    with pytest.raises(ValueError, match=r"sa\.groups.*\[1, 2, 3, 4, 6, 8, 12, 16, 24, 48\]"):
        build_attention("sa", 96, groups=64)
    with pytest.raises(ValueError, match=r"sa\.groups"):
        get_spec("sa").validate(64)  # default G = 64 needs C % 128 == 0
    with pytest.raises(ValueError, match=r"sa\.groups"):
        build_attention("sa", 33, groups=1)
    from attnsearch.attention.shuffle import ShuffleAttention

    with pytest.raises(ValueError, match=r"sa\.groups"):
        ShuffleAttention(64, groups=64)  # direct construction is guarded too


@pytest.mark.parametrize(
    "name,channels,kwargs,pattern",
    [
        ("cbam", 32, {"kernel_size": 4}, r"cbam\.kernel_size"),
        ("triplet", 32, {"kernel_size": 6}, r"triplet\.kernel_size"),
        ("eca", 32, {"kernel_size": 2}, r"eca\.kernel_size"),
        ("eca", 32, {"gamma": 0}, r"eca\.gamma"),
        ("bam", 32, {"combine": "mean"}, r"bam\.combine.*sum.*product"),
        ("gc", 32, {"fusion": "concat"}, r"gc\.fusion.*add.*mul"),
        ("se", 32, {"reduction": 0}, r"se\.reduction"),
        ("nam", 32, {"spatial": "yes"}, r"nam\.spatial"),
        ("nam", 32, {"spatial": True}, r"spatial_size"),
        ("na", 1, {}, r"channels"),
        ("simam", 8, {"spatial_size": (1, 1)}, r"simam.*1x1"),
        ("sa", 32, {"groups": 0}, r"sa\.groups"),
        ("coord", 32, {"ratio": 4}, r"coord.*reduction"),
    ],
)
def test_invalid_combinations_raise(name: str, channels: int, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_attention(name, channels, **kwargs)


def test_runtime_guards() -> None:
    with pytest.raises(ValueError, match="simam.*1x1"):
        build_attention("simam", 8)(torch.randn(2, 8, 1, 1))
    assert build_attention("simam", 8)(torch.randn(2, 8, 1, 2)).shape == (2, 8, 1, 2)  # n = 1 is fine
    bam = build_attention("bam", 32)
    with pytest.raises(ValueError, match="bam.*batch size"):
        bam(torch.randn(1, 32, 4, 4))
    assert bam.eval()(torch.randn(1, 32, 4, 4)).shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="na.*channels"):
        NormalizationAttention(1)


def test_bam_combine_modes_differ_and_match_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 7)
    outs = {}
    for combine in ("sum", "product"):
        torch.manual_seed(1)
        m = build_attention("bam", 32, combine=combine).eval()
        b = x.shape[0]
        mc = m.channel_fc2(torch.relu(m.channel_bn(m.channel_fc1(x.mean((2, 3)))))).view(b, 32, 1, 1)
        ms = m.spatial(x)
        att = mc + ms if combine == "sum" else mc * ms
        outs[combine] = m(x)
        torch.testing.assert_close(outs[combine], (1 + torch.sigmoid(att)) * x)
    assert not torch.allclose(outs["sum"], outs["product"])


def test_coord_non_square_gates() -> None:
    torch.manual_seed(0)
    m = build_attention("coord", 16).eval()
    x = torch.randn(2, 16, 3, 8)
    y = m(x)
    # the ratio y/x factorises into a (B,C,H,1) x (B,C,1,W) outer product: rank-1 per (b, c)
    ratio = (y / x).double()
    for b in range(2):
        for c in range(16):
            assert torch.linalg.matrix_rank(ratio[b, c], atol=1e-5) == 1
