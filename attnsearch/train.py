"""One trial: build the model, count it, train and evaluate it epoch by epoch, report to Ray Tune.

The loop itself (``fit``) knows nothing about Ray: it takes a ``report`` callback and an optional checkpoint,
so the search-overhead benchmark runs exactly the same code in a bare PyTorch loop.

No host sync per step: the loss and NAM-penalty sums stay on the device (float64), and whether the loss is
still finite is read back every ``FINITE_CHECK_STEPS`` steps and at the end of every epoch (a non-finite value
stays non-finite in a sum, so one read covers every step since the last). A diverged trial still ends
``failed``; its reason names the steps between two checks (``loss is nan between step 100 and 149 of epoch 2``,
steps counted from 0 in each epoch). The steps up to the check train on: nothing of them is reported or
checkpointed.

Before its first epoch a trial measures what its model costs on its device (``attnsearch.latency.measure``:
``latency_ms`` at batch 1, ``throughput`` at the evaluation batch size, eval mode, the precision and memory
format it trains in, eager even when ``train.compile`` is on) and reports both with every result, next to the
FLOPs, with ``latency_load``: how many other attnsearch trials used the same device on the node meanwhile.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import nam_penalty
from .config import DataConfig, Job, TrainConfig
from .contract import (
    COMPLETED,
    FAILED,
    INFEASIBLE,
    LATENCY_LOAD,
    PARAM_RETRAIN_SOURCE,
    REASON_KEY,
    STATE_KEY,
    TIME_ATTR,
)
from .data import build_datasets, build_eval_loader, build_loaders, official_split
from .latency import (
    DeviceClaim,
    amp_dtype,
    autocast,
    measure,
    resolve_device,
    use_channels_last,
)
from .space import TrialSettings, build_trial_model, count_model, feasible, materialize, over_budget

__all__ = [
    "CHECKPOINT_FILE",
    "FINITE_CHECK_STEPS",
    "Report",
    "TrainLoop",
    "build_for_job",
    "evaluate",
    "fit",
    "load_data",
    "lr_factor",
    "make_optimizer",
    "measure_cost",
    "run_trial",
]

CHECKPOINT_FILE = "checkpoint.pt"
# Steps between two reads of whether the loss is still finite (each read is a host sync on CUDA); every epoch
# also ends with one.
FINITE_CHECK_STEPS = 50

Report = Callable[[dict, "dict | None"], None]  # (metrics, checkpoint state or None)


def load_data(job: Job, image_size: int | None = None):
    """Datasets for ``job.data`` (at ``image_size`` when given), cached per process so that reused Ray actors
    load them once per size."""
    cfg = job.data if image_size is None else job.data.model_copy(update={"image_size": image_size})
    return _datasets(cfg.model_dump_json())


@functools.lru_cache(maxsize=4)
def _datasets(data_json: str):
    return build_datasets(DataConfig.model_validate_json(data_json))


def load_test_data(job: Job, image_size: int | None = None):
    """The split ``test_acc`` is measured on (``attnsearch.data.official_split``) for ``job.data`` at
    ``image_size``: the official held-out split when the job validates on a split of the training images; None
    when it validates on the official split itself or the dataset has none. Cached per process as ``load_data``."""
    cfg = job.data if image_size is None else job.data.model_copy(update={"image_size": image_size})
    return _test_dataset(cfg.model_dump_json()) if cfg.validation == "split" else None


@functools.lru_cache(maxsize=2)
def _test_dataset(data_json: str):
    return official_split(DataConfig.model_validate_json(data_json))


def build_for_job(job: Job, settings: TrialSettings, num_classes: int, image_size: int) -> nn.Module:
    return build_trial_model(job, settings.attention, settings.width_mult, num_classes, image_size)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norm scales/biases would change the official recipes; keep decay on all parameters.
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` epochs (fractional): linear warmup, then cosine/step/constant."""
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        return (progress + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min(max(progress - cfg.warmup_epochs, 0.0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(1 for m in cfg.milestones if progress >= m)
    return 1.0


def _autocast(device: torch.device, cfg: TrainConfig):
    """(autocast context, grad scaler or None) for ``train.amp`` on ``device`` (``attnsearch.latency.amp_dtype``)."""
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    return autocast(device, dtype), scaler


def _accumulator(device: torch.device) -> torch.Tensor:
    """A zero on ``device`` to sum losses into: float64 (as the Python floats the loop once summed), except
    where the device has none (MPS)."""
    return torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)


def _batch_to(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool):
    # asynchronous from the loader's pinned memory on CUDA (pin_memory is on there); a plain copy elsewhere
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def evaluate(model: nn.Module, loader, device: torch.device, amp_ctx, channels_last: bool) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, seen = _accumulator(device), torch.zeros((), dtype=torch.int64, device=device), 0
    with torch.inference_mode():
        for images, targets in loader:
            images, targets = _batch_to(images, targets, device, channels_last)
            with amp_ctx:
                logits = model(images)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
            correct += (logits.argmax(1) == targets).sum()
            seen += targets.numel()
    return int(correct.item()) / max(seen, 1), loss_sum.item() / max(seen, 1)


def measure_cost(model: nn.Module, job: Job, cfg: TrainConfig, device: torch.device, image_size: int,
                 claim: DeviceClaim) -> dict[str, float]:
    """``latency_ms`` and ``throughput`` of the trial's model as it trains (device, precision, memory format),
    at batch 1 and at the evaluation batch size, and ``latency_load`` when known (``attnsearch.latency``)."""
    cost = measure(model, image_size, batch_size=job.data.eval_batch_size or job.data.batch_size,
                   dtype=amp_dtype(device, cfg.amp), channels_last=use_channels_last(device, cfg.channels_last))
    load = claim.others()
    if load is not None:
        cost[LATENCY_LOAD] = load
    return cost


def fit(
    job: Job,
    settings: TrialSettings,
    report: Report,
    checkpoint: Mapping[str, Any] | None = None,
    counts_out: dict | None = None,
    test: bool = False,
) -> str:
    """Train one trial to ``settings.train.epochs``; call ``report(metrics, state)`` after every epoch.

    Returns the trial's own verdict: ``"completed"``, ``"infeasible"`` or ``"failed"`` (divergence). Early stops
    are decided by the caller (ASHA), which simply stops calling back. ``test`` (a retrain's runs): the last
    epoch's report adds ``test_acc`` and ``test_loss`` on ``load_test_data``'s split when there is one.
    """
    cfg = settings.train
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train_ds, val_ds, info = load_data(job, settings.image_size)
    model = build_for_job(job, settings, info.num_classes, info.image_size)
    counts = count_model(model, info.image_size)
    if counts_out is not None:
        counts_out.update(counts)
    reason = over_budget(job, counts)
    if reason:
        report({STATE_KEY: INFEASIBLE, REASON_KEY: reason, TIME_ATTR: 0, **counts}, None)
        return INFEASIBLE

    loop = TrainLoop.build(job, settings, model, train_ds, val_ds, device)
    if test:
        loop.attach_test(job, load_test_data(job, settings.image_size))
    start_epoch = loop.restore(checkpoint)
    with DeviceClaim(device) as claim:
        counts = {**counts, **measure_cost(loop.model, job, cfg, device, info.image_size, claim)}
        if counts_out is not None:
            counts_out.update(counts)
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            loss_sum, pen_sum, seen, reason = loop.train_epoch(epoch)
            if reason:
                report({STATE_KEY: FAILED, REASON_KEY: reason, TIME_ATTR: epoch, **counts}, None)
                return FAILED
            if not loop.evaluate_and_report(epoch, started, loss_sum, pen_sum, seen, counts, report):
                return FAILED
    return COMPLETED


class TrainLoop:
    """One model's training loop: the model (and its compiled form for the steps), the optimizer, the autocast
    context and gradient scaler, the loss, the loaders. ``fit`` drives it epoch by epoch for a trial, and
    ``attnsearch.compress`` fine-tunes a pruned model with it, so both train through the same step.

    Args:
        settings: what is trained: ``settings.train`` (optimizer, schedule, precision, grad clip, compile), NAM's
            penalty weight ``settings.nam_penalty`` when ``settings.attention`` is NAM.
        model: the model, already on ``device`` in the memory format it trains in (``build`` does both).
        train_loader: the training batches; its ``generator`` is reseeded every epoch.
        val_loader: the validation batches.
        device: where the model trains.
        channels_last: whether the batches go to the model in channels-last memory format.
    """

    def __init__(self, settings: TrialSettings, model: nn.Module, train_loader: Any, val_loader: Any,
                 device: torch.device, channels_last: bool) -> None:
        cfg = self.cfg = settings.train
        self.settings, self.model, self.device, self.channels_last = settings, model, device, channels_last
        self.train_loader, self.val_loader = train_loader, val_loader
        self.test_loader: Any = None  # attach_test
        self.optimizer = make_optimizer(model, cfg)
        self.amp_ctx, self.scaler = _autocast(device, cfg)
        attention = settings.attention
        self.uses_nam = settings.nam_penalty > 0 and attention is not None and attention.get("type") == "nam"
        if self.uses_nam:  # find the model's NAM modules anew: a pruned model's are not those it was built with
            nam_penalty(model, refresh=True)
        # Static shapes: with dynamic shapes (a smaller last eval batch) torch 2.14's inductor fails on CBAM,
        # CoordAtt and Triplet ("cannot determine truth value of Relational" in get_stride_order); one
        # recompilation for the last batch is cheap by comparison.
        self.step_model = torch.compile(model, dynamic=False) if cfg.compile else model
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_per_epoch = max(len(train_loader), 1)

    @classmethod
    def build(cls, job: Job, settings: TrialSettings, model: nn.Module, train_ds: Any, val_ds: Any,
              device: torch.device) -> TrainLoop:
        """The loop with its loaders, and the model moved to ``device`` in the memory format it trains in.

        Args:
            job: the study's job (``job.data``: batch sizes, workers, loader backend).
            settings: what is trained (as for the class).
            model: the model, on any device.
            train_ds: the training dataset.
            val_ds: the validation dataset.
            device: where the model trains.
        """
        cfg = settings.train
        channels_last = use_channels_last(device, cfg.channels_last)
        train_loader, val_loader = build_loaders(
            job.data, train_ds, val_ds, seed=cfg.seed, pin_memory=device.type == "cuda", device=device,
            channels_last=channels_last,
        )
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(settings, model, train_loader, val_loader, device, channels_last)

    def attach_test(self, job: Job, test_ds: Any) -> None:
        """Evaluate on ``test_ds`` (when not None) after the last epoch too (``fit``'s ``test``).

        Args:
            job: the trial's job (its ``data`` settings choose the loader).
            test_ds: the held-out split (``load_test_data``), or None for none.
        """
        if test_ds is not None:
            self.test_loader = build_eval_loader(job.data, test_ds, pin_memory=self.device.type == "cuda",
                                                 device=self.device, channels_last=self.channels_last)

    def restore(self, checkpoint: Mapping[str, Any] | None) -> int:
        """Load a checkpoint's model, optimizer and scaler state; the epoch to continue from (0 without one).

        Args:
            checkpoint: a state ``evaluate_and_report`` reported, or None.
        """
        if checkpoint is None:
            return 0
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        return int(checkpoint["epoch"])

    def train_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int, str | None]:
        """One epoch of ``step``: ``(loss sum, NAM-penalty sum, images seen, divergence reason or None)``; the
        sums stay on the device, finiteness is read every ``FINITE_CHECK_STEPS`` steps and at the end.

        Args:
            epoch: the epoch, from 0: it sets the learning rate's schedule and the shuffle's seed.
        """
        cfg, device = self.cfg, self.device
        # the shuffle of epoch k depends on (seed, k) only: a trial resumed from a checkpoint sees the same order
        self.train_loader.generator.manual_seed(cfg.seed + 1_000_003 * epoch)
        self.model.train()
        loss_sum, pen_sum = _accumulator(device), _accumulator(device)
        seen, steps, checked = 0, 0, 0  # checked: steps known to have had a finite loss
        reason = None
        for i, (images, targets) in enumerate(self.train_loader):
            factor = lr_factor(cfg, epoch + i / self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            images, targets = _batch_to(images, targets, device, self.channels_last)
            n = targets.numel()
            loss, penalty = self.step(images, targets)
            if penalty is not None:
                pen_sum.add_(penalty.detach(), alpha=n)
            loss_sum.add_(loss.detach(), alpha=n)
            seen, steps = seen + n, i + 1
            if steps - checked == FINITE_CHECK_STEPS:
                reason = _nonfinite(loss_sum + pen_sum, checked, i, epoch)
                if reason:
                    break
                checked = steps
        if reason is None and steps > checked:  # the epoch's last steps
            reason = _nonfinite(loss_sum + pen_sum, checked, steps - 1, epoch)
        return loss_sum, pen_sum, seen, reason

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step on a batch: ``(loss, NAM penalty or None)``, both still attached to the graph.

        One path with and without a gradient scaler: the scaled loss backwards, the gradients unscaled before
        they are clipped to ``train.grad_clip`` (clipping is on the true gradients), the scaler's step or the
        optimizer's.

        Args:
            images: the batch, on the loop's device (and memory format).
            targets: its class indices, on the loop's device.
        """
        cfg, optimizer, scaler = self.cfg, self.optimizer, self.scaler
        with self.amp_ctx:
            logits = self.step_model(images)
            loss = self.criterion(logits.float(), targets)
        total, penalty = loss, None
        if self.uses_nam:
            penalty = self.settings.nam_penalty * nam_penalty(self.model)
            total = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(total) if scaler is not None else total).backward()
        if cfg.grad_clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return loss, penalty

    def evaluate(self) -> tuple[float, float]:
        """``(validation accuracy, validation loss)`` of the model as it trains (precision, memory format)."""
        return evaluate(self.step_model, self.val_loader, self.device, self.amp_ctx, self.channels_last)

    def evaluate_and_report(self, epoch: int, started: float, loss_sum: torch.Tensor, pen_sum: torch.Tensor,
                            seen: int, counts: Mapping[str, Any], report: Report) -> bool:
        """Evaluate after ``epoch`` and report its metrics and checkpoint; False (reported as ``failed``) when the
        validation loss is not finite.

        Args:
            epoch: the epoch just trained, from 0.
            started: its start, ``time.perf_counter()``.
            loss_sum: ``train_epoch``'s loss sum.
            pen_sum: ``train_epoch``'s NAM-penalty sum.
            seen: ``train_epoch``'s images seen.
            counts: the model's counts and measured cost, reported with every result.
            report: ``fit``'s callback.
        """
        val_acc, val_loss = self.evaluate()
        if not math.isfinite(val_loss):
            report({STATE_KEY: FAILED, REASON_KEY: f"validation loss is {val_loss} after epoch {epoch + 1}",
                    TIME_ATTR: epoch + 1, **counts}, None)
            return False
        metrics = {
            TIME_ATTR: epoch + 1,
            "val_acc": val_acc,
            "val_loss": val_loss,
            "train_loss": loss_sum.item() / max(seen, 1),
            "nam_penalty": pen_sum.item() / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            **counts,
        }
        if self.test_loader is not None and epoch + 1 == self.cfg.epochs:
            metrics["test_acc"], metrics["test_loss"] = evaluate(self.step_model, self.test_loader, self.device,
                                                                 self.amp_ctx, self.channels_last)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch + 1,
        }
        report(metrics, state)
        return True


def _nonfinite(total: torch.Tensor, first: int, last: int, epoch: int) -> str | None:
    """The failure reason when the sum of the losses of steps ``first``..``last`` (and before) is not finite.

    The one host sync of the check; a NaN or an infinity in any summed step makes the sum non-finite."""
    value = total.item()
    if math.isfinite(value):
        return None
    steps = f"at step {last}" if first == last else f"between step {first} and {last}"
    return f"loss is {value} {steps} of epoch {epoch + 1}"


def run_trial(config: dict, job_dict: dict) -> None:
    """Ray Tune function trainable: one trial of the study described by ``job_dict``."""
    from ray import (
        tune,  # the trainable runs in a Ray worker; the loop above needs no Ray
    )

    job = Job.model_validate(job_dict)
    reason = feasible(job, config)
    if reason:
        tune.report({STATE_KEY: INFEASIBLE, REASON_KEY: reason, TIME_ATTR: 0})
        return
    settings = materialize(job, config)
    if settings.train.threads is None:
        settings.train.threads = max(1, int(job.resources.cpu))

    checkpoint_state = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as path:
            checkpoint_state = torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=True)

    def report(metrics: dict, state: dict | None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    # a retrain's runs (their config names the study run they retrain) are tested on the held-out split too
    fit(job, settings, report, checkpoint_state, test=PARAM_RETRAIN_SOURCE in config)
