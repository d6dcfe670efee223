"""Backbones with attention insertion sites (no Ray/MLflow imports; torch and torchvision only).

>>> from attnsearch.models import build_model, list_sites
>>> net = build_model("resnet20", num_classes=10, attention={"type": "se", "reduction": 4, "stages": [2, 3]})
"""

from .backbones import BACKBONES, Backbone, get_backbone
from .build import attention_modules, build_model, load_weights, read_state_dict
from .sites import (
    BLOCK_CHOICES,
    Placement,
    Site,
    check_attention_placement,
    format_sites,
    list_sites,
    parse_attention,
    resolve_placement,
)
from .slots import POSITION_CHOICES, POSITIONS

__all__ = [
    "BACKBONES",
    "BLOCK_CHOICES",
    "Backbone",
    "POSITIONS",
    "POSITION_CHOICES",
    "Placement",
    "Site",
    "attention_modules",
    "build_model",
    "check_attention_placement",
    "format_sites",
    "get_backbone",
    "list_sites",
    "load_weights",
    "parse_attention",
    "read_state_dict",
    "resolve_placement",
]
