"""How good is the search? Hypervolume of the full-budget front against the training epochs spent.

Every method runs the same study (the digits task, ResNet-20 with the quickstart's cost-spanning space: width
multiplier, image size, every attention type and its knobs, the learning rate) through ``attnsearch``'s own
code path (Ray Tune, Optuna, MLflow), with the same budget of total training epochs (``search.budget_epochs``),
over several seeds:

* ``random``: random search, no early stopping (every trial trains ``train.epochs``);
* ``tpe+asha``: multivariate TPE with Ray's ASHA on val_acc alone;
* ``tpe+moasha``: TPE with attnsearch's MOASHA (every objective at every rung);
* ``random+moasha``: random search with MOASHA;
* ``random+synetune``: random search with Syne Tune's MOASHA stopping rule (the peer; what Syne Tune's own
  MOASHA does: it samples at random), through ``benchmarks/_peer_synetune.py``.

The hypervolume (val_acc max, flops min) of the trials that trained the full budget is taken after every epoch
any trial finished, against one fixed reference point for all runs: val_acc 0 and 1.1 x the largest FLOPs any
trial had. Reported: its median and range over seeds at 25/50/75/100 % of the budget, trials run, wall time.

Syne Tune is a benchmark-only dependency: ``pip install --no-deps syne-tune==0.16.0 dill`` (it needs pandas
and numpy, which attnsearch has). Without it the peer is skipped.

    python benchmarks/search_quality.py --seeds 5 --out benchmarks/results/search_quality.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

METHODS = ("random", "tpe+asha", "tpe+moasha", "random+moasha", "random+synetune")
OBJECTIVES = {"val_acc": "max", "flops": "min"}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def job_dict(method: str, seed: int, budget: int, workdir: Path, epochs: int, grace: int = 1) -> dict[str, Any]:
    sampler, _, scheduler = method.partition("+")
    return {
        "name": f"sq-{method.replace('+', '-')}-s{seed}",
        "backbone": {"name": "resnet20"},
        "data": {"dataset": "digits", "image_size": 16, "batch_size": 64},
        "train": {"epochs": epochs, "lr": 0.1, "threads": 1, "seed": seed},
        "search": {"space": str(ROOT / "search_spaces" / "quickstart.yaml"), "sampler": sampler,
                   "num_samples": 10 * budget, "max_concurrent": 2, "seed": seed, "objectives": OBJECTIVES,
                   "budget_epochs": budget},
        "scheduler": {"type": {"": "none", "synetune": "none"}.get(scheduler, scheduler), "grace_period": grace,
                      "reduction_factor": 3},
        "resources": {"cpu": 1},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db"},
        "ray": {"storage_path": str(workdir / "ray_results")},
    }


def curve(records: list, max_t: int) -> list[tuple[int, float, float]]:
    """``(epochs spent, val_acc, flops)`` of each trial at the moment it finished its full budget, in the order
    the epochs were spent (epochs counted over every trial, in the order their results arrived)."""
    events = []
    for rec in records:
        seen = set()
        for res in rec.pending:
            if res["epoch"] in seen:
                continue
            seen.add(res["epoch"])
            events.append((res["ms"] or 0, rec.trial_id, res["epoch"], res["metrics"].get("val_acc")))
    events.sort()
    flops = {rec.trial_id: rec.static.get("flops") for rec in records}
    out = []
    for spent, (_, trial_id, epoch, acc) in enumerate(events, start=1):
        if epoch == max_t and acc is not None and flops.get(trial_id):
            out.append((spent, float(acc), float(flops[trial_id])))
    return out


def hypervolume_at(points: list[tuple[int, float, float]], spent: int, ref_flops: float) -> float:
    import moocore

    pts = np.array([(acc, f) for s, acc, f in points if s <= spent and f < ref_flops and acc > 0], dtype=float)
    if not len(pts):
        return 0.0
    return float(moocore.hypervolume(pts, ref=np.array([0.0, ref_flops]), maximise=[True, False]))


def run_one(method: str, seed: int, budget: int, epochs: int, workdir: Path, grace: int = 1) -> dict[str, Any]:
    from attnsearch.config import validate_job
    from attnsearch.search import run_study
    from attnsearch.space import load_space
    from attnsearch.tracking.sync import read_ray_trials

    job = validate_job(job_dict(method, seed, budget, workdir, epochs, grace), f"{method} seed {seed}")
    load_space(job)
    scheduler = None
    if method.endswith("synetune"):
        from _peer_synetune import SyneTuneMOASHA

        scheduler = SyneTuneMOASHA(OBJECTIVES, max_t=epochs, grace_period=grace, reduction_factor=3)
    started = time.perf_counter()
    with open(workdir / f"{job.name}.log", "w") as log:
        outcome = run_study(job, stream=log, scheduler=scheduler)
    wall = time.perf_counter() - started
    records = read_ray_trials(outcome.experiment_path, epochs)
    return {"method": method, "seed": seed, "wall_s": wall, "trials": len(records),
            "points": curve(records, epochs), "epochs_spent": sum(len({r["epoch"] for r in rec.pending})
                                                                for rec in records)}


def summarise(runs: list[dict], budget: int) -> tuple[str, dict]:
    ref_flops = 1.1 * max(f for run in runs for _, _, f in run["points"])
    table = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [r for r in runs if r["method"] == method]
        row = {}
        for frac in FRACTIONS:
            hvs = [hypervolume_at(r["points"], int(round(frac * budget)), ref_flops) for r in mine]
            row[frac] = (statistics.median(hvs), min(hvs), max(hvs))
        row["trials"] = statistics.median(r["trials"] for r in mine)
        row["wall_s"] = statistics.median(r["wall_s"] for r in mine)
        row["seeds"] = len(mine)
        table[method] = row
    scale = 1e6
    lines = [
        f"Hypervolume (val_acc x MFLOPs below the reference; reference val_acc 0, flops {ref_flops / scale:.2f} M) "
        f"of the full-budget front after a share of the {budget}-epoch budget: median [min, max] over seeds.",
        "",
        "| method | seeds | " + " | ".join(f"{int(f * 100)} % ({int(round(f * budget))} ep)" for f in FRACTIONS)
        + " | trials | wall s |",
        "|---|---|" + "---|" * len(FRACTIONS) + "---|---|",
    ]
    for method, row in table.items():
        cells = [f"{row[f][0] / scale:.3f} [{row[f][1] / scale:.3f}, {row[f][2] / scale:.3f}]" for f in FRACTIONS]
        lines.append(f"| {method} | {row['seeds']} | " + " | ".join(cells)
                     + f" | {row['trials']:g} | {row['wall_s']:.0f} |")
    return "\n".join(lines) + "\n", {"reference_flops": ref_flops, "table": {
        m: {str(k): v for k, v in row.items()} for m, row in table.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=54, help="total training epochs per study (default 54)")
    p.add_argument("--epochs", type=int, default=6, help="a trial's full budget (default 6)")
    p.add_argument("--grace-period", type=int, default=1, help="the first rung of the early-stopping methods")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--workdir", help="where the studies' Ray and MLflow files go (default: a temporary folder)")
    p.add_argument("--raw", help="also write every run's points as JSON here")
    p.add_argument("--out", help="write the markdown table here")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; known: {list(METHODS)}")
    if "random+synetune" in methods:
        try:
            import syne_tune  # noqa: F401
        except ImportError:
            print("syne-tune is not installed: skipping random+synetune "
                  "(pip install --no-deps syne-tune==0.16.0 dill)", file=sys.stderr)
            methods.remove("random+synetune")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="attnsearch-sq-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in methods:  # interleaved: a slower machine later in the run hits every method alike
            run = run_one(method, seed, args.budget, args.epochs, workdir, args.grace_period)
            runs.append(run)
            print(f"{method} seed {seed}: {run['trials']} trials, {run['epochs_spent']} epochs, "
                  f"{len(run['points'])} at the full budget, {run['wall_s']:.0f} s", flush=True)
            if args.raw:
                Path(args.raw).write_text(json.dumps(runs, indent=1))
    text, _ = summarise(runs, args.budget)
    command = "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"`{command.strip()}`\n\n" + text
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
