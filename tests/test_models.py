"""Backbones, insertion sites, placement checks and weight loading (attnsearch.models)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torchvision
from torch import nn

from attnsearch.attention import ATTENTION_TYPES
from attnsearch.models import (
    BACKBONES,
    POSITIONS,
    attention_modules,
    build_model,
    check_attention_placement,
    format_sites,
    list_sites,
)
from attnsearch.models.sites import _sites

TV_BACKBONES = ["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"]
ATTN_TYPES = [name for name in ATTENTION_TYPES if name != "none"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread, restored after


def placeable(backbone: str, type_: str, position: str, input_size, width_mult: float = 1.0) -> dict:
    """An attention dict of ``type_`` at ``position`` that is valid everywhere on ``backbone``: the defaults, or
    else the first smaller value of one integer knob that fits (e.g. Shuffle Attention's groups on 16 channels)."""
    spec = ATTENTION_TYPES[type_]
    int_knobs = [k for k, kb in spec.knobs.items() if kb.kind == "int" and kb.default is not None]
    errors = []
    for knobs in [{}] + [{k: v} for k in int_knobs for v in (8, 4, 2, 1)]:
        attention = {"type": type_, "position": position, **knobs}
        try:
            check_attention_placement(backbone, attention, input_size, width_mult)
            return attention
        except ValueError as e:
            errors.append(str(e))
    pytest.fail(f"no valid knobs for {type_} at {position} on {backbone}: {errors}")


# ---------------------------------------------------------------- backbones


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*resnet50.*mobilenet_v2.*resnet20"):
        build_model("resnet51", 10)
    with pytest.raises(ValueError, match="valid backbones"):
        list_sites("vgg16")
    assert set(BACKBONES) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2",
        "resnet18_cifar", "resnet50_cifar", "resnet20", "resnet32", "resnet56",
    }  # fmt: skip


@pytest.mark.parametrize("name", TV_BACKBONES)
def test_plain_backbone_has_torchvision_state_dict(name):
    with torch.device("meta"):  # shapes only: fast
        ours = build_model(name, num_classes=1000).state_dict()
        theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_attention_adds_only_new_keys():
    with torch.device("meta"):
        plain = build_model("resnet50").state_dict()
        se = build_model("resnet50", attention={"type": "se", "position": "residual_end"}).state_dict()
    extra = [k for k in se if k not in plain]
    assert [k for k in plain if k not in se] == []
    assert extra and all(".attn_residual_end." in k for k in extra)
    assert "layer3.5.attn_residual_end.fc1.weight" in extra


@pytest.mark.parametrize("name,expected_m", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85)])
def test_small_cifar_resnets_match_he_et_al_param_counts(name, expected_m):
    # He et al. 2016 Table 6 (option-A shortcuts): 0.27M / 0.46M / 0.85M parameters with 10 classes
    model = build_model(name, num_classes=10)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == expected_m
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_cifar_stem(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    sites = list_sites(name)  # default input 32: no downsampling before layer1
    assert sites[0].spatial_size == (32, 32) and sites[-1].spatial_size == (4, 4)


def test_bad_build_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet20", 0)
    with pytest.raises(ValueError, match="width_mult=0.5 is not supported by resnet50.*mobilenet_v2.*resnet20"):
        build_model("resnet50", 10, width_mult=0.5)
    with pytest.raises(ValueError, match="pretrained.*no ImageNet weights for resnet20"):
        build_model("resnet20", 10, pretrained=True)
    with pytest.raises(ValueError, match="input_size"):
        list_sites("resnet20", input_size=(32, 32, 3))


# ---------------------------------------------------------------- sites


def _probe_sites(model: nn.Module, sites, x: torch.Tensor) -> dict[str, dict]:
    """Put a recording identity into every site's slot and record what reaches it, plus the outputs of the
    layers each position is defined against."""
    seen: dict[str, dict] = {}

    class Probe(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, t):
            seen.setdefault(self.name, {})["tensor"] = t
            return t

    refs: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(m, a, o):
            refs[key] = o

        return hook

    for s in sites:
        block = model.get_submodule(s.block_path)
        setattr(block, f"attn_{s.position}", Probe(s.name))
    for path in dict.fromkeys(s.block_path for s in sites):
        block = model.get_submodule(path)
        if hasattr(block, "conv2"):  # ResNet blocks: mid = conv2 output, residual_end = last BN output
            block.conv2.register_forward_hook(keep(f"{path}.mid"))
            last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
            last_bn.register_forward_hook(keep(f"{path}.residual_end"))
        else:  # MobileNetV2: mid = depthwise ConvBNReLU6 output, residual_end = pw-linear BN output
            block.conv[len(block.conv) - 3].register_forward_hook(keep(f"{path}.mid"))
            block.conv[-1].register_forward_hook(keep(f"{path}.residual_end"))
    with torch.no_grad():
        model.eval()(x)
    for name, rec in seen.items():
        block_path, position = name.rsplit(".", 1)
        rec["ref"] = refs.get(f"{block_path}.{position}")
    return seen


@pytest.mark.parametrize(
    "backbone,input_size,width_mult",
    [("resnet50", (67, 90), 1.0), ("resnet20", (30, 33), 1.0), ("mobilenet_v2", (65, 97), 0.35),
     ("resnet18_cifar", (20, 20), 1.0)],
)  # fmt: skip
def test_sites_match_a_real_forward_pass(backbone, input_size, width_mult):
    sites = list_sites(backbone, input_size, width_mult)
    model = build_model(backbone, 10, width_mult=width_mult)
    seen = _probe_sites(model, sites, torch.randn(1, 3, *input_size))
    assert set(seen) == {s.name for s in sites}  # every slot is on the forward path, no site is missing one
    for s in sites:
        t = seen[s.name]["tensor"]
        assert (t.shape[1], tuple(t.shape[2:])) == (s.channels, s.spatial_size), s.name
        if s.position in ("mid", "residual_end"):  # the exact tensor the position is defined on
            assert seen[s.name]["ref"] is t, s.name
    stages = {s.stage for s in sites}
    assert stages == set(range(1, BACKBONES[backbone].num_stages + 1))
    assert sum(s.position == "stage_end" for s in sites) == len(stages)


def test_mobilenet_v2_stages_and_sites():
    sites = list_sites("mobilenet_v2", 224)
    blocks = [s for s in sites if s.position == "residual_end"]
    # the seven (t, c, n, s) rows: n = 1, 2, 3, 4, 3, 3, 1 blocks, c = 16 ... 320
    assert [sum(b.stage == k for b in blocks) for k in range(1, 8)] == [1, 2, 3, 4, 3, 3, 1]
    assert [b.channels for b in blocks if b.block == 0] == [16, 24, 32, 64, 96, 160, 320]
    mids = {s.name: s.channels for s in sites if s.position == "mid"}
    assert mids["features.1.mid"] == 32 and mids["features.2.mid"] == 16 * 6  # t = 1 then t = 6 expansion
    assert blocks[0].name == "features.1.residual_end" and blocks[-1].name == "features.17.residual_end"


def test_format_sites_table():
    sites = list_sites("resnet50", 224)
    text = format_sites(sites)
    lines = text.splitlines()
    assert len(lines) == len(sites) + 2
    assert lines[0].split() == ["site", "stage", "block", "position", "channels", "size"]
    assert any(line.split() == ["layer3.2.residual_end", "3", "2", "residual_end", "1024", "14x14"] for line in lines)


# ---------------------------------------------------------------- placement


def test_selection_of_stages_blocks_positions():
    att = {"type": "se", "stages": [2, 3], "blocks": "last", "position": "residual_end"}
    assert [s.name for s in check_attention_placement("resnet50", att, 224)] == [
        "layer2.3.residual_end", "layer3.5.residual_end"]  # fmt: skip
    att = {"type": "se", "stages": "1,4", "blocks": "first", "position": "mid"}
    chosen = check_attention_placement("resnet50", att, 224)
    assert [(s.name, s.channels) for s in chosen] == [("layer1.0.mid", 64), ("layer4.0.mid", 512)]
    chosen = check_attention_placement("resnet20", {"type": "se", "reduction": 4, "position": "stage_end"})
    assert [s.name for s in chosen] == ["layer1.2.stage_end", "layer2.2.stage_end", "layer3.2.stage_end"]
    assert len(check_attention_placement("resnet101", {"type": "se", "position": "post_add"}, 224)) == 33
    assert check_attention_placement("resnet50", None) == []
    assert check_attention_placement("resnet50", {"type": "none"}) == []


@pytest.mark.parametrize("type_", ATTN_TYPES)
def test_default_position_is_the_official_slot(type_):
    spec = ATTENTION_TYPES[type_]
    att = placeable("resnet50", type_, "default", 224)
    chosen = check_attention_placement("resnet50", att, 224)
    assert chosen and {s.position for s in chosen} == {spec.slot}


def test_invalid_placement_names_the_site():
    assert "sa" in ATTENTION_TYPES, "Shuffle Attention ('sa') is not registered"
    # G=64 needs C % 128 == 0: resnet20's 16-channel first stage cannot take it
    with pytest.raises(ValueError, match=r"^layer1\.0\.residual_end \(16 channels, 32x32\): .*groups"):
        check_attention_placement("resnet20", {"type": "sa", "groups": 64, "position": "residual_end"}, 32)
    with pytest.raises(ValueError, match=r"^layer1\.0\.residual_end \(256 channels"):
        build_model("resnet50", attention={"type": "sa", "groups": 256, "position": "residual_end"})
    # stage 2 of ResNet-50 has 128 mid channels: fine for G=64 at residual_end (512) but not at mid
    with pytest.raises(ValueError, match=r"^layer1\.0\.mid \(64 channels, 56x56\)"):
        check_attention_placement("resnet50", {"type": "sa", "groups": 64, "position": "mid"}, 224)


def test_feature_maps_too_small_name_the_site(monkeypatch):
    se = ATTENTION_TYPES["se"]
    big = dataclasses.replace(se, name="needs7", min_spatial=7)
    monkeypatch.setitem(ATTENTION_TYPES, "needs7", big)
    att = {"type": "needs7", "position": "residual_end"}
    assert len(check_attention_placement("resnet50", att, 224)) == 16  # layer4 is 7x7
    with pytest.raises(ValueError, match=r"^layer4\.0\.residual_end \(2048 channels, 6x6\): .*at least 7x7"):
        check_attention_placement("resnet50", att, 192)


@pytest.mark.parametrize(
    "attention,match",
    [
        ({"stages": [5]}, r"attention\.stages: resnet20 has stages \[1, 2, 3\]"),
        ({"stages": []}, r"attention\.stages"),
        ({"blocks": "middle"}, r"attention\.blocks must be one of \['all', 'first', 'last'\]"),
        ({"position": "before_conv"}, r"attention\.position must be one of \['default', 'mid'"),
        ({"ratio": 4}, r"'se' has no knob 'ratio'"),
        ({"reduction": 0}, r"se\.reduction must be in"),
        ({"type": "transformer"}, r"unknown attention type 'transformer'"),
    ],
)
def test_bad_attention_dicts(attention, match):
    with pytest.raises(ValueError, match=match):
        check_attention_placement("resnet20", {"type": "se", **attention})


def test_placement_check_is_cheap():
    att = {"type": "se", "stages": [1, 2, 3, 4], "position": "residual_end"}
    best = float("inf")
    for _ in range(3):
        _sites.cache_clear()
        t0 = time.perf_counter()
        check_attention_placement("resnet101", att, 224)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05, f"check_attention_placement took {best * 1e3:.1f} ms"


# ---------------------------------------------------------------- every module at every position trains


def _train_step(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % num_classes)
    loss.backward()
    assert torch.isfinite(loss), loss
    for site, module in attention_modules(model).items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{site}.{pname}"
    opt.step()


CASES = [  # backbone, input (H, W), width_mult, positions
    ("resnet20", (16, 16), 1.0, ["default", *POSITIONS]),
    ("mobilenet_v2", (64, 64), 0.25, ["default", *POSITIONS]),
    ("resnet50_cifar", (16, 16), 1.0, ["mid", "residual_end"]),  # Bottleneck-specific wiring
]


@pytest.mark.parametrize("type_", ATTN_TYPES)
@pytest.mark.parametrize("backbone,input_size,width_mult,positions", CASES, ids=[c[0] for c in CASES])
def test_every_module_at_every_position_trains(type_, backbone, input_size, width_mult, positions):
    torch.manual_seed(0)
    for position in positions:
        att = placeable(backbone, type_, position, input_size, width_mult)
        sites = check_attention_placement(backbone, att, input_size, width_mult)
        model = build_model(backbone, 4, attention=att, input_size=input_size, width_mult=width_mult)
        assert list(attention_modules(model)) == [s.name for s in sites]
        _train_step(model, torch.randn(2, 3, *input_size), 4)


def test_mobilenet_v2_mid_and_residual_end():
    for position, channels in (("mid", [16 * 6, 24 * 6]), ("residual_end", [24, 24])):
        att = {"type": "se", "reduction": 4, "stages": [2], "position": position}
        model = build_model("mobilenet_v2", 10, attention=att, input_size=64, width_mult=1.0)
        mods = attention_modules(model)
        assert list(mods) == [f"features.2.{position}", f"features.3.{position}"]
        assert [m.fc1.in_channels for m in mods.values()] == channels
        # the module runs inside the block: blocks without (features.2, stride 2) and with a residual (features.3)
        calls = []
        for m in mods.values():
            m.register_forward_hook(lambda mod, a, o, calls=calls: calls.append(a[0].shape))
        model.eval()(torch.randn(1, 3, 64, 64))
        assert [c[1] for c in calls] == channels


# ---------------------------------------------------------------- weights


def _plain_resnet18_state(tmp_path, wrap=None):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(state if wrap is None else {wrap: state}, path)
    return state, path


@pytest.mark.parametrize("wrap", [None, "model"])
def test_weights_path_loads_backbone_into_attention_model(tmp_path, wrap):
    state, path = _plain_resnet18_state(tmp_path, wrap)
    att = {"type": "se", "reduction": 16, "position": "residual_end"}
    model = build_model("resnet18", 1000, attention=att, weights_path=path)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert any(".attn_residual_end." in k for k in own)


def test_weights_path_replaces_classifier_when_num_classes_differs(tmp_path):
    state, path = _plain_resnet18_state(tmp_path)
    model = build_model("resnet18", 10, attention={"type": "se"}, weights_path=str(path))
    own = model.state_dict()
    assert own["fc.weight"].shape == (10, 512)
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_weights_path_is_strict_on_backbone_keys(tmp_path):
    state, path = _plain_resnet18_state(tmp_path)
    broken = dict(state)
    del broken["layer2.0.conv1.weight"]
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"1 missing keys: \['layer2.0.conv1.weight'\]"):
        build_model("resnet18", 1000, weights_path=path)
    torch.save({**state, "layer9.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"unexpected keys: \['layer9.conv.weight'\]"):
        build_model("resnet18", 1000, weights_path=path)
    with pytest.raises(ValueError, match="shape mismatches: .*conv1.weight"):  # CIFAR stem: 3x3 conv1
        build_model("resnet18_cifar", 1000, weights_path=path)
    with pytest.raises(ValueError, match="does not exist"):
        build_model("resnet18", 1000, weights_path=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="either pretrained"):
        build_model("resnet18", 1000, pretrained=True, weights_path=path)


def test_pretrained_loads_torchvision_weights_from_the_hub_cache(tmp_path):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    state, _ = _plain_resnet18_state(tmp_path)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        model = build_model("resnet18", 1000, attention={"type": "se"}, pretrained=True)
    finally:
        torch.hub.set_dir(old)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_models_and_flops_import_without_search_stack():
    import subprocess
    import sys

    code = (
        "import sys, attnsearch.models, attnsearch.flops; "
        "print([m for m in ('ray', 'mlflow', 'optuna', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_cifar_resnet_width_multiplier(name):
    from attnsearch.flops import count
    from attnsearch.models.resnet import cifar_widths

    assert cifar_widths(1.0) == (16, 32, 64) and cifar_widths(0.5) == (8, 16, 32) and cifar_widths(0.1) == (4, 4, 8)
    plain = build_model(name, 10, input_size=16)
    full = build_model(name, 10, input_size=16, width_mult=1.0)
    assert count(plain, input_size=(1, 3, 16, 16))["params"] == count(full, (1, 3, 16, 16))["params"]
    half = build_model(name, 10, input_size=16, width_mult=0.5, attention={"type": "se", "reduction": 4})
    sites = list_sites(name, 16, 0.5)
    assert sorted({s.channels for s in sites}) == [8, 16, 32]
    assert half(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    flops = [count(build_model(name, 10, input_size=16, width_mult=w), (1, 3, 16, 16))["flops"] for w in (0.5, 1, 2)]
    assert flops[0] * 3 < flops[1] and flops[1] * 3 < flops[2]  # convolutions scale with the width squared
