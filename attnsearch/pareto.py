"""Pareto analysis of a study: trials from MLflow as a DataFrame, fronts, hypervolume, export, plot.

Conventions (documented here because results depend on them):
- Only trials at equal budget compete (design.md, "Known traps"): by default ``budget="full"``, i.e. trials whose
  state is ``completed`` (when several budgets were completed, only the largest); ``budget="any"`` lets
  early-stopped trials in too, ``budget=<int>`` compares trials that trained exactly that many epochs. Failed,
  infeasible and still-running trials never compete.
- Rows with a NaN (or missing) objective are excluded; how many is in ``front.attrs["excluded_nan"]`` and logged.
- Dominance is the usual weak-in-all, strict-in-one; exact duplicates of a non-dominated point are all kept
  (they are distinct trials that reached the same point), so ties never depend on row order.
- Hypervolume reference (default): 0 for a maximised objective whose values are all >= 0 (accuracy), else 10 %
  of |worst| beyond the worst value; 1.1 x the worst (largest) value for a minimised one (FLOPs, params), worst
  over all trials that competed (``front.attrs["reference"]``), not only the front. Hypervolumes of two studies
  are comparable only with an explicit ``reference``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import moocore
import numpy as np
import pandas as pd

from ._table import format_table
from .contract import (
    EPOCH_METRICS,
    TAG_BUDGET,
    TAG_PARAM_TYPES,
    TAG_PARENT,
    TAG_PARETO,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
)
from .tracking import decode_param, fast_http, latest_parent, quote, search_all

__all__ = [
    "DEFAULT_OBJECTIVES",
    "load_runs",
    "competing",
    "pareto_front",
    "default_reference",
    "hypervolume",
    "plot_front",
    "export_front",
    "format_front",
    "analyze",
]

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVES: dict[str, str] = {"val_acc": "max", "flops": "min"}
_NO_COMPETE = ("failed", "infeasible", "running")
# Columns every frame from load_runs has first, in this order (then params, then metrics).
_LEAD = ["run_name", "state", "budget", "pareto", "reason", "trial_id", "study", "run_id", "status", "start_time"]


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _column_values(texts: list[str | None], kinds: list[str | None]) -> pd.Series:
    values = [decode_param(t, k) if t is not None else None for t, k in zip(texts, kinds)]
    present = [v for v in values if v is not None]
    if not present:
        return pd.Series(values, dtype=object)
    if all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    if all(isinstance(v, str) for v in present):
        return pd.Series(values)
    if any(k is None for k in kinds):
        # guessed types disagree within a column (e.g. stages "3" and "2,3"): the strings are the truth
        return pd.Series(texts)
    return pd.Series(values, dtype=object)


def load_runs(
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    study_id: str | None = None,
) -> pd.DataFrame:
    """One row per trial (child run) of ``experiment``; all studies unless ``parent_run_id``/``study_id`` is given.

    Columns: ``run_name``, ``state``, ``budget`` (Int64), ``pareto`` (boolean), ``reason``, ``trial_id``,
    ``study``, ``run_id``, ``status``, ``start_time``; then every param under its trial-config name
    (``attention``, ``stages``, ``sa.groups``, ``train.lr``...) cast back to its type; then every metric under its
    name (``val_acc``, ``flops``, ...: the value at the last step).
    """
    from mlflow import MlflowClient

    with fast_http():
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            known = [e.name for e in client.search_experiments(max_results=50)]
            raise ValueError(f"no MLflow experiment named {experiment!r} in this store; experiments: {known}")
        flt = f"tags.`{TAG_ROLE}` = 'trial'"
        if parent_run_id:
            flt += f" and tags.`{TAG_PARENT}` = {quote(parent_run_id)}"
        if study_id:
            flt += f" and tags.`{TAG_STUDY}` = {quote(study_id)}"
        runs = search_all(client, [exp.experiment_id], flt)

    base, params, kinds, metrics = [], {}, {}, {}
    for i, run in enumerate(sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))):
        tags = run.data.tags
        types = json.loads(tags.get(TAG_PARAM_TYPES) or "{}")
        budget = tags.get(TAG_BUDGET)
        pareto = tags.get(TAG_PARETO)
        base.append({
            "run_name": run.info.run_name,
            "state": tags.get(TAG_STATE),
            "budget": int(budget) if budget not in (None, "") else None,
            "pareto": None if pareto is None else pareto.lower() == "true",
            "reason": tags.get(TAG_REASON),
            "trial_id": tags.get(TAG_TRIAL),
            "study": tags.get(TAG_STUDY),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms") if run.info.start_time else pd.NaT,
        })
        for key, text in run.data.params.items():
            params.setdefault(key, [None] * len(runs))[i] = text
            kinds.setdefault(key, [None] * len(runs))[i] = types.get(key)
        for key, value in run.data.metrics.items():
            metrics.setdefault(key, [np.nan] * len(runs))[i] = value

    df = pd.DataFrame(base, columns=_LEAD)
    df["budget"] = df["budget"].astype("Int64")
    df["pareto"] = df["pareto"].astype("boolean")
    columns = {}
    for key in params:
        columns[key] = _column_values(params[key], kinds[key])
    for key, values in metrics.items():
        name = key if key not in columns and key not in df.columns else f"metric.{key}"
        columns[name] = pd.Series(values, dtype="float64")
    if columns:
        df = pd.concat([df, pd.DataFrame(columns, index=df.index)], axis=1)
    df.attrs["experiment"] = experiment
    return df


# ---------------------------------------------------------------------------------------------------------------
# Fronts and hypervolume


def _objectives(objectives: Mapping[str, str] | None) -> dict[str, str]:
    objectives = dict(DEFAULT_OBJECTIVES if objectives is None else objectives)
    if not objectives:
        raise ValueError("objectives must name at least one metric, e.g. {'val_acc': 'max', 'flops': 'min'}")
    for name, mode in objectives.items():
        if mode not in ("max", "min"):
            raise ValueError(f"objective {name!r}: mode must be 'max' or 'min', got {mode!r}")
    return objectives


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
            d = d[d["state"] == "completed"]
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
    return {k: float(v) for k, v in zip(objectives, values)}


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


def baseline_row(df: pd.DataFrame) -> pd.Series | None:
    """The study's baseline: its first ``attention: none`` trial completed at the full budget (None if absent)."""
    if "attention" not in df.columns:
        return None
    full = competing(df, "full")
    rows = full[full["attention"].astype(str) == "none"]
    if "start_time" in rows.columns:
        rows = rows.sort_values("start_time", kind="stable")
    return None if rows.empty else rows.iloc[0]


def relative_to_baseline(front: pd.DataFrame, baseline: pd.Series, objectives: Mapping[str, str]) -> pd.DataFrame:
    """``front`` with, per objective, ``delta_<m>`` (a per-epoch metric minus the baseline's: accuracy points)
    or ``<m>_ratio`` (a count over the baseline's: 1.5 = 50 % more FLOPs); ``val_acc`` and ``flops`` always."""
    out = front.copy()
    for metric in dict.fromkeys([*objectives, "val_acc", "flops"]):
        if metric not in out.columns or not _present(baseline.get(metric)):
            continue
        values = pd.to_numeric(out[metric], errors="coerce").astype("float64")
        if metric in EPOCH_METRICS:
            out[f"delta_{metric}"] = values - float(baseline[metric])
        elif float(baseline[metric]):
            out[f"{metric}_ratio"] = values / float(baseline[metric])
    out.attrs = {**front.attrs, "baseline": {k: baseline.get(k) for k in ("run_id", "run_name", *objectives)
                                            if k in baseline.index}}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Output


def _axes(objectives: Mapping[str, str]) -> tuple[str, str]:
    # x: the first minimised objective (cost, e.g. FLOPs); y: the first maximised one (e.g. accuracy)
    names = list(objectives)
    x = next((k for k, m in objectives.items() if m == "min"), names[-1])
    y = next((k for k, m in objectives.items() if m == "max" and k != x), next((k for k in names if k != x), x))
    return x, y


def plot_front(
    df: pd.DataFrame,
    front: pd.DataFrame,
    objectives: Mapping[str, str] | None = None,
    path: str | os.PathLike = "pareto.png",
    title: str | None = None,
    hv: float | None = None,
) -> Path:
    """Accuracy against FLOPs (or the first max vs the first min objective): every trial faded, the front
    highlighted and joined by its staircase, colour = attention type, hypervolume in the title. Returns path."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI, Ray drivers, SSH
    import matplotlib.pyplot as plt

    objectives = _objectives(objectives or front.attrs.get("objectives"))
    x, y = _axes(objectives)
    if hv is None:
        hv = hypervolume(front, objectives)
    shown = df
    if "state" in shown.columns:
        shown = shown[~shown["state"].isin(("failed", "infeasible"))]
    shown, _, _ = _points(shown, {x: "min", y: "max"})
    front_pts, _, _ = _points(front, {x: "min", y: "max"})
    kinds = sorted(set(shown.get("attention", pd.Series(dtype=str)).dropna().astype(str))
                   | set(front_pts.get("attention", pd.Series(dtype=str)).dropna().astype(str)))
    colors = {k: plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")(i % 20) for i, k in enumerate(kinds)}

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    in_front = shown.index.isin(front_pts.index)
    for kind in kinds or [None]:
        sel = (shown["attention"].astype(str) == kind) if kind is not None else np.ones(len(shown), bool)
        rest = shown[sel & ~in_front]
        ax.scatter(rest[x], rest[y], s=18, alpha=0.25, color=colors.get(kind, "grey"), linewidths=0)
        best = front_pts[front_pts["attention"].astype(str) == kind] if kind is not None else front_pts
        ax.scatter(best[x], best[y], s=46, color=colors.get(kind, "C0"), edgecolors="black", linewidths=0.8,
                   label=kind, zorder=3)
    base = front.attrs.get("baseline") or {}
    if _present(base.get(x)) and _present(base.get(y)):
        ax.scatter([base[x]], [base[y]], marker="*", s=180, color="gold", edgecolors="black", linewidths=0.8,
                   label="baseline (none)", zorder=4)
        ax.axhline(base[y], color="grey", linestyle=":", linewidth=0.8, zorder=1)
    if len(objectives) == 2 and len(front_pts):
        stair = front_pts.sort_values(x, ascending=objectives[x] == "min")
        ax.step(stair[x], stair[y], where="post", color="black", linewidth=1.0, alpha=0.7, zorder=2)
    xs = pd.concat([shown[x], front_pts[x]]).astype(float)
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} ({objectives[x]})")
    ax.set_ylabel(f"{y} ({objectives[y]})")
    budget = front.attrs.get("budget", "")
    head = title or "Pareto front"
    ax.set_title(f"{head}\n{len(front)} on the front of {front.attrs.get('candidates', len(shown))} "
                 f"(budget {budget}), hypervolume {hv:.4g}", fontsize=10)
    if kinds:
        ax.legend(title="attention", fontsize=8, title_fontsize=8, loc="best")
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def export_front(front: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``front`` as CSV (``.csv``) or Parquet (``.parquet``/``.pq``), chosen by the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = front.copy()
    out.attrs = {}  # attrs hold dicts pandas would try to put in the Parquet metadata; the file is the table
    if suffix == ".csv":
        out.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        for col in out.columns:
            if out[col].dtype == object:  # mixed-type params (rare): Parquet needs one type per column
                kinds = {type(v) for v in out[col] if v is not None and v is not pd.NA and v == v}
                if len(kinds) > 1 or kinds & {list, dict}:
                    out[col] = out[col].map(lambda v: None if v is None or v != v else json.dumps(v)
                                            if isinstance(v, (list, dict)) else str(v))
        out.to_parquet(path, index=False)
    else:
        raise ValueError(f"export path {str(path)!r}: suffix must be .csv, .parquet or .pq, got {suffix or 'none'!r}")
    return path


def _human(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.4g}"


def _present(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def format_front(front: pd.DataFrame, objectives: Mapping[str, str] | None = None) -> str:
    """Terminal table of a front: attention type, sites, knobs, budget, val_acc, flops, params (+ other
    objectives)."""
    objectives = _objectives(objectives or front.attrs.get("objectives"))
    if not len(front):
        return "(empty Pareto front: no trial competed at this budget; try budget='any')"
    extra = [k for k in objectives if k not in ("val_acc", "flops", "params")]
    relative = [c for c in front.columns if c.startswith("delta_") or c.endswith("_ratio")]
    header = ["attention", "sites", "knobs", "budget", "val_acc", "flops", "params", *extra,
              *[f"{c[6:]} vs base" if c.startswith("delta_") else f"{c[:-6]} x base" for c in relative]]
    rows = []
    for _, r in front.iterrows():
        kind = str(r.get("attention", "?"))
        sites = "-" if kind == "none" else " ".join(
            str(r[c]) if c != "stages" else f"s{r[c]}"
            for c in ("stages", "blocks", "position") if c in r.index and _present(r[c])
        )
        knobs = [f"{c.split('.', 1)[1]}={_short(r[c])}" for c in r.index
                 if c.startswith((kind + ".", "train.", "backbone.", "data.")) and _present(r[c])]
        acc = r.get("val_acc")
        rows.append([
            kind, sites or "-", " ".join(knobs) or "-",
            str(r["budget"]) if "budget" in r.index and _present(r["budget"]) else "-",
            f"{acc:.4f}" if _present(acc) else "-",
            _human(r.get("flops")), _human(r.get("params")),
            *[_human(r.get(k)) for k in extra],
            *[("-" if not _present(r.get(c)) else f"{r[c]:+.4f}" if c.startswith("delta_") else f"{r[c]:.3g}x")
              for c in relative],
        ])
    table = format_table(header, rows)
    base = front.attrs.get("baseline")
    if base:
        shown = ", ".join(f"{k} {_human(v) if k != 'val_acc' else f'{v:.4f}'}" for k, v in base.items()
                          if k in objectives and _present(v))
        table += f"\nbaseline: {base.get('run_name', 'none')} ({shown})"
    return table


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def analyze(
    uri: str,
    experiment: str,
    study_id: str | None = None,
    *,
    parent_run_id: str | None = None,
    objectives: Mapping[str, str] | None = None,
    budget: str | int = "full",
    reference: Mapping[str, float] | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, float]:
    """Front and hypervolume of one study, written back to MLflow; returns ``(front, hv)``.

    The study is ``parent_run_id``, else ``study_id``, else the experiment's most recently started study.
    Logs ``pareto.csv`` and ``pareto.png`` to the study's parent run (plus the metrics ``pareto.hypervolume``
    and ``pareto.size``), sets ``attnsearch.pareto`` true on the front's child runs and false on the others, and
    writes ``out`` (CSV/Parquet) and ``plot`` (PNG) when given. The default reference is taken from all trials
    competing at ``budget`` (module docstring).
    """
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    objectives = _objectives(objectives)
    client = MlflowClient(uri)
    with fast_http():
        if parent_run_id is None:
            parent = latest_parent(client, experiment, study_id)
            parent_run_id = parent.info.run_id
            if study_id is None:
                logger.info("analysing the latest study of %r: %s", experiment, parent.data.tags.get(TAG_STUDY))
    df = load_runs(experiment, tracking_uri=uri, parent_run_id=parent_run_id)
    front = pareto_front(df, objectives, budget)
    baseline = baseline_row(df)
    if baseline is not None:
        front = relative_to_baseline(front, baseline, objectives)
    ref = _reference(front, objectives, reference if reference is not None else front.attrs["reference"])
    hv = hypervolume(front, objectives, ref)
    front.attrs["reference"] = ref
    front.attrs["hypervolume"] = hv
    before = df["pareto"].copy()
    df["pareto"] = df["run_id"].isin(front["run_id"]).astype("boolean")
    front["pareto"] = pd.array([True] * len(front), dtype="boolean")

    tmp = Path(tempfile.mkdtemp(prefix="attnsearch-pareto-"))
    try:
        csv = export_front(front, tmp / "pareto.csv")
        png = plot_front(df, front, objectives, tmp / "pareto.png", title=f"{experiment}: Pareto front", hv=hv)
        if out is not None:
            export_front(front, out)
        if plot is not None:
            Path(plot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, plot)
        with fast_http():
            client.log_artifact(parent_run_id, str(csv))
            client.log_artifact(parent_run_id, str(png))
            from mlflow.entities import Metric

            now = int(pd.Timestamp.now().timestamp() * 1000)
            base = front.attrs.get("baseline") or {}
            client.log_batch(
                parent_run_id,
                metrics=[Metric("pareto.hypervolume", hv, now, 0), Metric("pareto.size", len(front), now, 0),
                         *[Metric(f"baseline.{k}", float(v), now, 0) for k, v in base.items()
                           if k in objectives and _present(v)]],
                tags=[
                    RunTag("attnsearch.pareto.objectives", json.dumps(objectives)),
                    RunTag("attnsearch.pareto.reference", json.dumps(ref)),
                    RunTag("attnsearch.pareto.budget", str(budget)),
                ],
            )
            for run_id, old, new in zip(df["run_id"], before, df["pareto"]):
                if old is pd.NA or bool(old) != bool(new):  # only the flags that change: one call per change
                    client.log_batch(run_id, tags=[RunTag(TAG_PARETO, "true" if new else "false")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return front, hv
