"""Channel importance for pruning: NAM's scaling factors, the backbone's BN scales (Network Slimming), L1, random.

All are torch-pruning importance classes (one score per channel of a dependency group; the lowest go first).
"""

from __future__ import annotations

import torch

from ._pruners import require_torch_pruning, tp

__all__ = ["IMPORTANCES", "NAMScaleImportance", "make_importance"]

IMPORTANCES = ("nam", "bn", "l1", "random")

_Base = tp.importance.BNScaleImportance if tp is not None else object


class NAMScaleImportance(_Base):  # type: ignore[misc,valid-type]
    """NAM's channel weight ``w_c = |gamma_c| / sum_j |gamma_j|`` (its BN's scale factors, Liu et al. 2021,
    arXiv 2111.12419) for the channels a NAM module gates, averaged over the group's NAM modules; a group no NAM
    module gates is scored by its backbone BN scales ``|gamma|`` (Network Slimming, Liu et al., ICCV 2017, whose
    criterion NAM's sparsity penalty p * sum |gamma| reuses).

    Args:
        group_reduction: how the scores of several modules coupled in one group combine (torch-pruning's).
        normalizer: torch-pruning's normaliser of a group's scores; None leaves them as they are.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: str | None = None) -> None:
        super().__init__(group_reduction=group_reduction, normalizer=normalizer)

    @torch.no_grad()
    def __call__(self, group):
        scores, roots = [], []
        for item in group:
            layer = item.dep.layer
            if getattr(layer, "_attnsearch_type", None) == "nam":
                gamma = layer.bn.weight.detach().abs()
                weight = gamma / gamma.sum().clamp_min(torch.finfo(gamma.dtype).tiny)
                scores.append(weight[list(item.idxs)])
                roots.append(item.root_idxs)
        if not scores:
            return super().__call__(group)
        return self._normalize(self._reduce(scores, roots), self.normalizer)


def make_importance(name: str):
    """The torch-pruning importance object for ``nam``, ``bn``, ``l1`` or ``random``."""
    require_torch_pruning()
    if name == "nam":
        return NAMScaleImportance()
    if name == "bn":
        return tp.importance.BNScaleImportance(normalizer=None)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if name == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"importance must be one of {list(IMPORTANCES)}, got {name!r}")
