"""``attnsearch prune``: a study's models channel-pruned at several ratios, fine-tuned, measured and logged, and
the front recomputed over the study's and the pruned models."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..contract import UsageError
from ._common import add_job_argument, existing_store, load_checked_job


def cmd_prune(args) -> int:
    from ..compress import format_pruned, parse_ratios, prune_study, pruned_table
    from ..prune import require_torch_pruning

    try:
        require_torch_pruning()
    except ImportError as exc:  # the `prune` extra is not installed: say how to get it, no traceback
        raise UsageError(str(exc)) from None
    ratios = parse_ratios(args.ratios)  # bad input before the job, torch or MLflow are loaded
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"--out {args.out}: the suffix must be .csv, .parquet or .pq")
    job = load_checked_job(args)
    existing_store(job.tracking.uri)
    runs = [r.strip() for r in (args.run or "").split(",") if r.strip()]
    outcome = prune_study(job, ratios=ratios, importance=args.importance, finetune_epochs=args.finetune_epochs,
                          front=args.front, runs=runs, study=args.study)
    print(f"\nPruned models of study {outcome.study} ({args.importance} importance, {args.finetune_epochs} "
          f"fine-tuning epoch(s) each):")
    print(format_pruned(outcome))
    if args.out:
        table = pruned_table(outcome)
        if Path(args.out).suffix.lower() == ".csv":
            table.to_csv(args.out, index=False)
        else:
            table.to_parquet(args.out, index=False)
        print(f"wrote {args.out}")
    experiment = job.tracking.experiment or job.name
    print(f"MLflow: experiment {experiment!r}, prune parent run {outcome.parent_run_id} ({outcome.prune_id}); "
          "export a pruned model with attnsearch export JOB --run RUN_ID")
    return 0


def add_prune(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("prune", help="channel-prune a study's models at several ratios (torch-pruning; NAM's "
                                      "scaling factors, BN scales, L1 or random importance), fine-tune, log, and "
                                      "recompute the front with them")
    add_job_argument(sp)
    which = sp.add_argument_group("models (one or both)")
    which.add_argument("--front", action="store_true", help="the study's recorded Pareto front")
    which.add_argument("--run", metavar="ID[,ID...]", help="child run ids of trained trials of the study")
    sp.add_argument("--study", metavar="ID|latest", help="which study of the job's experiment (default: the newest)")
    sp.add_argument("--ratios", default="0.25,0.5",
                    help="fractions of each dependency group's channels to remove, each in (0, 1) (default 0.25,0.5)")
    sp.add_argument("--importance", choices=("nam", "bn", "l1", "random"), default="nam",
                    help="nam: NAM's channel scaling factors where a NAM module gates, BN scales elsewhere; bn: the "
                         "backbone's BN scales (Network Slimming); l1: weight L1 norm; random (default nam)")
    sp.add_argument("--finetune-epochs", type=int, default=1, metavar="N",
                    help="fine-tuning epochs per pruned model, with the trial's own training settings (default 1)")
    sp.add_argument("--out", help="the table as prune.csv or prune.parquet")
    sp.set_defaults(func=cmd_prune)
