"""The backbone table: name -> builder, analytic block geometry, classifier keys and torchvision weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import mobilenet, resnet
from .geometry import BlockInfo


@dataclass(frozen=True)
class Backbone:
    name: str
    num_stages: int
    default_input_size: int
    build: Callable[[int, float], nn.Module]  # (num_classes, width_mult) -> plain model with empty slots
    blocks: Callable[[tuple[int, int], float], list[BlockInfo]]  # (input (H, W), width_mult) -> geometry
    classifier: str  # state-dict prefix of the final classifier (replaced when num_classes differs)
    tv_weights: str | None = None  # torchvision weights enum in torchvision.models; DEFAULT entry is used
    width_mult: bool = False  # whether width_mult is supported
    summary: str = ""


def _tv_resnet(name: str, cifar: bool = False) -> Backbone:
    tv_name = name.removesuffix("_cifar")
    return Backbone(
        name=name,
        num_stages=4,
        default_input_size=32 if cifar else 224,
        build=lambda num_classes, width_mult: resnet.build_resnet(tv_name, num_classes, cifar_stem=cifar),
        blocks=lambda hw, width_mult: resnet.resnet_blocks(tv_name, hw, cifar_stem=cifar),
        classifier="fc.",
        tv_weights=None if cifar else f"ResNet{tv_name[6:]}_Weights",
        summary=f"torchvision {tv_name}" + (" with a 3x3 stride-1 stem and no max-pool (CIFAR)" if cifar else ""),
    )


def _cifar_resnet(name: str) -> Backbone:
    n = resnet.CIFAR_RESNETS[name]
    return Backbone(
        name=name,
        num_stages=3,
        default_input_size=32,
        build=lambda num_classes, width_mult: resnet.CifarResNet(n, num_classes, width_mult),
        blocks=lambda hw, width_mult: resnet.cifar_resnet_blocks(name, hw, width_mult),
        classifier="fc.",
        width_mult=True,
        summary=f"He et al. 2016 CIFAR ResNet-{6 * n + 2} (16/32/64 channels x width_mult, {n} BasicBlocks per "
                "stage, option A)",
    )


BACKBONES: dict[str, Backbone] = {
    **{name: _tv_resnet(name) for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
    "mobilenet_v2": Backbone(
        name="mobilenet_v2",
        num_stages=7,
        default_input_size=224,
        build=mobilenet.build_mobilenet_v2,
        blocks=mobilenet.mobilenet_v2_blocks,
        classifier="classifier.1.",
        tv_weights="MobileNet_V2_Weights",
        width_mult=True,
        summary="torchvision mobilenet_v2 (17 inverted residuals in 7 stages)",
    ),
    **{name: _tv_resnet(name, cifar=True) for name in ("resnet18_cifar", "resnet50_cifar")},
    **{name: _cifar_resnet(name) for name in resnet.CIFAR_RESNETS},
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {list(BACKBONES)}") from None
