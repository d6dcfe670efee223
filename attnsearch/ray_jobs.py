"""The Ray Jobs client: a study run on a remote Ray cluster through the Ray Jobs API (``attnsearch submit``,
``status`` and ``logs``; the commands themselves are in ``attnsearch.cli._ray_jobs``).

``attnsearch submit JOB --address http://head:8265`` packs the job file and its search-space file (nothing
else: data never travels) into a Ray ``working_dir``, rewrites ``search.space`` to the copy's relative path and
starts ``attnsearch run JOB [--set ...]`` as a Ray Job on the head. The study's driver then runs on the cluster,
so the submitting laptop may disconnect. ``status`` lists the cluster's jobs (or shows one), ``logs`` prints or
follows one job's output.

The address is the Ray dashboard's HTTP address (port 8265 by default), not the GCS address (port 6379):
``--address``, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``, else ``http://127.0.0.1:8265``, the
order of Ray's own ``ray job`` CLI. An address that does not answer is a ``ConfigError`` after a few seconds.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from . import uris
from ._schema_messages import parse_override
from ._table import format_table
from ._yaml import read_yaml
from .config import ConfigError, apply_overrides, load_job
from .space import load_space
from .uris import RAY_DASHBOARD_ADDRESS, split_scheme, sqlite_path

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
SPACE_DIR = "search_spaces"
RUN_COMMAND = ("attnsearch", "run")

_ADDRESS_FIX = (
    "start the cluster (`ray start --head --dashboard-host 0.0.0.0`, `ray up docker/cluster.yaml` or "
    "`docker compose -f docker/compose.yaml up -d`), or reach its dashboard port 8265 through a tunnel "
    "(`ray dashboard docker/cluster.yaml`, `kubectl port-forward svc/<raycluster>-head-svc 8265:8265`), "
    "then pass --address http://HOST:8265 or set RAY_ADDRESS"
)
_AUTH_FIX = (
    "the cluster uses Ray token authentication: set RAY_AUTH_MODE=token and give the cluster's token as "
    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
)


# --------------------------------------------------------------------------------------------------- address


def resolve_address(address: str | None = None) -> tuple[str, str]:
    """``(http address, where it came from)``: ``--address``, ``$RAY_API_SERVER_ADDRESS``, ``$RAY_ADDRESS``, default."""
    source = "--address"
    if not address:
        for name in ADDRESS_ENV_VARS:
            if os.environ.get(name, "").strip():
                address, source = os.environ[name].strip(), f"${name}"
                break
        else:
            address, source = RAY_DASHBOARD_ADDRESS, "the default address"
    address = address.strip()
    if address in ("auto", "local") or address.startswith("ray://"):
        raise ConfigError(
            f"{source}={address!r}: the Ray Jobs API needs the dashboard's HTTP address, e.g. "
            f"http://head:8265 (ray.address=auto and ray:// are for a driver running on the cluster); "
            f"pass --address http://HOST:8265"
        )
    if split_scheme(address) is None:
        address = f"http://{address}"  # Ray's CLI does the same for a bare host:port
    address = address.rstrip("/")
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ConfigError(
            f"{source}={address!r}: expected the Ray dashboard address as http(s)://HOST[:PORT], "
            f"e.g. {RAY_DASHBOARD_ADDRESS}"
        )
    return address, source


def check_reachable(address: str, source: str = "--address", timeout: float | None = None) -> None:
    """Raise ``ConfigError`` unless a Ray dashboard answers at ``address`` within ``timeout`` seconds.

    Ray's client sets no timeout on its requests, so a silent address would hang it for minutes.
    """
    import requests

    timeout = uris.RAY_CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        response = requests.get(f"{address}/api/version", timeout=timeout)
    except requests.exceptions.Timeout:
        raise ConfigError(
            f"{source}={address}: no answer within {timeout:g} s (a firewall, a wrong host, or a head that is "
            f"still starting); {_ADDRESS_FIX}"
        ) from None
    except requests.exceptions.RequestException as exc:
        reason = _short_reason(exc)
        raise ConfigError(f"{source}={address}: no Ray dashboard answers there ({reason}); {_ADDRESS_FIX}") from None
    if response.status_code == 404:
        raise ConfigError(
            f"{source}={address}: something answers there but it is not a Ray dashboard (no /api/version); "
            f"the Jobs API listens on the dashboard port (8265 unless --dashboard-port says otherwise), not on "
            f"the GCS port 6379"
        )


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "No route to host", "Network is unreachable", "nodename nor servname"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


def connect(address: str | None = None) -> JobSubmissionClient:
    """A ``JobSubmissionClient`` for ``address`` (resolved as in ``resolve_address``), checked to answer."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address, source = resolve_address(address)
    check_reachable(address, source)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(f"{source}={address}: the dashboard refused the request; {_AUTH_FIX}") from None
    except ConnectionError as exc:
        raise ConfigError(f"{source}={address}: {exc}; {_ADDRESS_FIX}") from None
    except RuntimeError as exc:  # version check: a Ray too old for the Jobs API
        raise ConfigError(f"{source}={address}: {exc}") from None


# --------------------------------------------------------------------------------------------------- working_dir


@dataclass
class JobBundle:
    """What ``submit`` sends: a working_dir holding the job file and its space file, and the command to run."""

    working_dir: Path
    job_file: str  # relative to working_dir
    space_file: str | None  # relative to working_dir; None for an inline space
    overrides: list[str]  # the --set overrides the command line passes on
    entrypoint: str
    job_name: str
    warnings: list[str] = field(default_factory=list)


def _touches_space(override: str) -> bool:
    keys, _ = parse_override(override)
    return keys[:2] == ["search", "space"]


def _is_local_relative(path: str) -> bool:
    return not (split_scheme(path) or Path(path).expanduser().is_absolute())


def _is_relative_store(uri: str) -> bool:
    """A tracking URI naming a local file by a relative path (``sqlite:///mlflow.db``, ``mlruns``)."""
    if uri.startswith("sqlite:///"):
        db = sqlite_path(uri)
        return db is not None and not db.is_absolute()
    return not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not Path(uri).expanduser().is_absolute()


def _cluster_path_warnings(raw: dict[str, Any]) -> list[str]:
    """Paths that would resolve inside the job's temporary working_dir on the head (and vanish with it)."""
    def get(section: str, key: str, default: Any = None) -> Any:
        node = raw.get(section)
        return node.get(key, default) if isinstance(node, dict) else default

    out = []
    storage = get("ray", "storage_path", "ray_results")
    if isinstance(storage, str) and _is_local_relative(storage):
        out.append(f"ray.storage_path={storage!r} is relative: on the cluster it lands in the job's temporary "
                   f"working directory and is lost; use a shared path or bucket, e.g. --set "
                   f"ray.storage_path=s3://bucket/ray_results or /shared/ray_results")
    uri = get("tracking", "uri", "sqlite:///mlflow.db")
    if isinstance(uri, str) and _is_relative_store(uri):
        out.append(f"tracking.uri={uri!r} is a local store relative to the job's temporary working directory; "
                   f"use an MLflow server, e.g. --set tracking.uri=http://mlflow:5000")
    for section, key in (("data", "root"), ("backbone", "weights_path")):
        value = get(section, key)
        if isinstance(value, str) and _is_local_relative(value):
            out.append(f"{section}.{key}={value!r} is relative and data is not uploaded: on the cluster it is "
                       f"looked up in the job's working directory; give the absolute path on the cluster's nodes")
    return out


def _keys_with_credentials(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``node`` (a parsed job) whose string values hold a URI with userinfo."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _keys_with_credentials(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, value in enumerate(node) for k in _keys_with_credentials(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(node, str) and uris.has_credentials(node) else []


_CREDENTIALS_FIX = {
    "tracking.uri": "give the URI without them and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or "
                    "MLFLOW_TRACKING_TOKEN) on the head, where the driver runs: docker/.env (compose), "
                    "docker/cluster.env (ray up) or the attnsearch-mlflow Secret (KubeRay)",
}


def refuse_credentials(job: dict[str, Any], job_path: str | Path) -> None:
    """Raise ``ConfigError`` when a value of ``job`` (the job file with its ``--set`` overrides) holds a URI with
    credentials: a Ray Job's entrypoint, its metadata and its runtime_env are shown to every user of the cluster's
    dashboard and Jobs API, and its uploaded working_dir can be read back from the cluster, so ``submit`` sends no
    credentials at all (the cluster's nodes hold them, in the environment variables their clients read)."""
    keys = _keys_with_credentials(job)
    if not keys:
        return
    fixes = [f"{key}: {_CREDENTIALS_FIX.get(key, 'give the URI without them; the cluster must hold them')}"
             for key in keys]
    raise ConfigError(
        f"submit {job_path}: {', '.join(keys)} holds credentials (user:password@ in a URI); a Ray Job's command "
        f"line and its uploaded files are shown to every user of the cluster's dashboard, so submit sends none. "
        + "; ".join(fixes)
    )


def build_working_dir(
    job_path: str | Path,
    overrides: Sequence[str] = (),
    dest: str | Path | None = None,
    *,
    command: Sequence[str] = RUN_COMMAND,
    extra_args: Sequence[str] = (),
) -> JobBundle:
    """Validate the job locally and write the working_dir that ``submit`` uploads into ``dest``.

    The job file is copied as written (overrides are not baked in, the command line passes them on, so
    ``attnsearch status`` shows them), except two keys: ``search.space`` points at the copy of the space file
    inside the working_dir (a ``--set search.space...`` override is applied here and not passed on, its path
    being the submitter's), and a missing ``ray.address`` becomes ``auto``, because a Ray Job's driver must join
    the cluster it runs on instead of starting a private one. A job or override holding a URI with credentials is
    refused (``refuse_credentials``) before anything is written.
    """
    job_path = Path(job_path)
    job = load_job(job_path, overrides)  # the whole job and its space are checked before anything is sent
    load_space(job)
    raw = read_yaml(job_path, "job file")
    if not isinstance(raw, dict):  # load_job already refused this; keeps the type checker honest
        raise ConfigError(f"{job_path}: expected a mapping")
    effective = apply_overrides(copy.deepcopy(raw), overrides, str(job_path))
    refuse_credentials(effective, job_path)
    if dest is not None and Path(dest).exists() and (not Path(dest).is_dir() or any(Path(dest).iterdir())):
        raise ConfigError(f"--dry-run {dest}: not an empty folder; the working_dir is written into a new or empty "
                          "folder only (nothing there is overwritten: the job's own folder would lose its job file)")
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="attnsearch-job-"))
    dest.mkdir(parents=True, exist_ok=True)

    passed = [o for o in overrides if not _touches_space(o)]
    warnings = _cluster_path_warnings(effective)

    search = raw.setdefault("search", {})
    space_file = None
    if isinstance(job.search.space, str):
        src = Path(job.search.space)
        space_file = f"{SPACE_DIR}/{src.name}"
        (dest / SPACE_DIR).mkdir(exist_ok=True)
        shutil.copyfile(src, dest / space_file)
        search["space"] = space_file
    else:
        search["space"] = effective["search"]["space"]  # inline, possibly changed by --set search.space.x=...
    ray_section = raw.get("ray")
    if not isinstance(ray_section, dict):
        ray_section = raw["ray"] = {}
    if job.ray.address is None:
        ray_section["address"] = "auto"

    job_file = job_path.name
    header = (f"# Written by `attnsearch submit` from {job_path}: search.space points into this working_dir"
              f"{' and ray.address is auto' if job.ray.address is None else ''}.\n")
    (dest / job_file).write_text(header + yaml.safe_dump(raw, sort_keys=False))
    argv = [*command, job_file, *[part for o in passed for part in ("--set", o)], *extra_args]
    return JobBundle(dest, job_file, space_file, passed, shlex.join(argv), job.name, warnings)


# --------------------------------------------------------------------------------------------------- commands


def submit(
    job_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    submission_id: str | None = None,
    command: Sequence[str] = RUN_COMMAND,
    extra_args: Sequence[str] = (),
    stream=None,
) -> str:
    """Submit the study of ``job_path`` as a Ray Job; returns the submission id."""
    stream = stream or sys.stderr
    with tempfile.TemporaryDirectory(prefix="attnsearch-job-") as tmp:
        bundle = build_working_dir(job_path, overrides, tmp, command=command, extra_args=extra_args)
        for line in bundle.warnings:
            print(f"warning: {line}", file=stream)
        client = connect(address)
        try:
            # submit_job zips and uploads the working_dir before it returns, so the temporary folder may go.
            return client.submit_job(
                entrypoint=bundle.entrypoint,
                runtime_env={"working_dir": str(bundle.working_dir)},
                submission_id=submission_id,
                metadata={"attnsearch.job": bundle.job_name, "attnsearch.source": str(Path(job_path).resolve())},
            )
        except RuntimeError as exc:
            raise ConfigError(f"submit: the cluster refused the job: {exc}") from None


def job_info(client, submission_id: str):
    """The job's ``JobDetails``; a ``ConfigError`` naming ``attnsearch status`` for an id the cluster does not know."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise ConfigError(
                f"no job {submission_id!r} on the cluster at {client.get_address()}; "
                f"`attnsearch status` lists the submission ids it knows"
            ) from None
        raise


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _duration(start: int | None, end: int | None) -> str:
    if not start:
        return "-"
    end = end or int(datetime.now().timestamp() * 1000)
    seconds = max(0, (end - start) // 1000)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_jobs(jobs: Sequence[Any]) -> str:
    """A table of ``JobDetails``: oldest first."""
    rows = []
    for info in sorted(jobs, key=lambda j: j.start_time or 0):
        entry = info.entrypoint or ""
        rows.append((info.submission_id or info.job_id or "-", str(info.status), _when(info.start_time),
                     _duration(info.start_time, info.end_time), entry if len(entry) <= 70 else entry[:67] + "..."))
    return format_table(("submission id", "status", "started", "duration", "entrypoint"), rows)


def format_job(info: Any) -> str:
    lines = [
        f"submission id  {info.submission_id or info.job_id}",
        f"status         {info.status}",
        f"entrypoint     {info.entrypoint}",
        f"started        {_when(info.start_time)}",
        f"ended          {_when(info.end_time)}",
        f"duration       {_duration(info.start_time, info.end_time)}",
    ]
    if info.message:
        lines.append(f"message        {info.message}")
    if getattr(info, "driver_exit_code", None) is not None:
        lines.append(f"exit code      {info.driver_exit_code}")
    return "\n".join(lines)


async def _tail(client, submission_id: str, out) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        print(chunk, end="", file=out, flush=True)


def follow_logs(client, submission_id: str, out=None) -> str:
    """Print the job's output as it comes until the job ends; returns its final status."""
    out = out or sys.stdout
    job_info(client, submission_id)
    asyncio.run(_tail(client, submission_id, out))
    return str(client.get_job_status(submission_id))


