"""A study run: the Tuner that runs it (new, or restored for ``--resume``) and what came of it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from .. import tracking
from ..contract import EPOCH_METRICS, ConfigError
from ..data import check_data
from ..space import (
    baseline_point,
    check_space,
    define_by_run,
    load_space,
    space_to_dict,
)
from ..tracking.callback import MLflowTracker
from ..train import run_trial
from ._budget import EpochBudget
from ._progress import ProgressPrinter, StudyProgress
from ._ray_connection import check_cluster_resources, init_ray, resolve_ray_address
from ._schedulers import BaselineASHAScheduler, MOASHAScheduler
from ._searcher import StudySearcher, make_sampler
from ._study_dirs import resolve_study, study_path

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from ..config import Job


def asha_metric(job: Job) -> tuple[str, str]:
    """ASHA gets one metric of its own: the first per-epoch objective, else val_acc."""
    for metric, mode in job.search.objectives.items():
        if metric in EPOCH_METRICS:
            return metric, mode
    return "val_acc", "max"


def _restored_run_config(tuner: tune.Tuner) -> tune.RunConfig:
    """The RunConfig a restored Tuner will run with, so that this driver can put its callbacks there.

    The only access to the Tuner's private state: Ray's ``Tuner.restore`` takes no callbacks argument, and the
    RunConfig it unpickles holds the previous driver's callbacks (their MLflow parent run, their progress tally),
    which must not run again (upstream: ray-project/ray#41364, no public access to a restored Tuner's RunConfig).
    Under Ray Client (``ray.address: ray://...``) the Tuner lives in a remote actor and
    has no local tuner whose RunConfig could be changed: a ``ConfigError`` says where to resume instead.
    """
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        if getattr(tuner, "_is_ray_client", False):
            raise ConfigError(
                "--resume over Ray Client (ray.address: ray://...) is not supported: Ray restores the study's "
                "Tuner in a remote actor, where this driver cannot replace its callbacks; resume on the cluster "
                "instead: `attnsearch run JOB --resume` on the head node with ray.address: auto, or "
                "`attnsearch submit JOB` (with --resume among the run arguments)"
            )
        raise RuntimeError(  # a Ray upgrade renamed Tuner._local_tuner: tests/test_search.py catches it first
            f"ray {ray.__version__}: a Tuner has no _local_tuner, which attnsearch --resume relies on; install "
            "the Ray version that pyproject.toml allows"
        )
    return local.get_run_config()


@dataclass
class StudyOutcome:
    """What a finished ``run_study`` returns.

    ``searcher`` is the study's ``StudySearcher`` (its Optuna study holds every trial as told) for a new study;
    None for a resumed one, whose searcher Ray restores inside the Tuner (the MLflow runs hold the results).
    """

    study_id: str
    experiment_path: str
    parent_run_id: str | None
    progress: StudyProgress
    searcher: StudySearcher | None


def run_study(job: Job, *, resume: bool | str = False, job_text: str | None = None,
              stream: IO[str] | None = None, scheduler: TrialScheduler | None = None) -> StudyOutcome:
    """Run (or resume) the study of ``job`` to completion and return what happened.

    ``scheduler`` replaces the one ``scheduler.type`` names (for comparisons such as
    ``benchmarks/search_quality.py``); it gets the study's baseline config as a protected point through its
    ``protected`` attribute when it has one.

    Everything that can be checked on the driver is checked before Ray starts a trial: the data, the space,
    the tracking store, the cluster's resources.
    """
    space = load_space(job)
    check_space(job, space)
    check_data(job.data)
    resolve_ray_address(job.ray.address)  # seconds at most: a dead ray.address fails before MLflow is touched
    # A server must answer now; a local store that does not exist yet is only checked to be creatable: a job
    # refused below (cluster resources) leaves no new database behind. start_study creates it.
    tracking.check_tracking(job.tracking.uri, create=False)
    study_id, restoring = resolve_study(job, resume)

    # Infeasible and diverged trials end with a result that carries no objective values on purpose (a NaN
    # accuracy would enter ASHA's rungs); Tune's strict check would abort the whole study on it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # One small checkpoint per epoch is the point of short trials; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    init_ray(job)
    check_cluster_resources(job)  # before the tracking store is opened (start_study)

    job_dict = job.model_dump(mode="json")
    # The space travels inline: workers on other nodes cannot read the driver's search-space file.
    job_dict["search"]["space"] = space_to_dict(space)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job_dict=job_dict),
        {"cpu": job.resources.cpu, "gpu": job.resources.gpu},
    )
    path = study_path(job, study_id)
    tuner: tune.Tuner | None = None
    restored_config: tune.RunConfig | None = None
    if restoring:  # read only, before MLflow is touched: a Ray Client driver is refused here
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        restored_config = _restored_run_config(tuner)

    experiment = job.tracking.experiment or job.name
    parent_run_id = tracking.start_study(
        job.tracking.uri, experiment, study_id, job_text or job.to_yaml(), space_to_dict(space), resume=restoring,
        objectives=dict(job.search.objectives), max_t=job.train.epochs,
    )
    max_t = job.train.epochs
    objectives = dict(job.search.objectives)
    progress = StudyProgress(job.search.num_samples, max_t, objectives)
    callbacks = [
        MLflowTracker(job.tracking.uri, experiment, parent_run_id, study_id, max_t=max_t),
        ProgressPrinter(progress, stream=stream),
    ]
    searcher: StudySearcher | None = None
    if restored_config is not None:
        # The pickled callbacks hold the previous driver's state; this driver's callbacks replace them.
        restored_config.callbacks = callbacks
    else:
        baseline = [baseline_point(job, space)] if job.search.baseline else []
        searcher = StudySearcher(
            space=define_by_run(space),
            metric=list(objectives),
            mode=list(objectives.values()),
            sampler=make_sampler(job.search.sampler, job.search.seed),
            points_to_evaluate=baseline or None,  # the baseline is enqueued first
            max_t=max_t,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=job.search.max_concurrent),
                scheduler=_scheduler(job, baseline) if scheduler is None else _protect(scheduler, baseline),
                num_samples=job.search.num_samples,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=study_id,
                storage_path=job.ray.storage_path,
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=job.ray.max_failures),
                stop=EpochBudget(job.search.budget_epochs) if job.search.budget_epochs else None,
                # the contract attnsearch.export.final_weights relies on: each trial keeps its newest checkpoint,
                # so a completed trial's is of its final epoch (after ASHA stops and --resume too)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
    print(f"study {study_id}: {job.search.num_samples} trials, {job.search.sampler} sampler, "
          f"{job.scheduler_type} scheduler, results in {path}", file=stream or sys.stdout, flush=True)
    tuner.fit()
    return StudyOutcome(study_id, path, parent_run_id, progress, searcher)


def _scheduler(job: Job, protected: list[dict]) -> TrialScheduler:
    if job.scheduler_type == "asha":
        metric, mode = asha_metric(job)
        return BaselineASHAScheduler(
            time_attr="epoch", metric=metric, mode=mode, max_t=job.train.epochs,
            grace_period=job.scheduler.grace_period, reduction_factor=job.scheduler.reduction_factor,
            protected=protected,
        )
    if job.scheduler_type == "moasha":
        return MOASHAScheduler(
            dict(job.search.objectives), max_t=job.train.epochs, grace_period=job.scheduler.grace_period,
            reduction_factor=job.scheduler.reduction_factor, time_attr="epoch", protected=protected,
        )
    return FIFOScheduler()


def _protect(scheduler: TrialScheduler, baseline: list[dict]) -> TrialScheduler:
    if hasattr(scheduler, "protected"):
        scheduler.protected = [*scheduler.protected, *baseline]
    return scheduler


def _trial_dirname(trial: Trial) -> str:
    return f"trial_{trial.trial_id}"
