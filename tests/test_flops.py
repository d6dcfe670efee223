"""FLOPs / MACs / params counter (attnsearch.flops)."""

from __future__ import annotations

import time

import pytest
import torch
import torchvision
from torch import nn

from attnsearch.attention import ATTENTION_TYPES
from attnsearch.flops import _run, count
from attnsearch.models import build_model, check_attention_placement

TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread, restored after


def meta_model(*args, **kwargs) -> nn.Module:
    with torch.device("meta"):  # shapes only: skips weight init, counting does not need values
        return build_model(*args, **kwargs)


# ---------------------------------------------------------------- torchvision's documented figures


@pytest.mark.parametrize("name", list(TV_WEIGHTS))
def test_plain_backbones_match_torchvision_docs(name):
    meta = getattr(torchvision.models, TV_WEIGHTS[name]).DEFAULT.meta
    c = count(meta_model(name, 1000), (1, 3, 224, 224))
    # torchvision's "_ops" is GFLOPS meaning GMACs (conv + linear multiply-adds), given to 3 decimals
    assert round(c["macs"] / 1e9, 3) == meta["_ops"]
    assert c["params"] == meta["num_params"]
    assert c["attn_flops"] == c["attn_params"] == c["attn_macs"] == 0 and c["sites"] == {}
    assert c["uncounted"] == {}
    assert c["flops"] > 2 * c["macs"]  # plus BN, ReLU, pools, residual adds


def test_counts_torchvision_models_directly():
    with torch.device("meta"):
        theirs = torchvision.models.resnet50(weights=None)
    assert count(theirs, 224)["macs"] == count(meta_model("resnet50"), 224)["macs"]


# ---------------------------------------------------------------- ResNet-50 attention deltas

# added parameters with one module at residual_end of all 16 bottlenecks (reference sheet §0, official formulas)
DELTAS = [
    ("se", {"reduction": 16}, 2_530_992),
    ("cbam", {"reduction": 16}, 2_532_592),
    ("coord", {"reduction": 32}, 1_917_832),
    ("nam", {"spatial": False}, 30_208),
    ("triplet", {"kernel_size": 7}, 4_800),
    ("sa", {"groups": 64}, 708),
    ("eca", {"kernel_size": None}, 86),  # adaptive k = 5, 5, 5, 7 per stage
    ("na", {}, 32),
    ("simam", {}, 0),
]


@pytest.fixture(scope="module")
def resnet50_plain():
    return count(meta_model("resnet50"), 224)


@pytest.mark.parametrize("type_,knobs,delta", DELTAS, ids=[d[0] for d in DELTAS])
def test_resnet50_parameter_deltas(resnet50_plain, type_, knobs, delta):
    assert type_ in ATTENTION_TYPES, f"attention type {type_!r} is not registered"
    att = {"type": type_, "position": "residual_end", **knobs}
    c = count(meta_model("resnet50", attention=att), 224)
    assert c["params"] - resnet50_plain["params"] == delta
    assert c["attn_params"] == delta
    assert len(c["sites"]) == 16
    assert c["flops"] - resnet50_plain["flops"] == c["attn_flops"] > 0  # attention work is all inside the modules
    assert c["macs"] - resnet50_plain["macs"] == c["attn_macs"]
    assert c["uncounted"] == {}


def test_bam_official_placement_matches_reference(resnet50_plain):
    assert "bam" in ATTENTION_TYPES, "attention type 'bam' is not registered"
    c = count(meta_model("resnet50", attention={"type": "bam", "stages": [1, 2, 3]}), 224)
    assert list(c["sites"]) == ["layer1.2.stage_end", "layer2.3.stage_end", "layer3.5.stage_end"]
    assert c["attn_params"] == c["params"] - resnet50_plain["params"] == 358_067  # sheet §0: 25.92M total


# ---------------------------------------------------------------- every registered module


@pytest.mark.parametrize("type_", [t for t in ATTENTION_TYPES if t != "none"])
def test_every_module_costs_flops_and_matches_the_registry(type_):
    spec = ATTENTION_TYPES[type_]
    att = {"type": type_, "position": "residual_end"}
    if "groups" in spec.knobs:  # resnet20's 16..64 channels
        att["groups"] = 4
    sites = check_attention_placement("resnet20", att, 32)
    plain = count(build_model("resnet20", 10), 32)
    model = build_model("resnet20", 10, attention=att)
    c = count(model, 32)
    assert list(c["sites"]) == [s.name for s in sites]
    assert all(s["type"] == type_ and s["flops"] > 0 for s in c["sites"].values())  # parameter-free too
    assert c["attn_flops"] == sum(s["flops"] for s in c["sites"].values()) == c["flops"] - plain["flops"]
    knobs = {k: v for k, v in att.items() if k not in ("type", "position")}
    assert c["attn_params"] == sum(spec.count_params(s.channels, s.spatial_size, **knobs) for s in sites)
    assert c["uncounted"] == {}
    # shape-only (meta) counting gives the same numbers as running the model for real
    sites_map = {m: m._attnsearch_site for m in model.modules() if hasattr(m, "_attnsearch_site")}
    real = _run(model.eval(), (1, 3, 32, 32), meta=False, sites=sites_map)
    assert (real.flops, real.macs, dict(real.site_flops)) == (c["flops"], c["macs"], {
        k: v["flops"] for k, v in c["sites"].items()})  # fmt: skip


# ---------------------------------------------------------------- conventions (module docstring table)


def _flops(module: nn.Module, shape) -> tuple[int, int]:
    c = count(module, shape)
    assert c["uncounted"] == {}
    return c["flops"], c["macs"]


def test_op_conventions():
    n = 2 * 8 * 6 * 6  # elements of a (2, 8, 6, 6) tensor
    shape = (2, 8, 6, 6)
    # conv: macs = out * Cin/groups * k*k ; flops = 2 * macs (+ out for a bias)
    assert _flops(nn.Conv2d(8, 4, 3, padding=1, bias=False), shape) == (2 * (2 * 4 * 36 * 8 * 9), 2 * 4 * 36 * 8 * 9)
    assert _flops(nn.Conv2d(8, 4, 3, padding=1), shape)[0] == 2 * (2 * 4 * 36 * 8 * 9) + 2 * 4 * 36
    assert _flops(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), shape)[1] == n * 9
    assert _flops(nn.Sequential(nn.Flatten(), nn.Linear(8 * 36, 10)), shape) == (2 * 2 * 288 * 10 + 20, 2 * 288 * 10)
    assert _flops(nn.BatchNorm2d(8).eval(), shape) == (2 * n, 0)  # inference: folded scale + shift
    assert _flops(nn.GroupNorm(4, 8), shape) == (7 * n, 0)  # statistics 3 + normalise 2 + affine 2
    assert _flops(nn.ReLU(), shape) == (n, 0)
    assert _flops(nn.Sigmoid(), shape) == (n, 0)
    assert _flops(nn.Hardswish(), shape) == (n, 0)
    assert _flops(nn.Softmax(dim=1), shape) == (5 * n, 0)
    assert _flops(nn.AdaptiveAvgPool2d(1), shape) == (n + 16, 0)
    assert _flops(nn.MaxPool2d(3, 2, 1), shape) == (2 * 8 * 3 * 3 * 9, 0)
    assert _flops(nn.Identity(), shape) == (0, 0)


class _Gate(nn.Module):
    def forward(self, x):
        a, _ = x.max(dim=1, keepdim=True)  # 1 per input element
        return x * torch.sigmoid(a + x.mean(dim=1, keepdim=True))  # mean: n + out; add, sigmoid: out; mul: n


def test_functional_code_is_counted():
    shape = (2, 8, 6, 6)
    n, out = 2 * 8 * 36, 2 * 36
    assert _flops(_Gate(), shape) == (n + (n + out) + out + out + n, 0)


# ---------------------------------------------------------------- behaviour


def test_input_size_forms_and_errors():
    model = build_model("resnet20", 10)
    ref = count(model, (1, 3, 32, 32))["flops"]
    assert count(model, 32)["flops"] == count(model, (32, 32))["flops"] == count(model, (3, 32, 32))["flops"] == ref
    assert count(model, (2, 3, 32, 32))["flops"] == 2 * ref
    with pytest.raises(ValueError, match="input_size"):
        count(model, (1, 1, 3, 32, 32))


def test_count_keeps_modes_and_grads():
    model = build_model("resnet20", 10, attention={"type": "se", "reduction": 4})
    model.train()
    model.layer1.eval()
    count(model, 32)
    assert model.training and not model.layer1.training and model.layer2.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # real weights untouched


def test_falls_back_to_real_tensors():
    class NeedsValues(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1, bias=False)

        def forward(self, x):
            y = self.conv(x)
            return y * float(y.abs().max() >= 0)  # .item(): impossible on meta tensors

    assert count(NeedsValues(), (1, 3, 5, 5))["macs"] == 4 * 25 * 3


def test_resnet50_count_is_fast():
    model = build_model("resnet50", 1000, attention={"type": "se", "position": "residual_end"})
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        count(model, (1, 3, 224, 224))
        times.append(time.perf_counter() - t0)
    assert sorted(times)[1] < 2.0, times
