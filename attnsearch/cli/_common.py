"""What the commands share: the job file argument and its ``--set`` overrides, ``--resume``, loading and checking
the job, the MLflow store a query reads, and library errors on the user's arguments as bad input."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract import LATEST, MODES, UsageError

if TYPE_CHECKING:
    from ..config import Job

SET_HELP = "override a job key, e.g. --set train.epochs=3 (repeatable)"


def add_set_option(sp: argparse.ArgumentParser, help: str | None = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable): job-key overrides, applied as ``config.load_job(overrides=...)`` does."""
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help=help)


def add_job_argument(sp: argparse.ArgumentParser, *, optional: bool = False, help: str | None = None,
                     set_help: str | None = SET_HELP) -> None:
    """The job file (positional) and its ``--set`` overrides."""
    if optional:
        sp.add_argument("job", nargs="?", help=help or "job YAML file")
    else:
        sp.add_argument("job", help=help or "job YAML file, e.g. jobs/quickstart.yaml")
    add_set_option(sp, set_help)


def add_resume_options(sp: argparse.ArgumentParser, resume_help: str) -> None:
    """``--resume [STUDY]`` (the newest study without a value) and ``--no-pareto``: ``run``'s and ``submit``'s."""
    sp.add_argument("--resume", nargs="?", const=LATEST, default=None, metavar="STUDY", help=resume_help)
    sp.add_argument("--no-pareto", action="store_true", help="skip the Pareto analysis at the end")


def load_checked_job(args) -> Job:
    """The command's job file, validated with its search space."""
    from ..config import load_job
    from ..space import load_space

    job = load_job(args.job, overrides=args.set or ())
    load_space(job)
    return job


@contextlib.contextmanager
def user_argument(what: str) -> Iterator[None]:
    """A library call on the user's arguments: its ``ValueError`` (the zoo's, the backbones', the Pareto tools'
    way of naming a bad argument) is bad input here, not a failure."""
    try:
        yield
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def experiment_and_uri(target: str, args, overrides) -> tuple[str, str, Job | None]:
    from ..config import load_job
    from ..uris import resolve_tracking_uri

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        job = load_job(target, overrides=overrides or ())
        return job.experiment, args.tracking_uri or job.tracking.uri, job
    with user_argument("--tracking-uri"):
        return target, resolve_tracking_uri(args.tracking_uri or "sqlite:///mlflow.db"), None


def parse_objectives(text: str | None, job) -> dict[str, str] | None:
    """--objectives, else the job's; None (the study's own, from MLflow) for an experiment name alone."""
    if not text:
        return dict(job.search.objectives) if job else None
    out = {}
    for part in text.split(","):
        metric, _, mode = part.partition(":")
        if mode not in MODES or not metric:
            raise UsageError(f"--objectives: {part!r} must look like metric:max or metric:min")
        out[metric.strip()] = mode
    return out


def existing_store(uri: str) -> None:
    """A query reads a store: a local SQLite file that is not there is a wrong path, not a store to create."""
    from ..uris import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no MLflow store at {db}: run the study first, or name the store with --tracking-uri "
                         "(or the job file whose tracking.uri it is)")
