"""Statistics over repeated runs of one configuration: mean and standard deviation, and the Welch t interval of
the difference of two configurations' means (``attnsearch retrain``'s comparison with the baseline)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats  # installed with scikit-learn (the `search` extra)

__all__ = ["CONFIDENCE", "mean_std", "welch_interval"]

CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


def welch_interval(a: Sequence[float], b: Sequence[float],
                   confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its Welch t confidence interval ``(difference, low, high)``.

    Unequal variances: ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``, degrees of freedom by Welch-Satterthwaite, interval
    ``difference +- t_{(1+confidence)/2, df} * se``. NaN bounds when either sample has fewer than 2 values; a
    zero ``se`` (every value of both samples equal) gives the point ``(d, d, d)``.
    """
    # Welch, B. L. (1947), Biometrika 34(1/2):28-35; the NIST/SEMATECH e-Handbook of Statistical Methods, 7.3.1.
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return math.nan, math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * se
    return diff, diff - half, diff + half
