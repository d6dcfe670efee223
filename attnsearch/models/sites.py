"""Insertion sites: where an attention module can go, with its channels and feature-map size.

Everything here is analytic (no model is built, no forward pass), so the search space can check thousands of
placements cheaply. A site is named ``<block path>.<position>`` (e.g. ``layer3.2.residual_end``,
``features.7.mid``); its module lives at ``<block path>.attn_<position>`` in the model.

Positions: ``mid`` | ``residual_end`` | ``post_add`` (every block) and ``stage_end`` (last block of each stage,
after its output; BAM's slot); ``default`` in an attention dict means the module's official slot (``spec.slot``).
Where each position sits inside a block: see ``resnet.py`` and ``mobilenet.py``.

Attention dict (``build_model(attention=...)``)::

    {"type": "sa",                 # registry name; "none" or attention=None -> plain backbone
     "stages": [2, 3],             # default all; also "all", 3, or "2,3"; ResNets 1-4, ResNet-20/32/56 1-3,
                                   # MobileNetV2 1-7 (the rows of its t/c/n/s table)
     "blocks": "all",              # "all" | "first" | "last" block of each chosen stage (ignored by stage_end)
     "position": "default",        # "default" | "mid" | "residual_end" | "post_add" | "stage_end"
     "groups": 8}                  # every other key is a knob of the module type
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .._table import format_table
from ..attention.registry import as_hw, get_spec
from ..contract import is_number
from .backbones import BACKBONES, get_backbone
from .slots import POSITION_CHOICES, POSITIONS

BLOCK_CHOICES = ("all", "first", "last")
PLACEMENT_KEYS = ("type", "stages", "blocks", "position")


@dataclass(frozen=True)
class Site:
    name: str  # e.g. "layer3.2.residual_end"
    stage: int  # 1-based
    block: int  # 0-based index of the block inside its stage
    position: str  # one of POSITIONS
    channels: int
    spatial_size: tuple[int, int]  # (H, W) of the feature map at this site

    @property
    def block_path(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def label(self) -> str:
        h, w = self.spatial_size
        return f"{self.name} ({self.channels} channels, {h}x{w})"


@dataclass(frozen=True)
class Placement:
    """A parsed attention dict: module type, its knobs, and where it goes."""

    type: str
    knobs: Mapping[str, Any]
    stages: tuple[int, ...]
    blocks: str
    position: str  # resolved: never "default"


def _width(backbone: str, width_mult: float) -> float:
    bb = get_backbone(backbone)
    if not is_number(width_mult) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    if not bb.width_mult and width_mult != 1.0:
        supported = [n for n, b in BACKBONES.items() if b.width_mult]
        raise ValueError(f"width_mult={width_mult} is not supported by {backbone}; only by {supported} (use 1.0)")
    return float(width_mult)


@lru_cache(maxsize=256)
def _sites(backbone: str, hw: tuple[int, int], width_mult: float) -> tuple[Site, ...]:
    out: list[Site] = []
    for b in get_backbone(backbone).blocks(hw, width_mult):
        positions = POSITIONS if b.index == b.stage_len - 1 else POSITIONS[:-1]
        for position in positions:
            channels = b.mid_channels if position == "mid" else b.out_channels
            out.append(Site(f"{b.path}.{position}", b.stage, b.index, position, channels, b.spatial_size))
    return tuple(out)


def list_sites(backbone: str, input_size: int | Sequence[int] | None = None, width_mult: float = 1.0) -> list[Site]:
    """Every candidate site of ``backbone`` at ``input_size`` (default: the backbone's native size)."""
    bb = get_backbone(backbone)
    hw = as_hw(bb.default_input_size if input_size is None else input_size)
    return list(_sites(backbone, hw, _width(backbone, width_mult)))


def _parse_stages(value: Any, num_stages: int, backbone: str) -> tuple[int, ...]:
    valid = list(range(1, num_stages + 1))
    if value is None or value == "all":
        return tuple(valid)
    items: Any = value
    expected = f"attention.stages must be a non-empty list of stages from {valid} or 'all', got {value!r}"
    if isinstance(value, str):  # the compact form the search space uses: "1,2,3"
        try:
            items = [int(s) for s in value.replace(" ", "").split(",") if s]
        except ValueError:
            raise ValueError(expected) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(expected)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s not in valid:
            raise ValueError(f"attention.stages: {backbone} has stages {valid}, got {s!r} in {value!r}")
    return tuple(sorted(set(items)))


def parse_attention(attention: Mapping[str, Any] | None, backbone: str) -> Placement | None:
    """Validate an attention dict (type, stages, blocks, position, knobs) for ``backbone``; ``None`` if no attention.

    Knob values are validated against the registry; channel/size constraints are checked per site by
    :func:`check_attention_placement`.
    """
    bb = get_backbone(backbone)
    if attention is None:
        return None
    if not isinstance(attention, Mapping):
        raise ValueError(f"attention must be a mapping with a 'type' key or None, got {attention!r}")
    if "type" not in attention:
        raise ValueError("attention.type is required (e.g. 'se', or 'none' for the plain backbone)")
    spec = get_spec(attention["type"])
    stages = _parse_stages(attention.get("stages"), bb.num_stages, backbone)
    blocks = attention.get("blocks", "all")
    if blocks is None:
        blocks = "all"
    if blocks not in BLOCK_CHOICES:
        raise ValueError(f"attention.blocks must be one of {list(BLOCK_CHOICES)}, got {blocks!r}")
    position = attention.get("position", "default")
    if position is None:
        position = "default"
    if position not in POSITION_CHOICES:
        raise ValueError(f"attention.position must be one of {list(POSITION_CHOICES)}, got {position!r}")
    if position == "default":
        position = spec.slot
    knobs = {k: v for k, v in attention.items() if k not in PLACEMENT_KEYS}
    knobs = spec.resolve(knobs)  # unknown knob / bad value -> ValueError naming "<type>.<knob>"
    if spec.name == "none":
        return None
    return Placement(spec.name, knobs, stages, blocks, position)


def select_sites(sites: Sequence[Site], placement: Placement) -> list[Site]:
    """The sites a placement chooses. ``blocks`` does not apply to ``stage_end`` (one site per stage)."""
    chosen = []
    last = {}
    for s in sites:
        last[s.stage] = max(last.get(s.stage, 0), s.block)
    for s in sites:
        if s.position != placement.position or s.stage not in placement.stages:
            continue
        if s.position != "stage_end":
            if placement.blocks == "first" and s.block != 0:
                continue
            if placement.blocks == "last" and s.block != last[s.stage]:
                continue
        chosen.append(s)
    return chosen


def resolve_placement(
    backbone: str,
    attention: Mapping[str, Any] | None,
    input_size: int | Sequence[int] | None = None,
    width_mult: float = 1.0,
) -> tuple[Placement | None, list[Site]]:
    """Parse ``attention`` and return it with its chosen, validated sites (see :func:`check_attention_placement`)."""
    sites = list_sites(backbone, input_size, width_mult)
    placement = parse_attention(attention, backbone)
    if placement is None:
        return None, []
    chosen = select_sites(sites, placement)
    spec = get_spec(placement.type)
    seen: set[tuple[int, tuple[int, int]]] = set()
    for site in chosen:
        key = (site.channels, site.spatial_size)
        if key in seen:
            continue
        seen.add(key)
        try:
            spec.validate(site.channels, site.spatial_size, **placement.knobs)
        except ValueError as e:
            raise ValueError(f"{site.label}: {e}") from None
    return placement, chosen


def check_attention_placement(
    backbone: str,
    attention: Mapping[str, Any] | None,
    input_size: int | Sequence[int] | None = None,
    width_mult: float = 1.0,
) -> list[Site]:
    """The sites ``attention`` puts modules at; ``ValueError`` naming the site for an invalid combination.

    Cheap: analytic geometry plus the registry's ``validate`` per distinct (channels, size); no model is built.
    """
    return resolve_placement(backbone, attention, input_size, width_mult)[1]


def format_sites(sites: Sequence[Site]) -> str:
    """A plain-text table of sites (what ``attnsearch sites <backbone>`` prints)."""
    header = ("site", "stage", "block", "position", "channels", "size")
    rows = [
        (s.name, str(s.stage), str(s.block), s.position, str(s.channels), f"{s.spatial_size[0]}x{s.spatial_size[1]}")
        for s in sites
    ]
    return format_table(header, rows, right={1, 2, 4, 5})
