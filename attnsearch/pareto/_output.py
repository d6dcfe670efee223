"""Output: the front as a plot, a CSV/Parquet file and a terminal table."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._table import format_table
from ..contract import ALL_STUDIES, FAILED, INFEASIBLE
from ._front import _objectives, _points, _present, hypervolume

__all__ = ["plot_front", "export_front", "format_front", "front_markdown"]


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
        shown = shown[~shown["state"].isin((FAILED, INFEASIBLE))]
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
    bases = [b for b in _baselines(front) if _present(b.get(x)) and _present(b.get(y))]
    for i, base in enumerate(bases):  # each study's own baseline
        ax.scatter([base[x]], [base[y]], marker="*", s=180, color="gold", edgecolors="black", linewidths=0.8,
                   label="baseline (none)" if i == 0 else None, zorder=4)
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


def _by_study(front: pd.DataFrame) -> bool:
    # rows of several studies (``--study all``): the table says which study each row is from
    if "study" not in front.columns:
        return False
    return front.attrs.get("study") == ALL_STUDIES or front["study"].dropna().nunique() > 1


def _front_rows(front: pd.DataFrame, objectives: Mapping[str, str]) -> tuple[list[str], list[list[str]]]:
    """The columns and cells of a front's table (terminal and markdown): attention type, sites, knobs, budget,
    val_acc, flops, params, the other objectives, then the columns relative to the baseline."""
    extra = [k for k in objectives if k not in ("val_acc", "flops", "params")]
    relative = [c for c in front.columns if c.startswith("delta_") or c.endswith("_ratio")]
    by_study = _by_study(front)
    header = [*(["study"] if by_study else []), "attention", "sites", "knobs", "budget", "val_acc", "flops", "params",
              *extra,
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
            *([str(r.get("study") or "-")] if by_study else []),
            kind, sites or "-", " ".join(knobs) or "-",
            str(r["budget"]) if "budget" in r.index and _present(r["budget"]) else "-",
            f"{acc:.4f}" if _present(acc) else "-",
            _human(r.get("flops")), _human(r.get("params")),
            *[_human(r.get(k)) for k in extra],
            *[("-" if not _present(r.get(c)) else f"{r[c]:+.4f}" if c.startswith("delta_") else f"{r[c]:.3g}x")
              for c in relative],
        ])
    return header, rows


def format_front(front: pd.DataFrame, objectives: Mapping[str, str] | None = None) -> str:
    """Terminal table of a front: attention type, sites, knobs, budget, val_acc, flops, params (+ other
    objectives); a first ``study`` column when the rows come from several studies (``--study all``)."""
    objectives = _objectives(objectives or front.attrs.get("objectives"))
    if not len(front):
        return "(empty Pareto front: no trial competed at this budget; try budget='any')"
    header, rows = _front_rows(front, objectives)
    table = format_table(header, rows)
    bases = _baselines(front)
    for base in bases:
        shown = ", ".join(f"{k} {_human(v) if k != 'val_acc' else f'{v:.4f}'}" for k, v in base.items()
                          if k in objectives and _present(v))
        study = f" of study {base['study']}" if len(bases) > 1 and base.get("study") else ""
        table += f"\nbaseline{study}: {base.get('run_name', 'none')} ({shown})"
    return table


def _baselines(front: pd.DataFrame) -> list[dict[str, Any]]:
    """The baselines a front was compared with (``relative_to_baseline``): each study's own."""
    bases = front.attrs.get("baselines")
    if bases is None:
        bases = [front.attrs["baseline"]] if front.attrs.get("baseline") else []
    return list(bases)


# MLflow keeps 8,000 characters of a tag (the description is the tag mlflow.note.content) and cuts the rest.
_NOTE_LIMIT = 7900


def front_markdown(
    front: pd.DataFrame,
    baseline: pd.Series | None,
    *,
    experiment_id: str | None = None,
    plot_url: str | None = None,
    heading: str = "",
    limit: int = _NOTE_LIMIT,
) -> str:
    """The front as a markdown table with the baseline's row (the MLflow parent run's description): one row per
    front member, run names linking to their runs in the MLflow UI when ``experiment_id`` is given, the baseline
    last (marked; or its front row marked), then the plot (``plot_url``). Rows that would push the text over
    ``limit`` characters are left out, and a line says how many (the whole front is in ``pareto.csv``)."""
    objectives = _objectives(front.attrs.get("objectives"))
    table = front.copy()
    base_id = None if baseline is None else baseline.get("run_id")
    on_front = base_id is not None and "run_id" in table.columns and (table["run_id"] == base_id).any()
    if baseline is not None and not on_front:
        row = baseline.to_frame().T.reset_index(drop=True)
        for col in [c for c in table.columns if c.startswith("delta_") or c.endswith("_ratio")]:
            row[col] = 0.0 if col.startswith("delta_") else 1.0
        table = pd.concat([table, row[[c for c in row.columns if c in table.columns]]], ignore_index=True)
    header, rows = _front_rows(table, objectives)

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = []  # (is the baseline's row, the line)
    for i, (_, r) in enumerate(table.iterrows()):
        name = cell(r.get("run_name") or r.get("run_id") or "?")
        if experiment_id is not None and _present(r.get("run_id")):
            name = f"[{name}](#/experiments/{experiment_id}/runs/{r['run_id']})"
        is_base = base_id is not None and r.get("run_id") == base_id
        lines.append((is_base, "| " + " | ".join([name + (" (baseline)" if is_base else ""), *map(cell, rows[i])])
                      + " |"))
    head = ["| run | " + " | ".join(map(cell, header)) + " |", "|" + "---|" * (len(header) + 1)]
    plot = [f"![Pareto front]({plot_url})"] if plot_url else []

    def text(kept: list[tuple[bool, str]], left_out: int) -> str:
        more = [f"{left_out} more front row(s) in pareto.csv", ""] if left_out else []
        return "\n".join([*([heading, ""] if heading else []), *head, *(line for _, line in kept), "", *more,
                          *plot]) + "\n"

    left_out = 0
    while len(text(lines, left_out)) > limit:
        drop = [i for i, (is_base, _) in enumerate(lines) if not is_base]
        if not drop:
            break
        del lines[drop[-1]]  # the baseline's row stays
        left_out += 1
    return text(lines, left_out)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

