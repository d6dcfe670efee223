"""Live studies beside the replay: the hypervolume regret of real studies against a recorded table's true front.

Each ``--live METHOD STUDY [URI]`` is a finished study of ``--job`` in the MLflow store ``URI`` (default: ``--uri``,
else the job's ``tracking.uri``). Its configurations that trained the full ``train.epochs`` give a hypervolume
(the job's ``search.objectives``) against the table's fixed reference point, and a regret ``1 - HV / HV*`` against the
table's true front, the figure ``benchmarks/replay.py`` reports per seed. With ``--replay`` (a replay's
``--json``, same table, workers and budget) each live study is shown beside the replay's distribution of the same
method: its median [IQR] over seeds and the share of seeds with a lower regret than the live study. A live
study trains new configurations, not the table's: its regret can be below 0 when it finds a better front.

    python benchmarks/live_regret.py --table benchmarks/results/fashion_curves.csv --job jobs/fashion_mnist.yaml \\
        --live random+moasha STUDY_A --live random STUDY_B --replay benchmarks/results/replay_fashion_w2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def live_row(uri: str, job, study: str, reference: dict[str, float], hv_star: float) -> dict:
    """What one live study trained to the full budget, and its hypervolume regret against the table."""
    from mlflow import MlflowClient

    from attnsearch.pareto import hypervolume, load_runs, select_study

    chosen = select_study(MlflowClient(uri), job.experiment, study)
    runs = load_runs(job.experiment, uri, parent_run_id=chosen.parent_run_id)
    full = runs[(runs["state"] == "completed") & (runs["budget"] == job.max_t)]
    objectives = dict(job.search.objectives)
    hv = hypervolume(full[list(objectives)], objectives, reference) if len(full) else 0.0
    return {"study": chosen.study, "trials": len(runs), "full_budget": len(full), "hypervolume": hv,
            "regret": 1 - hv / hv_star, "epochs": int(runs["budget"].fillna(0).sum())}


def main(argv: list[str] | None = None) -> int:
    import _replay
    from replay import _quartiles, load_table

    from attnsearch.config import load_job
    from attnsearch.contract import ConfigError, InputError
    from attnsearch.space import load_space

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, action="append", help="the recorded table (as replay.py takes it)")
    p.add_argument("--job", required=True, help="the job the live studies ran (its objectives and epochs)")
    p.add_argument("--table-job", help="the job the table was recorded from (default: --job)")
    p.add_argument("--uri", help="the live studies' MLflow store (default: the job's tracking.uri)")
    p.add_argument("--live", nargs="+", action="append", required=True, metavar="METHOD STUDY [URI]",
                   help="a replay method name, a study id (or latest) and, when not --uri's, its MLflow store")
    p.add_argument("--replay", help="a replay's --json over the same table, workers and budget")
    p.add_argument("--out", help="write the markdown report here")
    args = p.parse_args(argv)
    try:
        job = load_job(args.job)
        table_job = load_job(args.table_job) if args.table_job else job
        table = load_table(args.table, table_job, load_space(table_job))
        bad = [live for live in args.live if len(live) not in (2, 3)]
        if bad:
            raise ConfigError(f"--live takes METHOD STUDY [URI], got {bad[0]}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    objectives = dict(job.search.objectives)
    reference = _replay.table_reference(table, objectives)
    hv_star = _replay.true_hypervolume(table, objectives, reference)
    replayed: dict[str, list[float]] = {}
    if args.replay:
        data = json.loads(Path(args.replay).read_text())
        for run in data["runs"]:
            replayed.setdefault(run["method"], []).append(1 - run["hv"][-1] / data["meta"]["true_hypervolume"])
    lines = [f"`python benchmarks/live_regret.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"Table: {len(table)} configurations; reference point {reference}; true-front hypervolume "
             f"{hv_star:.6g}. Regret in % of it.", "",
             "| method | live study | trials | full-budget | epochs trained | live regret | replay regret, median "
             "[IQR] | replay seeds below the live regret |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method, study, *uri in args.live:
        row = live_row(uri[0] if uri else args.uri or job.tracking.uri, job, study, reference, hv_star)
        seeds = replayed.get(method, [])
        if seeds:
            q2, q1, q3 = _quartiles([100 * r for r in seeds])
            dist = f"{q2:.2f} [{q1:.2f}, {q3:.2f}]"
            below = f"{sum(r < row['regret'] for r in seeds)}/{len(seeds)}"
        else:
            dist = below = "-"
        lines.append(f"| {method} | {row['study']} | {row['trials']} | {row['full_budget']} | {row['epochs']} | "
                     f"{100 * row['regret']:.2f} | {dist} | {below} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
