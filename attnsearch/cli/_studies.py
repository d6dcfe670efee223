"""The study commands: ``run`` (a study, then its Pareto front, models, importances and plots), ``sync`` (MLflow
and the Optuna record catch up with the Ray experiment directory) and ``retrain`` (a study's front and baseline with
several seeds)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract import ALL_STUDIES, LATEST, ConfigError, UsageError
from ..uris import redact_uri
from ._common import add_job_argument, add_resume_options, load_checked_job
from ._optuna import reconcile_optuna, record_importances

if TYPE_CHECKING:
    from ..config import Job


def cmd_run(args) -> int:
    from ..search import run_study

    job = load_checked_job(args)
    text = Path(args.job).read_text()
    outcome = run_study(job, resume=args.resume if args.resume is not None else False, job_text=text)
    print(outcome.progress.line())
    untrained = outcome.progress.nothing_trained()
    if untrained:  # nothing to analyse: a failure of the study, not of its analysis
        print(f"attnsearch run: {untrained}; the reasons are in MLflow (tag attnsearch.reason) and in the trial "
              f"folders under {redact_uri(outcome.experiment_path)}", file=sys.stderr)
        return 1
    if not args.no_pareto:
        _report_front(job, outcome)
    return _interrupted(args, outcome)


def _report_front(job: Job, outcome) -> None:
    """The study's own front (the objectives its parent run records, full budget), recorded and printed, then its
    models and importances; a failure here never fails the study."""
    from .. import pareto

    experiment = job.experiment
    try:
        front, hv = pareto.analyze(
            job.tracking.uri, experiment, parent_run_id=outcome.parent_run_id, budget="full", record=True,
            definition=dict(job.search.objectives),
        )
    except Exception as exc:  # noqa: BLE001 - analysis must never lose a finished study
        print(f"Pareto analysis skipped: {exc}", file=sys.stderr)
        return
    print(f"\nPareto front ({len(front)} trials, hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    _log_models(job, outcome.parent_run_id, outcome.experiment_path)
    record_importances(job, outcome.study_id, outcome.parent_run_id)
    print(f"\nMLflow: experiment {experiment!r} at {redact_uri(job.tracking.uri)}; parent run "
          f"{outcome.parent_run_id}")


def _interrupted(args, outcome) -> int:
    """0, or for a study interrupted (Ctrl-C) with trials unfinished, the way to continue it and exit status 130
    (the shell's for SIGINT): what is above is the answer so far."""
    if not outcome.progress.interrupted:
        return 0
    sets = [part for override in args.set or () for part in ("--set", override)]
    again = shlex.join(["attnsearch", "run", args.job, *sets, "--resume", outcome.study_id])
    print(f"\nstudy {outcome.study_id} was interrupted with {outcome.progress.unfinished} trial(s) unfinished; its "
          f"state is saved: continue it with\n  {again}", file=sys.stderr)
    return 130


def _log_models(job: Job, parent_run_id: str, experiment_path: str, prefix: str = "") -> None:
    """The models of the study's recorded front (``tracking.log_models``), after that front is recorded; a
    failure here never fails the study (``attnsearch sync JOB`` logs what is missing later)."""
    if job.tracking.log_models == "none":
        return
    from ..export import log_study_models

    try:
        print(prefix + log_study_models(job, parent_run_id, experiment_path).line())
    except Exception as exc:  # noqa: BLE001 - the study and its front are recorded either way
        print(f"{prefix}MLflow models not logged: {exc}; attnsearch sync JOB logs them later", file=sys.stderr)


def cmd_sync(args) -> int:
    from ..search import check_own_study, existing_studies, recorded_identity, study_path
    from ..tracking import dataset_inputs
    from ..tracking.sync import sync_study

    job = load_checked_job(args)
    known = existing_studies(job)
    if args.study in (None, ALL_STUDIES):
        studies = known
    elif args.study == LATEST:
        studies = known[-1:]
    elif args.study in known:
        studies = [args.study]
    else:
        check_own_study(job, args.study, "sync --study")  # another job's study is refused, naming both
        raise ConfigError(f"sync --study {args.study}: no study of that name under ray.storage_path="
                          f"{redact_uri(job.ray.storage_path)}; studies of job {job.name!r}: "
                          f"{', '.join(known) or 'none'}")
    if not studies:
        raise ConfigError(f"sync: job {job.name!r} has no study under {redact_uri(job.ray.storage_path)}")
    from .. import pareto

    experiment, objectives = job.experiment, dict(job.search.objectives)
    for study_id in studies:
        counts = sync_study(study_path(job, study_id), job.tracking.uri, experiment, study_id,
                            max_t=job.max_t, objectives=objectives, datasets=dataset_inputs(job.data),
                            identity=recorded_identity(job, study_id))
        print(f"{study_id}: {counts}")
        reconcile_optuna(job, study_id, prefix=f"{study_id}: ")
        try:  # the study's own front, as its end records it; nothing before a trial has completed
            recorded = pareto.record_study(job.tracking.uri, experiment, study_id, definition=objectives)
        except Exception as exc:  # noqa: BLE001 - the synced trials are in MLflow either way
            print(f"{study_id}: Pareto front not recorded: {exc}", file=sys.stderr)
            continue
        if recorded is None:
            print(f"{study_id}: no completed trial yet, no Pareto front recorded")
        else:
            front, hv = recorded
            print(f"{study_id}: Pareto front recorded ({len(front)} trials, hypervolume {hv:.6g})")
            _log_models(job, front.attrs["parent_run_id"], study_path(job, study_id), prefix=f"{study_id}: ")
            record_importances(job, study_id, front.attrs["parent_run_id"], prefix=f"{study_id}: ")
    return 0


def cmd_retrain(args) -> int:
    from ..pareto import export_front
    from ..search import format_retrain, retrain

    job = load_checked_job(args)
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"--out {args.out}: the suffix must be .csv, .parquet or .pq")
    runs = [r.strip() for r in (args.runs or "").split(",") if r.strip()]
    outcome = retrain(job, study=args.study, front=args.front or not runs, runs=runs, seeds=args.seeds,
                      epochs=args.epochs, job_text=Path(args.job).read_text())
    print(outcome.progress.line())
    table = outcome.table
    print(f"\nRe-evaluated front of study {outcome.study.study} (parent run {outcome.study.parent_run_id}): "
          f"{len(table)} configurations x seeds {outcome.seeds}, {outcome.epochs} epochs each; mean +- std of "
          "val_acc, the difference to the baseline's mean with a 95 % Welch t interval; front: on the front of "
          f"the means ({', '.join(f'{k}:{m}' for k, m in table.attrs['objectives'].items())})")
    print(format_retrain(table))
    if args.out:
        export_front(table, args.out)
        print(f"wrote {args.out}")
    experiment = job.experiment
    print(f"MLflow: experiment {experiment!r}, retrain parent run {outcome.parent_run_id} ({outcome.retrain_id})")
    if not (table["n"] > 0).any():
        print("attnsearch retrain: no run completed; the reasons are in MLflow (tag attnsearch.reason) and under "
              f"{outcome.experiment_path}", file=sys.stderr)
        return 1
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("run", help="run (or --resume) the study a job file describes")
    add_job_argument(sp)
    add_resume_options(sp, "continue the newest (or the named) interrupted study of this job")
    sp.set_defaults(func=cmd_run)


def add_sync(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("sync", help="write to MLflow whatever the Ray experiment directory has and MLflow lacks")
    add_job_argument(sp)
    sp.add_argument("--study", metavar=f"ID|{LATEST}|{ALL_STUDIES}", help="which studies (default: all of the job's)")
    sp.set_defaults(func=cmd_sync)


def add_retrain(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("retrain", help="retrain a study's front and its baseline with several seeds at the full "
                                        "budget: mean, std and the difference to the baseline with a 95 %% interval")
    add_job_argument(sp)
    sp.add_argument("--study", default=LATEST, metavar=f"ID|{LATEST}",
                    help="which study of the job's experiment (default: the newest)")
    sp.add_argument("--front", action="store_true",
                    help="retrain the study's front (the default without --runs; with --runs: both)")
    sp.add_argument("--runs", metavar="ID,...", help="child run ids of the study to retrain (comma-separated)")
    sp.add_argument("--seeds", type=int, default=3, help="runs per configuration (seeds train.seed+1..+N)")
    sp.add_argument("--epochs", type=int, help="epochs per run (default: the job's train.epochs)")
    sp.add_argument("--out", help="the table as retrain.csv or retrain.parquet")
    sp.set_defaults(func=cmd_retrain)
