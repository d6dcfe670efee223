"""How much a learning-curve table leaves a search to find: its spread, its rank correlations, its true front.

    python benchmarks/table_headroom.py --table benchmarks/results/fashion_curves.csv \\
        --job benchmarks/jobs/fashion_curves.yaml --out benchmarks/results/fashion_curves_headroom.md

Reported (markdown): the number of configurations; the final (``train.epochs``) val_acc's spread over them (min,
quartiles, max); the validation split's standard error at the median accuracy, ``sqrt(p (1 - p) / n)`` with ``n``
the job's validation images (the binomial error of one accuracy measurement; the split is read from the job's
data, not assumed); Spearman's rho between val_acc after each epoch and the final val_acc (how well a rung at
that epoch ranks configurations: what early stopping can use), and of the epoch's training loss (lower first)
against the final val_acc; per attention type, the count and the final
val_acc's median and best; and the table's true Pareto front (``attnsearch.pareto.pareto_front`` over the job's
objectives, every configuration at the full budget). Configurations recorded twice with the same knobs (another
``config_id``) give the seed noise (or, trained with the same seed, a determinism check): the largest minus
the smallest final val_acc of each, its median over them.
``--table`` takes what ``benchmarks/replay.py --table`` takes (repeatable).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import _replay  # noqa: E402
import replay  # noqa: E402


def validation_images(job) -> int:
    """The number of validation images the job's trials are evaluated on (its data split, built here)."""
    from attnsearch.data import build_datasets

    return len(build_datasets(job.data)[1])


def headroom(table: _replay.Table, job, n_val: int | None) -> dict:
    """The headroom figures of ``table`` (see the module docstring) as plain numbers and frames."""
    from attnsearch.pareto import pareto_front

    final = table.final()
    acc = final["val_acc"]
    curves = pd.DataFrame(table.curves["val_acc"], columns=range(1, table.max_t + 1))
    rho = {e: float(curves[e].rank().corr(curves[table.max_t].rank())) for e in curves.columns}
    losses = pd.DataFrame(-table.curves["train_loss"], columns=curves.columns)  # lower loss ranks higher
    rho_train = {e: float(losses[e].rank().corr(curves[table.max_t].rank())) for e in curves.columns}
    p = float(acc.median())
    se = math.sqrt(p * (1 - p) / n_val) if n_val else None
    types = _replay.CONFIG_ID if "attention" not in final.columns else "attention"
    by_type = final.groupby(types)["val_acc"].agg(["count", "median", "max"]).sort_values("median", ascending=False)
    front = pareto_front(final, dict(job.search.objectives), budget="any")
    twins = final.assign(key=final[table.knobs].map(_replay.canonical).agg("|".join, axis=1)).groupby("key")
    diffs = [float(g["val_acc"].max() - g["val_acc"].min()) for _, g in twins if len(g) > 1]
    return {"configs": len(table), "max_t": table.max_t, "acc": acc.describe(), "n_val": n_val, "se": se,
            "rho": rho, "rho_train_loss": rho_train, "by_type": by_type, "front": front, "twins": diffs,
            "seconds": final["seconds"].describe()}


def markdown(h: dict, table: _replay.Table, job, command: str) -> str:
    acc = h["acc"]
    lines = [f"`{command}`", "",
             f"{h['configs']} configurations x {h['max_t']} epochs ({table.source}); final val_acc min "
             f"{acc['min']:.4f}, quartiles {acc['25%']:.4f} / {acc['50%']:.4f} / {acc['75%']:.4f}, max "
             f"{acc['max']:.4f} (spread {acc['max'] - acc['min']:.4f})."]
    if h["se"] is not None:
        lines.append(f"Validation split: {h['n_val']} images; standard error of one accuracy at the median "
                     f"{100 * h['se']:.2f} points.")
    if h["twins"]:
        lines.append(f"Repeats: {len(h['twins'])} knob combinations recorded twice (with another training seed: "
                     "the seed noise; with the same: a determinism check); final val_acc differs by "
                     f"{100 * float(np.median(h['twins'])):.2f} points at the median "
                     f"(max {100 * max(h['twins']):.2f}).")
    secs = h["seconds"]
    lines.append(f"Seconds per full-budget configuration: median {secs['50%']:.1f} (min {secs['min']:.1f}, "
                 f"max {secs['max']:.1f}).")
    lines += ["", "Spearman's rho against the final val_acc of each epoch's val_acc and training loss:", "",
              "| epoch | " + " | ".join(str(e) for e in h["rho"]) + " |",
              "|---|" + "---:|" * len(h["rho"]),
              "| val_acc | " + " | ".join(f"{r:.2f}" for r in h["rho"].values()) + " |",
              "| train_loss (lower first) | " + " | ".join(f"{r:.2f}" for r in h["rho_train_loss"].values()) + " |", "",
              "| attention | configurations | median final val_acc | best |", "|---|---:|---:|---:|"]
    for name, row in h["by_type"].iterrows():
        lines.append(f"| {name} | {int(row['count'])} | {row['median']:.4f} | {row['max']:.4f} |")
    objectives = dict(job.search.objectives)
    front = h["front"]
    cols = [c for c in ("config_id", *table.knobs)
            if c in front.columns and not front[c].map(_replay._missing).all()]
    lines += ["", f"True Pareto front ({', '.join(f'{k} {m}' for k, m in objectives.items())}; "
              f"{len(front)} of {h['configs']}):", "",
              "| " + " | ".join([*objectives, *cols]) + " |", "|" + "---|" * (len(objectives) + len(cols))]
    for _, row in front.iterrows():
        vals = [f"{row[k]:.4f}" if k == "val_acc" else f"{row[k]:.4g}" for k in objectives]
        knobs = ["" if _replay._missing(row[c]) else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                 for c in cols]
        lines.append("| " + " | ".join(vals + knobs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from attnsearch.config import load_job
    from attnsearch.contract import InputError
    from attnsearch.space import load_space

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, action="append", help="as benchmarks/replay.py --table (repeatable)")
    p.add_argument("--job", required=True, help="the job the table was recorded from")
    p.add_argument("--no-split", action="store_true", help="do not load the job's data to count its validation "
                   "images (no standard error)")
    p.add_argument("--out", help="write the markdown here")
    args = p.parse_args(argv)
    try:
        job = load_job(args.job)
        table = replay.load_table(args.table, job, load_space(job))
        n_val = None if args.no_split else validation_images(job)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python benchmarks/table_headroom.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(headroom(table, job, n_val), table, job, command)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
