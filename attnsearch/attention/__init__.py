"""Attention modules for CNNs, usable in any PyTorch program (no Ray or MLflow imports here).

>>> from attnsearch.attention import build_attention
>>> m = build_attention("se", channels=256, reduction=16)
"""

from . import none, se  # noqa: F401  (each import registers its module types)
from .registry import ATTENTION_TYPES, SLOTS, AttentionSpec, Knob, build_attention, get_spec, register_attention

__all__ = ["ATTENTION_TYPES", "SLOTS", "AttentionSpec", "Knob", "build_attention", "get_spec", "register_attention"]
