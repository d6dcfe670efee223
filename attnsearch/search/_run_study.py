"""A study run: the Tuner that runs it (new, or restored for ``--resume``) and what came of it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import ray
from ray import tune

from .. import tracking
from ..contract import ConfigError
from ..space import check_space, job_identity, load_space, space_to_dict
from ..tracking.callback import MLflowTracker
from ..tracking.sync import read_ray_trials
from ..uris import redact_uri
from ._budget import EpochBudget
from ._driver import (
    baseline_points,
    build_tuner,
    prepare_driver,
    protect_baseline,
    searcher_and_scheduler,
    trainable_for,
)
from ._optuna_record import open_optuna_storage, optuna_storage_url, reconcile_optuna_record
from ._progress import ProgressPrinter, StudyProgress
from ._searcher import StudySearcher
from ._study_dirs import claim_study, recorded_identity, resolve_study, study_path
from ._study_params import study_params

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

    from ..config import Job
    from ..space import SearchSpace


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
    optuna_storage: str | None = None  # the study's Optuna record (optuna_storage_url)


def run_study(job: Job, *, resume: bool | str = False, job_text: str | None = None,
              stream: IO[str] | None = None, scheduler: TrialScheduler | None = None) -> StudyOutcome:
    """Run (or resume) the study of ``job`` to completion and return what happened.

    ``scheduler`` replaces the one ``scheduler.type`` names (for comparisons such as
    ``benchmarks/search_quality.py``); it gets the study's baseline config as a protected point through its
    ``protected`` attribute when it has one.

    Everything that can be checked on the driver is checked before Ray starts a trial: the data, the space (and
    that its cheapest configuration meets the job's constraints), the tracking store, the cluster's resources.

    Args:
        job: the validated job (``attnsearch.config.load_job``).
        resume: False for a new study; True or ``"latest"`` to continue the job's newest study; a study id to
            continue that one.
        job_text: the job file's text, logged as the parent run's ``job.yaml`` (default: the job re-serialised).
        stream: where the progress lines go (default: stdout).
        scheduler: a Ray Tune scheduler that replaces the one ``scheduler.type`` names.

    Raises:
        InputError: bad input (job, space, constraints, store, cluster, another job's study to resume), before
            anything starts.
    """
    space = load_space(job)
    check_space(job, space)
    study_id, restoring = resolve_study(job, resume)  # another job's study is refused here
    optuna_url = optuna_storage_url(job, study_id)  # refused here, before anything starts, when it cannot be
    prepare_driver(job)  # before the tracking store is opened (start_study)
    trainable = trainable_for(job, space)
    tuner: tune.Tuner | None = None
    restored_config: tune.RunConfig | None = None
    if restoring:  # read only, before MLflow is touched: a Ray Client driver is refused here
        tuner = tune.Tuner.restore(study_path(job, study_id), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        restored_config = _restored_run_config(tuner)
        identity = recorded_identity(job, study_id)  # None for a study made before studies recorded it
    else:  # the study's own folder, never shared with another study, before Ray writes into it
        study_id = claim_study(job, study_id)
        optuna_url = optuna_storage_url(job, study_id)
        identity = job_identity(job, space)
    path = study_path(job, study_id)

    experiment = job.experiment
    parent_run_id = tracking.start_study(
        job.tracking.uri, experiment, study_id, job_text or job.to_yaml(), space_to_dict(space), resume=restoring,
        objectives=dict(job.search.objectives), max_t=job.max_t, params=study_params(job, space), identity=identity,
    )
    max_t = job.max_t
    objectives = dict(job.search.objectives)
    progress = StudyProgress(job.search.num_samples, max_t, objectives)
    callbacks = [
        MLflowTracker(job.tracking.uri, experiment, parent_run_id, study_id, max_t=max_t,
                      datasets=tracking.dataset_inputs(job.data)),
        ProgressPrinter(progress, stream=stream),
    ]
    searcher: StudySearcher | None = None
    if restored_config is not None:
        # The pickled callbacks hold the previous driver's state; this driver's callbacks replace them.
        restored_config.callbacks = callbacks
    else:
        # its Optuna study kept where optuna-dashboard and `attnsearch importance` read it
        searcher, default_scheduler = searcher_and_scheduler(job, space, storage=open_optuna_storage(optuna_url),
                                                             study_name=study_id)
        tuner = build_tuner(
            job, trainable, search_alg=searcher,
            scheduler=default_scheduler if scheduler is None else protect_baseline(scheduler,
                                                                                   baseline_points(job, space)),
            name=study_id, storage=job.ray.storage_path, callbacks=callbacks, num_samples=job.search.num_samples,
            stop=EpochBudget(job.search.budget_epochs) if job.search.budget_epochs else None,
        )
    print(f"study {study_id}: {job.search.num_samples} trials, {job.search.sampler} sampler, "
          f"{job.scheduler_type} scheduler, results in {redact_uri(path)}", file=stream or sys.stdout, flush=True)
    tuner.fit()
    _reconcile_optuna(job, space, study_id, path, optuna_url, stream)
    return StudyOutcome(study_id, path, parent_run_id, progress, searcher, optuna_url)


def _reconcile_optuna(job: Job, space: SearchSpace, study_id: str, path: str, url: str,
                      stream: IO[str] | None) -> None:
    """The study's Optuna record made to agree with its Ray record (what a resumed or killed driver left); a
    failure here never fails the study (``attnsearch sync JOB`` does it again)."""
    try:
        records = read_ray_trials(path, job.max_t)
        reconcile_optuna_record(url, study_id, records, space, dict(job.search.objectives))
    except Exception as exc:  # noqa: BLE001 - the study and its MLflow record are complete either way
        print(f"Optuna record of {study_id} not reconciled: {exc}; attnsearch sync JOB does it later",
              file=stream or sys.stderr)

