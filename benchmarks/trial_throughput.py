"""Can a trial's input pipeline keep up with its training step? Images/s of the loaders per CPU core against the step.

Writes ImageNet-sized JPEGs (default 384 of 500x375 at about 110 KiB, ImageNet's mean file size; 1/f noise, so
they compress like photographs) into an ImageFolder tree, then measures, through ``attnsearch.data.build_loaders``
(the code a trial runs), the training loader of a ``folder`` dataset at ``--size`` (RandomResizedCrop + flip +
normalise) with each loader and CPU core count:

* ``torch``: torchvision's transforms in ``num_workers`` = cores DataLoader worker processes (PIL decoding);
* ``dali``: the DALI pipeline with cores CPU threads; on CUDA it decodes on the GPU (``device="mixed"``), on a CPU
  its CPU backend decodes (skipped, with a note, where DALI is not installed).

Each loader's batches are moved to the device as the trial moves them; a figure is the median over ``--rounds``
epochs of the images/s after the first ``--warmup-batches`` batches of the epoch (worker start-up and pipeline
construction excluded). Then the training step alone (``--model``, default MobileNetV2, forward + backward + SGD
step) on synthetic data already on the device: on CUDA at batch 256 with bf16 autocast (fp16 where the GPU has no
bf16) and channels_last, as a trial trains there; on a CPU at ``--step-batch`` (default 32) in float32 with
``--threads`` torch threads. Each loader row gets the ratio loader/step: >= 1 means the loader at that core count
keeps up with the step, and "cores for the step": how many cores at that per-core rate the step would need.

    python benchmarks/trial_throughput.py                              # the current device (CUDA if any)
    python benchmarks/trial_throughput.py --device cpu --cores 1 2 --threads 2

Writes a markdown table to benchmarks/results/trial_throughput_<device>.md (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attnsearch.config import DataConfig, TrainConfig
from attnsearch.data import build_datasets, build_loaders, dali_installed
from attnsearch.latency import amp_dtype, autocast, resolve_device, use_channels_last
from attnsearch.models import build_model
from attnsearch.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
GPU_TARGET = ("the DALI loader at 8 CPU cores keeps up with the MobileNetV2 training step on one GPU "
              "(batch 256, AMP, channels_last): ratio loader/step >= 1.0")


# --------------------------------------------------------------------------------------------------- the images


def _photo_like(rng: np.random.Generator, width: int, height: int, grain: float) -> Image.Image:
    """Octaves of smooth noise with amplitudes falling as 1/f (as in photographs), plus pixel grain (levels)."""
    base = torch.zeros(1, 3, height, width)
    for octave in range(1, 8):
        grid = (max(2, height >> (8 - octave)), max(2, width >> (8 - octave)))
        noise = torch.from_numpy(rng.standard_normal((1, 3, *grid)).astype(np.float32))
        base += 0.7 ** octave * F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    pixels = (base - base.mean()) / base.std() * 50 + 120
    pixels = pixels[0].permute(1, 2, 0).numpy() + grain * rng.standard_normal((height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _grain_for(width: int, height: int, kib: float, quality: int) -> float:
    """The grain that puts a probe image at about ``kib`` KiB (bisection; more grain, larger files)."""
    low, high = 0.0, 64.0
    for _ in range(10):
        mid = (low + high) / 2
        size = len(_jpeg(_photo_like(np.random.default_rng(1), width, height, mid), quality)) / 1024
        low, high = (mid, high) if size < kib else (low, mid)
    return (low + high) / 2


def write_images(root: Path, count: int, classes: int, width: int, height: int, kib: float,
                 quality: int = 90) -> float:
    """``count`` JPEGs in ``classes`` class folders under ``root``; returns their mean size in KiB."""
    grain = _grain_for(width, height, kib, quality)
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(count):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = _jpeg(_photo_like(rng, width, height, grain), quality)
        (folder / f"{i:06d}.jpg").write_bytes(data)
        sizes.append(len(data))
    return statistics.mean(sizes) / 1024


# --------------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(root: Path, kind: str, cores: int, args: argparse.Namespace, device: torch.device,
                channels_last: bool) -> float:
    """Images/s of the training loader of ``kind`` with ``cores`` CPU cores (median over rounds)."""
    # num_workers: torch's worker processes (one thread each) or DALI's CPU threads
    cfg = DataConfig(dataset="folder", root=str(root), image_size=args.size, batch_size=args.batch_size,
                     val_fraction=0.1, loader=kind, num_workers=cores)
    train_ds, val_ds, _ = build_datasets(cfg)
    train, _ = build_loaders(cfg, train_ds, val_ds, seed=0, pin_memory=device.type == "cuda", device=device,
                             channels_last=channels_last)
    if len(train) <= args.warmup_batches:
        raise SystemExit(f"{len(train)} batches per epoch leave none to time after --warmup-batches "
                         f"{args.warmup_batches}: write more --images or lower --batch-size")
    rates = []
    for epoch in range(args.rounds):
        train.generator.manual_seed(epoch)
        seen, started = 0, None
        for i, (images, targets) in enumerate(train):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if i + 1 == args.warmup_batches:
                _sync(device)
                started = time.perf_counter()
            elif i + 1 > args.warmup_batches:
                seen += targets.numel()
        _sync(device)
        if started is None:  # --warmup-batches 0
            raise SystemExit("--warmup-batches must be >= 1 (the clock starts after a batch)")
        rates.append(seen / (time.perf_counter() - started))
    del train  # stops torch's workers / DALI's threads before the next configuration
    return statistics.median(rates)


def step_rate(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None,
              channels_last: bool) -> float:
    """Images/s of the training step alone (forward, backward, SGD step) on device-resident synthetic data."""
    model = build_model(args.model, num_classes=1000, input_size=args.size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, TrainConfig(lr=0.01))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(args.step_batch, 3, args.size, args.size, generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (args.step_batch,), generator=g).to(device)

    def step() -> None:
        with autocast(device, dtype):
            loss = F.cross_entropy(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(args.step_warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return args.step_batch * args.steps / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------- report


def describe(device: torch.device, dtype: torch.dtype | None, channels_last: bool, args, kib: float) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores"
    else:
        where = f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), {os.cpu_count()} cores"
    precision = str(dtype).removeprefix("torch.") + " autocast" if dtype else "float32"
    return (f"{where}; torch {torch.__version__}; {args.images} JPEGs of {args.width}x{args.height}, "
            f"{kib:.0f} KiB on average, RandomResizedCrop({args.size}) + flip + normalise, batch {args.batch_size}; "
            f"loader figures the median over {args.rounds} epoch(s) after {args.warmup_batches} batch(es); step: "
            f"{args.model} at batch {args.step_batch}, {precision}, "
            f"{'channels_last' if channels_last else 'contiguous'}, {args.steps} steps after {args.step_warmup}, "
            f"{torch.get_num_threads()} torch thread(s); {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def table(rows: list[dict], step: float, args) -> str:
    lines = [
        f"Training step alone: **{step:,.1f} images/s** ({args.model}, batch {args.step_batch}).",
        "",
        "| loader | CPU cores | images/s | images/s per core | ratio loader/step | cores for the step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "rate" not in r:
            lines.append(f"| {r['loader']} | {r['cores']} | n/a: {r['note']} | | | |")
            continue
        per_core = r["rate"] / r["cores"]
        lines.append(f"| {r['loader']} | {r['cores']} | {r['rate']:,.1f} | {per_core:,.1f} | "
                     f"**{r['rate'] / step:.3f}** | {math.ceil(step / per_core)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--loaders", nargs="+", choices=("torch", "dali"), default=["torch", "dali"])
    ap.add_argument("--cores", nargs="+", type=int, help="CPU core counts per loader (default: 1 and min(8, all))")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--kib", type=float, default=110.0, help="target mean JPEG size")
    ap.add_argument("--data", type=Path, help="write the JPEGs here and keep them (default: a temporary folder)")
    ap.add_argument("--size", type=int, default=224, help="the crop side the model sees")
    ap.add_argument("--batch-size", type=int, default=64, help="loader batch")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per loader figure (median)")
    ap.add_argument("--warmup-batches", type=int, default=1)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--step-batch", type=int, help="default: 256 on CUDA, 32 on a CPU")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step-warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads of the step (default: torch's)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = amp_dtype(device, "auto")
    channels_last = use_channels_last(device, "auto")
    args.step_batch = args.step_batch or (256 if device.type == "cuda" else 32)
    cores = args.cores or sorted({1, min(8, os.cpu_count() or 1)})
    out = args.out or ROOT / "benchmarks" / "results" / f"trial_throughput_{device.type}.md"

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "jpegs"
        kib = write_images(root, args.images, args.classes, args.width, args.height, args.kib)
        rows = []
        for kind in args.loaders:
            for n in cores:
                row = {"loader": kind, "cores": n}
                if kind == "dali" and not dali_installed():
                    row["note"] = 'DALI is not installed (pip install "attnsearch[dali]")'
                else:
                    row["rate"] = loader_rate(root, kind, n, args, device, channels_last)
                rows.append(row)
    threads = torch.get_num_threads()
    step = step_rate(args, device, dtype, channels_last)
    torch.set_num_threads(threads)

    command = " ".join(["python benchmarks/trial_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    parts = [
        "# Trial throughput: the input pipeline against the training step",
        "",
        describe(device, dtype, channels_last, args, kib),
        "",
        f"`{command}`",
        "",
        table(rows, step, args),
        "",
    ]
    if device.type != "cuda":
        parts += [f"GPU figures: not measured yet (no GPU here). Target: {GPU_TARGET}.", ""]
    report = "\n".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"wrote {out}")
    return {"rows": rows, "step": step, "kib": kib}


if __name__ == "__main__":
    main()
