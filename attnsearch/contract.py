"""The result contract: the names every layer agrees on, in one dependency-free module (standard library only).

A trial reports metrics (``METRICS``) and, when it did not train to the end, its own state under ``STATE_KEY``
with a ``REASON_KEY``; the driver decides the final state with ``trial_state``; MLflow carries the states and the
study's structure in the ``TAG_*`` tags. The project's error types live here too, so that the CLI can tell the
user's mistakes (``InputError``: exit status 2) from failures while running (exit status 1) without importing
the layers that raise them.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "rung_milestones",
    "InputError",
    "ConfigError",
    "UsageError",
    "TrackingError",
    "EPOCH_METRICS",
    "STATIC_METRICS",
    "MEASURED_METRICS",
    "LATENCY_LOAD",
    "METRICS",
    "LOGGED_EPOCH_METRICS",
    "TEST_METRICS",
    "STATES",
    "COMPLETED",
    "EARLY_STOPPED",
    "INFEASIBLE",
    "FAILED",
    "RUNNING",
    "TIME_ATTR",
    "LATEST",
    "ALL_STUDIES",
    "study_id_at",
    "split_study_id",
    "study_conflict",
    "MODES",
    "DEFAULT_OBJECTIVES",
    "check_objectives",
    "is_number",
    "STATE_KEY",
    "REASON_KEY",
    "BASELINE_KEY",
    "LOST_REASON",
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
# Measured once per trial on its own device before the first epoch (attnsearch.latency) and reported with every
# result, like the counts: known from epoch 1, so early stopping can compare them at every rung. Logged to MLflow
# with the per-epoch metrics (the same value at every step).
MEASURED_METRICS = ("latency_ms", "throughput")
# Reported next to MEASURED_METRICS: how many other trials used the same device on the node while they were
# measured (0: none that attnsearch knows of). Not an objective.
LATENCY_LOAD = "latency_load"
# Every metric a search objective may name.
METRICS = EPOCH_METRICS + STATIC_METRICS + MEASURED_METRICS
# Per-epoch metrics a trial reports besides the objectives (logged to MLflow at step=epoch).
LOGGED_EPOCH_METRICS = EPOCH_METRICS + ("nam_penalty", "lr", "epoch_time_s") + MEASURED_METRICS + (LATENCY_LOAD,)
# Reported by an `attnsearch retrain` run with its last epoch when the job validates on a split of the training
# images (data.validation: split) and its dataset has an official held-out split: accuracy and loss on that split,
# which no search saw. Never an objective.
TEST_METRICS = ("test_acc", "test_loss")

# The result key that counts a trial's progress (epochs trained): the schedulers' time attribute, the MLflow step
# of the per-epoch metrics, a trial's budget.
TIME_ATTR = "epoch"

# Objectives: ``{metric: mode}``, each mode one of MODES; the default of a job's search.objectives and of a query.
MODES = ("max", "min")
DEFAULT_OBJECTIVES: Mapping[str, str] = {"val_acc": "max", "flops": "min"}


def check_objectives(objectives: Mapping[str, str], what: str = "objectives") -> dict[str, str]:
    """``objectives`` as a dict, checked: at least one metric, every mode ``max`` or ``min``; else ``ValueError``
    naming ``what`` (callers that read the user's input turn it into their ``InputError``)."""
    objectives = dict(objectives)
    if not objectives:
        raise ValueError(f"{what} must name at least one metric, e.g. {{'val_acc': 'max', 'flops': 'min'}}")
    bad = {name: mode for name, mode in objectives.items() if mode not in MODES}
    if bad:
        raise ValueError(f"{what}: each mode must be 'max' or 'min', got {bad}")
    return objectives


def is_number(value: Any) -> bool:
    """A real number a result may carry (int, float, numpy scalars), not a bool; NaN and infinities included."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------- states

COMPLETED = "completed"  # trained to the full budget (train.epochs)
EARLY_STOPPED = "early_stopped"  # stopped by the scheduler before the full budget
INFEASIBLE = "infeasible"  # over the job's constraints: never trained
FAILED = "failed"  # diverged, or raised (a Ray error)
STATES = (COMPLETED, EARLY_STOPPED, INFEASIBLE, FAILED)
RUNNING = "running"  # the MLflow tag's value while a trial trains (not a final state)
# Result keys of a trial that ends without training to its budget (states "infeasible" and "failed").
STATE_KEY = "attnsearch_state"
REASON_KEY = "attnsearch_reason"
# Trial config key the study's searcher sets (True) on the baseline it enqueued; the tracking layer turns it into the
# child run's tag TAG_BASELINE instead of a param, and every reader of "the study's baseline" reads that tag.
BASELINE_KEY = "attnsearch_baseline"
# The reason a trial gets, in MLflow and in the Optuna record, when Ray does not know it after a resume: Ray saves
# the study's state every few seconds, so a trial started since the last save is forgotten by a killed driver.
LOST_REASON = ("lost: started after Ray last saved the study's state, then the driver stopped; the resumed study "
               "does not know it and ran another trial instead")


def trial_state(reported: str | None, budget: int, max_t: int, errored: bool = False) -> str:
    """The final state of a finished trial.

    A state the trial reported itself (``STATE_KEY``: infeasible/failed) wins; a Ray error -> failed;
    otherwise epochs trained == ``max_t`` -> completed, fewer -> early_stopped (stopped by the scheduler).
    """
    if reported in STATES:
        return reported
    if errored:
        return FAILED
    return COMPLETED if budget >= max_t else EARLY_STOPPED


def result_state(result: Mapping[str, Any] | None, max_t: int, errored: bool = False) -> str:
    """``trial_state`` read from a trial's last result (its ``STATE_KEY`` and ``epoch``)."""
    result = result or {}
    return trial_state(result.get(STATE_KEY), int(result.get(TIME_ATTR, 0) or 0), max_t, errored)


# Which study a query reads (``--study``): the experiment's most recently started one, or every study of it
# (compared at equal budget); anything else is a study id.
LATEST = "latest"
ALL_STUDIES = "all"

# A study id is its job's name and the time it started, nothing else: ``NAME-YYYYmmdd-HHMMSS-ffffff`` (the
# microseconds keep two studies started in the same second apart; ids sort by time). Ids without them
# (``NAME-YYYYmmdd-HHMMSS``, made by older versions) are read alike.
_STUDY_ID = re.compile(r"(?P<name>.+?)-(?P<stamp>\d{8}-\d{6}(?:-\d{6})?)")


def study_id_at(name: str, when: datetime) -> str:
    """The id of job ``name``'s study started at ``when``."""
    return f"{name}-{when:%Y%m%d-%H%M%S-%f}"


def split_study_id(study_id: str) -> tuple[str, str] | None:
    """``(job name, time stamp)`` of a study id, or None when it is not one; the one parser of study ids.

    The split is unique: a stamp has two or three parts of eight, six and six digits, so no shorter name leaves a
    stamp too (a study of job ``exp-big`` is never job ``exp``'s).
    """
    match = _STUDY_ID.fullmatch(study_id)
    return (match["name"], match["stamp"]) if match else None


def study_conflict(identity: Mapping[str, str], study_id: str, recorded: Mapping[str, str] | None, *,
                   same_space: bool = False) -> str | None:
    """Why study ``study_id`` is not the study of the job whose identity is ``identity``, or None when it is.

    A job's identity is ``{"name": its name, "space": a digest of its resolved search space}`` (what a study records
    when it starts: ``recorded``; None for a study made before studies recorded it, which is the job's when its id
    names the job). A study belongs to the job of its name; ``same_space`` (a study to be continued: ``--resume``)
    also asks for the same search space, since a restored search keeps the space it started with. The reason names
    the study's job, for a message that names both.
    """
    parts = split_study_id(study_id)
    owner = (recorded or {}).get("name") or (parts[0] if parts else None)
    if owner != identity["name"] or (parts is not None and parts[0] != identity["name"]):
        return f"study {study_id} is job {owner!r}'s" if owner else f"{study_id} is not a study id of a job"
    if same_space and recorded is not None and recorded.get("space") != identity["space"]:
        return (f"study {study_id} was started by another definition of job {owner!r} (search space digest "
                f"{str(recorded.get('space'))[:12]}..., this job's {identity['space'][:12]}...)")
    return None

# --------------------------------------------------------------------------------------------------- MLflow tags

TAG_PARENT = "mlflow.parentRunId"
TAG_STUDY = "attnsearch.study"
TAG_ROLE = "attnsearch.role"  # "study" (parent run) | "trial" (child run) | ROLE_RETRAIN (a retrain's parent)
TAG_TRIAL = "attnsearch.trial_id"
TAG_STATE = "attnsearch.state"
TAG_BUDGET = "attnsearch.budget"
TAG_PARETO = "attnsearch.pareto"
TAG_REASON = "attnsearch.reason"
TAG_FAILURES = "attnsearch.failures"
TAG_BASELINE = "attnsearch.baseline"  # "true" on the child run of the study's baseline trial (BASELINE_KEY)
TAG_PARAM_TYPES = "attnsearch.param_types"  # JSON {param: type} so readers can cast params back exactly
# The study's own definition, on its parent run (written when the study starts, or by `attnsearch sync`): what its
# recorded Pareto front means. JSON {metric: "max"|"min"} in the job's order, and the full budget in epochs.
TAG_OBJECTIVES = "attnsearch.objectives"
TAG_MAX_T = "attnsearch.max_t"
# The job a study belongs to, on its parent run (written when it starts): JSON {"name", "space"} (study_conflict).
TAG_JOB = "attnsearch.job"
# The recorded front of another objective set or budget lives under its own names: tag ``attnsearch.pareto.<key>``
# on trials, tags ``attnsearch.pareto.{objectives,budget,reference}.<key>`` and metrics
# ``pareto.{hypervolume,size}.<key>`` on the parent, artifacts under ``pareto/<key>/``
# (key: attnsearch.pareto.front_key).
# The study's own front keeps the plain names: TAG_PARETO, ``pareto.hypervolume``, ``pareto.csv``...
TAG_PARETO_OBJECTIVES = "attnsearch.pareto.objectives"  # parent: the recorded front's objectives (JSON)
TAG_PARETO_BUDGET = "attnsearch.pareto.budget"  # parent: its budget ("full", "any" or epochs)
TAG_PARETO_REFERENCE = "attnsearch.pareto.reference"  # parent: its hypervolume reference point (JSON)
METRIC_HYPERVOLUME = "pareto.hypervolume"  # parent: the recorded front's hypervolume
METRIC_FRONT_SIZE = "pareto.size"  # parent: trials on it
# MLflow's own names the UI reads: the experiment's kind (MLflow 3.17 opens a GenAI traces page without it) and a
# run's description (markdown; the parent's holds the study's recorded front).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODELS = "custom_model_development"
TAG_NOTE = "mlflow.note.content"
# tracking.log_models: whose final weights the driver logs as MLflow models (attnsearch.export), each tagged with
# TAG_TRIAL and TAG_STUDY like its run and registered under the experiment's name.
LOG_MODELS = ("front", "completed", "none")
# `attnsearch retrain`: a parent run of its own (role ROLE_RETRAIN, TAG_STUDY = the retrain's id, so its child runs
# never join a study's), linked to the study it re-evaluates; each child run's params name the study run it retrains.
ROLE_RETRAIN = "retrain"
TAG_RETRAIN_STUDY = "attnsearch.retrain.study"  # retrain parent: the source study's id
TAG_RETRAIN_PARENT = "attnsearch.retrain.parent_run"  # retrain parent: the source study's parent run id
TAG_RETRAIN_SEEDS = "attnsearch.retrain.seeds"  # retrain parent: the seeds, JSON list
PARAM_RETRAIN_SOURCE = "retrain.source_run"  # retrain child param: the study's child run id it retrains
PARAM_RETRAIN_BASELINE = "retrain.baseline"  # retrain child param: True for the baseline configuration
METRIC_RETRAIN_FRONT_SIZE = "retrain.front_size"  # retrain parent: configurations on the front of the seed means
METRIC_RETRAIN_FRONT_KEPT = "retrain.front_kept"  # retrain parent: study front members still on it
METRIC_RETRAIN_BASELINE_MEAN = "retrain.baseline.val_acc_mean"  # retrain parent: the baseline's mean over seeds
METRIC_RETRAIN_BASELINE_STD = "retrain.baseline.val_acc_std"  # retrain parent: and its standard deviation
METRIC_RETRAIN_BASELINE_TEST_MEAN = "retrain.baseline.test_acc_mean"  # retrain parent: the baseline's test_acc mean
METRIC_RETRAIN_BASELINE_TEST_STD = "retrain.baseline.test_acc_std"  # retrain parent: and its standard deviation
# Which knobs matter (attnsearch.importance), on a study's parent run: metrics ``importance.<objective>.<knob>``,
# the evaluator, whether an unreliability rule applies and which ("; "-separated).
TAG_IMPORTANCE_EVALUATOR = "attnsearch.importance.evaluator"
TAG_IMPORTANCE_RELIABLE = "attnsearch.importance.reliable"
TAG_IMPORTANCE_WARNINGS = "attnsearch.importance.warnings"
# `attnsearch prune`: a parent run of its own (role ROLE_PRUNE, TAG_STUDY = the prune's id), linked to the study
# whose models it prunes; each child run (role "trial") is one pruned model, tagged with the run it was pruned from.
ROLE_PRUNE = "prune"
TAG_PRUNE_STUDY = "attnsearch.prune.study"  # prune parent: the source study's id
TAG_PRUNE_PARENT = "attnsearch.prune.parent_run"  # prune parent: the source study's parent run id
TAG_PRUNED_FROM = "attnsearch.pruned_from"  # prune child: the study's child run id of the unpruned model
TAG_PRUNE_RATIO = "attnsearch.prune.ratio"  # prune child: the fraction of channels removed
TAG_PRUNE_IMPORTANCE = "attnsearch.prune.importance"  # prune child: nam | bn | l1 | random
TAG_PRUNE_ON_FRONT = "attnsearch.prune.on_front"  # prune child: on the front over the study's and pruned models
METRIC_VAL_ACC_PRUNED = "val_acc_pruned"  # prune child: val_acc right after pruning, before fine-tuning

# --------------------------------------------------------------------------------------------------- rungs


def rung_milestones(max_t: float, grace_period: float, reduction_factor: float) -> list[float]:
    """The rungs' epochs, ascending: ``grace_period * reduction_factor**k`` below ``max_t`` (the ladder of ASHA and
    MOASHA; the job's own rungs: ``Job.rungs``)."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(t)
        t *= reduction_factor
    return out


__all__ += [name for name in dict(globals()) if name.startswith(("TAG_", "METRIC_", "ROLE_", "PARAM_"))]
