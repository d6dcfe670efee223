"""Channel pruning (attnsearch.prune): counted channels, output shapes, the zeroed-channel identity, planted
importance, refusals, and the replay that rebuilds a pruned model from its spec."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from attnsearch.models import build_model
from attnsearch.prune import (
    CHANNEL_LAYERS,
    UNPRUNABLE,
    UnprunableError,
    conv_widths,
    prune_model,
    replay,
)

# Types whose pruned model equals the unpruned one with the removed channels zeroed: every op they apply is per
# channel or sums over channels (a zero adds nothing). The others mix channels in ways a zero changes: ECA's and
# Triplet's convolutions run across the channel axis (a removed channel shifts its neighbours), CBAM, Triplet and
# NA pool or standardise over the channels (a zero still counts in a mean).
IDENTITY = ("none", "nam", "se", "bam", "coord", "simam", "gc")
MIXING = ("eca", "cbam", "na", "triplet")


def _attention(kind: str) -> dict | None:
    if kind == "none":
        return None
    return {"type": kind, "position": "stage_end"} if kind == "bam" else {"type": kind}


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affines and statistics (a fresh model's are 1/0), NAM's and GC's last conv included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if getattr(m, "_attnsearch_type", None) == "gc":
                m.transform[-1].weight.normal_(0, 0.1, generator=gen)
    return model.eval()


def _zeroed(model: nn.Module, removed: dict[str, list[int]]) -> tuple[nn.Module, list]:
    """The unpruned model with the removed channels zeroed: every layer's output channels that pruning removed are
    set to zero (forward hooks), and NAM's gamma there is zero too (its weights |gamma| / sum |gamma| then equal the
    pruned module's)."""
    ref = copy.deepcopy(model)
    hooks = []
    for name, idxs in removed.items():
        module = ref.get_submodule(name)
        if getattr(module, "_attnsearch_type", None) == "nam":
            with torch.no_grad():
                module.bn.weight[idxs] = 0.0

        def mask(mod, inputs, output, idxs=idxs):
            output = output.clone()
            output[:, idxs] = 0.0
            return output

        hooks.append(module.register_forward_hook(mask))
    return ref, hooks


def _check_counts(before: dict[str, int], after: dict[str, int], ratio: float) -> None:
    assert set(before) == set(after)
    for name, width in before.items():
        assert after[name] == int(width * (1 - ratio)), (name, width, after[name])


@pytest.mark.parametrize("kind", IDENTITY + MIXING)
def test_every_prunable_type_on_a_small_resnet(kind):
    torch.manual_seed(0)
    net = _randomised(build_model("resnet20", num_classes=10, attention=_attention(kind), input_size=8))
    x = torch.randn(2, 3, 8, 8)
    result = prune_model(net, 0.25, input_size=8, importance="bn")
    pruned = result.model.eval()
    _check_counts(conv_widths(net), conv_widths(pruned), 0.25)
    assert result.channels_removed == sum(w - int(w * 0.75) for w in conv_widths(net).values())
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == net(x).shape == (2, 10)
        ref, _ = _zeroed(net, result.removed)
        expected = ref(x)
    assert torch.isfinite(out).all()
    if kind in IDENTITY:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # the attention modules kept their per-channel parameters in step with the channels they gate
    for m in pruned.modules():
        kind_m = getattr(m, "_attnsearch_type", None)
        if kind_m:
            ins, outs = CHANNEL_LAYERS[kind_m]
            widths = {getattr(m.get_submodule(n), "in_features", None) or m.get_submodule(n).in_channels
                      for n in ins}
            widths |= {getattr(m.get_submodule(n), "out_features", None) or getattr(m.get_submodule(n),
                       "out_channels", None) or m.get_submodule(n).num_features for n in outs}
            assert len(widths) <= 1, (kind_m, widths)


@pytest.mark.parametrize("backbone, size", [("resnet20", 8), ("resnet18", 32), ("mobilenet_v2", 32)])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_nam_models_prune_to_the_zeroed_model(backbone, size, ratio):
    net = _randomised(build_model(backbone, num_classes=10, attention={"type": "nam", "spatial": True},
                                  input_size=size))
    x = torch.randn(2, 3, size, size)
    result = prune_model(net, ratio, input_size=size, importance="nam")
    _check_counts(conv_widths(net), conv_widths(result.model), ratio)
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        ref, _ = _zeroed(net, result.removed)
        torch.testing.assert_close(result.model.eval()(x), ref(x), rtol=1e-4, atol=1e-5)
    # replaying the recorded history on a fresh build gives the same architecture: the weights load strictly
    fresh = build_model(backbone, num_classes=10, attention={"type": "nam", "spatial": True}, input_size=size)
    replay(fresh, result.history, size)
    fresh.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), result.model(x))


def test_a_planted_nam_importance_removes_exactly_those_channels():
    net = _randomised(build_model("resnet20", num_classes=10, attention={"type": "nam"}, input_size=8), seed=1)
    chosen = [1, 6, 9, 14]  # 4 of stage 1's 16 stream channels: ratio 0.25 removes 4
    with torch.no_grad():
        for i in range(3):
            net.get_submodule(f"layer1.{i}.attn_residual_end").bn.weight[chosen] = 0.0
    result = prune_model(net, 0.25, input_size=8, importance="nam")
    assert result.removed["layer1.0.conv2"] == chosen
    assert result.removed["layer1.2.attn_residual_end"] == chosen
    # the backbone's BN scales (random here) rank the same stream otherwise: NAM's factors decided
    assert prune_model(net, 0.25, input_size=8, importance="bn").removed["layer1.0.conv2"] != chosen


def test_a_planted_bn_importance_removes_exactly_those_channels():
    net = _randomised(build_model("mobilenet_v2", num_classes=10, input_size=32), seed=2)
    expanded = net.features[3].conv[1][1]  # the depthwise BN of block 3 (144 channels)
    chosen = [0, 7, 50, 99, 143] + list(range(60, 67))  # 12 of 144: ratio 1/12
    with torch.no_grad():
        for bn in (net.features[3].conv[0][1], expanded):  # expansion BN and depthwise BN: the whole group
            bn.weight[chosen] = 0.0
    result = prune_model(net, 1 / 12, input_size=32, importance="bn")
    assert result.removed["features.3.conv.0.0"] == sorted(chosen)
    assert result.removed["features.3.conv.1.0"] == sorted(chosen)  # the depthwise conv follows its input


@pytest.mark.parametrize("importance", ["l1", "random"])
def test_other_importances_prune_the_same_widths(importance):
    net = build_model("resnet20", num_classes=10, attention={"type": "se", "reduction": 4}, input_size=8)
    a = prune_model(net, 0.5, input_size=8, importance=importance, seed=3)
    b = prune_model(net, 0.5, input_size=8, importance=importance, seed=3)
    _check_counts(conv_widths(net), conv_widths(a.model), 0.5)
    assert a.removed == b.removed  # seeded: the same channels


def test_shuffle_attention_is_refused_and_nothing_changes():
    net = build_model("resnet20", num_classes=10, attention={"type": "sa", "groups": 2}, input_size=8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UnprunableError, match=r"'sa' \(at layer1.0.residual_end.*channel shuffle"):
        prune_model(net, 0.5, input_size=8, inplace=True)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert set(UNPRUNABLE) == {"sa"}


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.25, True, "0.5", float("nan")])
def test_a_ratio_outside_the_open_unit_interval_is_refused(ratio):
    net = build_model("resnet20", num_classes=10, input_size=8)
    with pytest.raises(ValueError, match=r"pruning ratio must be a number in \(0, 1\)"):
        prune_model(net, ratio, input_size=8)


def test_an_unknown_importance_is_refused():
    net = build_model("resnet20", num_classes=10, input_size=8)
    with pytest.raises(ValueError, match="importance must be one of"):
        prune_model(net, 0.5, input_size=8, importance="taylor")


def test_the_option_a_shortcut_keeps_its_channel_map():
    net = _randomised(build_model("resnet20", num_classes=10, input_size=8))
    result = prune_model(net, 0.5, input_size=8, importance="bn")
    shortcut = result.model.layer2[0].downsample
    src, dst = shortcut.channel_map
    kept_in = [c for c in range(16) if c not in result.removed["layer1.2.conv2"]]
    kept_out = [c for c in range(32) if c not in result.removed["layer2.0.conv2"]]
    # output dst[i] is the kept stage-2 channel that was stage-1 channel kept_in[src[i]] before pruning
    assert [kept_out[d] for d in dst] == [kept_in[s] for s in src]
    assert all(kept_out[d] < 16 for d in dst) and shortcut.out_channels == 16 and shortcut.in_channels == 8


def test_a_pruned_models_spec_rebuilds_it_and_old_specs_still_load(tmp_path):
    import yaml

    from attnsearch.export import PRUNED_SPEC_FORMAT, SPEC_FORMAT, ModelSpec, rebuild

    attention = {"type": "se", "reduction": 4, "stages": [2, 3]}
    net = _randomised(build_model("resnet20", num_classes=10, attention=attention, input_size=8))
    result = prune_model(net, 0.5, input_size=8, importance="l1")
    plain = ModelSpec(backbone="resnet20", num_classes=10, image_size=8, attention=attention)
    assert plain.to_dict()["format"] == SPEC_FORMAT and "pruning" not in plain.to_dict()  # what /1 readers know
    spec = ModelSpec(backbone="resnet20", num_classes=10, image_size=8, attention=attention,
                     pruning={"ratio": 0.5, "importance": "l1", "history": result.history,
                              "widths": result.widths_after})
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    again = ModelSpec.read(tmp_path / "spec.yaml")
    assert again.to_dict()["format"] == PRUNED_SPEC_FORMAT and again.pruning["widths"] == result.widths_after
    model = rebuild(again, result.model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x))
    with pytest.raises(ValueError, match="weights do not fit"):  # unpruned spec, pruned weights
        rebuild(plain, result.model.state_dict())
    data = yaml.safe_load(spec.to_yaml())
    data["format"] = SPEC_FORMAT
    with pytest.raises(ValueError, match="with a pruning section"):
        ModelSpec.from_dict(data)
