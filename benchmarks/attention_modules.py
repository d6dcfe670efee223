"""Forward+backward cost of every attention module relative to the ResNet bottleneck it would sit in.

For each shape (B, C, H, W) this times one training step (forward, backward with a fixed random output grad) of
every registered module and of a torchvision Bottleneck(inplanes=C, planes=C/4) at the same shape, in train mode.
Timings are interleaved: every round times the block, then all modules in a shuffled order, then the block again;
a module's ratio for the round is its time over the mean of that round's two block times, and the table reports
the median over rounds (robust to other processes competing for the cores).

    python benchmarks/attention_modules.py --threads 2            # eager, CPU
    python benchmarks/attention_modules.py --threads 2 --compile  # also torch.compile'd (slow on CPU)
    python benchmarks/attention_modules.py --compile-modules      # compiled modules vs the eager block
    python benchmarks/attention_modules.py --device cuda --compile

Writes a markdown table to benchmarks/results/attention_modules.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from attnsearch.attention import ATTENTION_TYPES, build_attention, get_spec
from attnsearch.attention._ops import channel_gate, spatial_mean

DEFAULT_SHAPES = ("32x256x28x28", "32x64x56x56")


def variants(channels: int, only: list[str] | None = None) -> list[tuple[str, str, dict]]:
    """(label, type, knobs) for every registered module at its defaults, plus NAM's spatial branch."""
    out = []
    for name in ATTENTION_TYPES:
        if name == "none" or (only and name not in only):
            continue
        knobs: dict = {}
        label = name
        if name == "sa":
            groups = 64
            while channels % (2 * groups):
                groups //= 2
            if groups != 64:
                knobs["groups"] = groups
                label = f"sa (G={groups})"
        out.append((label, name, knobs))
        if name == "nam":
            out.append(("nam (spatial)", name, {"spatial": True}))
    return out


class GateFloor(nn.Module):
    """x * sigmoid(GAP(x)) with no parameters: the fewest full-size passes any gating module can make in eager
    PyTorch (forward: one pooling read, one multiply; backward: one batched dot product, one multiply, one
    in-place add). Every module is at least this expensive, so its ratio bounds what the target can ask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_gate(x, spatial_mean(x).sigmoid())


def make_step(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, sync: Callable[[], None]
) -> Callable[[], float]:
    def step() -> float:
        module.zero_grad(set_to_none=True)
        x.grad = None
        sync()
        t0 = time.perf_counter()
        module(x).backward(grad)
        sync()
        return time.perf_counter() - t0

    return step


def bench_shape(shape: tuple[int, int, int, int], args: argparse.Namespace, mode: str) -> list[dict]:
    """mode: "eager" (all eager), "compiled" (block and modules compiled), "modules compiled" (eager block)."""
    b, c, h, w = shape
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)

    def prep(m: nn.Module, compiled: bool = mode != "eager") -> nn.Module:
        m = m.to(device).train()
        return torch.compile(m, dynamic=False) if compiled else m  # see train.py: dynamic shapes break 3 modules

    block = prep(Bottleneck(c, c // 4), compiled=mode == "compiled")
    entries = [{"label": "floor: x * sigmoid(GAP(x))", "params": 0,
                "step": make_step(prep(GateFloor()), x, grad, sync), "times": [], "ratios": []}]
    for label, name, knobs in variants(c, args.modules):
        size = (h, w) if get_spec(name).uses_spatial_size else None
        m = build_attention(name, c, spatial_size=size, **knobs)
        entries.append({"label": label, "params": sum(p.numel() for p in m.parameters()),
                        "step": make_step(prep(m), x, grad, sync), "times": [], "ratios": []})
    block_step = make_step(block, x, grad, sync)
    for _ in range(args.warmup):  # includes compilation when compiled
        block_step()
        for e in entries:
            e["step"]()
    block_times = []
    rng = random.Random(0)
    for _ in range(args.repeats):
        t_start = block_step()
        order = list(entries)
        rng.shuffle(order)
        for e in order:
            e["times"].append(e["step"]())
        t_end = block_step()
        block_times += [t_start, t_end]
        for e in order:
            e["ratios"].append(e["times"][-1] / ((t_start + t_end) / 2))
    block_ms = statistics.median(block_times) * 1e3
    rows = [{"label": "Bottleneck block (reference)", "params": sum(p.numel() for p in block.parameters()),
             "ms": block_ms, "ratio": 1.0, "iqr": (1.0, 1.0)}]
    for e in entries:
        q = statistics.quantiles(e["ratios"], n=4) if len(e["ratios"]) > 1 else [e["ratios"][0]] * 3
        rows.append({"label": e["label"], "params": e["params"], "ms": statistics.median(e["times"]) * 1e3,
                     "ratio": statistics.median(e["ratios"]), "iqr": (q[0], q[2])})
    return rows


def table(rows_by_key: dict[tuple[str, str], list[dict]], limit: float) -> str:
    lines = []
    for (shape, mode), rows in rows_by_key.items():
        lines.append(f"\n### {shape}, {mode}\n")
        lines.append("| module | params | fwd+bwd ms (median) | / block (median) | IQR of ratio | within target |")
        lines.append("|---|---:|---:|---:|---|:---:|")
        for r in rows:
            ref = r["label"].startswith(("Bottleneck", "floor"))
            ok = "" if ref else ("yes" if r["ratio"] <= limit else "**no**")
            lines.append(f"| {r['label']} | {r['params']:,} | {r['ms']:.1f} | {100 * r['ratio']:.1f} % | "
                         f"{100 * r['iqr'][0]:.1f}-{100 * r['iqr'][1]:.1f} % | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="BxCxHxW")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modules", nargs="+", default=None, help="subset of registered types (default: all)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd modules and block")
    ap.add_argument("--compile-modules", action="store_true",
                    help="also time torch.compile'd modules against the eager block (train.compile: attention)")
    ap.add_argument("--limit", type=float, default=0.15, help="target: module time / block time")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_modules.md"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[tuple[str, str], list[dict]] = {}
    modes = ["eager"] + (["compiled"] if args.compile else []) + (["modules compiled"] if args.compile_modules else [])
    for shape_s in args.shapes:
        shape = tuple(int(v) for v in shape_s.lower().split("x"))
        for mode in modes:
            results[(shape_s, mode)] = bench_shape(shape, args, mode)
            print(table({(shape_s, mode): results[(shape_s, mode)]}, args.limit), flush=True)
    load_after = os.getloadavg()
    header = [
        "# Attention modules: forward+backward time relative to a ResNet Bottleneck",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M}; torch {torch.__version__}; "
        f"device {args.device}; threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs",
        f"Load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; "
        f"wall {time.perf_counter() - started:.0f} s; {args.repeats} interleaved rounds, {args.warmup} warm-up",
        "",
        "Block = torchvision Bottleneck(inplanes=C, planes=C/4) in train mode; every module at its defaults "
        "(SA uses the largest G <= 64 with C % 2G == 0). Ratio = module time / mean of the block times "
        f"measured just before and after it in the same round; target <= {100 * args.limit:.0f} %. "
        "The floor row is a parameter-free x * sigmoid(GAP(x)) gate: the cheapest gating module eager PyTorch "
        "can run (5 full-size passes), a lower bound for every module.",
    ]
    text = "\n".join(header) + "\n" + table(results, args.limit) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
