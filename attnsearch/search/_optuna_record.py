"""A study's Optuna record: the Optuna study behind its searcher, kept in a storage Optuna's tools can open.

Where (``optuna_storage_url``): ``search.optuna_storage`` when the job sets it (an RDB URL Optuna's
``RDBStorage`` takes, e.g. ``postgresql://...`` shared by a cluster, or ``sqlite:///...``), else an Optuna journal
file ``optuna.journal`` inside the study's Ray folder (``ray.storage_path/<study id>/``; Optuna's
``JournalFileBackend``, which several processes may share). The Optuna study is named after the study id.

The searcher (``StudySearcher``) asks and tells in it as the study runs, so it holds every trial in the state the
study's MLflow record gives it: completed with its objectives, stopped early as ``PRUNED``, infeasible as
``COMPLETE`` with the constraint ``attnsearch_infeasible`` violated, failed as ``FAIL``; each trial names its Ray
trial (user attribute ``attnsearch_trial_id``). ``reconcile_optuna_record`` makes it agree with the study's Ray
record after the fact (at the study's end, after ``--resume``, and from ``attnsearch sync``): a trial the record
lacks is added (the whole record is rebuilt when it is missing), a trial still running in it whose Ray trial
has ended is told its end, and one whose Ray trial no longer exists (asked after Ray last saved the searcher, then
the driver stopped) is failed with that reason. Nothing is ever added twice.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from ..config import OPTUNA_RDB_SCHEMES
from ..contract import LOST_REASON, REASON_KEY, RUNNING, STATE_KEY, ConfigError
from ..space import define_by_run
from ..uris import redact_uri
from ._searcher import INFEASIBLE_CONSTRAINT, TRIAL_ID_ATTR, _worst
from ._study_dirs import study_path

if TYPE_CHECKING:
    from ..config import Job
    from ..space import SearchSpace
    from ..tracking import TrialRecord

__all__ = [
    "JOURNAL_FILE",
    "load_optuna_study",
    "open_optuna_storage",
    "optuna_record_exists",
    "optuna_storage_url",
    "reconcile_optuna_record",
]

JOURNAL_FILE = "optuna.journal"


def optuna_storage_url(job: Job, study_id: str) -> str:
    """Where study ``study_id`` of ``job`` keeps its Optuna record: ``search.optuna_storage``, else the journal
    file in its Ray folder (a path). Raises ``ConfigError`` when neither is possible (a ``ray.storage_path`` on an
    object store with no ``search.optuna_storage``)."""
    if job.search.optuna_storage:
        return job.search.optuna_storage
    folder = study_path(job, study_id)
    if "://" in folder and not folder.startswith("file://"):
        raise ConfigError(
            f"search.optuna_storage: ray.storage_path={redact_uri(job.ray.storage_path)} is not a local folder, so "
            "the study's Optuna record cannot be a journal file next to its results; set search.optuna_storage to an "
            "RDB URL the driver reaches, e.g. postgresql://user@host/optuna or sqlite:////shared/optuna.db")
    return str(Path(folder.removeprefix("file://")).resolve() / JOURNAL_FILE)


def _is_rdb(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in OPTUNA_RDB_SCHEMES and "://" in url


def open_optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for ``url``: an ``RDBStorage`` for an RDB URL, else a ``JournalStorage`` on that file."""
    if _is_rdb(url):
        return optuna.storages.RDBStorage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def optuna_record_exists(url: str, study_name: str) -> bool:
    """Whether ``url`` holds an Optuna study named ``study_name`` (a missing journal file is no study)."""
    if not _is_rdb(url) and not Path(url).is_file():
        return False
    try:
        names = optuna.get_all_study_names(open_optuna_storage(url))
    except Exception:  # noqa: BLE001 - an unreachable or empty database holds no study
        return False
    return study_name in names


def load_optuna_study(url: str, study_name: str) -> optuna.Study:
    """The Optuna study ``study_name`` in ``url``; ``ValueError`` naming the fix when it is not there."""
    if not optuna_record_exists(url, study_name):
        raise ValueError(f"no Optuna record of study {study_name} at {redact_uri(url)}; rebuild it from the "
                         "study's Ray folder with `attnsearch sync JOB --study " + study_name + "`")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name, storage=open_optuna_storage(url))


def _sampled(space: SearchSpace, config: Mapping[str, Any]) -> FixedTrial:
    """The space's define-by-run replayed on a Ray trial's config: the parameters Optuna sampled, with their
    distributions (constants are not Optuna parameters)."""
    fixed = FixedTrial(dict(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedTrial warns about config keys the function does not suggest
        define_by_run(space)(fixed)
    return fixed


def _outcome(record: TrialRecord, objectives: Mapping[str, str]) -> tuple[TrialState, list[float] | None, float | None]:
    """What the searcher tells Optuna for a finished trial (``StudySearcher.on_trial_complete``), from its record:
    the state, the values (MLflow's last values; an infeasible trial's placeholders) and the constraint."""
    result = {**record.last, **record.static}
    if record.state == "completed":
        values = [result.get(m) for m in objectives]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return TrialState.COMPLETE, [float(v) for v in values], 0.0
        return TrialState.FAIL, None, None  # as OptunaSearch: no values to tell
    if record.state == "infeasible":
        return TrialState.COMPLETE, [_worst(result, m, mode) for m, mode in objectives.items()], 1.0
    if record.state == "early_stopped":
        return TrialState.PRUNED, None, None
    return TrialState.FAIL, None, None


def _ms(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value / 1000)


def _frozen(record: TrialRecord, space: SearchSpace, objectives: Mapping[str, str]) -> FrozenTrial:
    fixed = _sampled(space, record.config)
    state, values, constraint = _outcome(record, objectives)
    start = _ms(record.start_ms) or dt.datetime.now()
    trial = FrozenTrial(
        number=0, trial_id=0, state=state, value=None, values=values, datetime_start=start,
        datetime_complete=max(start, _ms(record.end_ms) or start), params=fixed.params,
        distributions=fixed.distributions, user_attrs={}, system_attrs={}, intermediate_values={},
    )
    trial.set_user_attr(TRIAL_ID_ATTR, record.trial_id)
    trial.set_user_attr(STATE_KEY, record.state)
    if record.state == "infeasible":
        trial.set_user_attr(REASON_KEY, record.reason or "")
    if constraint is not None:
        trial.set_constraint(INFEASIBLE_CONSTRAINT, constraint)
    return trial


def _running(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial:
    """The live ``Trial`` of a running trial of a study loaded from storage. The one private read here: Optuna
    has no public way to reach a running trial another process asked for (``study.tell`` takes its number, but
    user attributes and constraints must be set through a ``Trial``, built from the storage's trial id)."""
    return optuna.Trial(study, trial._trial_id)


def _tell(study: optuna.Study, trial: FrozenTrial, record: TrialRecord, objectives: Mapping[str, str]) -> None:
    state, values, constraint = _outcome(record, objectives)
    ot_trial = _running(study, trial)
    ot_trial.set_user_attr(STATE_KEY, record.state)
    if constraint is not None:
        ot_trial.set_constraint(INFEASIBLE_CONSTRAINT, constraint)
    study.tell(ot_trial, values, state=state, skip_if_finished=True)


def reconcile_optuna_record(
    url: str,
    study_name: str,
    records: Sequence[TrialRecord],
    space: SearchSpace,
    objectives: Mapping[str, str],
) -> dict[str, int]:
    """Make the Optuna record at ``url`` agree with the study's Ray record (``records``: every Ray trial, from
    ``attnsearch.tracking.sync.read_ray_trials``); creates the study when missing. Returns counts: ``trials``
    (in the record afterwards), ``added``, ``told`` (running there, ended in Ray), ``lost`` (failed: no Ray trial).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_optuna_storage(url)
    directions = ["maximize" if m == "max" else "minimize" for m in objectives.values()]
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    by_ray = {t.user_attrs.get(TRIAL_ID_ATTR): t for t in study.get_trials(deepcopy=False)}
    counts = {"added": 0, "told": 0, "lost": 0}
    known = set()
    for record in sorted(records, key=lambda r: (r.start_ms or 0, r.trial_id)):
        known.add(record.trial_id)
        trial = by_ray.get(record.trial_id)
        if record.state == RUNNING:
            continue  # still running in Ray: the searcher tells it when it ends (a later sync, or --resume)
        if trial is None:
            study.add_trial(_frozen(record, space, objectives))
            counts["added"] += 1
        elif not trial.state.is_finished():
            _tell(study, trial, record, objectives)
            counts["told"] += 1
    for ray_id, trial in by_ray.items():
        if ray_id not in known and not trial.state.is_finished():
            ot_trial = _running(study, trial)
            ot_trial.set_user_attr(STATE_KEY, "failed")
            ot_trial.set_user_attr(REASON_KEY, LOST_REASON)
            study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
            counts["lost"] += 1
    return {"trials": len(study.get_trials(deepcopy=False)), **counts}
