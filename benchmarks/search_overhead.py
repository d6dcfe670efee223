"""What Ray Tune, Optuna, ASHA and MLflow add to a study's wall time.

Runs a job through ``attnsearch run``'s code path, then trains the very same trials (same configs, same number of
epochs each trial actually trained, same concurrency) in a bare PyTorch loop in a process pool, and reports
search wall time / bare wall time.

    python benchmarks/search_overhead.py jobs/quickstart.yaml [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from attnsearch.config import load_job
from attnsearch.search import run_study
from attnsearch.space import materialize
from attnsearch.train import fit


class _Stop(Exception):
    pass


def _bare_trial(args: tuple[dict, dict, int]) -> float:
    job_dict, config, epochs = args
    from attnsearch.config import Job
    from attnsearch.space import feasible

    job = Job.model_validate(job_dict)
    started = time.perf_counter()
    if feasible(job, config):
        return time.perf_counter() - started
    settings = materialize(job, config)
    settings.train.threads = settings.train.threads or max(1, int(job.resources.cpu))
    done = 0

    def report(metrics, state):
        nonlocal done
        done = metrics.get("epoch", 0)
        if done >= epochs:
            raise _Stop

    with contextlib.suppress(_Stop):
        fit(job, settings, report)
    return time.perf_counter() - started


def trials_of(experiment_path: str) -> list[tuple[dict, int]]:
    out = []
    for trial_dir in sorted(Path(experiment_path).glob("trial_*")):
        config = json.loads((trial_dir / "params.json").read_text())
        lines = (trial_dir / "result.json").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        out.append((config, int(last.get("epoch", 0))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default="jobs/quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    ratios = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            job = load_job(args.job, overrides=[
                *args.set, f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"ray.storage_path={tmp}/ray_results",
            ])
            started = time.perf_counter()
            outcome = run_study(job)
            search_s = time.perf_counter() - started
            trials = trials_of(outcome.experiment_path)
            job_dict = job.model_dump(mode="json")
            started = time.perf_counter()
            ctx = mp.get_context("spawn")
            with ctx.Pool(job.search.max_concurrent) as pool:
                pool.map(_bare_trial, [(job_dict, c, e) for c, e in trials], chunksize=1)
            bare_s = time.perf_counter() - started
        ratios.append(search_s / bare_s)
        print(f"search {search_s:.1f} s, bare loop {bare_s:.1f} s, ratio {search_s / bare_s:.3f} "
              f"({len(trials)} trials, {sum(e for _, e in trials)} epochs)", flush=True)
    print(f"median ratio over {len(ratios)} run(s): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
