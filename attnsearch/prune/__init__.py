"""Structured channel pruning of attnsearch's models (torch-pruning's dependency graph; torch only otherwise).

>>> from attnsearch.models import build_model
>>> from attnsearch.prune import prune_model
>>> net = build_model("resnet20", num_classes=10, attention={"type": "nam"}, input_size=16)
>>> result = prune_model(net, 0.5, input_size=16, importance="nam")   # result.model: half the channels

Every attention type is pruned consistently with the backbone channels it gates, except Shuffle Attention, which
is refused (``UNPRUNABLE`` says why). Needs the ``prune`` extra (``pip install "attnsearch[prune]"``).
"""

from ._importance import IMPORTANCES, NAMScaleImportance, make_importance
from ._prune import PruneResult, UnprunableError, check_prunable, check_ratio, conv_widths, prune_model, replay
from ._pruners import CHANNEL_LAYERS, UNPRUNABLE, AttentionPruner, PadShortcutPruner, require_torch_pruning

__all__ = [
    "CHANNEL_LAYERS",
    "IMPORTANCES",
    "UNPRUNABLE",
    "AttentionPruner",
    "NAMScaleImportance",
    "PadShortcutPruner",
    "PruneResult",
    "UnprunableError",
    "check_prunable",
    "check_ratio",
    "conv_widths",
    "make_importance",
    "prune_model",
    "replay",
    "require_torch_pruning",
]
