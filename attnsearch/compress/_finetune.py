"""A pruned model's fine-tuning and measurement: the source trial's own training settings for N epochs (optimizer,
learning rate and schedule, weight decay, label smoothing, NAM's penalty p, precision and memory format), on the
study's data, in this process; then its validation accuracy, FLOPs, parameters and latency as a trial reports them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..attention import nam_penalty
from ..config import Job
from ..data import build_loaders
from ..latency import DeviceClaim, amp_dtype, autocast, resolve_device, use_channels_last
from ..space import TrialSettings, count_model
from ..train import evaluate, load_data, lr_factor, make_optimizer, measure_cost

__all__ = ["finetune"]

EpochReport = Callable[[int, dict], None]  # (epoch, metrics) after pruning (epoch 0) and after every epoch


def finetune(model: nn.Module, job: Job, plan: TrialSettings, epochs: int, report: EpochReport) -> dict:
    """Evaluate ``model`` (epoch 0: as pruned), fine-tune it ``epochs`` epochs with ``plan.train``'s settings and
    the schedule spread over those epochs, evaluating after each; return the final metrics with the model's counts
    (``contract.STATIC_METRICS``) and measured ``latency_ms``/``throughput`` on the training device. The model
    stays on the CPU afterwards, in eval mode.

    Args:
        model: the pruned model (its weights are trained in place).
        job: the study's job (data, resources).
        plan: the source trial's settings (``attnsearch.space.materialize`` of its params).
        epochs: fine-tuning epochs; 0 evaluates only.
        report: called with (epoch, metrics) at epoch 0 and after every fine-tuning epoch.
    """
    cfg = plan.train.model_copy(update={"epochs": max(epochs, 1), "warmup_epochs": 0})
    torch.manual_seed(cfg.seed)
    threads = cfg.threads or max(1, int(job.resources.cpu))
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    train_ds, val_ds, info = load_data(job, plan.image_size)
    channels_last = use_channels_last(device, cfg.channels_last)
    train_loader, val_loader = build_loaders(job.data, train_ds, val_ds, seed=cfg.seed,
                                             pin_memory=device.type == "cuda", device=device,
                                             channels_last=channels_last)
    counts = count_model(model, info.image_size)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(device, cfg.amp)
    amp_ctx = autocast(device, dtype)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    uses_nam = plan.nam_penalty > 0 and any(getattr(m, "_attnsearch_type", None) == "nam" for m in model.modules())
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = make_optimizer(model, cfg)
    with DeviceClaim(device) as claim:
        counts.update(measure_cost(model, job, cfg, device, info.image_size, claim))
        val_acc, val_loss = evaluate(model, val_loader, device, amp_ctx, channels_last)
        metrics = {"val_acc": val_acc, "val_loss": val_loss, **counts}
        report(0, metrics)
        steps = max(len(train_loader), 1)
        for epoch in range(epochs):
            train_loader.generator.manual_seed(cfg.seed + 1_000_003 * epoch)
            model.train()
            loss_sum, seen = 0.0, 0
            for i, (images, targets) in enumerate(train_loader):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, epoch + i / steps)
                images, targets = images.to(device), targets.to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with amp_ctx:
                    loss = criterion(model(images).float(), targets)
                total = loss + plan.nam_penalty * nam_penalty(model, refresh=i == 0) if uses_nam else loss
                optimizer.zero_grad(set_to_none=True)
                # one grad-clip path, as train's step: unscale (when scaling), clip, then step
                (scaler.scale(total) if scaler is not None else total).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                loss_sum += float(loss.detach()) * targets.numel()
                seen += targets.numel()
            train_loss = loss_sum / max(seen, 1)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"fine-tuning diverged: training loss {train_loss} in epoch {epoch + 1}")
            val_acc, val_loss = evaluate(model, val_loader, device, amp_ctx, channels_last)
            metrics = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss, **counts}
            report(epoch + 1, metrics)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    return metrics
