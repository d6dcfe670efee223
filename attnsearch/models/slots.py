"""Attention slots shared by all blocks: ``attn_<position>`` submodules, ``None`` until a module is inserted.

A block holds at most one module per position. The slots are new submodule names, so a plain block's state dict
is exactly torchvision's and a model with attention only adds ``....attn_<position>.*`` keys.
"""

from __future__ import annotations

from torch import nn

from ..attention.registry import SLOTS

# A block's attention positions are the zoo's slots (the order ``attnsearch sites`` lists them in): one tuple.
POSITIONS = SLOTS
# What an attention dict's ``position`` may say: a slot, or "default" (the module's official slot).
POSITION_CHOICES = ("default", *POSITIONS)
ATTN_PREFIX = "attn_"


def init_slots(block: nn.Module) -> None:
    """Create the empty slots; call at the end of a block's ``__init__``."""
    for position in POSITIONS:
        # plain attributes (not modules) while empty: nn.Module.__setattr__ moves them to _modules when filled
        setattr(block, ATTN_PREFIX + position, None)


def slot_name(position: str) -> str:
    return ATTN_PREFIX + position


def is_attention_key(key: str) -> bool:
    """True for state-dict keys that belong to an inserted attention module."""
    return any(part.startswith(ATTN_PREFIX) for part in key.split("."))
