"""The ``attnsearch`` command.

Exit status: 0 on success, 2 for bad input (``attnsearch.contract.InputError``: a message names the file, the key
and the fix; nothing is started), 1 for a failure while running.

Each command imports the layers it needs when it runs (the one place in the package with function-level imports
of its own modules), so that ``attnsearch --help`` or ``attnsearch status`` does not pay for torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from ._table import format_table
from .contract import ConfigError, InputError, UsageError

if TYPE_CHECKING:
    from .config import Job


def _load(args) -> "Job":
    """The command's job file, validated with its search space."""
    from .config import load_job
    from .space import load_space

    job = load_job(args.job, overrides=args.set or ())
    load_space(job)
    return job


@contextlib.contextmanager
def _argument(what: str) -> Iterator[None]:
    """A library call on the user's arguments: its ``ValueError`` (the zoo's, the backbones', the Pareto tools'
    way of naming a bad argument) is bad input here, not a failure."""
    try:
        yield
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def cmd_run(args) -> int:
    from .search import run_study

    job = _load(args)
    text = Path(args.job).read_text()
    outcome = run_study(job, resume=args.resume if args.resume is not None else False, job_text=text)
    print(outcome.progress.line())
    states = list(outcome.progress.states.values())
    if states and all(state == "failed" for state in states):
        print(f"attnsearch run: every trial failed ({len(states)} of {len(states)}); the reasons are in MLflow "
              f"(tag attnsearch.reason) and in the trial folders under {outcome.experiment_path}", file=sys.stderr)
        return 1
    if args.no_pareto:
        return 0
    from . import pareto

    experiment = job.tracking.experiment or job.name
    try:
        front, hv = pareto.analyze(
            job.tracking.uri, experiment, parent_run_id=outcome.parent_run_id,
            objectives=dict(job.search.objectives), budget="full",
        )
    except Exception as exc:  # analysis must never lose a finished study
        print(f"Pareto analysis skipped: {exc}", file=sys.stderr)
        return 0
    print(f"\nPareto front ({len(front)} trials, hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    print(f"\nMLflow: experiment {experiment!r} at {job.tracking.uri}; parent run {outcome.parent_run_id}")
    return 0


def cmd_modules(args) -> int:
    from .attention import ATTENTION_TYPES

    rows = [("name", "slot", f"params@C={args.channels}", "knobs", "what it computes")]
    for name, spec in ATTENTION_TYPES.items():
        try:
            spatial = (args.size, args.size) if spec.needs_spatial_size(spec.resolve({})) else None
            params = str(spec.count_params(args.channels, spatial))
        except ValueError as exc:
            params = f"n/a ({exc})"
        knobs = ", ".join(k.describe() for k in spec.knobs.values()) or "-"
        rows.append((name, spec.slot, params, knobs, spec.summary))
    print(format_table(rows[0], rows[1:]))
    return 0


def cmd_sites(args) -> int:
    from .models import format_sites, list_sites

    with _argument("sites"):
        sites = list_sites(args.backbone, input_size=args.input_size, width_mult=args.width_mult)
    print(format_sites(sites))
    return 0


def cmd_flops(args) -> int:
    from .config import parse_yaml
    from .data import dataset_info
    from .flops import count
    from .models import build_model

    attention = parse_yaml(args.attention, "--attention") if args.attention else None
    if args.job:
        job = _load(args)
        info = dataset_info(job.data)
        backbone, width = job.backbone.name, job.backbone.width_mult
        num_classes = job.backbone.num_classes or info.num_classes
        size = args.input_size or info.image_size
    else:
        if not args.backbone:
            raise UsageError("flops: give a JOB file or --backbone NAME (with --attention '{type: se}')")
        backbone, width, num_classes = args.backbone, args.width_mult, args.num_classes
        size = args.input_size or 224
    if attention is not None and not isinstance(attention, dict):
        raise UsageError("--attention must be a YAML mapping, e.g. '{type: se, reduction: 8, stages: [3, 4]}'")
    with _argument("flops"):
        model = build_model(backbone, num_classes=num_classes, attention=attention, input_size=size,
                            width_mult=width)
    c = count(model, input_size=(1, 3, size, size))
    print(f"{backbone} at {size}x{size}, attention={attention or 'none'}")
    for key in ("macs", "flops", "params", "attn_macs", "attn_flops", "attn_params"):
        if key in c:
            print(f"  {key:12s} {c[key]:>16,}")
    if c.get("sites"):
        rows = [("site", "type", "flops", "params")]
        rows += [(name, s.get("type", ""), f"{s['flops']:,}", f"{s['params']:,}") for name, s in c["sites"].items()]
        print(format_table(rows[0], rows[1:]))
    return 0


def _experiment_and_uri(target: str, args, overrides) -> tuple[str, str, "Job | None"]:
    from .config import load_job
    from .uris import resolve_tracking_uri

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        job = load_job(target, overrides=overrides or ())
        return job.tracking.experiment or job.name, args.tracking_uri or job.tracking.uri, job
    with _argument("--tracking-uri"):
        return target, resolve_tracking_uri(args.tracking_uri or "sqlite:///mlflow.db"), None


def _objectives(text: str | None, job) -> dict[str, str]:
    if not text:
        return dict(job.search.objectives) if job else {"val_acc": "max", "flops": "min"}
    out = {}
    for part in text.split(","):
        metric, _, mode = part.partition(":")
        if mode not in ("max", "min") or not metric:
            raise UsageError(f"--objectives: {part!r} must look like metric:max or metric:min")
        out[metric.strip()] = mode
    return out


def cmd_pareto(args) -> int:
    from . import pareto

    experiment, uri, job = _experiment_and_uri(args.target, args, args.set)
    with _argument(args.target):
        front, hv = pareto.analyze(
            uri, experiment, objectives=_objectives(args.objectives, job), budget=args.budget,
            out=args.out, plot=args.plot,
        )
    print(f"Pareto front of {experiment!r} ({len(front)} trials, budget={args.budget}, hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_sync(args) -> int:
    from .search import existing_studies, study_path
    from .tracking.sync import sync_study

    job = _load(args)
    studies = [args.study] if args.study else existing_studies(job)
    if not studies:
        raise ConfigError(f"sync: job {job.name!r} has no study under {job.ray.storage_path}")
    for study_id in studies:
        counts = sync_study(study_path(job, study_id), job.tracking.uri, job.tracking.experiment or job.name,
                            study_id, max_t=job.train.epochs)
        print(f"{study_id}: {counts}")
    return 0


def cmd_ui(args) -> int:
    import subprocess

    from .tracking import ui_command

    job = _load(args)
    command = ui_command(job.tracking.uri, host=args.host, port=args.port)
    print("running:", " ".join(command))
    return subprocess.call(command)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnsearch", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    def job_arg(sp, optional=False):
        if optional:
            sp.add_argument("job", nargs="?", help="job YAML file")
        else:
            sp.add_argument("job", help="job YAML file, e.g. jobs/quickstart.yaml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a job key, e.g. --set train.epochs=3 (repeatable)")

    sp = sub.add_parser("run", help="run (or --resume) the study a job file describes")
    job_arg(sp)
    sp.add_argument("--resume", nargs="?", const="latest", default=None, metavar="STUDY",
                    help="continue the newest (or the named) interrupted study of this job")
    sp.add_argument("--no-pareto", action="store_true", help="skip the Pareto analysis at the end")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("modules", help="list the attention modules, their knobs and parameter counts")
    sp.add_argument("--channels", type=int, default=256, help="channel count for the params column")
    sp.add_argument("--size", type=int, default=14, help="feature-map size for modules that need one")
    sp.set_defaults(func=cmd_modules)

    sp = sub.add_parser("sites", help="list a backbone's insertion sites with channels and feature-map sizes")
    sp.add_argument("backbone")
    sp.add_argument("--input-size", type=int, default=224)
    sp.add_argument("--width-mult", type=float, default=1.0)
    sp.set_defaults(func=cmd_sites)

    sp = sub.add_parser("flops", help="count MACs, FLOPs and params of a job's backbone or of --backbone")
    job_arg(sp, optional=True)
    sp.add_argument("--backbone")
    sp.add_argument("--attention", help="YAML mapping, e.g. '{type: sa, groups: 16, stages: [2, 3]}'")
    sp.add_argument("--input-size", type=int)
    sp.add_argument("--width-mult", type=float, default=1.0)
    sp.add_argument("--num-classes", type=int, default=1000)
    sp.set_defaults(func=cmd_flops)

    sp = sub.add_parser("pareto", help="the Pareto front of a job's (or an MLflow experiment's) trials")
    sp.add_argument("target", help="job YAML file or MLflow experiment name")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE")
    sp.add_argument("--objectives", help="e.g. val_acc:max,flops:min (default: the job's)")
    sp.add_argument("--budget", choices=("full", "any"), default="full")
    sp.add_argument("--out", help="front.csv or front.parquet")
    sp.add_argument("--plot", help="front.png")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the job's, or sqlite:///mlflow.db)")
    sp.set_defaults(func=cmd_pareto)

    sp = sub.add_parser("sync", help="write to MLflow whatever the Ray experiment directory has and MLflow lacks")
    job_arg(sp)
    sp.add_argument("--study", help="one study id (default: every study of the job)")
    sp.set_defaults(func=cmd_sync)

    sp = sub.add_parser("ui", help="start the MLflow UI on the job's tracking store (127.0.0.1 by default)")
    job_arg(sp)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.set_defaults(func=cmd_ui)

    from .cluster import add_cluster_commands

    add_cluster_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"attnsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with: attnsearch run JOB --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `attnsearch sites resnet50 | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
