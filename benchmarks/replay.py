"""Search quality in simulated time: replay each method over a recorded learning-curve table, many seeds.

Every method runs attnsearch's own searcher and scheduler (``benchmarks/_replay.py``): ``random`` (no early
stopping), ``tpe`` (no early stopping), ``tpe+asha``, ``tpe+moasha``, ``random+moasha`` (the default),
``nsga2+moasha`` (and ``gp+moasha`` when ``--methods`` names it); the peer runs Syne Tune 0.16's own ``MOASHA``
(``st-moasha``) and random search (``st-random``) in Syne Tune's own simulator backend over the same table
(``benchmarks/_replay_peer.py``).

Per method and seed: the hypervolume (the job's ``search.objectives``, default val_acc max and FLOPs min) of the
configurations trained to the full budget, over simulated time, against a reference point fixed by the table
(``attnsearch.pareto.default_reference`` over all its configurations, or ``--reference``), and its regret
``1 - HV / HV*`` against the table's true front. Reported: the median [interquartile range] of the regret at
25/50/75/100 % of the budget, the simulated time to reach random search's final hypervolume (the median over
its seeds), one-sided paired Wilcoxon signed-rank p-values (same seed numbers) that a method's final regret is
lower than random search's and than the peer's, and whether random search agrees between the two simulators
(two-sided Mann-Whitney U and two-sample Kolmogorov-Smirnov tests on the final hypervolumes).

    python benchmarks/replay.py --table benchmarks/results/fashion_curves.csv \\
        --job benchmarks/jobs/fashion_curves.yaml --seeds 30 --workers 4 --budget 40x \\
        --json benchmarks/results/replay.json --out benchmarks/results/replay.md --plot benchmarks/results/replay.png

``--table synthetic[:CONFIGS[:SEED]]`` replays a synthetic table drawn from the job's space instead (a dry run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import _replay  # noqa: E402

from attnsearch.config import SearchConfig  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
GRID = 101  # points of each hypervolume curve, 0..100 % of the simulated time
PEER = "st-moasha"
# the product's default search: search.sampler's default with MOASHA (scheduler auto, several objectives)
DEFAULT = next(m for m, (sampler, scheduler) in _replay.METHODS.items()
               if scheduler == "moasha" and sampler == SearchConfig.model_fields["sampler"].default)
KNOWN_METHODS = (*_replay.METHODS, "st-random", PEER)
SLOW_METHODS = ("gp+moasha",)  # run only when --methods names them
DEFAULT_METHODS = tuple(m for m in KNOWN_METHODS if m not in SLOW_METHODS)


def parse_budget(text: str, table: _replay.Table) -> float:
    """``--budget``: worker-seconds, or ``Nx`` = N times the mean seconds of a full-budget trial in the table."""
    text = str(text).strip()
    try:
        if text.endswith("x"):
            value = float(text[:-1]) * float(table.curves["epoch_time_s"].sum(axis=1).mean())
        else:
            value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise _replay.ConfigError(f"--budget {text!r}: give worker-seconds (e.g. 3600) or a multiple of the "
                                  "table's mean full-budget trial time (e.g. 40x)")
    return value


def parse_reference(text: str | None, objectives: dict[str, str]) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise _replay.ConfigError(
                f"--reference {text!r}: expected METRIC=VALUE,... e.g. val_acc=0,flops=3e7") from None
    if set(out) != set(objectives):
        raise _replay.ConfigError(f"--reference {text!r}: give one value for each objective {list(objectives)}")
    return out


def load_table(specs: list[str], job, space) -> _replay.Table:
    """The table of one or more ``--table`` sources (their configurations together: ids must not repeat)."""
    import pandas as pd

    frames = []
    for spec in specs:
        if spec.startswith("synthetic"):
            parts = spec.split(":")
            configs = int(parts[1]) if len(parts) > 1 else 200
            seed = int(parts[2]) if len(parts) > 2 else 0
            frames.append(_replay.synthetic_table(job, space, configs=configs, seed=seed))
        elif spec.startswith("mlflow:"):  # a finished scheduler: none study in the job's MLflow store
            frames.append(_replay.table_from_mlflow(job.tracking.uri, job.experiment, spec.removeprefix("mlflow:")
                                                    or "latest", job.train.epochs))
        elif Path(spec).is_dir():  # a finished scheduler: none study's Ray experiment directory
            frames.append(_replay.table_from_ray(spec, job.train.epochs))
        elif len(specs) == 1:
            return _replay.read_table(spec, space, max_t=job.train.epochs)
        else:
            path = Path(spec)
            if not path.is_file():
                raise _replay.ConfigError(f"--table {spec}: no such file, directory or source")
            frames.append(_replay.read_frame(path))
    if len(frames) > 1:
        counts = Counter(i for f in frames for i in _id_column(f))
        repeated = {i for i, n in counts.items() if n > 1}
        if repeated:
            raise _replay.ConfigError(f"--table: configuration ids {sorted(repeated)[:5]} appear in more than one "
                                      "table; give each recording once")
    return _replay.read_table(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], space,
                              max_t=job.train.epochs)


def _id_column(frame):
    for name in (_replay.CONFIG_ID, *_replay.ID_ALIASES):
        if name in frame.columns:
            return frame[name].astype(str).unique()
    return []


def table_frame(table: _replay.Table):
    """The table back in its long format (what ``--write-table`` writes)."""
    import pandas as pd

    parts = []
    for epoch in range(1, table.max_t + 1):
        part = table.configs.copy()
        part["epoch"] = epoch
        for name, values in table.curves.items():
            part[name] = values[:, epoch - 1]
        parts.append(part)
    return pd.concat(parts).sort_values([_replay.CONFIG_ID, "epoch"], kind="stable").reset_index(drop=True)


def run_method(method: str, table, job, space, seed: int, workers: int, budget_s: float, mapper):
    if method in _replay.METHODS:
        return _replay.replay(table, job, space, method=method, seed=seed, workers=workers, budget_s=budget_s,
                              mapper=mapper)
    import _replay_peer

    return _replay_peer.peer_replay(table, job, space, method=method, seed=seed, workers=workers,
                                    budget_s=budget_s, mapper=mapper)


def first_time(curve: list[float], times: list[float], target: float) -> float:
    """The first grid time at which ``curve`` reaches ``target`` (inf: never)."""
    for t, hv in zip(times, curve, strict=False):
        if hv >= target - 1e-12 * abs(target):
            return t
    return math.inf


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.array(values, dtype=float), [25, 50, 75])
    return float(q2), float(q1), float(q3)


def _wilcoxon_less(a: list[float], b: list[float]) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that ``a`` < ``b`` (1.0 when every pair ties)."""
    from scipy.stats import wilcoxon

    diff = np.array(a) - np.array(b)
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(a, b, alternative="less").pvalue)


def summarise(runs: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The markdown report and its numbers from every run's hypervolume curve."""
    from scipy.stats import ks_2samp, mannwhitneyu

    hv_star = meta["true_hypervolume"]
    times = meta["grid_s"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    by = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    idx = [round(f * (GRID - 1)) for f in FRACTIONS]
    stats: dict[str, Any] = {}
    target = statistics.median(r["hv"][-1] for r in by["random"]) if "random" in by else None
    for m, rs in by.items():
        regret = [[1 - r["hv"][i] / hv_star for r in rs] for i in idx]
        reach = [first_time(r["hv"], times, target) for r in rs] if target is not None else []
        stats[m] = {
            "seeds": len(rs),
            "regret": {f"{int(f * 100)}%": _quartiles(v) for f, v in zip(FRACTIONS, regret, strict=False)},
            "final_regret": regret[-1],
            "trials": statistics.median(r["trials"] for r in rs),
            "full": statistics.median(r["full_count"] for r in rs),
            "exact_share": statistics.median(r["exact_share"] for r in rs),
            "reach_random_s": float(np.median(reach)) if reach else None,
            "reached": sum(1 for t in reach if math.isfinite(t)),
        }
    for m in methods:
        for other, key in (("random", "p_vs_random"), (PEER, "p_vs_peer")):
            if other in by and m != other and len(by[other]) == len(by[m]):
                stats[m][key] = _wilcoxon_less(stats[m]["final_regret"], stats[other]["final_regret"])
    agreement = None
    if "random" in by and "st-random" in by:
        a = [r["hv"][-1] for r in by["random"]]
        b = [r["hv"][-1] for r in by["st-random"]]
        agreement = {"mann_whitney_p": float(mannwhitneyu(a, b, alternative="two-sided").pvalue),
                     "ks_p": float(ks_2samp(a, b).pvalue),
                     "median_hv": [statistics.median(a), statistics.median(b)]}
    horizon = meta["horizon_s"]
    lines = [
        f"Table: `{meta['table']}`: {meta['configs']} configurations x {meta['max_t']} epochs; job `{meta['job']}` "
        f"(objectives {meta['objectives']}). {meta['workers']} workers, budget {meta['budget_s']:.0f} worker-s "
        f"({meta['budget']}; simulated time {horizon:.0f} s). Reference point {meta['reference']} (fixed by the "
        f"table); true-front hypervolume {hv_star:.6g}.",
        "",
        "Hypervolume regret `1 - HV/HV*` of the configurations trained to the full budget, median [IQR] over seeds, "
        "at a share of the simulated time; `t(random)`: median simulated time to reach random search's final "
        "hypervolume (median over its seeds), as a share of the budget (`>100%`: most seeds never do; "
        "`reached` counts those that do); p: one-sided paired Wilcoxon signed-rank (same seed numbers) that the "
        "final regret is lower than random search's / the peer's (`st-moasha`).",
        "",
        "| method | seeds | " + " | ".join(f"regret @{int(f * 100)} %" for f in FRACTIONS)
        + " | t(random) | reached | p vs random | p vs peer | trials | full-budget | exact map |",
        "|---|---|" + "---|" * len(FRACTIONS) + "---|---|---|---|---|---|---|",
    ]

    def pct(v):
        return f"{100 * v:.2f}"

    for m in methods:
        s = stats[m]
        cells = [f"{pct(q[0])} [{pct(q[1])}, {pct(q[2])}]" for q in s["regret"].values()]
        reach = s["reach_random_s"]
        reach_txt = "-" if reach is None else (">100%" if not math.isfinite(reach) else f"{100 * reach / horizon:.0f}%")
        pv = [f"{s[k]:.2g}" if k in s else "-" for k in ("p_vs_random", "p_vs_peer")]
        lines.append(f"| {m} | {s['seeds']} | " + " | ".join(cells) + f" | {reach_txt} | {s['reached']}/{s['seeds']} "
                     f"| {pv[0]} | {pv[1]} | {s['trials']:g} | {s['full']:g} | {100 * s['exact_share']:.0f}% |")
    lines.append("")
    lines.append("Regret in % of the true front's hypervolume. `trials`: median trials started; `full-budget`: "
                 "median trained to the full budget; `exact map`: median share of proposals whose categorical "
                 "knobs all matched a recorded configuration.")
    if agreement:
        lines += ["", f"Random search in both simulators (attnsearch's replay vs Syne Tune's simulator backend), "
                  f"final hypervolume: medians {agreement['median_hv'][0]:.6g} vs {agreement['median_hv'][1]:.6g}; "
                  f"two-sided Mann-Whitney U p = {agreement['mann_whitney_p']:.3g}, two-sample KS p = "
                  f"{agreement['ks_p']:.3g}."]
    return "\n".join(lines) + "\n", {"methods": stats, "random_agreement": agreement, "target_hv": target}


def plot(runs: list[dict[str, Any]], meta: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hv_star, times = meta["true_hypervolume"], np.array(meta["grid_s"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn: list[np.ndarray] = []
    for m in dict.fromkeys(r["method"] for r in runs):
        regret = np.array([[1 - h / hv_star for h in r["hv"]] for r in runs if r["method"] == m]) * 100
        q1, q2, q3 = np.percentile(regret, [25, 50, 75], axis=0)
        key = m in (DEFAULT, "random", PEER)
        same = any(d.shape == regret.shape and np.array_equal(d, regret) for d in drawn)  # e.g. nsga2 = random
        (line,) = ax.plot(times, q2, label=f"{m} (default)" if m == DEFAULT else m, lw=2.0 if key else 1.0,
                          ls=":" if same else "-", zorder=3 if key else 2)
        ax.fill_between(times, q1, q3, color=line.get_color(), alpha=0.15 if key else 0.06)
        drawn.append(regret)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("hypervolume regret (% of the true front)")
    ax.set_yscale("log")
    ax.set_title(f"{meta['configs']} configurations, {meta['workers']} workers: median and IQR over seeds",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from attnsearch.config import load_job
    from attnsearch.contract import InputError
    from attnsearch.space import load_space

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, action="append",
                   help="learning-curve table (CSV/Parquet), the Ray experiment directory of a finished scheduler: "
                   "none study, mlflow:STUDY (a study of the job's MLflow store; mlflow:latest), or "
                   "synthetic[:CONFIGS[:SEED]]; repeat --table to replay several recordings as one table")
    p.add_argument("--write-table", metavar="FILE", help="also write the table read as CSV/Parquet (by suffix)")
    p.add_argument("--job", required=True, help="the job the table was recorded from (its space, objectives, "
                   "epochs, scheduler settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job key, as `attnsearch run --set` (e.g. scheduler.grace_period=2)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"default: {','.join(DEFAULT_METHODS)}; also {','.join(SLOW_METHODS)}")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--budget", default="40x", help="worker-seconds, or Nx: N mean full-budget trials (default 40x)")
    p.add_argument("--reference", help="hypervolume reference point METRIC=VALUE,... (default: fixed by the table)")
    p.add_argument("--oracle-rungs", action="store_true",
                   help="replace every epoch's train_loss by 1 - the configuration's final val_acc, so that rungs "
                   "rank trials by the answer itself: the ceiling of any rung rule (a check, not a method)")
    p.add_argument("--json", help="write every run (and the setup) as JSON here")
    p.add_argument("--out", help="write the markdown report here")
    p.add_argument("--plot", help="write the regret-vs-simulated-time plot (PNG) here")
    args = p.parse_args(argv)
    try:
        job = load_job(args.job, args.set)
        space = load_space(job)
        table = load_table(args.table, job, space)
        methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in methods if m not in KNOWN_METHODS]
        if unknown:
            raise _replay.ConfigError(f"--methods: unknown {unknown}; known: {', '.join(KNOWN_METHODS)}")
        if args.seeds < 1 or args.workers < 1:
            raise _replay.ConfigError("--seeds and --workers must be >= 1")
        if args.oracle_rungs and job.scheduler.rung_metric != "train_loss":
            raise _replay.ConfigError("--oracle-rungs rewrites train_loss: the job's scheduler.rung_metric must be "
                                      "train_loss")
        budget_s = parse_budget(args.budget, table)
        if args.write_table:
            out = table_frame(table)
            if args.write_table.endswith((".parquet", ".pq")):
                out.to_parquet(args.write_table, index=False)
            else:
                out.to_csv(args.write_table, index=False)
        if args.oracle_rungs:  # after --write-table: the file is the table as recorded
            table = _replay.oracle_rungs(table)
        objectives = dict(job.search.objectives)
        missing = [m for m in objectives if m not in table.final().columns]
        if missing:
            raise _replay.ConfigError(f"{table.source}: no column for the objective(s) {missing}")
        reference = parse_reference(args.reference, objectives) or _replay.table_reference(table, objectives)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(m.startswith("st-") for m in methods):
        try:
            import _replay_peer  # noqa: F401
        except ImportError as exc:
            print(f"error: the Syne Tune peer needs syne-tune==0.16.0, dill and huggingface_hub ({exc}); "
                  "pip install --no-deps syne-tune==0.16.0 dill && pip install huggingface_hub, or leave "
                  "st-random and st-moasha out of --methods", file=sys.stderr)
            return 2
    horizon = budget_s / args.workers
    meta = {
        "command": "python benchmarks/replay.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "table": args.table if len(args.table) > 1 else args.table[0],
        "job": args.job, "configs": len(table), "max_t": table.max_t,
        "objectives": objectives, "reference": reference, "workers": args.workers, "budget": args.budget,
        "budget_s": budget_s, "horizon_s": horizon, "oracle_rungs": args.oracle_rungs,
        "true_hypervolume": _replay.true_hypervolume(table, objectives, reference),
        "grid_s": [horizon * i / (GRID - 1) for i in range(GRID)],
    }
    mapper = _replay.NearestConfig(table, space)
    runs = []
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in methods:
            t0 = time.perf_counter()
            run = run_method(method, table, job, space, seed, args.workers, budget_s, mapper)
            hv = _replay.hv_curve(table, run, objectives, reference, meta["grid_s"])
            runs.append({"method": method, "seed": seed, "trials": len(run.trials), "full_count": len(run.full),
                         "full": [[round(t, 3), int(r)] for t, r in run.full],
                         "worker_seconds": run.worker_seconds, "exact_share": run.exact_share,
                         "hv": [float(h) for h in hv], "wall_s": time.perf_counter() - t0})
            print(f"seed {seed} {method}: {len(run.trials)} trials, {len(run.full)} full-budget, regret "
                  f"{100 * (1 - hv[-1] / meta['true_hypervolume']):.2f} %, {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}))
    text, numbers = summarise(runs, meta)
    text = f"`{meta['command']}` ({time.perf_counter() - started:.0f} s)\n\n" + text
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs, "summary": numbers}))
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        plot(runs, meta, args.plot)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
