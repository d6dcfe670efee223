"""The result contract: the names every layer agrees on, in one dependency-free module (standard library only).

A trial reports metrics (``METRICS``) and, when it did not train to the end, its own state under ``STATE_KEY``
with a ``REASON_KEY``; the driver decides the final state with ``trial_state``; MLflow carries the states and the
study's structure in the ``TAG_*`` tags. The project's error types live here too, so that the CLI can tell the
user's mistakes (``InputError``: exit status 2) from failures while running (exit status 1) without importing
the layers that raise them.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "InputError",
    "ConfigError",
    "UsageError",
    "TrackingError",
    "EPOCH_METRICS",
    "STATIC_METRICS",
    "METRICS",
    "LOGGED_EPOCH_METRICS",
    "STATES",
    "RUNNING",
    "STATE_KEY",
    "REASON_KEY",
    "trial_state",
    "result_state",
]

# --------------------------------------------------------------------------------------------------- errors


class InputError(Exception):
    """Bad input from the user (a job, a search space, a command line, an unusable store or cluster address).

    ``str(err)`` is the whole message: it names the file, the key and the fix. The CLI exits 2 on it and on
    nothing else; it is raised before anything is started or written.
    """


class ConfigError(InputError):
    """A bad job or search-space file, or a job the cluster cannot run (resources, address)."""


class UsageError(InputError):
    """Bad arguments on the command line."""


class TrackingError(InputError, RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI (credentials removed) and the fix."""


# --------------------------------------------------------------------------------------------------- metrics

# Metrics that change from epoch to epoch and can be objectives: the only ones an early-stopping rule can
# compare before a trial ends.
EPOCH_METRICS = ("val_acc", "val_loss", "train_loss")
# Counted once per trial before training (attnsearch.flops.count); known from epoch 0.
STATIC_METRICS = ("flops", "macs", "params", "attn_flops", "attn_macs", "attn_params")
# Every metric a search objective may name.
METRICS = EPOCH_METRICS + STATIC_METRICS
# Per-epoch metrics a trial reports besides the objectives (logged to MLflow at step=epoch).
LOGGED_EPOCH_METRICS = EPOCH_METRICS + ("nam_penalty", "lr", "epoch_time_s")

# --------------------------------------------------------------------------------------------------- states

STATES = ("completed", "early_stopped", "infeasible", "failed")
RUNNING = "running"  # the MLflow tag's value while a trial trains (not a final state)
# Result keys of a trial that ends without training to its budget (states "infeasible" and "failed").
STATE_KEY = "attnsearch_state"
REASON_KEY = "attnsearch_reason"


def trial_state(reported: str | None, budget: int, max_t: int, errored: bool = False) -> str:
    """The final state of a finished trial.

    A state the trial reported itself (``STATE_KEY``: infeasible/failed) wins; a Ray error -> failed;
    otherwise epochs trained == ``max_t`` -> completed, fewer -> early_stopped (stopped by the scheduler).
    """
    if reported in STATES:
        return reported
    if errored:
        return "failed"
    return "completed" if budget >= max_t else "early_stopped"


def result_state(result: Mapping[str, Any] | None, max_t: int, errored: bool = False) -> str:
    """``trial_state`` read from a trial's last result (its ``STATE_KEY`` and ``epoch``)."""
    result = result or {}
    return trial_state(result.get(STATE_KEY), int(result.get("epoch", 0) or 0), max_t, errored)


# --------------------------------------------------------------------------------------------------- MLflow tags

TAG_PARENT = "mlflow.parentRunId"
TAG_STUDY = "attnsearch.study"
TAG_ROLE = "attnsearch.role"  # "study" (parent run) | "trial" (child run)
TAG_TRIAL = "attnsearch.trial_id"
TAG_STATE = "attnsearch.state"
TAG_BUDGET = "attnsearch.budget"
TAG_PARETO = "attnsearch.pareto"
TAG_REASON = "attnsearch.reason"
TAG_FAILURES = "attnsearch.failures"
TAG_PARAM_TYPES = "attnsearch.param_types"  # JSON {param: type} so readers can cast params back exactly

__all__ += [name for name in dict(globals()) if name.startswith("TAG_")]
