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
from .contract import (
    EXPERIMENT_KIND_MODELS,
    TAG_EXPERIMENT_KIND,
    ConfigError,
    InputError,
    UsageError,
)

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
    try:  # the study's own front (the objectives its parent run records, full budget): the study's answer
        front, hv = pareto.analyze(
            job.tracking.uri, experiment, parent_run_id=outcome.parent_run_id, budget="full", record=True,
            definition=dict(job.search.objectives),
        )
    except Exception as exc:  # analysis must never lose a finished study
        print(f"Pareto analysis skipped: {exc}", file=sys.stderr)
        return 0
    print(f"\nPareto front ({len(front)} trials, hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    _log_models(job, outcome.parent_run_id, outcome.experiment_path)
    print(f"\nMLflow: experiment {experiment!r} at {job.tracking.uri}; parent run {outcome.parent_run_id}")
    return 0


def _log_models(job: "Job", parent_run_id: str, experiment_path: str, prefix: str = "") -> None:
    """The models of the study's recorded front (``tracking.log_models``), after that front is recorded; a
    failure here never fails the study (``attnsearch sync JOB`` logs what is missing later)."""
    if job.tracking.log_models == "none":
        return
    from .export import log_study_models

    try:
        print(prefix + log_study_models(job, parent_run_id, experiment_path).line())
    except Exception as exc:  # noqa: BLE001 - the study and its front are recorded either way
        print(f"{prefix}MLflow models not logged: {exc}; attnsearch sync JOB logs them later", file=sys.stderr)


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
        job = None
    if attention is not None and not isinstance(attention, dict):
        raise UsageError("--attention must be a YAML mapping, e.g. '{type: se, reduction: 8, stages: [3, 4]}'")
    timing = _latency_settings(args, job) if args.latency else None
    with _argument("flops"):
        model = build_model(backbone, num_classes=num_classes, attention=attention, input_size=size,
                            width_mult=width)
    c = count(model, input_size=(1, 3, size, size))
    print(f"{backbone} at {size}x{size}, attention={attention or 'none'}")
    for key in ("macs", "flops", "params", "attn_macs", "attn_flops", "attn_params"):
        if key in c:
            print(f"  {key:12s} {c[key]:>16,}")
    if timing is not None:
        _print_latency(model, size, **timing)
    if c.get("sites"):
        rows = [("site", "type", "flops", "params")]
        rows += [(name, s.get("type", ""), f"{s['flops']:,}", f"{s['params']:,}") for name, s in c["sites"].items()]
        print(format_table(rows[0], rows[1:]))
    return 0


def _latency_settings(args, job) -> dict:
    """``flops --latency``'s device, batch, precision and runs: the job's training settings when a JOB is given
    (as its trials measure), else ``--device``/``--amp``/``--channels-last`` (auto: bf16 and channels_last on
    CUDA, float32 on CPU). Checked before anything is built or measured."""
    import torch

    from .latency import amp_dtype, resolve_device, use_channels_last

    if args.runs < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("flops: --runs must be >= 1, --warmup >= 0 and --batch-size >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("flops: --threads must be >= 1")
    auto = {"auto": "auto", "true": True, "false": False}
    name = args.device or (job.train.device if job else "auto")
    what = f"--device {name}" if args.device else f"the job's train.device={name}"
    try:
        device = resolve_device(name)
    except RuntimeError:  # CUDA asked for on a machine without it, or no device of that name
        raise UsageError(f"flops --latency: {what} is not available on this machine; use --device cpu or "
                         "auto") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"flops --latency: {what} is not available on this machine; use --device cpu or auto")
    amp = job.train.amp if job and args.amp is None else auto[args.amp or "auto"]
    fmt = job.train.channels_last if job and args.channels_last is None else auto[args.channels_last or "auto"]
    if job:
        batch = args.batch_size or job.data.eval_batch_size or job.data.batch_size
    else:
        batch = args.batch_size or 32
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif job:  # a trial's threads: train.threads, else its resources.cpu share
        torch.set_num_threads(job.train.threads or max(1, int(job.resources.cpu)))
    return {"device": device, "batch": batch, "dtype": amp_dtype(device, amp),
            "channels_last": use_channels_last(device, fmt), "runs": args.runs, "warmup": args.warmup}


def _print_latency(model, size: int, *, device, batch: int, dtype, channels_last: bool, runs: int,
                   warmup: int) -> None:
    """``flops --latency``: the model measured on this machine as a trial measures it (``attnsearch.latency``)."""
    import torch

    from .latency import DeviceClaim, measure

    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with DeviceClaim(device) as claim:
        cost = measure(model, size, batch_size=batch, dtype=dtype, channels_last=channels_last, runs=runs,
                       warmup=warmup)
        others = claim.others()
    where = (f"{device.type} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else f"{device.type}, {torch.get_num_threads()} thread(s)")
    print(f"measured on {where}: {str(dtype).removeprefix('torch.') + ' autocast' if dtype else 'float32'}, "
          f"{'channels_last' if channels_last else 'contiguous'}, eval mode, median of {runs} runs after "
          f"{warmup} warm-up runs")
    print(f"  {'latency_ms':12s} {cost['latency_ms']:>16.3f}  (batch 1)")
    print(f"  {'throughput':12s} {cost['throughput']:>16.1f}  images/s (batch {batch})")
    if others:
        print(f"  note: {others} other attnsearch process(es) used this device meanwhile: not an idle device's "
              "figures")


def _experiment_and_uri(target: str, args, overrides) -> tuple[str, str, "Job | None"]:
    from .config import load_job
    from .uris import resolve_tracking_uri

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        job = load_job(target, overrides=overrides or ())
        return job.tracking.experiment or job.name, args.tracking_uri or job.tracking.uri, job
    with _argument("--tracking-uri"):
        return target, resolve_tracking_uri(args.tracking_uri or "sqlite:///mlflow.db"), None


def _objectives(text: str | None, job) -> dict[str, str] | None:
    """--objectives, else the job's; None (the study's own, from MLflow) for an experiment name alone."""
    if not text:
        return dict(job.search.objectives) if job else None
    out = {}
    for part in text.split(","):
        metric, _, mode = part.partition(":")
        if mode not in ("max", "min") or not metric:
            raise UsageError(f"--objectives: {part!r} must look like metric:max or metric:min")
        out[metric.strip()] = mode
    return out


def _existing_store(uri: str) -> None:
    """A query reads a store: a local SQLite file that is not there is a wrong path, not a store to create."""
    from .uris import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no MLflow store at {db}: run the study first, or name the store with --tracking-uri "
                         "(or the job file whose tracking.uri it is)")


def cmd_pareto(args) -> int:
    from . import pareto

    experiment, uri, job = _experiment_and_uri(args.target, args, args.set)
    _existing_store(uri)
    with _argument(args.target):
        front, hv = pareto.analyze(
            uri, experiment, args.study, objectives=_objectives(args.objectives, job), budget=args.budget,
            out=args.out, plot=args.plot, record=True if args.record else None,
            definition=dict(job.search.objectives) if job else None,
        )
    info = front.attrs
    which = (f"all studies ({', '.join(info.get('studies') or []) or 'none'})" if info["study"] == pareto.ALL_STUDIES
             else f"study {info['study']}")
    print(f"Pareto front of {experiment!r}, {which} ({len(front)} trials, budget={args.budget}, "
          f"hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    own = info["own"]
    own_text = f"{','.join(f'{k}:{m}' for k, m in own['objectives'].items())} at budget {own['budget']}"
    if info["recorded"]:
        names = "as the study's own front" if info["record_key"] is None else f"under key {info['record_key']}"
        print(f"recorded in MLflow {names} (parent run {info['parent_run_id']})")
    elif info["study"] == pareto.ALL_STUDIES:
        print("not recorded in MLflow: a comparison of several studies is never recorded")
    else:
        print(f"not recorded in MLflow: the study's own front is {own_text}; add --record to record this one "
              "under its own names")
    return 0


def cmd_sync(args) -> int:
    from .search import existing_studies, study_path
    from .tracking.sync import sync_study

    job = _load(args)
    known = existing_studies(job)
    if args.study in (None, "all"):
        studies = known
    elif args.study == "latest":
        studies = known[-1:]
    elif args.study in known:
        studies = [args.study]
    else:
        raise ConfigError(f"sync --study {args.study}: no study of that name under ray.storage_path="
                          f"{job.ray.storage_path}; studies of job {job.name!r}: {', '.join(known) or 'none'}")
    if not studies:
        raise ConfigError(f"sync: job {job.name!r} has no study under {job.ray.storage_path}")
    from . import pareto

    experiment, objectives = job.tracking.experiment or job.name, dict(job.search.objectives)
    for study_id in studies:
        counts = sync_study(study_path(job, study_id), job.tracking.uri, experiment, study_id,
                            max_t=job.train.epochs, objectives=objectives)
        print(f"{study_id}: {counts}")
        try:  # the study's own front, as its end records it; nothing before a trial has completed
            recorded = pareto.record_study(job.tracking.uri, experiment, study_id, definition=objectives)
        except Exception as exc:  # the synced trials are in MLflow either way
            print(f"{study_id}: Pareto front not recorded: {exc}", file=sys.stderr)
            continue
        if recorded is None:
            print(f"{study_id}: no completed trial yet, no Pareto front recorded")
        else:
            front, hv = recorded
            print(f"{study_id}: Pareto front recorded ({len(front)} trials, hypervolume {hv:.6g})")
            _log_models(job, front.attrs["parent_run_id"], study_path(job, study_id), prefix=f"{study_id}: ")
    return 0


def cmd_retrain(args) -> int:
    from .pareto import export_front
    from .retrain import format_retrain, retrain

    job = _load(args)
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
    experiment = job.tracking.experiment or job.name
    print(f"MLflow: experiment {experiment!r}, retrain parent run {outcome.parent_run_id} ({outcome.retrain_id})")
    if not (table["n"] > 0).any():
        print("attnsearch retrain: no run completed; the reasons are in MLflow (tag attnsearch.reason) and under "
              f"{outcome.experiment_path}", file=sys.stderr)
        return 1
    return 0


def cmd_ui(args) -> int:
    from mlflow import MlflowClient

    from .tracking import serve_ui, ui_command, ui_url

    job = _load(args)
    command = ui_command(job.tracking.uri, host=args.host, port=args.port)
    _existing_store(job.tracking.uri)
    experiment_id = None
    client = MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.tracking.experiment or job.name)
    if exp is not None:
        experiment_id = exp.experiment_id
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_MODELS:  # a store from before attnsearch tagged it
            client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_MODELS)
    url = ui_url(args.host, args.port, experiment_id, dict(job.search.objectives))
    print("running:", " ".join(command), flush=True)
    return serve_ui(command, url, host=args.host, port=args.port, open_browser=args.open)


def cmd_export(args) -> int:
    from .export import export_study

    job = _load(args)
    _existing_store(job.tracking.uri)
    formats = [f for f in (args.formats or "").split(",") if f]
    with _argument("--formats"):
        exported = export_study(job, args.out, run_id=args.run, front=args.front, study=args.study,
                                formats=formats)
    for model in exported:
        missing = "".join(f"; no {kind}: {why}" for kind, why in model.unavailable.items())
        print(f"{model.folder}: {', '.join(model.files)}{missing}")
    print(f"{len(exported)} model(s) exported to {args.out}")
    return 0


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
    sp.add_argument("--latency", action="store_true",
                    help="also measure latency_ms (batch 1) and throughput (images/s) on this machine, as a trial does")
    sp.add_argument("--device", help="with --latency: auto (CUDA if present), cpu, cuda, cuda:N (default: the job's "
                                     "train.device, else auto)")
    sp.add_argument("--batch-size", type=int, help="with --latency: the throughput batch (default: the job's "
                                                   "evaluation batch size, else 32)")
    sp.add_argument("--amp", choices=("auto", "true", "false"),
                    help="with --latency: autocast as in training (default: the job's train.amp, else auto)")
    sp.add_argument("--channels-last", choices=("auto", "true", "false"),
                    help="with --latency: memory format (default: the job's train.channels_last, else auto)")
    sp.add_argument("--runs", type=int, default=20, help="with --latency: timed runs per figure (median)")
    sp.add_argument("--warmup", type=int, default=5, help="with --latency: untimed runs first")
    sp.add_argument("--threads", type=int, help="with --latency: torch CPU threads (default: a JOB's trial's, "
                                                "train.threads or resources.cpu; else torch's)")
    sp.set_defaults(func=cmd_flops)

    sp = sub.add_parser("pareto", help="the Pareto front of a job's (or an MLflow experiment's) trials")
    sp.add_argument("target", help="job YAML file or MLflow experiment name")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE")
    sp.add_argument("--objectives", help="e.g. val_acc:max,flops:min (default: the job's; for an experiment name, the "
                         "study's own)")
    sp.add_argument("--budget", choices=("full", "any"), default="full")
    sp.add_argument("--study", default="latest", metavar="ID|latest|all",
                    help="which study: an id, the newest (default), or all of the experiment's at equal budget")
    sp.add_argument("--record", action="store_true",
                    help="record this front in MLflow even when it is not the study's own (its objectives at the "
                         "full budget, recorded anyway): under names keyed by its objectives and budget")
    sp.add_argument("--out", help="front.csv or front.parquet")
    sp.add_argument("--plot", help="front.png")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the job's, or sqlite:///mlflow.db)")
    sp.set_defaults(func=cmd_pareto)

    sp = sub.add_parser("sync", help="write to MLflow whatever the Ray experiment directory has and MLflow lacks")
    job_arg(sp)
    sp.add_argument("--study", metavar="ID|latest|all", help="which studies (default: all of the job's)")
    sp.set_defaults(func=cmd_sync)

    sp = sub.add_parser("retrain", help="retrain a study's front and its baseline with several seeds at the full "
                                        "budget: mean, std and the difference to the baseline with a 95 %% interval")
    job_arg(sp)
    sp.add_argument("--study", default="latest", metavar="ID|latest",
                    help="which study of the job's experiment (default: the newest)")
    sp.add_argument("--front", action="store_true",
                    help="retrain the study's front (the default without --runs; with --runs: both)")
    sp.add_argument("--runs", metavar="ID,...", help="child run ids of the study to retrain (comma-separated)")
    sp.add_argument("--seeds", type=int, default=3, help="runs per configuration (seeds train.seed+1..+N)")
    sp.add_argument("--epochs", type=int, help="epochs per run (default: the job's train.epochs)")
    sp.add_argument("--out", help="the table as retrain.csv or retrain.parquet")
    sp.set_defaults(func=cmd_retrain)

    sp = sub.add_parser("ui", help="start the MLflow UI on the job's tracking store (127.0.0.1 by default)")
    job_arg(sp)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--open", action="store_true", help="open the study's front in a browser once the UI answers")
    sp.set_defaults(func=cmd_ui)

    sp = sub.add_parser("export", help="write a study's front (or one trial) as model folders: weights, build "
                                       "spec, model card, torch.export/TorchScript forms")
    job_arg(sp)
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--front", action="store_true", help="the study's recorded Pareto front")
    which.add_argument("--run", metavar="RUN_ID", help="one trial: its MLflow child run id")
    sp.add_argument("--out", required=True, metavar="DIR", help="one folder per model is written under DIR")
    sp.add_argument("--study", metavar="ID|latest", help="with --front: which study (default: the newest)")
    sp.add_argument("--formats", default="pt2,torchscript",
                    help="compiled forms to try besides the weights: pt2 (torch.export), torchscript; '' for none")
    sp.set_defaults(func=cmd_export)

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
