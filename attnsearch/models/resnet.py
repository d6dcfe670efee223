"""ResNets with attention slots: torchvision's ResNet-18/34/50/101, their CIFAR-stem variants, and the small
CIFAR ResNets of He et al. 2016 (ResNet-20/32/56).

The torchvision models are built by torchvision's own ``ResNet`` class with block subclasses that only add
attention slots (see ``slots.py``), so state-dict keys, shapes, init and FLOPs of a plain model equal torchvision's.

Sites in a block (``x`` = block input):
    BasicBlock:  conv1-bn1-relu-conv2 [mid] bn2 [residual_end] (+ shortcut) relu [post_add] [stage_end]
    Bottleneck:  conv1-bn1-relu-conv2 [mid] bn2-relu-conv3-bn3 [residual_end] (+ shortcut) relu [post_add] [stage_end]
``mid`` follows SimAM's official slot (after the 3x3 conv, before its BN; ZjjConan/SimAM networks/imagenet).
``stage_end`` exists only on the last block of a stage (BAM's slot between stages, Jongchan/attention-module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from .geometry import BlockInfo, conv_out
from .slots import init_slots


def _head(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv1-bn1-relu-conv2 and the `mid` slot (after the 3x3 conv, before its BN), shared by both blocks."""
    out = block.conv2(block.relu(block.bn1(block.conv1(x))))
    return out if block.attn_mid is None else block.attn_mid(out)


def _tail(block: nn.Module, out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    if block.attn_residual_end is not None:
        out = block.attn_residual_end(out)
    # out-of-place add: an attention module's output may be saved for its own backward
    out = block.relu(out + identity)
    if block.attn_post_add is not None:
        out = block.attn_post_add(out)
    if block.attn_stage_end is not None:
        out = block.attn_stage_end(out)
    return out


class BasicBlock(tv.BasicBlock):
    """torchvision BasicBlock + attention slots."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        init_slots(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(_head(self, x))
        identity = x if self.downsample is None else self.downsample(x)
        return _tail(self, out, identity)


class Bottleneck(tv.Bottleneck):
    """torchvision Bottleneck (ResNet v1.5: stride on the 3x3 conv) + attention slots."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        init_slots(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(_head(self, x)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return _tail(self, out, identity)


# name -> (block, blocks per stage); torchvision.models.resnet{18,34,50,101}
TV_RESNETS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def build_resnet(name: str, num_classes: int, cifar_stem: bool = False) -> tv.ResNet:
    """torchvision ResNet ``name``; ``cifar_stem`` swaps in a 3x3 stride-1 stem conv and drops the max-pool
    (the CIFAR setup of NAM's ``model_resnet.py``, Christian-lyc/NAM)."""
    block, layers = TV_RESNETS[name]
    model = tv.ResNet(block, list(layers), num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
        model.maxpool = nn.Identity()
    return model


def resnet_blocks(name: str, input_size: tuple[int, int], cifar_stem: bool = False) -> list[BlockInfo]:
    block, layers = TV_RESNETS[name]
    # the ImageNet stem: a 7x7/2 conv and a 3x3/2 max-pool
    hw = input_size if cifar_stem else conv_out(conv_out(input_size, 7, 2, 3), 3, 2, 1)
    expansion = block.expansion
    out: list[BlockInfo] = []
    for stage, n in enumerate(layers, start=1):
        planes = 64 * 2 ** (stage - 1)
        if stage > 1:
            hw = conv_out(hw, 3, 2, 1)  # stride 2 on the first block's 3x3 conv
        for i in range(n):
            out.append(BlockInfo(f"layer{stage}.{i}", stage, i, n, planes, planes * expansion, hw))
    return out


class PadShortcut(nn.Module):
    """Option-A shortcut of He et al. 2016 (arXiv 1512.03385, §4.2): subsample by ``stride`` and zero-pad the new
    channels. Parameter-free, so ResNet-20/32/56 keep the paper's 0.27M/0.46M/0.85M parameters.

    ``channel_map = (src, dst)``, set by channel pruning (``attnsearch.prune``), generalises the padding: output
    channel ``dst[i]`` is input channel ``src[i]`` and every other output channel is zero (a plain attribute, not
    state: a pruned model's spec replays it)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.extra = out_channels - in_channels
        self.channel_map: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.channel_map is not None:
            src, dst = self.channel_map
            out = x.new_zeros((x.shape[0], self.out_channels, *x.shape[2:]))
            out[:, list(dst)] = x[:, list(src)]
            return out
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def cifar_widths(width_mult: float = 1.0) -> tuple[int, int, int]:
    """Channels of the three stages: 16/32/64 times ``width_mult``, rounded to a multiple of 4 (at least 4).

    # NOTE: He et al. have no width knob; this is Wide ResNet's widening factor k (Zagoruyko & Komodakis 2016,
    # arXiv:1605.07146) allowed below 1, so a search can trade accuracy for cost with the width as well.
    """
    return tuple(max(4, int(round(c * width_mult / 4)) * 4) for c in (16, 32, 64))  # type: ignore[return-value]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, §4.2): 3x3 conv 16, three stages of n BasicBlocks with
    16/32/64 channels (stride 2 at stages 2 and 3), global average pool, FC. Option-A shortcuts. ``width_mult``
    scales the channels (``cifar_widths``); 1.0 is the paper's network."""

    def __init__(self, n: int, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = cifar_widths(width_mult)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for stage, planes in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                down = PadShortcut(inplanes, planes, s) if s != 1 or inplanes != planes else None
                blocks.append(BasicBlock(inplanes, planes, s, down))
                inplanes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}  # depth = 6n + 2


def cifar_resnet_blocks(name: str, input_size: tuple[int, int], width_mult: float = 1.0) -> list[BlockInfo]:
    n = CIFAR_RESNETS[name]
    hw = input_size
    out: list[BlockInfo] = []
    for stage, planes in enumerate(cifar_widths(width_mult), start=1):
        if stage > 1:
            hw = conv_out(hw, 3, 2, 1)
        for i in range(n):
            out.append(BlockInfo(f"layer{stage}.{i}", stage, i, n, planes, planes, hw))
    return out
