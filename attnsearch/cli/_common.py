"""What the commands share: the job file argument and its ``--set`` overrides, ``--resume``, loading and checking
the job, the MLflow store a query reads, library errors on the user's arguments as bad input, and the redaction of
everything a command prints or logs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..contract import LATEST, MODES, UsageError
from ..uris import has_credentials, redact_text

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
    """A query reads a store: a local SQLite file that is not there is a wrong path, not a store to create; a
    server gets ``run``'s pre-flight (it answers, as MLflow, with these credentials; ``TrackingError`` if not)."""
    from ..tracking import check_tracking
    from ..uris import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no MLflow store at {db}: run the study first, or name the store with --tracking-uri "
                         "(or the job file whose tracking.uri it is)")
    check_tracking(uri, create=False)


class _RedactingStream:
    """A text stream that writes everything through ``redact_text`` (credentials of URIs hidden)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """While a command runs, nothing it prints or logs shows the credentials of a URI: ``sys.stdout`` and
    ``sys.stderr`` write through ``redact_text``, and every log record's message is redacted when it is made (for
    handlers that hold the original streams, or write files)."""
    streams = sys.stdout, sys.stderr
    factory = logging.getLogRecordFactory()

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, as it would
            return record
        if has_credentials(message):
            record.msg, record.args = redact_text(message), None
        return record

    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
    logging.setLogRecordFactory(redacted_record)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
        logging.setLogRecordFactory(factory)
