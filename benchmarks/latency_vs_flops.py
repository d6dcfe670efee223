"""FLOPs against measured latency and throughput, per attention type at its official slot.

For each backbone (ResNet-50 and MobileNetV2 at 224x224 by default) and every registered attention type at its
official slot in every stage (Shuffle Attention with the largest G <= 64 that fits every site, since
MobileNetV2's channels refuse G=64), this counts FLOPs with ``attnsearch.flops.count`` and measures, with
``attnsearch.latency.measure`` (the code every trial runs), latency at batch 1 and throughput at a batch
(default 32) on the current device, in eval mode, in the precision and memory format a trial would train in
(``--amp``/``--channels-last``, auto: bf16 and channels_last on CUDA, float32 on CPU).

Each round measures every model once, in a shuffled order; a figure is the median over rounds of the per-round
medians (robust to drift and to other processes). Then the attention types (without ``none``, the reference
row) are ranked by FLOPs, by latency and by time per image at the batch, with Spearman's rho between the FLOPs
ranks and each timing's ranks: rho near 1 means FLOPs order the modules as the device does.

    python benchmarks/latency_vs_flops.py                                   # the current device (CUDA if any)
    python benchmarks/latency_vs_flops.py --device cpu --threads 2 --models resnet50:224 mobilenet_v2:160

Writes a markdown table to benchmarks/results/latency_vs_flops_<device>.md (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from attnsearch.attention import ATTENTION_TYPES
from attnsearch.flops import count
from attnsearch.latency import amp_dtype, measure, resolve_device, use_channels_last
from attnsearch.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("resnet50:224", "mobilenet_v2:224")


def parse_model(text: str) -> tuple[str, int]:
    backbone, _, size = text.partition(":")
    if not backbone or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected BACKBONE:SIZE, e.g. resnet50:224")
    return backbone, int(size)


def build_variant(backbone: str, size: int, kind: str) -> tuple[torch.nn.Module | None, str, str | None]:
    """(model, knobs label, None) for ``kind`` at its official slot in every stage, or (None, "", why not)."""
    if kind == "none":
        return build_model(backbone, 1000, attention=None, input_size=size), "", None
    tries = [{"groups": g} for g in (64, 32, 16, 8, 4, 2, 1)] if kind == "sa" else [{}]
    error = ""
    for knobs in tries:
        try:
            model = build_model(backbone, 1000, attention={"type": kind, "position": "default", **knobs},
                                input_size=size)
        except ValueError as exc:
            error = str(exc)
            continue
        return model, " ".join(f"{k}={v}" for k, v in knobs.items()), None
    return None, "", error


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1 (smallest), ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (NaN for fewer than 2 or constant values)."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=False))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa and sb else math.nan


def bench_backbone(backbone: str, size: int, args: argparse.Namespace, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool) -> list[dict]:
    rows = []
    for kind in ATTENTION_TYPES:
        if args.types and kind not in args.types and kind != "none":
            continue
        model, knobs, error = build_variant(backbone, size, kind)
        row = {"type": kind, "knobs": knobs, "error": error, "latency": [], "per_image": []}
        if model is not None:
            c = count(model, input_size=(1, 3, size, size))
            row.update(flops=c["flops"], macs=c["macs"], params=c["params"])
            model = model.to(device).eval()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            row["model"] = model
        rows.append(row)
    measured = [r for r in rows if "model" in r]
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(measured)
        for row in measured:
            cost = measure(row["model"], size, batch_size=args.batch_size, dtype=dtype, channels_last=channels_last,
                           runs=args.runs, warmup=args.warmup)
            row["latency"].append(cost["latency_ms"])
            row["per_image"].append(1e3 / cost["throughput"])  # ms per image at the batch
    for row in rows:
        row.pop("model", None)
        if row["latency"]:
            row["latency_ms"] = statistics.median(row["latency"])
            row["throughput"] = 1e3 / statistics.median(row["per_image"])
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _pct(value: float, base: float | None) -> str:
    return "" if base is None or not base else f"{100 * (value / base - 1):+.1f} %"


def table(backbone: str, size: int, rows: list[dict], batch: int) -> tuple[str, dict[str, float]]:
    """The markdown table of one backbone and its rank correlations."""
    base = next((r for r in rows if r["type"] == "none" and "flops" in r), None)
    ranked = [r for r in rows if r["type"] != "none" and "latency_ms" in r]
    flops_rank = dict(zip((r["type"] for r in ranked), average_ranks([r["flops"] for r in ranked]), strict=False))
    lat_rank = dict(zip((r["type"] for r in ranked), average_ranks([r["latency_ms"] for r in ranked]), strict=False))
    thr_rank = dict(zip((r["type"] for r in ranked), average_ranks([-r["throughput"] for r in ranked]), strict=False))
    rho = {
        "latency": spearman([r["flops"] for r in ranked], [r["latency_ms"] for r in ranked]),
        "throughput": spearman([r["flops"] for r in ranked], [-r["throughput"] for r in ranked]),
    }
    lines = [
        f"### {backbone} at {size}x{size}",
        "",
        (f"| type | knobs | MFLOPs | FLOPs vs none | latency ms (batch 1) | latency vs none | images/s (batch {batch}) "
         "| images/s vs none | FLOPs rank | latency rank | throughput rank |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "latency_ms" not in r:
            lines.append(f"| {r['type']} | n/a: {r['error'][:120]} | | | | | | | | | |")
            continue
        ref = base if base is not None and r is not base else None
        lines.append(
            f"| {r['type']} | {r['knobs']} | {r['flops'] / 1e6:,.1f} | {_pct(r['flops'], ref and ref['flops'])} "
            f"| {r['latency_ms']:.3f} | {_pct(r['latency_ms'], ref and ref.get('latency_ms'))} "
            f"| {r['throughput']:.1f} | {_pct(r['throughput'], ref and ref.get('throughput'))} "
            f"| {_rank(flops_rank, r)} | {_rank(lat_rank, r)} | {_rank(thr_rank, r)} |"
        )
    lines += [
        "",
        (f"Spearman's rho over the {len(ranked)} attention types, FLOPs rank against latency rank (batch 1): "
         f"**{rho['latency']:.2f}**; against the throughput rank (batch {batch}, fewer images/s ranked higher): "
         f"**{rho['throughput']:.2f}**."),
        "",
    ]
    return "\n".join(lines), rho


def _rank(ranks: dict[str, float], row: dict) -> str:
    rank = ranks.get(row["type"])
    return "" if rank is None else f"{rank:g}"


def describe(device: torch.device, dtype: torch.dtype | None, channels_last: bool, args) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), {torch.get_num_threads()} thread(s)"
    precision = str(dtype).removeprefix("torch.") + " autocast" if dtype else "float32"
    return (f"{where}; torch {torch.__version__}; {precision}, {'channels_last' if channels_last else 'contiguous'}; "
            f"eval mode; each figure the median over {args.rounds} round(s) of the median of {args.runs} timed runs "
            f"after {args.warmup} warm-up runs; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", type=parse_model, default=[parse_model(m) for m in DEFAULT_MODELS],
                    metavar="BACKBONE:SIZE", help=f"default: {' '.join(DEFAULT_MODELS)}")
    ap.add_argument("--types", nargs="+", choices=sorted(ATTENTION_TYPES), help="a subset of the attention types")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--channels-last", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--batch-size", type=int, default=32, help="the throughput batch")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per figure and round (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    flag = {"auto": "auto", "true": True, "false": False}
    dtype = amp_dtype(device, flag[args.amp])
    channels_last = use_channels_last(device, flag[args.channels_last])
    out = args.out or ROOT / "benchmarks" / "results" / f"latency_vs_flops_{device.type}.md"

    parts = [
        "# FLOPs against measured latency and throughput, per attention type at its official slot",
        "",
        describe(device, dtype, channels_last, args),
        "",
        "`" + " ".join(["python benchmarks/latency_vs_flops.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
        "",
    ]
    results = {}
    for backbone, size in args.models:
        rows = bench_backbone(backbone, size, args, device, dtype, channels_last)
        text, _ = table(backbone, size, rows, args.batch_size)
        parts.append(text)
        results[f"{backbone}:{size}"] = rows
    report = "\n".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
