"""Reaching the tracking store: a bounded health check before a study starts, MLflow's HTTP retries kept short
around our own calls, and the MLflow UI command for a local store."""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator

from mlflow import MlflowClient

from ..contract import TrackingError
from ..uris import redact_text, redact_uri, sqlite_path

__all__ = ["check_tracking", "ui_command", "ui_environment", "fast_http", "first_line", "LOOPBACK_HOSTS"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

# Keep MLflow's HTTP client from retrying a dead server for minutes (its defaults: 7 retries, backoff factor 2).
# Applied only around our own calls and only where the user has not set the variable.
_FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_START_SERVER = (
    "start it, e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
    "or set tracking.uri in the job to a local store (sqlite:///mlflow.db)"
)


def _auth_headers() -> dict[str, str]:
    # The same variables MLflow's own client reads; never written anywhere by attnsearch.
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # the user opted out of verification for MLflow too
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a redirect with its own status instead of following it: urllib would send the Authorization header
    on to whatever host the redirect names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def _http_get(url: str, timeout_s: float) -> int:
    """The HTTP status of a GET of ``url`` (redirects not followed: a 3xx is returned as it is)."""
    # urlopen follows the URL's own userinfo poorly, so strip it and send it as a header instead
    parsed = urllib.parse.urlsplit(url)
    headers = _auth_headers()
    if parsed.username and "Authorization" not in headers:
        cred = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        headers["Authorization"] = "Basic " + b64encode(cred.encode()).decode()
    host = parsed.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parsed.port}" if parsed.port else "") if host else parsed.netloc
    req = urllib.request.Request(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)), headers=headers)
    opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=_ssl_context()))
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def check_tracking(uri: str, timeout_s: float = 5.0, *, create: bool = True) -> None:
    """Fail fast, before any trial starts, when the tracking store cannot be used.

    HTTP(S) servers: a plain GET of ``/health`` and of one cheap API call (which also checks the credentials from
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``), each bounded by ``timeout_s``; no
    MLflow retries. SQLite: creates the database's directory and opens the store (this runs MLflow's schema
    migrations once); with ``create=False`` a database that does not exist yet is not created: its nearest
    existing directory must be writable (a job refused later leaves nothing behind). Raises ``TrackingError``
    naming the URI and the fix.
    """
    shown = redact_uri(uri)
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        base = uri.rstrip("/")
        try:
            health = _http_get(base + "/health", timeout_s)
            api = _http_get(base + "/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {shown} is unreachable ({reason}); {_START_SERVER}"
            ) from None
        if api in (401, 403):
            raise TrackingError(
                f"MLflow tracking server {shown} refused the credentials (HTTP {api}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, in the "
                "environment of the driver"
            )
        if 300 <= api < 400 or 300 <= health < 400:
            raise TrackingError(
                f"MLflow tracking server {shown} answers with a redirect (HTTP {api if api != 200 else health}); "
                "credentials are never sent on to another address: set tracking.uri to the address the server "
                "redirects to (e.g. https:// instead of http://)"
            )
        if api != 200:
            raise TrackingError(
                f"{shown} does not answer like an MLflow tracking server (GET /health -> HTTP {health}, "
                f"experiments/search -> HTTP {api}); check tracking.uri (e.g. http://host:5000, no path) or "
                f"{_START_SERVER}"
            )
        return
    db = sqlite_path(uri)
    if db is not None and not create and not db.exists():
        existing = next(p for p in (db.parent, *db.parent.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise TrackingError(f"cannot create the MLflow store {shown}: {existing} is not a writable directory")
        return
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the directory of the MLflow store {shown}: {e}") from None
    try:
        with fast_http(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, int(timeout_s)))):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot track"
        raise TrackingError(
            f"cannot open the MLflow tracking store {shown}: {type(e).__name__}: {first_line(e)}; use "
            "sqlite:///mlflow.db for a local store or http://host:port for a server"
        ) from None


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The command line that serves the MLflow UI for a local store (bound to 127.0.0.1 unless told otherwise).

    The store's URI is not on it (a command line is visible to every local user in ``ps``): the server reads it
    from its environment, ``ui_environment(uri)``.
    """
    if urllib.parse.urlparse(uri).scheme.lower() in ("http", "https"):
        raise TrackingError(f"{redact_uri(uri)} is a tracking server with its own UI: open it in a browser")
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(int(port))]


def ui_environment(uri: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the ``ui_command`` server: ``base`` (default: this process's) plus the store's URI in
    ``MLFLOW_BACKEND_STORE_URI``, the variable ``mlflow server``/``mlflow ui`` reads for ``--backend-store-uri``."""
    return {**(os.environ if base is None else base), "MLFLOW_BACKEND_STORE_URI": uri}


@contextlib.contextmanager
def fast_http(**overrides: str) -> Iterator[None]:
    added = []
    for key, value in {**_FAST_HTTP, **overrides}.items():
        if key not in os.environ:
            os.environ[key] = value
            added.append(key)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def first_line(e: BaseException) -> str:
    """The first line of an exception's text, credentials redacted (``redact_text``), at most 500 characters."""
    text = str(e).strip() or type(e).__name__
    return redact_text(text.splitlines()[0])[:500]  # redacted whole: a cut URI could keep part of a password
