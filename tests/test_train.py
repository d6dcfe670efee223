"""The trial loop without Ray: schedule, budget check, divergence, checkpoint resume, NAM penalty."""

from __future__ import annotations

import math

import pytest
import torch

from attnsearch.config import TrainConfig, validate_job
from attnsearch.train import TrialPlan, fit, lr_factor, over_budget


def tiny_job(**train):
    return validate_job(
        {
            "name": "unit",
            "backbone": {"name": "resnet20"},
            "data": {"dataset": "fake", "image_size": 8, "batch_size": 32, "fake_train_size": 64,
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


def test_fit_reports_every_epoch_and_resumes_from_checkpoint():
    job = tiny_job(lr=0.05)
    plan = TrialPlan(attention={"type": "se", "reduction": 4, "stages": [3]}, train=job.train)
    reports = []
    assert fit(job, plan, lambda m, s: reports.append((m, s))) == "completed"
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    first, state = reports[0]
    assert 0.0 <= first["val_acc"] <= 1.0 and first["attn_params"] > 0 and first["flops"] > first["macs"]
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer"}
    resumed = []
    fit(job, plan, lambda m, s: resumed.append(m), checkpoint=state)
    assert [m["epoch"] for m in resumed] == [2]


def test_diverging_trial_reports_failed_with_reason():
    job = tiny_job(lr=1e8, momentum=0.0)
    reports = []
    assert fit(job, TrialPlan(attention=None, train=job.train), lambda m, s: reports.append(m)) == "failed"
    assert reports[-1]["attnsearch_state"] == "failed"
    assert "loss" in reports[-1]["attnsearch_reason"]


def test_nam_penalty_is_added_and_reported():
    job = tiny_job(lr=0.05, epochs=1)
    plan = TrialPlan(attention={"type": "nam", "stages": [1]}, train=job.train, nam_penalty=1e-2)
    reports = []
    fit(job, plan, lambda m, s: reports.append(m))
    # 3 NAM modules of 16 channels, gamma initialised to 1: L1 = 48 at the start, weight decay shrinks it a little.
    assert reports[-1]["nam_penalty"] == pytest.approx(1e-2 * 48, rel=0.05)
    assert math.isfinite(reports[-1]["train_loss"])


def test_infeasible_model_is_never_trained():
    job = validate_job({"name": "b", "backbone": {"name": "resnet20"}, "constraints": {"max_params": 10},
                        "data": {"dataset": "fake", "image_size": 8, "fake_train_size": 8, "fake_val_size": 8},
                        "search": {"space": {"attention": {"type": ["none"]}}}})
    reports = []
    assert fit(job, TrialPlan(attention=None, train=job.train), lambda m, s: reports.append((m, s))) == "infeasible"
    assert len(reports) == 1 and reports[0][1] is None
    assert reports[0][0]["attnsearch_state"] == "infeasible" and "max_params" in reports[0][0]["attnsearch_reason"]
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("attention", [{"type": "coord"}, {"type": "na"}, {"type": "gc"}, {"type": "nam"}])
def test_amp_on_cpu_trains_modules_with_fused_backward(attention):
    # amp: true on CPU is bf16 autocast; the fused gates once crashed in backward on mixed bf16/float32 inputs
    job = tiny_job(lr=0.05, amp=True, epochs=1)
    plan = TrialPlan(attention={**attention, "stages": [3]}, train=job.train)
    reports = []
    assert fit(job, plan, lambda m, s: reports.append(m)) == "completed"
    assert len(reports) == 1 and math.isfinite(reports[0]["train_loss"])
