"""Fronts and hypervolume: which trials compete at a budget, the non-dominated ones, the reference point, and
the comparison with the study's baseline (conventions in the package docstring)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import moocore
import numpy as np
import pandas as pd

from ..contract import COMPLETED, DEFAULT_OBJECTIVES, EPOCH_METRICS, FAILED, INFEASIBLE, RUNNING, check_objectives

__all__ = [
    "DEFAULT_OBJECTIVES",
    "competing",
    "pareto_front",
    "default_reference",
    "hypervolume",
    "baseline_row",
    "baseline_rows",
    "relative_to_baseline",
]

logger = logging.getLogger(__name__)

_NO_COMPETE = (FAILED, INFEASIBLE, RUNNING)


def _objectives(objectives: Mapping[str, str] | None) -> dict[str, str]:
    return check_objectives(DEFAULT_OBJECTIVES if objectives is None else objectives)


def _check_columns(df: pd.DataFrame, objectives: Mapping[str, str]) -> None:
    missing = [k for k in objectives if k not in df.columns]
    if missing:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        raise ValueError(f"objective column(s) {missing} not in the runs; numeric columns: {numeric}")


def competing(df: pd.DataFrame, budget: str | int = "full") -> pd.DataFrame:
    """The rows allowed on a front at ``budget`` ("full", "any" or an epoch count); see the module docstring."""
    d = df
    if "state" in d.columns:
        d = d[~d["state"].isin(_NO_COMPETE)]
    if budget == "full":
        if "state" in d.columns:
            d = d[d["state"] == COMPLETED]
        if "budget" in d.columns and len(d) and d["budget"].notna().any():
            d = d[d["budget"] == d["budget"].max()]
    elif budget == "any":
        pass
    elif isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if "budget" not in d.columns:
            raise ValueError("budget=<epochs> needs a 'budget' column (epochs trained per row)")
        d = d[d["budget"] == int(budget)]
    else:
        raise ValueError(f"budget must be 'full', 'any' or a number of epochs, got {budget!r}")
    return d


def _points(df: pd.DataFrame, objectives: Mapping[str, str]) -> tuple[pd.DataFrame, np.ndarray, int]:
    values = df[list(objectives)].apply(pd.to_numeric, errors="coerce").astype("float64")
    ok = np.isfinite(values.to_numpy()).all(axis=1)
    return df[ok], values.to_numpy()[ok], int((~ok).sum())


def pareto_front(
    df: pd.DataFrame,
    objectives: Mapping[str, str] | None = None,
    budget: str | int = "full",
) -> pd.DataFrame:
    """Non-dominated rows of ``df`` among those competing at ``budget``, best first by the first objective.

    ``objectives`` maps column -> "max"/"min" (any number of them). ``front.attrs``: ``objectives``, ``budget``,
    ``candidates`` (rows that competed), ``excluded_nan`` (competing rows dropped for a NaN objective) and
    ``excluded_budget`` (rows not competing at this budget).

    Args:
        df: one row per trial (``load_runs``), with the objectives' columns.
        objectives: ``{column: "max"|"min"}`` (default ``DEFAULT_OBJECTIVES``).
        budget: ``"full"`` (completed trials), ``"any"`` (early-stopped ones too) or an epoch count.
    """
    objectives = _objectives(objectives)
    _check_columns(df, objectives)
    cand = competing(df, budget)
    cand, points, nan = _points(cand, objectives)
    if nan:
        logger.warning("%d trial(s) with a NaN %s excluded from the Pareto front", nan, "/".join(objectives))
    if len(cand):
        maximise = [mode == "max" for mode in objectives.values()]
        # keep_weakly=True keeps every copy of a duplicated non-dominated point (moocore keeps only the first)
        mask = moocore.is_nondominated(points, maximise=maximise, keep_weakly=True)
        front = cand[mask]
    else:
        front = cand
    keys = list(objectives)
    front = front.sort_values(keys, ascending=[m == "min" for m in objectives.values()], kind="stable").copy()
    front.attrs = {
        "objectives": dict(objectives),
        "budget": budget if isinstance(budget, str) else int(budget),
        "candidates": int(len(cand)),
        "excluded_nan": nan,
        "excluded_budget": int(len(df) - len(cand) - nan),
        "reference": default_reference(cand, objectives),
    }
    return front


def default_reference(df: pd.DataFrame, objectives: Mapping[str, str] | None = None) -> dict[str, float]:
    """The documented default hypervolume reference point for the rows of ``df`` (module docstring)."""
    objectives = _objectives(objectives)
    _check_columns(df, objectives)
    _, points, _ = _points(df, objectives)
    ref = {}
    for j, (name, mode) in enumerate(objectives.items()):
        col = points[:, j]
        if not len(col):
            ref[name] = 0.0
        elif mode == "max":
            worst = float(col.min())
            ref[name] = 0.0 if worst >= 0 else worst - 0.1 * abs(worst)
        else:
            worst = float(col.max())
            ref[name] = 1.1 * worst if worst > 0 else (worst + 0.1 * abs(worst) if worst < 0 else 1.0)
    return ref


def _reference(df: pd.DataFrame, objectives: dict[str, str], reference: Any) -> dict[str, float]:
    if reference is None:
        return default_reference(df, objectives)
    if isinstance(reference, Mapping):
        missing = [k for k in objectives if k not in reference]
        if missing:
            raise ValueError(f"reference point lacks objective(s) {missing}; give one value per objective")
        return {k: float(reference[k]) for k in objectives}
    values = list(reference)
    if len(values) != len(objectives):
        raise ValueError(f"reference point needs {len(objectives)} values ({list(objectives)}), got {values}")
    return {k: float(v) for k, v in zip(objectives, values, strict=False)}


def hypervolume(
    df: pd.DataFrame,
    objectives: Mapping[str, str] | None = None,
    reference: Mapping[str, float] | Sequence[float] | None = None,
) -> float:
    """Hypervolume dominated by the rows of ``df`` (a front or any set) up to ``reference`` (moocore, exact).

    Default reference: ``df.attrs["reference"]`` when ``df`` is a front from ``pareto_front`` (the default
    reference of the trials that competed for it), else ``default_reference(df)``. Rows with NaN objectives are
    ignored; points not strictly better than the reference add nothing.
    """
    objectives = _objectives(objectives)
    _check_columns(df, objectives)
    stored = df.attrs.get("reference")
    if reference is None and isinstance(stored, Mapping) and set(stored) == set(objectives):
        reference = stored
    ref = _reference(df, objectives, reference)
    _, points, _ = _points(df, objectives)
    if not len(points):
        return 0.0
    maximise = [mode == "max" for mode in objectives.values()]
    ref_vec = np.array([ref[k] for k in objectives], dtype=float)
    better = np.where(maximise, points > ref_vec, points < ref_vec).all(axis=1)
    if not better.any():
        return 0.0
    return float(moocore.hypervolume(points[better], ref=ref_vec, maximise=maximise))


def _study_baseline(df: pd.DataFrame) -> pd.Series | None:
    """The baseline of one study's rows: the trial its searcher marked (column ``baseline``, the child run's tag
    ``attnsearch.baseline``) when it competes at the full budget; for a study recorded before that tag, its first
    ``attention: none`` trial completed at the full budget. None if absent."""
    marked = "baseline" in df.columns and bool(df["baseline"].fillna(False).astype(bool).any())
    if marked:
        rows = competing(df[df["baseline"].fillna(False).astype(bool)], "full")
    elif "attention" in df.columns:
        full = competing(df, "full")
        rows = full[full["attention"].astype(str) == "none"]
    else:
        return None
    if "start_time" in rows.columns:
        rows = rows.sort_values("start_time", kind="stable")
    return None if rows.empty else rows.iloc[0]


def baseline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each study's own baseline (``_study_baseline``), one row per study of ``df`` that has one."""
    groups = [g for _, g in df.groupby("study", sort=False, dropna=False)] if "study" in df.columns else [df]
    rows = [row for row in map(_study_baseline, groups) if row is not None]
    return pd.DataFrame(rows) if rows else df.iloc[:0]


def baseline_row(df: pd.DataFrame) -> pd.Series | None:
    """The baseline of ``df``'s study: the trial marked ``attnsearch.baseline`` when it completed at the full
    budget (for a study recorded before that tag: its first ``attention: none`` trial completed at the full
    budget); None if absent. ``df`` of several studies: the newest study's (``baseline_rows`` gives each one's)."""
    rows = baseline_rows(df)
    if rows.empty:
        return None
    return rows.sort_values("start_time", kind="stable").iloc[-1] if "start_time" in rows.columns else rows.iloc[-1]


def relative_to_baseline(front: pd.DataFrame, baseline: pd.Series | pd.DataFrame,
                         objectives: Mapping[str, str]) -> pd.DataFrame:
    """``front`` with, per objective, ``delta_<m>`` (a per-epoch metric minus the baseline's: accuracy points)
    or ``<m>_ratio`` (a count over the baseline's: 1.5 = 50 % more FLOPs); ``val_acc`` and ``flops`` always.

    ``baseline``: one row, or one per study (``baseline_rows``), each front row then compared with its own
    study's baseline (no value for a study without one). ``attrs["baselines"]``: each baseline's ``run_id``,
    ``run_name``, ``study`` and objectives; ``attrs["baseline"]``: the one baseline when there is exactly one.
    """
    bases = baseline.to_frame().T if isinstance(baseline, pd.Series) else baseline
    out = front.copy()
    by_study = "study" in out.columns and "study" in bases.columns and len(bases) > 1
    for metric in dict.fromkeys([*objectives, "val_acc", "flops"]):
        if metric not in out.columns or metric not in bases.columns:
            continue
        ref = pd.to_numeric(bases[metric], errors="coerce").astype("float64")
        if by_study:
            ref = out["study"].map(dict(zip(bases["study"], ref, strict=False))).astype("float64")
        else:
            ref = pd.Series(float(ref.iloc[0]), index=out.index)
        if not ref.notna().any():
            continue
        values = pd.to_numeric(out[metric], errors="coerce").astype("float64")
        if metric in EPOCH_METRICS:
            out[f"delta_{metric}"] = values - ref
        elif (ref != 0).any():
            out[f"{metric}_ratio"] = values / ref.where(ref != 0)
    keys = [k for k in ("run_id", "run_name", "study", *objectives) if k in bases.columns]
    described = [{k: row.get(k) for k in keys} for _, row in bases.iterrows()]
    out.attrs = {**front.attrs, "baselines": described}
    if len(described) == 1:
        out.attrs["baseline"] = described[0]
    return out


def _present(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))
