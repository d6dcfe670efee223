"""Attention modules for CNNs, usable in any PyTorch program (no Ray or MLflow imports here).

>>> from attnsearch.attention import build_attention
>>> m = build_attention("se", channels=256, reduction=16)
"""

# each import registers its module types; import order = registry order = the order in the contracts
from . import none, se, cbam, bam, eca, coord, simam, na, nam, shuffle, triplet, gc  # noqa: F401, I001
from .nam import nam_penalty
from .registry import ATTENTION_TYPES, SLOTS, AttentionSpec, Knob, build_attention, get_spec, register_attention

__all__ = [
    "ATTENTION_TYPES",
    "SLOTS",
    "AttentionSpec",
    "Knob",
    "build_attention",
    "get_spec",
    "nam_penalty",
    "register_attention",
]
