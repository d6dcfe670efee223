"""A job's studies on disk: study ids, their Ray experiment directories under ``ray.storage_path`` (claimed
exclusively when a study starts, with the job's identity in them), and which study ``--resume`` continues."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow.fs
from ray import tune

from ..contract import LATEST, ConfigError, split_study_id, study_conflict, study_id_at
from ..space import job_identity
from ..uris import redact_uri

if TYPE_CHECKING:
    from ..config import Job

IDENTITY_FILE = "attnsearch_job.json"  # in a study's Ray folder: {"study": id, "job": job_identity(job)}
_CLAIM_TRIES = 100  # ids one microsecond apart tried when the first is taken


def new_study_id(job: Job, when: datetime | None = None) -> str:
    """A new study id of ``job``: its name and the time (``contract.study_id_at``; default now)."""
    return study_id_at(job.name, when or datetime.now())


def _storage_fs(storage_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), storage_path


def recorded_identity(job: Job, study_id: str) -> dict[str, str] | None:
    """The job identity the study's Ray folder records (``IDENTITY_FILE``), None for a study made before studies
    recorded one (or an unreadable record)."""
    fs, root = _storage_fs(job.ray.storage_path)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{study_id}/{IDENTITY_FILE}") as f:
            recorded = json.loads(f.read().decode())
    except (OSError, ValueError):
        return None
    ident = recorded.get("job") if isinstance(recorded, dict) else None
    return {str(k): str(v) for k, v in ident.items()} if isinstance(ident, dict) else None


def _restorable(job: Job) -> list[str]:
    """Every study id under ``ray.storage_path`` whose folder Ray can restore (oldest first), any job's."""
    fs, root = _storage_fs(job.ray.storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    return sorted(
        info.base_name for info in infos
        if info.type == pyarrow.fs.FileType.Directory and split_study_id(info.base_name) is not None
        and tune.Tuner.can_restore(info.path, storage_filesystem=fs)
    )


def existing_studies(job: Job, *, same_space: bool = False) -> list[str]:
    """Study ids of this job under ``ray.storage_path`` (oldest first), those Ray can restore: its id names the job
    exactly and the job identity it recorded, if any, is this job's (``contract.study_conflict``; ``same_space``:
    started with this job's search space too, as a study to be resumed must be)."""
    identity = job_identity(job)
    return [s for s in _restorable(job)
            if study_conflict(identity, s, recorded_identity(job, s), same_space=same_space) is None]


def check_own_study(job: Job, study_id: str, command: str, *, same_space: bool = False) -> None:
    """Refuse (``ConfigError``) study ``study_id`` when it is another job's (``same_space``: or was started with
    another search space); a study id not under ``ray.storage_path`` passes (the caller says it is not there)."""
    identity = job_identity(job)
    recorded = recorded_identity(job, study_id)
    if split_study_id(study_id) is None and recorded is None:
        return
    reason = study_conflict(identity, study_id, recorded, same_space=same_space)
    if reason is not None:
        own = ", ".join(existing_studies(job, same_space=same_space)) or "none"
        if study_conflict(identity, study_id, recorded) is None:  # the job's own study, under another space
            raise ConfigError(
                f"{command} {study_id}: {reason}; a resumed search keeps the space it started with: put that space "
                f"back in {job.label} (the study's parent run logs it as params), or run without --resume to start "
                f"a new study; job {job.name!r}'s studies with this space: {own}"
            )
        raise ConfigError(
            f"{command} {study_id}: {reason}, not job {job.name!r}'s ({job.label}); a study belongs to the job "
            f"that started it: give that job's file instead of this one, or one of job {job.name!r}'s own "
            f"studies: {own}"
        )


def study_path(job: Job, study_id: str) -> str:
    return f"{job.ray.storage_path.rstrip('/')}/{study_id}"


def claim_study(job: Job, study_id: str) -> str:
    """Create the new study's Ray folder exclusively, before Ray runs, with the job's identity in it; return its id.

    A folder that exists already (a study started in the same microsecond) is never shared: the id one microsecond
    later is tried instead, so two studies always get two ids and two folders. On an object store (``s3://...``),
    which has no exclusive create, an existing folder is looked for first.

    Args:
        job: the job whose study it is.
        study_id: the id ``new_study_id`` gave it.
    """
    fs, root = _storage_fs(job.ray.storage_path)
    local = isinstance(fs, pyarrow.fs.LocalFileSystem)
    name, stamp = split_study_id(study_id) or (job.name, None)
    when = datetime.strptime(stamp, "%Y%m%d-%H%M%S-%f") if stamp and stamp.count("-") == 2 else datetime.now()
    if local:
        os.makedirs(root, exist_ok=True)
    for step in range(_CLAIM_TRIES):
        candidate = study_id if step == 0 else study_id_at(name, when + timedelta(microseconds=step))
        folder = f"{root.rstrip('/')}/{candidate}"
        if local:
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue
        else:
            if fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
                continue
            fs.create_dir(folder)
        with fs.open_output_stream(f"{folder}/{IDENTITY_FILE}") as f:
            f.write(json.dumps({"study": candidate, "job": job_identity(job)}, indent=1).encode())
        return candidate
    raise ConfigError(f"ray.storage_path={redact_uri(job.ray.storage_path)}: no free study folder for {study_id} "
                      f"and the {_CLAIM_TRIES - 1} ids after it; start the study again")


def resolve_study(job: Job, resume: bool | str) -> tuple[str, bool]:
    """(study_id, restoring) for a run: a new id (its folder not yet claimed: ``claim_study``), the newest study of
    the job, or the one named (refused when it is another job's)."""
    if not resume:
        return new_study_id(job), False
    studies = existing_studies(job, same_space=True)  # a restored search keeps the space it started with
    if isinstance(resume, str) and resume not in (LATEST, "true"):
        if resume not in studies:
            check_own_study(job, resume, "--resume", same_space=True)
            raise ConfigError(
                f"--resume {resume}: no study of that name under ray.storage_path={redact_uri(job.ray.storage_path)}; "
                f"studies of job {job.name!r}: {studies or 'none'}"
            )
        return resume, True
    if not studies:
        raise ConfigError(
            f"--resume: job {job.name!r} has no study under ray.storage_path={redact_uri(job.ray.storage_path)} "
            "to resume; run it without --resume first"
        )
    return studies[-1], True
