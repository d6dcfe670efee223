"""A job's studies on disk: study ids, their Ray experiment directories under ``ray.storage_path``, and which
study ``--resume`` continues."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow.fs
from ray import tune

from ..contract import LATEST, ConfigError

if TYPE_CHECKING:
    from ..config import Job


def new_study_id(job: Job) -> str:
    return f"{job.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _storage_fs(storage_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), storage_path


def existing_studies(job: Job) -> list[str]:
    """Study ids of this job under ``ray.storage_path`` (oldest first), those Ray can restore."""
    fs, root = _storage_fs(job.ray.storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    prefix = f"{job.name}-"
    return sorted(
        info.base_name for info in infos
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix)
        and tune.Tuner.can_restore(info.path, storage_filesystem=fs)
    )


def study_path(job: Job, study_id: str) -> str:
    return f"{job.ray.storage_path.rstrip('/')}/{study_id}"


def resolve_study(job: Job, resume: bool | str) -> tuple[str, bool]:
    """(study_id, restoring) for a run: a new id, the newest study of the job, or the one named."""
    if not resume:
        return new_study_id(job), False
    studies = existing_studies(job)
    if isinstance(resume, str) and resume not in (LATEST, "true"):
        if resume not in studies:
            raise ConfigError(
                f"--resume {resume}: no study of that name under ray.storage_path={job.ray.storage_path}; "
                f"studies of job {job.name!r}: {studies or 'none'}"
            )
        return resume, True
    if not studies:
        raise ConfigError(
            f"--resume: job {job.name!r} has no study under ray.storage_path={job.ray.storage_path} to resume; "
            "run it without --resume first"
        )
    return studies[-1], True
