"""The trial loop without Ray: schedule, budget check, divergence (sync-free), checkpoint resume, NAM penalty,
the measured latency and throughput."""

from __future__ import annotations

import copy
import math
import re
import sys

import pytest
import torch

from attnsearch import train as train_module
from attnsearch.config import TrainConfig, validate_job
from attnsearch.contract import LATENCY_LOAD, MEASURED_METRICS
from attnsearch.space import TrialSettings
from attnsearch.train import fit, lr_factor, over_budget


def tiny_job(batch_size: int = 32, **train):
    return validate_job(
        {
            "name": "unit",
            "backbone": {"name": "resnet20"},
            "data": {"dataset": "fake", "image_size": 8, "batch_size": batch_size, "fake_train_size": 64,
                     "fake_val_size": 32, "fake_num_classes": 4},
            "train": {"epochs": 2, "threads": 1, **train},
            "search": {"space": {"attention": {"type": ["none"]}}},
        }
    )


def test_lr_factor_warmup_cosine_and_step():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    assert lr_factor(cfg, 1.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 2.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 6.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 10.0) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(epochs=10, schedule="step", milestones=[3, 6], gamma=0.2)
    assert [lr_factor(step, e) for e in (0, 2.9, 3, 6.5)] == pytest.approx([1, 1, 0.2, 0.04])


def test_over_budget_names_the_constraint():
    job = validate_job({"name": "b", "backbone": {"name": "resnet20"}, "constraints": {"max_params": 1000},
                        "search": {"space": {"attention": {"type": ["none"]}}}})
    assert "max_params" in over_budget(job, {"params": 1001, "flops": 5})
    assert over_budget(job, {"params": 1000, "flops": 5}) is None


def run_fit(job, settings, checkpoint=None) -> list[tuple[dict, dict | None]]:
    """fit's reports as (metrics, state); each state deep-copied when reported, as run_trial saves it to disk
    then: fit hands out live state_dicts, which the next epoch's steps would change in place."""
    reports = []
    assert fit(job, settings, lambda m, s: reports.append((m, copy.deepcopy(s))), checkpoint=checkpoint) == "completed"
    return reports


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def momentum_buffers(state: dict) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for _, s in sorted(state["optimizer"]["state"].items())]


def test_fit_reports_every_epoch_and_resumes_from_checkpoint(monkeypatch):
    # batch_size 64 = the whole training set: one step per epoch, so the data order the resumed epoch sees
    # (its loader's generator starts again from the seed) only reorders one batch, and a resumed epoch 2 must
    # equal the uninterrupted run's epoch 2 up to float summation order.
    job = tiny_job(lr=0.05, momentum=0.9, batch_size=64)
    settings = TrialSettings(attention={"type": "se", "reduction": 4, "stages": [3]}, train=job.train)
    full = run_fit(job, settings)
    assert [m["epoch"] for m, _ in full] == [1, 2]
    (first, state), (second, final) = full
    assert 0.0 <= first["val_acc"] <= 1.0 and first["attn_params"] > 0 and first["flops"] > first["macs"]
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer"}
    assert momentum_buffers(state) and all(b.abs().sum() > 0 for b in momentum_buffers(state))  # momentum kept
    tol = 1e-5  # float reordering only; every corrupted resume below is off by orders of magnitude more

    # The weights, the momentum buffers and the epoch come back: epoch 2 only, as if never interrupted.
    resumed = run_fit(job, settings, checkpoint=copy.deepcopy(state))
    assert [m["epoch"] for m, _ in resumed] == [2]
    (again, after) = resumed[0]
    for key in ("val_acc", "val_loss", "train_loss", "lr"):
        assert again[key] == pytest.approx(second[key], rel=1e-4, abs=1e-5), key
    assert max_weight_diff(after["model"], final["model"]) < tol
    for got, want in zip(momentum_buffers(after), momentum_buffers(final), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=tol)

    # Without the model restore (fresh weights), epoch 2 trains another model: the check above would fail.
    with monkeypatch.context() as m:
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        (no_model, no_model_state), = run_fit(job, settings, checkpoint=copy.deepcopy(state))
    assert max_weight_diff(no_model_state["model"], final["model"]) > 100 * tol
    assert no_model["train_loss"] != pytest.approx(second["train_loss"], rel=1e-3)

    # Without the optimizer restore (no momentum from epoch 1), the epoch-2 step differs too.
    with monkeypatch.context() as m:
        m.setattr(torch.optim.Optimizer, "load_state_dict", lambda self, *a, **k: None)
        (no_optim, no_optim_state), = run_fit(job, settings, checkpoint=copy.deepcopy(state))
    assert max_weight_diff(no_optim_state["model"], final["model"]) > 100 * tol
    assert no_optim["val_loss"] != pytest.approx(second["val_loss"], rel=1e-3)
    buffers = zip(momentum_buffers(no_optim_state), momentum_buffers(final), strict=True)
    assert max((a - b).abs().max().item() for a, b in buffers) > 100 * tol


def test_diverging_trial_reports_failed_with_reason():
    job = tiny_job(lr=1e8, momentum=0.0)
    reports = []
    assert fit(job, TrialSettings(attention=None, train=job.train), lambda m, s: reports.append(m)) == "failed"
    assert reports[-1]["attnsearch_state"] == "failed"
    # 64 images in batches of 32: 2 steps per epoch, both inside one check (FINITE_CHECK_STEPS); the weights may
    # also blow up in the last step, so that only the validation sees it
    reason = reports[-1]["attnsearch_reason"]
    assert re.fullmatch(r"loss is (nan|-?inf) between step 0 and 1 of epoch \d|validation loss is nan after epoch \d",
                        reason), reason


class NaNAtCall(torch.nn.CrossEntropyLoss):
    """The criterion, except that its ``NAN_AT``-th call (from 0, over the whole fit) returns NaN."""

    NAN_AT = -1
    calls = 0

    def forward(self, logits, targets):
        loss = super().forward(logits, targets)
        call, NaNAtCall.calls = NaNAtCall.calls, NaNAtCall.calls + 1
        return loss * float("nan") if call == self.NAN_AT else loss


@pytest.mark.parametrize("every, nan_at, reason, epochs_reported", [
    (3, 4, "loss is nan between step 3 and 5 of epoch 1", 0),   # inside a window of 3
    (3, 7, "loss is nan between step 6 and 7 of epoch 1", 0),   # the epoch's last, shorter window
    (3, 9, "loss is nan between step 0 and 2 of epoch 2", 1),   # epoch 2 (8 steps per epoch)
    (1, 4, "loss is nan at step 4 of epoch 1", 0),              # checked every step
    (50, 5, "loss is nan between step 0 and 7 of epoch 1", 0),  # fewer steps than a window: the epoch's end
])
def test_sync_free_loop_names_the_step_range_of_a_divergence(monkeypatch, every, nan_at, reason, epochs_reported):
    monkeypatch.setattr(train_module, "FINITE_CHECK_STEPS", every)
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNAtCall)
    monkeypatch.setattr(NaNAtCall, "NAN_AT", nan_at)
    monkeypatch.setattr(NaNAtCall, "calls", 0)
    job = tiny_job(lr=0.05, batch_size=8)  # 64 images: 8 steps per epoch
    reports = []
    assert fit(job, TrialSettings(attention=None, train=job.train), lambda m, s: reports.append((m, s))) == "failed"
    *epochs, (last, state) = reports
    assert len(epochs) == epochs_reported and state is None  # nothing after the divergence is checkpointed
    assert last["attnsearch_state"] == "failed" and last["attnsearch_reason"] == reason
    assert last["epoch"] == epochs_reported


def host_reads(monkeypatch, *files: str) -> list[str]:
    """Every read of a tensor's value into Python (each one a host sync on CUDA) that attnsearch/train.py itself
    (and each of ``files``) makes, from now on. (The data loader's and the CPU-only fast paths' reads of CPU
    tensors sync nothing.)"""
    reads: list[str] = []
    watched = {train_module.__file__, *files}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename in watched:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_training_reads_no_tensor_value_per_step(monkeypatch):
    """The loop's host reads in an epoch do not grow with its steps: 4 and 16 steps per epoch read as often."""
    monkeypatch.setattr(train_module, "measure_cost", lambda *a, **k: {})  # not the loop's own reads
    counts = []
    for batch_size in (16, 4):
        job = validate_job({
            "name": "unit", "backbone": {"name": "resnet20"},
            "data": {"dataset": "fake", "image_size": 8, "batch_size": batch_size, "eval_batch_size": 16,
                     "fake_train_size": 64, "fake_val_size": 32, "fake_num_classes": 4},
            "train": {"epochs": 1, "threads": 1, "lr": 0.05},
            "search": {"space": {"attention": {"type": ["none"]}}},
        })
        settings = TrialSettings(attention={"type": "nam", "stages": [3]}, train=job.train, nam_penalty=1e-3)
        with monkeypatch.context() as m:
            reads = host_reads(m)
            steps: list[float] = []
            m.setattr(train_module, "lr_factor", lambda cfg, p, steps=steps: steps.append(p) or 1.0)
            assert fit(job, settings, lambda metrics, state: None) == "completed"
        assert len(steps) == 64 // batch_size
        counts.append(len(reads))
    # one finiteness check, train_loss and nam_penalty at the epoch's end; the correct count and loss of the
    # validation
    assert counts == [5, 5], counts


def finetune_job(batch_size: int, lr: float = 0.05):
    return validate_job({
        "name": "unit", "backbone": {"name": "resnet20"},
        "data": {"dataset": "fake", "image_size": 8, "batch_size": batch_size, "eval_batch_size": 16,
                 "fake_train_size": 64, "fake_val_size": 32, "fake_num_classes": 4},
        "train": {"epochs": 5, "warmup_epochs": 1, "threads": 1, "lr": lr, "momentum": 0.0},
        "search": {"space": {"attention": {"type": ["none"]}}},
    })


def test_finetuning_trains_through_the_trial_loops_step_and_reads_no_value_per_step(monkeypatch):
    """A pruned model's fine-tuning is train's loop: every batch one ``TrainLoop.step`` (NAM's penalty included),
    the schedule over the fine-tuning epochs without warmup, and its host reads per epoch do not grow with its
    steps (4 and 16 steps per epoch read as often)."""
    from attnsearch.compress import _finetune, finetune

    monkeypatch.setattr(_finetune, "measure_cost", lambda *a, **k: {})  # not the loop's own reads
    counts = []
    for batch_size in (16, 4):
        job = finetune_job(batch_size)
        settings = TrialSettings(attention={"type": "nam", "stages": [3]}, train=job.train, nam_penalty=1e-3)
        torch.manual_seed(0)
        model = train_module.build_for_job(job, settings, 4, 8)
        before = [p.detach().clone() for p in model.parameters()]
        steps, factors, reports = [], [], []
        step, schedule = train_module.TrainLoop.step, train_module.lr_factor

        def counted_step(self, images, targets, _step=step, _steps=steps):
            loss, penalty = _step(self, images, targets)
            _steps.append(penalty is not None)
            return loss, penalty

        def counted_factor(cfg, progress, _factors=factors, _schedule=schedule):
            _factors.append((cfg.epochs, cfg.warmup_epochs, progress))
            return _schedule(cfg, progress)

        def record(epoch, metrics, _reports=reports):
            _reports.append((epoch, metrics))

        with monkeypatch.context() as m:
            reads = host_reads(m, _finetune.__file__)
            m.setattr(train_module.TrainLoop, "step", counted_step)
            m.setattr(train_module, "lr_factor", counted_factor)
            metrics = finetune(model, job, settings, 2, record)
        assert steps == [True] * (2 * 64 // batch_size)  # every batch of both epochs, each with NAM's penalty
        assert {(e, w) for e, w, _ in factors} == {(2, 0)} and factors[-1][2] == pytest.approx(2 - batch_size / 64)
        assert [e for e, _ in reports] == [0, 1, 2] and metrics is reports[-1][1]
        assert math.isfinite(metrics["train_loss"]) and "train_loss" not in reports[0][1]
        assert any(not torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters(), strict=True))
        assert next(model.parameters()).device.type == "cpu" and not model.training
        counts.append(len(reads))
    # per epoch: one finiteness check and train_loss, and the validation's correct count and loss; and the
    # validation right after pruning
    assert counts == [2 + 2 * 4, 2 + 2 * 4], counts


def test_a_diverging_finetuning_names_the_steps_as_a_trial_does():
    from attnsearch.compress import finetune

    job = finetune_job(8, lr=1e8)
    settings = TrialSettings(attention=None, train=job.train)
    model = train_module.build_for_job(job, settings, 4, 8)
    reports = []
    with pytest.raises(FloatingPointError, match=r"fine-tuning diverged: loss is (nan|-?inf) between step \d+ and "
                                                 r"\d+ of epoch \d"):
        finetune(model, job, settings, 3, lambda epoch, metrics: reports.append(epoch))
    assert reports[0] == 0


def test_every_result_carries_the_measured_latency_and_throughput():
    job = tiny_job(lr=0.05)
    reports = []
    assert fit(job, TrialSettings(attention={"type": "se", "reduction": 4, "stages": [3]}, train=job.train),
               lambda m, s: reports.append(m)) == "completed"
    assert len(reports) == 2
    for metrics in reports:
        for key in MEASURED_METRICS:
            assert math.isfinite(metrics[key]) and metrics[key] > 0, key
        assert isinstance(metrics[LATENCY_LOAD], int) and metrics[LATENCY_LOAD] >= 0
    # measured once, before the first epoch: the same figures with every result (what a rung compares)
    assert {k: reports[0][k] for k in MEASURED_METRICS} == {k: reports[1][k] for k in MEASURED_METRICS}


def test_measuring_changes_nothing_of_the_training(monkeypatch):
    """The measurement draws its input from its own generator and runs in eval mode: the same seed trains the
    same model with and without it (data augmentation reads the global random state)."""
    job = tiny_job(lr=0.05, epochs=1)
    settings = TrialSettings(attention={"type": "nam", "stages": [3]}, train=job.train)
    measured, bare = [], []
    fit(job, settings, lambda m, s: measured.append((m, copy.deepcopy(s))))
    with monkeypatch.context() as m:
        m.setattr(train_module, "measure_cost", lambda *a, **k: {})
        fit(job, settings, lambda m, s: bare.append((m, copy.deepcopy(s))))
    (with_cost, state), (without, bare_state) = measured[0], bare[0]
    assert "latency_ms" in with_cost and "latency_ms" not in without
    for key in ("train_loss", "val_loss", "val_acc", "nam_penalty"):
        assert with_cost[key] == without[key], key
    assert max_weight_diff(state["model"], bare_state["model"]) == 0


def test_nam_penalty_is_added_and_reported():
    job = tiny_job(lr=0.05, epochs=1)
    settings = TrialSettings(attention={"type": "nam", "stages": [1]}, train=job.train, nam_penalty=1e-2)
    reports = []
    fit(job, settings, lambda m, s: reports.append(m))
    # 3 NAM modules of 16 channels, gamma initialised to 1: L1 = 48 at the start, weight decay shrinks it a little.
    assert reports[-1]["nam_penalty"] == pytest.approx(1e-2 * 48, rel=0.05)
    assert math.isfinite(reports[-1]["train_loss"])


def test_infeasible_model_is_never_trained():
    job = validate_job({"name": "b", "backbone": {"name": "resnet20"}, "constraints": {"max_params": 10},
                        "data": {"dataset": "fake", "image_size": 8, "fake_train_size": 8, "fake_val_size": 8},
                        "search": {"space": {"attention": {"type": ["none"]}}}})
    reports = []
    settings = TrialSettings(attention=None, train=job.train)
    assert fit(job, settings, lambda m, s: reports.append((m, s))) == "infeasible"
    assert len(reports) == 1 and reports[0][1] is None
    assert reports[0][0]["attnsearch_state"] == "infeasible" and "max_params" in reports[0][0]["attnsearch_reason"]
    assert not set(MEASURED_METRICS) & set(reports[0][0])  # never built on the device, never measured
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("attention", [{"type": "coord"}, {"type": "na"}, {"type": "gc"}, {"type": "nam"}])
def test_amp_on_cpu_trains_modules_with_fused_backward(attention):
    # amp: true on CPU is bf16 autocast; the fused gates once crashed in backward on mixed bf16/float32 inputs
    job = tiny_job(lr=0.05, amp=True, epochs=1)
    settings = TrialSettings(attention={**attention, "stages": [3]}, train=job.train)
    reports = []
    assert fit(job, settings, lambda m, s: reports.append(m)) == "completed"
    assert len(reports) == 1 and math.isfinite(reports[0]["train_loss"])


def test_loaders_prefetch_and_keep_their_workers_only_with_workers():
    from attnsearch.data import build_datasets, build_loaders

    job = tiny_job()
    train_ds, val_ds, _ = build_datasets(job.data)
    for loader in build_loaders(job.data.model_copy(update={"num_workers": 2, "prefetch_factor": 4}), train_ds,
                                val_ds):
        assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (2, 4, True)
    for loader in build_loaders(job.data, train_ds, val_ds):  # torch refuses both options without workers
        assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (0, None, False)


@pytest.mark.parametrize("grad_clip", [None, 1e-3])
def test_one_step_clips_the_true_gradients_with_and_without_a_scaler(grad_clip):
    """The step's single path: with a gradient scaler the gradients are unscaled before clipping, so a scaled
    step moves the weights exactly as an unscaled one (a clip of the scaled gradients would not)."""
    job = tiny_job(lr=0.1, grad_clip=grad_clip, weight_decay=0.0)
    settings = TrialSettings(attention=None, train=job.train)
    images, targets = torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,))
    torch.manual_seed(0)
    model = train_module.build_for_job(job, settings, 4, 8)
    after = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        loop = train_module.TrainLoop(settings, copy.deepcopy(model), [], [], torch.device("cpu"), False)
        loop.scaler = scaler
        loop.step(images, targets)
        if grad_clip:
            norm = torch.nn.utils.get_total_norm([p.grad for p in loop.model.parameters()])
            assert float(norm) <= grad_clip * (1 + 1e-4)
        after.append([p.detach().clone() for p in loop.model.parameters()])
    moved = [torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*after, strict=True)]
    assert all(moved)
    # the step did move them
    assert any(not torch.equal(a, b) for a, b in zip(after[0], model.parameters(), strict=True))
