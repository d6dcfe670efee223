"""A study's models compressed: ``attnsearch prune`` (channel pruning at several ratios, fine-tuning, measurement,
MLflow, the front recomputed over the study's and the pruned models). The pruning itself is ``attnsearch.prune``.
"""

from ._finetune import finetune
from ._prune_study import PrunedModel, PruneOutcome, format_pruned, parse_ratios, prune_study, pruned_table

__all__ = ["PruneOutcome", "PrunedModel", "finetune", "format_pruned", "parse_ratios", "prune_study",
           "pruned_table"]
