"""A pruned model's fine-tuning and measurement: the source trial's own training settings for N epochs (optimizer,
learning rate and schedule, weight decay, label smoothing, NAM's penalty p, precision and memory format), on the
study's data, in this process, through train's own loop (``attnsearch.train.TrainLoop``: the same step, the loss
summed on the device and read at its finiteness checks, not per step); then its validation accuracy, FLOPs,
parameters and latency as a trial reports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..config import Job
from ..latency import DeviceClaim, resolve_device
from ..space import TrialSettings, count_model
from ..train import TrainLoop, load_data, measure_cost

__all__ = ["finetune"]

EpochReport = Callable[[int, dict], None]  # (epoch, metrics) after pruning (epoch 0) and after every epoch


def finetune(model: nn.Module, job: Job, settings: TrialSettings, epochs: int, report: EpochReport) -> dict:
    """Evaluate ``model`` (epoch 0: as pruned), fine-tune it ``epochs`` epochs with ``settings.train``'s settings and
    the schedule spread over those epochs, evaluating after each; return the final metrics with the model's counts
    (``contract.STATIC_METRICS``) and measured ``latency_ms``/``throughput`` on the training device. The model
    stays on the CPU afterwards, in eval mode.

    Args:
        model: the pruned model (its weights are trained in place).
        job: the study's job (data, resources).
        settings: the source trial's settings (``attnsearch.space.materialize`` of its params).
        epochs: fine-tuning epochs; 0 evaluates only.
        report: called with (epoch, metrics) at epoch 0 and after every fine-tuning epoch.

    Raises:
        FloatingPointError: the fine-tuning diverged (the reason names the steps, as a trial's does).
    """
    # the schedule over the fine-tuning epochs, without warmup; eager, as a pruned model is fine-tuned once
    cfg = settings.train.model_copy(update={"epochs": max(epochs, 1), "warmup_epochs": 0, "compile": False})
    settings = dataclasses.replace(settings, train=cfg)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or max(1, int(job.resources.cpu)))
    device = resolve_device(cfg.device)
    train_ds, val_ds, info = load_data(job, settings.image_size)
    counts = count_model(model, info.image_size)
    loop = TrainLoop.build(job, settings, model, train_ds, val_ds, device)
    with DeviceClaim(device) as claim:
        counts.update(measure_cost(loop.model, job, cfg, device, info.image_size, claim))
        val_acc, val_loss = loop.evaluate()
        metrics = {"val_acc": val_acc, "val_loss": val_loss, **counts}
        report(0, metrics)
        for epoch in range(epochs):
            loss_sum, _, seen, reason = loop.train_epoch(epoch)
            if reason:
                raise FloatingPointError(f"fine-tuning diverged: {reason}")
            val_acc, val_loss = loop.evaluate()
            metrics = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": loss_sum.item() / max(seen, 1),
                       **counts}
            report(epoch + 1, metrics)
    loop.model.to("cpu", memory_format=torch.contiguous_format).eval()
    return metrics
