"""``make gpu-check`` and the CUDA paths it tests: a trial trained with AMP and channels_last, its latency measured
in the precision and memory format it trains in, and the DALI pipeline decoding on the GPU (``device="mixed"``).
Marked ``cuda``: skipped without a CUDA device, run on one by ``make gpu-check`` (with the GPU benchmarks)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _helpers import write_job

from attnsearch.config import load_job
from attnsearch.latency import amp_dtype, measure, use_channels_last
from attnsearch.models import build_model
from attnsearch.space import materialize
from attnsearch.train import fit

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_refuses_at_once_without_a_gpu(tmp_path):
    """Without nvidia-smi the target stops before it sets anything up, and says why."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    env = dict(os.environ, PATH=str(tmp_path))  # no nvidia-smi on this PATH; make itself by its full path
    out = subprocess.run([shutil.which("make"), "-C", str(ROOT), "gpu-check", f"VENV={tmp_path}/venv"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0 and "no NVIDIA GPU here" in out.stderr, out.stderr
    assert not (tmp_path / "venv").exists()  # refused before the setup


@pytest.mark.cuda
def test_a_trial_trains_on_cuda_with_amp_and_channels_last(tmp_path):
    path = write_job(tmp_path, "attention: {type: [se]}\n", data={"dataset": "fake", "image_size": 32,
                                                                  "batch_size": 64, "loader": "torch"},
                     train={"epochs": 2, "device": "cuda", "amp": True, "channels_last": True})
    job = load_job(path)
    reports = []
    verdict = fit(job, materialize(job, {"attention": "se"}), lambda metrics, state: reports.append((metrics, state)))
    assert verdict == "completed", reports[-1][0]
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(math.isfinite(m["train_loss"]) and 0 <= m["val_acc"] <= 1 for m, _ in reports)
    assert all(m["latency_ms"] > 0 and m["throughput"] > 0 for m, _ in reports)
    # the checkpoint holds the CUDA-trained weights, loadable on the CPU
    state = reports[-1][1]
    assert state is not None


@pytest.mark.cuda
def test_latency_is_measured_in_the_trials_precision_and_memory_format():
    device = torch.device("cuda")
    dtype = amp_dtype(device, True)
    assert dtype in (torch.bfloat16, torch.float16)
    assert use_channels_last(device, "auto")
    model = build_model("resnet20", num_classes=10, input_size=32).to(device)
    fp32 = measure(model, 32, batch_size=64)
    mixed = measure(model, 32, batch_size=64, dtype=dtype, channels_last=True)
    assert fp32["latency_ms"] > 0 and mixed["latency_ms"] > 0 and mixed["throughput"] > 0


@pytest.mark.cuda
def test_dali_decodes_on_the_gpu(tmp_path):
    pytest.importorskip("nvidia.dali")
    from test_dali import folder_cfg, write_folder

    from attnsearch.data import build_datasets, build_loaders, loader_kind

    cfg = folder_cfg(write_folder(tmp_path), loader="auto")
    assert loader_kind(cfg, "cuda") == "dali"
    train_ds, val_ds, _ = build_datasets(cfg)
    train, val = build_loaders(cfg, train_ds, val_ds, device="cuda", channels_last=True)
    images, targets = next(iter(train))
    assert images.is_cuda and images.shape[1:] == (3, 32, 32) and len(targets) == len(images)
    assert images.is_contiguous(memory_format=torch.channels_last)
