"""Paths and URIs resolved on the driver (standard library only).

Ray runs every trial in its own working directory, so whatever a job names relatively (data, search space,
weights, Ray's storage, a local MLflow store) is made absolute on the driver before anything travels.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

__all__ = [
    "REDACTED", "redact_uri", "redact_text", "split_credentials", "without_credentials", "has_credentials",
    "resolve_tracking_uri",
    "sqlite_path", "resolve_path", "resolve_storage", "RAY_CONNECT_TIMEOUT_S", "RAY_DASHBOARD_ADDRESS",
    "split_scheme", "split_host_port",
]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Seconds to wait for a Ray server (a dashboard for the Jobs API, a GCS or Ray Client server for a driver) before
# calling its address dead: long enough for a loaded head, short enough that a wrong address or a closed firewall
# fails while the user still watches (Ray's own clients retry a dead address for minutes).
RAY_CONNECT_TIMEOUT_S = 5.0
# The Ray dashboard's HTTP address (the Jobs API) when nothing names one, as Ray's own `ray job` CLI assumes.
RAY_DASHBOARD_ADDRESS = "http://127.0.0.1:8265"


def split_scheme(address: str) -> tuple[str, str] | None:
    """``(scheme, rest)`` of ``scheme://rest`` (``ray://head:10001`` -> ``("ray", "head:10001")``); None without one."""
    m = _SCHEME_RE.match(address)
    return (m.group(1), address[m.end():]) if m else None


def split_host_port(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:6379`` too); None unless both are there and the port is valid."""
    host, sep, port = text.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


# The userinfo of a URI (RFC 3986 section 3.2.1): between "scheme://" and the authority's last "@" (a password
# may hold an unencoded "@"). The second form catches a "user:password" whose password holds a "/", "?" or "#"
# (not a valid authority, but what a user types): up to the last "@" before the next whitespace. Redacting too
# much (a path with an "@" after a port) is the safe side of the choice.
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#\s]*|[^\s/?#@:]+:[^\s]*)@")
REDACTED = "***"


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``, wherever the URI stands.

    Any scheme (``https://TOKEN@host``, ``postgresql://user:pw@db``, ``s3://key:secret@bucket``), several URIs in
    one text, a password holding ``@``. The one redaction of everything attnsearch prints, logs, records in MLflow
    or sends to a cluster.
    """
    text = str(text)
    if "@" not in text:  # fast path: no userinfo without an "@"
        return text
    return _USERINFO_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact_uri(uri: str) -> str:
    """``uri`` without inline credentials (``https://user:pw@host`` -> ``https://***@host``): ``redact_text``."""
    return redact_text(uri)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without userinfo, user, password)``, user and password percent-decoded (None when absent).

    What a process keeps instead of a URI with credentials in it: the bare URI may be written anywhere (a pickle, a
    log), the credentials go to the environment variables the client library reads (``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD`` for MLflow).
    """
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return bare, urllib.parse.unquote(user), urllib.parse.unquote(password) if sep else None


def without_credentials(uri: str) -> str:
    """``uri`` with no userinfo: ``split_credentials``'s bare URI, or ``redact_text``'s form where the userinfo is
    not a valid authority (a password holding a ``/``), so that no part of a password survives either way."""
    bare = split_credentials(uri)[0]
    return redact_text(bare) if has_credentials(bare) else bare


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URI with userinfo (what ``redact_text`` would hide)."""
    return redact_text(text) != str(text)


def resolve_tracking_uri(uri: str, base_dir: str | os.PathLike | None = None) -> str:
    """Make a local store URI absolute against ``base_dir`` (default: the current directory) on the driver.

    ``sqlite:///mlflow.db`` (relative: three slashes) -> ``sqlite:////abs/dir/mlflow.db``; a plain path or
    relative ``file:`` URI -> absolute ``file://`` URI; server URIs (``http(s)://``, ``databricks``...) unchanged.
    Raises ``ValueError`` for an empty or malformed SQLite URI.
    """
    uri = str(uri).strip()
    if not uri:
        raise ValueError("tracking.uri must not be empty (e.g. sqlite:///mlflow.db or http://127.0.0.1:5000)")
    base = Path(base_dir if base_dir is not None else Path.cwd()).expanduser()
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        if path in ("", ":memory:") or path.startswith("/"):
            return uri
        return "sqlite:///" + (base / Path(path).expanduser()).resolve().as_posix() + sep + query
    if uri.startswith("sqlite:"):
        raise ValueError(f"tracking.uri {uri!r}: SQLite URIs look like sqlite:///relative.db or sqlite:////abs.db")
    if uri.startswith("file:"):
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc or parsed.path.startswith("/"):
            return uri
        return (base / parsed.path).resolve().as_uri()
    if re.match(r"^[A-Za-z][\w+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri  # http(s), databricks, postgresql..., left to MLflow
    return (base / Path(uri).expanduser()).resolve().as_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def resolve_path(value: str, job_dir: Path | None, cwd: Path | None = None) -> str:
    """Absolute form of a data/space/weights path: cwd if it exists there, else the job's directory, else cwd."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    cwd = cwd or Path.cwd()
    if (cwd / path).exists() or job_dir is None or not (job_dir / path).exists():
        return str((cwd / path).resolve())
    return str((job_dir / path).resolve())


def resolve_storage(value: str, cwd: Path | None = None) -> str:
    """Absolute form of a local path relative to cwd; URIs with a scheme (``s3://``, ``file://``) are kept."""
    if _SCHEME_RE.match(value):
        return value
    return str(((cwd or Path.cwd()) / Path(value).expanduser()).resolve())
