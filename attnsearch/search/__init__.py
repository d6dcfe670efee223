"""Assemble and run a study: Optuna (through Ray's OptunaSearch) proposes, ASHA or MOASHA stops, Ray Tune schedules.

One private module per component; the public names are the ones below:

* ``_searcher``: the Optuna sampler and ``StudySearcher`` (what each finished trial is told as);
* ``_progress``: ``StudyProgress``, the progress line the driver prints;
* ``_schedulers``: ``MOASHAScheduler``, early stopping on every objective at once;
* ``_budget``: ``EpochBudget``, a study's budget in total training epochs;
* ``_cluster``: ``ray.address`` resolution and check, ``init_ray``, the per-trial resource check;
* ``_study``: study ids and directories, ``--resume``, the Tuner, ``run_study``.
"""

from ._budget import EpochBudget
from ._cluster import (
    RAY_CONNECT_TIMEOUT_S,
    check_cluster_resources,
    init_ray,
    resolve_ray_address,
)
from ._progress import ProgressPrinter, StudyProgress
from ._schedulers import MOASHAScheduler, check_rung_arguments, rung_milestones, rung_order, rung_position
from ._searcher import INFEASIBLE_CONSTRAINT, StudySearcher, make_sampler
from ._study import (
    StudyOutcome,
    asha_metric,
    existing_studies,
    new_study_id,
    resolve_study,
    run_study,
    study_path,
)

__all__ = [
    "EpochBudget",
    "INFEASIBLE_CONSTRAINT",
    "MOASHAScheduler",
    "RAY_CONNECT_TIMEOUT_S",
    "ProgressPrinter",
    "StudyOutcome",
    "StudyProgress",
    "StudySearcher",
    "asha_metric",
    "check_cluster_resources",
    "check_rung_arguments",
    "existing_studies",
    "init_ray",
    "make_sampler",
    "new_study_id",
    "resolve_ray_address",
    "resolve_study",
    "rung_milestones",
    "rung_order",
    "rung_position",
    "run_study",
    "study_path",
]
