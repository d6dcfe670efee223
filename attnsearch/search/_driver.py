"""One driver for every Ray Tune run of attnsearch (a study, a retrain): the checks and Ray before anything runs,
the trainable, the searcher and scheduler a job asks for, and the Tuner with the settings every run shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from .. import tracking
from ..contract import EPOCH_METRICS, TIME_ATTR
from ..data import check_data
from ..space import baseline_point, define_by_run, space_to_dict
from ..train import run_trial
from ..uris import without_credentials
from ._ray_connection import check_cluster_resources, init_ray, resolve_ray_address
from ._schedulers import BaselineASHAScheduler, MOASHAScheduler
from ._searcher import StudySearcher, make_sampler

if TYPE_CHECKING:
    import optuna
    from ray.tune import Callback, Stopper
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from ..config import Job
    from ..space import SearchSpace

__all__ = ["prepare_driver", "trainable_for", "trial_job", "build_tuner", "searcher_and_scheduler", "baseline_points",
           "protect_baseline", "asha_metric", "trial_dirname"]


def prepare_driver(job: Job) -> None:
    """Check what the driver can check before a trial starts, then join (or start) Ray.

    The data, ``ray.address`` (seconds at most: a dead address fails before MLflow is touched), the tracking
    store (a server must answer now; a local store that does not exist yet is only checked to be creatable, so a
    job refused here leaves no new database behind), Ray, and whether a node can run one trial's resources.
    Raises ``ConfigError`` (an ``InputError``) naming the key and the fix.
    """
    check_data(job.data)
    resolve_ray_address(job.ray.address)
    tracking.check_tracking(job.tracking.uri, create=False)
    # Infeasible and diverged trials end with a result that carries no objective values on purpose (a NaN
    # accuracy would enter ASHA's rungs); Tune's strict check would abort the whole run on it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # One small checkpoint per epoch is the point of short trials; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    init_ray(job)
    check_cluster_resources(job)


def trainable_for(job: Job, space: SearchSpace) -> Any:
    """``train.run_trial`` with the job (``trial_job``) and one trial's resources (``resources.cpu``/``gpu``)."""
    return tune.with_resources(
        tune.with_parameters(run_trial, job_dict=trial_job(job, space)),
        {"cpu": job.resources.cpu, "gpu": job.resources.gpu},
    )


# The job's URIs a trial never reads (the driver alone talks to MLflow, the Optuna record and Ray's storage).
_DRIVER_URIS = (("tracking", "uri"), ("search", "optuna_storage"), ("ray", "storage_path"))


def trial_job(job: Job, space: SearchSpace) -> dict[str, Any]:
    """The job as every trial gets it: its search space inline (workers on other nodes cannot read the driver's
    search-space file), and no credentials in the URIs only the driver uses (``uris.without_credentials``), since
    Ray keeps what a trainable is given in its object store, which spills to the nodes' disks under memory
    pressure."""
    job_dict = job.model_dump(mode="json")
    job_dict["search"]["space"] = space_to_dict(space)
    for section, key in _DRIVER_URIS:
        if isinstance(job_dict[section].get(key), str):
            job_dict[section][key] = without_credentials(job_dict[section][key])
    return job_dict


def trial_dirname(trial: Trial) -> str:
    """A trial's folder under its run's experiment directory: ``trial_<id>`` (Ray's default holds the config)."""
    return f"trial_{trial.trial_id}"


def build_tuner(job: Job, trainable: Any, *, search_alg: Searcher, scheduler: TrialScheduler, name: str,
                storage: str, callbacks: Sequence[Callback], num_samples: int,
                stop: Stopper | None = None) -> tune.Tuner:
    """The Tuner of a run: ``search_alg`` limited to ``search.max_concurrent`` trials at a time, ``ray.max_failures``
    retries per trial, one checkpoint kept per trial, the trial folders named by ``trial_dirname``.

    Args:
        job: the job (its ``search.max_concurrent`` and ``ray.max_failures``).
        trainable: what ``trainable_for`` returns.
        search_alg: the searcher, not yet wrapped in a ``ConcurrencyLimiter`` (this function wraps it).
        scheduler: the trial scheduler (``searcher_and_scheduler``'s, or ``FIFOScheduler()``).
        name: the Ray experiment's name (the study or retrain id): its folder under ``storage``.
        storage: the Ray storage path (a local folder or a URI Ray understands).
        callbacks: driver-side callbacks (``MLflowTracker``, ``ProgressPrinter``).
        num_samples: how many trials the searcher may start.
        stop: an optional ``Stopper`` (``EpochBudget``).
    """
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(search_alg, max_concurrent=job.search.max_concurrent),
            scheduler=scheduler, num_samples=num_samples, reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=list(callbacks), stop=stop, verbose=0,
            failure_config=tune.FailureConfig(max_failures=job.ray.max_failures),
            checkpoint_config=final_checkpoint_config(),
        ),
    )


def final_checkpoint_config() -> tune.CheckpointConfig:
    """The checkpoint contract ``attnsearch.export.final_weights`` relies on: each trial keeps its newest
    checkpoint only, so a trial that trained to the end keeps its final epoch's (after ASHA's stops and
    ``--resume`` alike)."""
    return tune.CheckpointConfig(num_to_keep=1)


def asha_metric(job: Job) -> tuple[str, str]:
    """ASHA gets one metric of its own: the first per-epoch metric of ``job.rung_objectives``, else val_acc."""
    for metric, mode in job.rung_objectives.items():
        if metric in EPOCH_METRICS:
            return metric, mode
    return "val_acc", "max"


def baseline_points(job: Job, space: SearchSpace) -> list[dict[str, Any]]:
    """The study's baseline trial config (``space.baseline_point``) as a list, empty with ``search.baseline: false``."""
    return [baseline_point(job, space)] if job.search.baseline else []


def protect_baseline(scheduler: TrialScheduler, baseline: Sequence[dict[str, Any]]) -> TrialScheduler:
    """``scheduler`` with the baseline among its ``protected`` points (trained to the full budget, never stopped),
    when it has that attribute (attnsearch's ASHA and MOASHA schedulers); other schedulers are returned as given."""
    if hasattr(scheduler, "protected"):
        scheduler.protected = [*scheduler.protected, *baseline]
    return scheduler


def searcher_and_scheduler(job: Job, space: SearchSpace, *, storage: optuna.storages.BaseStorage | None = None,
                           study_name: str | None = None) -> tuple[StudySearcher, TrialScheduler]:
    """The searcher and the trial scheduler of a study of ``job``, as ``run_study`` runs it.

    The searcher is a ``StudySearcher`` over ``space`` (define-by-run) for every objective of
    ``search.objectives``, with ``search.sampler`` seeded by ``search.seed``, and the baseline enqueued first
    (``points_to_evaluate``) when ``search.baseline`` is true; it is not wrapped in a ``ConcurrencyLimiter``
    (``build_tuner`` does that). The scheduler is the one ``scheduler.type`` names (``moasha``: every metric of
    ``job.rung_objectives`` at ``job.rungs``; ``asha``: ``asha_metric`` from ``job.grace_period`` by
    ``job.reduction_factor``; ``fifo``), on the time attribute ``epoch`` up to ``train.epochs``, with the baseline
    protected from early stopping.

    Args:
        job: the validated job.
        space: its search space (``space.load_space(job)``).
        storage: where the searcher keeps its Optuna study (``open_optuna_storage``; default: in memory).
        study_name: the Optuna study's name there (a study's id).
    """
    objectives = dict(job.search.objectives)
    baseline = baseline_points(job, space)
    searcher = StudySearcher(
        space=define_by_run(space),
        metric=list(objectives),
        mode=list(objectives.values()),
        sampler=make_sampler(job.search.sampler, job.search.seed),
        points_to_evaluate=baseline or None,  # the baseline is enqueued first
        max_t=job.max_t,
        storage=storage,
        study_name=study_name,
    )
    return searcher, _scheduler(job, baseline)


def _scheduler(job: Job, protected: list[dict[str, Any]]) -> TrialScheduler:
    if job.scheduler_type == "asha":
        metric, mode = asha_metric(job)
        return BaselineASHAScheduler(
            time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=job.max_t,
            grace_period=job.grace_period, reduction_factor=job.reduction_factor, protected=protected,
        )
    if job.scheduler_type == "moasha":
        return MOASHAScheduler(
            job.rung_objectives, max_t=job.max_t, rungs=job.rungs, time_attr=TIME_ATTR, protected=protected,
        )
    return FIFOScheduler()
