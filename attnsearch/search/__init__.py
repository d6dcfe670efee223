"""Assemble and run a study: Optuna (through Ray's OptunaSearch) proposes, ASHA or MOASHA stops, Ray Tune schedules.

One private module per component; the public names are the ones below:

* ``_searcher``: the Optuna sampler and ``StudySearcher`` (what each finished trial is told as), ``FixedConfigs``;
* ``_progress``: ``StudyProgress``, the progress line the driver prints;
* ``_schedulers``: ``MOASHAScheduler``, early stopping on every objective at once;
* ``_budget``: ``EpochBudget``, a study's budget in total training epochs;
* ``_driver``: one driver for every Tune run: ``prepare_driver``, ``trainable_for`` (``trial_job``: the job a
  trial gets), ``build_tuner``, ``searcher_and_scheduler`` (the searcher and scheduler a job asks for; also what a
  replay benchmark drives);
* ``_ray_connection``: ``ray.address`` resolution and check, ``init_ray``, the per-trial resource check;
* ``_optuna_record``: the study's Optuna record (its storage, reconciled with the Ray record);
* ``_study_dirs``: study ids and their Ray experiment directories (claimed exclusively, with the job's identity),
  which study ``--resume`` continues and whether a named study is the job's;
* ``_study_params``: ``study_params``, the study's definition as the MLflow params of its parent run;
* ``_run_study``: the Tuner of a study (new or restored), ``run_study``;
* ``_retrain``: ``retrain``, a study's front and baseline retrained with several seeds.
"""

from ..contract import rung_milestones  # in contract so that config (Job.ladder) reads it too
from ._budget import EpochBudget
from ._driver import (
    asha_metric,
    build_tuner,
    prepare_driver,
    searcher_and_scheduler,
    trainable_for,
    trial_job,
)
from ._optuna_record import (
    JOURNAL_FILE,
    load_optuna_study,
    open_optuna_storage,
    optuna_record_exists,
    optuna_storage_url,
    reconcile_optuna_record,
)
from ._progress import ProgressPrinter, StudyProgress
from ._ray_connection import check_cluster_resources, init_ray, resolve_ray_address
from ._retrain import (
    RetrainConfig,
    RetrainOutcome,
    format_retrain,
    protocol_mismatch,
    retrain,
    retrain_seeds,
    select_configs,
    summarize,
)
from ._run_study import StudyOutcome, run_study
from ._schedulers import (
    MOASHAScheduler,
    check_rung_arguments,
    check_rungs,
    rung_order,
    rung_position,
)
from ._searcher import (
    INFEASIBLE_CONSTRAINT,
    TRIAL_ID_ATTR,
    FinishedTrialsSampler,
    FixedConfigs,
    StudySearcher,
    make_sampler,
)
from ._study_dirs import (
    IDENTITY_FILE,
    check_own_study,
    claim_study,
    existing_studies,
    new_study_id,
    recorded_identity,
    resolve_study,
    study_path,
)
from ._study_params import space_digest, study_params

__all__ = [
    "JOURNAL_FILE",
    "TRIAL_ID_ATTR",
    "load_optuna_study",
    "open_optuna_storage",
    "optuna_record_exists",
    "optuna_storage_url",
    "reconcile_optuna_record",
    "EpochBudget",
    "FinishedTrialsSampler",
    "FixedConfigs",
    "INFEASIBLE_CONSTRAINT",
    "MOASHAScheduler",
    "ProgressPrinter",
    "RetrainConfig",
    "RetrainOutcome",
    "StudyOutcome",
    "StudyProgress",
    "StudySearcher",
    "asha_metric",
    "build_tuner",
    "check_cluster_resources",
    "check_rung_arguments",
    "check_rungs",
    "existing_studies",
    "check_own_study",
    "claim_study",
    "recorded_identity",
    "IDENTITY_FILE",
    "format_retrain",
    "init_ray",
    "make_sampler",
    "new_study_id",
    "prepare_driver",
    "resolve_ray_address",
    "resolve_study",
    "retrain",
    "protocol_mismatch",
    "retrain_seeds",
    "rung_milestones",
    "rung_order",
    "rung_position",
    "run_study",
    "searcher_and_scheduler",
    "select_configs",
    "space_digest",
    "study_params",
    "study_path",
    "summarize",
    "trainable_for",
    "trial_job",
]
