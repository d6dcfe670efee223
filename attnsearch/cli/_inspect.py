"""The commands that look at models without training them: ``modules`` (the attention zoo), ``sites`` (a
backbone's insertion sites) and ``flops`` (counts, and with ``--latency`` a measurement on this machine)."""

from __future__ import annotations

import argparse

from .._table import format_table
from ..contract import UsageError
from ._common import add_job_argument, load_checked_job, user_argument


def cmd_modules(args) -> int:
    from ..attention import ATTENTION_TYPES

    for flag, value in (("--channels", args.channels), ("--size", args.size)):
        if value < 1:
            raise UsageError(f"modules: {flag} must be a positive integer, got {value}; e.g. --channels 256 --size 14")
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
    from ..models import format_sites, list_sites

    with user_argument("sites"):
        sites = list_sites(args.backbone, input_size=args.input_size, width_mult=args.width_mult)
    print(format_sites(sites))
    return 0


def cmd_flops(args) -> int:
    from .._yaml import parse_yaml
    from ..data import dataset_info
    from ..flops import count
    from ..models import build_model

    if args.input_size is not None and args.input_size < 1:
        raise UsageError(f"flops: --input-size must be a positive integer (pixels per side), got {args.input_size}; "
                         "e.g. --input-size 224, or leave it out for the job's (else 224)")
    attention = parse_yaml(args.attention, "--attention") if args.attention else None
    if args.job:
        job = load_checked_job(args)
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
    with user_argument("flops"):
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

    from ..latency import amp_dtype, resolve_device, use_channels_last

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
    batch = args.batch_size or job.data.eval_batch_size or job.data.batch_size if job else args.batch_size or 32
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

    from ..latency import DeviceClaim, measure

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


def add_modules(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("modules", help="list the attention modules, their knobs and parameter counts")
    sp.add_argument("--channels", type=int, default=256, help="channel count for the params column")
    sp.add_argument("--size", type=int, default=14, help="feature-map size for modules that need one")
    sp.set_defaults(func=cmd_modules)


def add_sites(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("sites", help="list a backbone's insertion sites with channels and feature-map sizes")
    sp.add_argument("backbone")
    sp.add_argument("--input-size", type=int, default=224)
    sp.add_argument("--width-mult", type=float, default=1.0)
    sp.set_defaults(func=cmd_sites)


def add_flops(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("flops", help="count MACs, FLOPs and params of a job's backbone or of --backbone")
    add_job_argument(sp, optional=True)
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
