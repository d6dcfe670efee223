"""MLflow tracking: one parent run per study, one child run per Ray trial, all written by the driver.

Layout (design.md, "MLflow layout"): one experiment per job; a parent run tagged ``attnsearch.study`` holds the
job YAML, the resolved search space and the Pareto artifacts; each Ray trial gets one child run
(``mlflow.parentRunId``, ``attnsearch.trial_id``) with the trial config as params, per-epoch metrics at
``step=epoch``, the static counts once (step 0) and the ``attnsearch.state``/``budget``/``reason`` tags.

Only the driver writes (``MLflowTracker`` is a ``ray.tune.Callback``): workers never need to reach the tracking
server and a local SQLite store has a single writer, so concurrent trials cannot hit a locked database.

Every write goes through one idempotent step, ``_Store.reconcile(record)``: it compares what a trial reported
with what the store already holds (params present, last logged epoch, tags, run status) and writes only the
difference. The callback, a resumed study and ``sync_study`` (which replays a Ray experiment directory) all use
it, so replaying the same results twice adds nothing and a retried trial keeps one run and one value per step.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import numbers
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

__all__ = [
    "TrackingError",
    "TrialRecord",
    "MLflowTracker",
    "resolve_tracking_uri",
    "check_tracking",
    "start_study",
    "sync_study",
    "read_ray_trials",
    "run_name",
    "ui_command",
    "trial_state",
    "error_summary",
    "encode_params",
    "decode_param",
]

logger = logging.getLogger(__name__)

# Tag names: the MLflow layout contract. attnsearch.role tells parent ("study") from child ("trial") runs.
TAG_PARENT = "mlflow.parentRunId"
TAG_STUDY = "attnsearch.study"
TAG_ROLE = "attnsearch.role"
TAG_TRIAL = "attnsearch.trial_id"
TAG_STATE = "attnsearch.state"
TAG_BUDGET = "attnsearch.budget"
TAG_PARETO = "attnsearch.pareto"
TAG_REASON = "attnsearch.reason"
TAG_FAILURES = "attnsearch.failures"
TAG_PARAM_TYPES = "attnsearch.param_types"  # JSON {param: type} so readers can cast params back exactly

STATES = ("completed", "early_stopped", "infeasible", "failed")
RUNNING = "running"  # tag value while a trial is still training (not a final state)

EPOCH_METRICS = ("val_acc", "val_loss", "train_loss", "nam_penalty", "lr", "epoch_time_s")
STATIC_METRICS = ("flops", "macs", "params", "attn_flops", "attn_macs", "attn_params")
# Keys Ray Tune adds to every result: bookkeeping, not metrics of the trial.
_RAY_KEYS = frozenset(
    "timestamp done training_iteration trial_id date time_this_iter_s time_total_s pid hostname node_ip config "
    "time_since_restore iterations_since_restore checkpoint_dir_name experiment_tag should_checkpoint "
    "timesteps_total timesteps_since_restore episodes_total warmup_time experiment_id perf".split()
)
_STATE_KEY, _REASON_KEY = "attnsearch_state", "attnsearch_reason"

# MLflow's log_batch limits (mlflow/utils/validation.py).
_MAX_METRICS, _MAX_PARAMS_TAGS = 1000, 100
_MAX_REASON = 2000

# Keep MLflow's HTTP client from retrying a dead server for minutes (default: 7 retries, backoff 2 -> ~2 min).
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


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (credentials removed) and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# URIs, health check, UI


def redact_uri(uri: str) -> str:
    """``uri`` without inline credentials (``https://user:pw@host`` -> ``https://***@host``)."""
    return re.sub(r"^([A-Za-z][\w+.-]*://)[^/@\s]+@", r"\1***@", uri)


def resolve_tracking_uri(uri: str, base_dir: str | os.PathLike) -> str:
    """Make a local store URI absolute against ``base_dir`` (the job file's directory) on the driver.

    ``sqlite:///mlflow.db`` (relative: three slashes) -> ``sqlite:////abs/dir/mlflow.db``; a plain path or
    relative ``file:`` URI -> absolute ``file://`` URI; server URIs (``http(s)://``, ``databricks``...) unchanged.
    Ray changes each trial's working directory, so a relative store would otherwise move.
    """
    uri = str(uri).strip()
    if not uri:
        raise ValueError("tracking.uri must not be empty (e.g. sqlite:///mlflow.db or http://127.0.0.1:5000)")
    base = Path(base_dir).expanduser()
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


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


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


def _http_get(url: str, timeout_s: float) -> int:
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
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=_ssl_context()) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the tracking store cannot be used.

    HTTP(S) servers: a plain GET of ``/health`` and of one cheap API call (which also checks the credentials from
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``), each bounded by ``timeout_s``; no
    MLflow retries. SQLite: creates the database's directory and opens the store (this runs MLflow's schema
    migrations once). Raises ``TrackingError`` naming the URI and the fix.
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
        if api != 200:
            raise TrackingError(
                f"{shown} does not answer like an MLflow tracking server (GET /health -> HTTP {health}, "
                f"experiments/search -> HTTP {api}); check tracking.uri (e.g. http://host:5000, no path) or "
                f"{_START_SERVER}"
            )
        return
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the directory of the MLflow store {shown}: {e}") from None
    try:
        with _fast_http(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, int(timeout_s)))):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot track"
        raise TrackingError(
            f"cannot open the MLflow tracking store {shown}: {type(e).__name__}: {_first_line(e)}; use "
            "sqlite:///mlflow.db for a local store or http://host:port for a server"
        ) from None


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The command line that serves the MLflow UI for a local store (bound to 127.0.0.1 unless told otherwise)."""
    if urllib.parse.urlparse(uri).scheme.lower() in ("http", "https"):
        raise TrackingError(f"{redact_uri(uri)} is a tracking server with its own UI: open it in a browser")
    return [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(int(port)),
    ]


@contextlib.contextmanager
def _fast_http(**overrides: str) -> Iterator[None]:
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return redact_uri(text.splitlines()[0])[:500]


# ---------------------------------------------------------------------------------------------------------------
# Params, run names, trial states


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _param_type(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def encode_params(config: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Trial config -> (MLflow param strings, {param: type}) so that ``decode_param`` restores the value exactly.

    Scalars are written the way Python prints them (``0.1``, ``True``, ``None``), lists/dicts as JSON.
    """
    flat = _flatten(config)
    values, types = {}, {}
    for key, value in flat.items():
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()  # numpy scalars/arrays from a searcher -> plain Python
        kind = _param_type(value)
        types[key] = kind
        if kind == "json":
            values[key] = json.dumps(value, default=str)
        else:  # repr keeps every digit of a float (str does too since 3.2, but say it)
            values[key] = repr(value) if kind == "float" else str(value)
    return values, types


_INT_RE = re.compile(r"^[+-]?\d+$")


def decode_param(text: str | None, kind: str | None = None) -> Any:
    """Inverse of ``encode_params`` for one value. Without ``kind`` (runs logged by other tools) the type is
    guessed: ``True``/``False``, ``None``, integers, floats, JSON lists/dicts, else the string."""
    if text is None:
        return None
    if kind == "str":
        return text
    if kind == "none" or (kind is None and text == "None"):
        return None
    if kind == "bool" or (kind is None and text in ("True", "False", "true", "false")):
        return text.lower() == "true"
    if kind == "int" or (kind is None and _INT_RE.match(text)):
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "json" or (kind is None and text[:1] in "[{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    if kind is None:
        try:
            return float(text)
        except ValueError:
            return text
    return text


# Short names for knobs in run names; the letters follow the papers (G = Shuffle Attention groups, r = reduction).
_KNOB_ABBREV = {
    "groups": "G", "reduction": "r", "kernel_size": "k", "dilation": "d", "gamma": "g", "beta": "b",
    "e_lambda": "l", "penalty": "p", "combine": "", "fusion": "",
    "spatial": "sp", "no_spatial": "nosp", "detach_weights": "det",
}
_POSITION_ABBREV = {"residual_end": "resend", "post_add": "postadd", "stage_end": "stend"}


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if value is None:
        return "auto"
    if isinstance(value, (list, tuple)):
        return "".join(map(str, value))
    return str(value).replace(" ", "")


def run_name(config: Mapping[str, Any]) -> str:
    """Readable run name for a trial config: ``sa-G16-s234-resend``, ``se-r8-s3-default``, ``none``.

    ``<type>-<knobs>-s<stages>[-<blocks>]-<position>``; blocks only when not "all"; training knobs are params.
    """
    config = _flatten(config)
    kind = config.get("attention")
    if kind is None:
        return "trial"
    kind = str(kind)
    if kind == "none":
        return "none"
    parts = [kind]
    for key, value in config.items():
        if not key.startswith(kind + "."):
            continue
        knob = key[len(kind) + 1:]
        abbrev = _KNOB_ABBREV.get(knob, knob)
        if isinstance(value, bool):
            parts.append(abbrev if value else "no" + abbrev)
        else:
            parts.append(f"{abbrev}{_fmt_value(value)}")
    stages = config.get("stages")
    if stages is not None:
        text = str(stages) if not isinstance(stages, (list, tuple)) else ",".join(map(str, stages))
        items = [s.strip() for s in text.split(",") if s.strip()]
        parts.append("s" + ("".join(items) if all(len(s) == 1 for s in items) else "_".join(items)))
    blocks = config.get("blocks")
    if blocks not in (None, "all"):
        parts.append(str(blocks))
    position = config.get("position")
    if position is not None:
        parts.append(_POSITION_ABBREV.get(str(position), str(position)))
    return "-".join(parts)


def trial_state(reported: str | None, budget: int, max_t: int, errored: bool = False) -> str:
    """The final state of a finished trial (contract "trial results").

    A state the trial reported itself (``attnsearch_state``: infeasible/failed) wins; a Ray error -> failed;
    otherwise epochs trained == max_t -> completed, fewer -> early_stopped (stopped by ASHA).
    """
    if reported in STATES:
        return reported
    if errored:
        return "failed"
    return "completed" if budget >= max_t else "early_stopped"


@dataclass
class TrialRecord:
    """What one trial reported, reduced to what MLflow needs; fed by the callback or a Ray trial directory."""

    trial_id: str
    config: dict[str, Any]
    pending: list[dict[str, Any]] = field(default_factory=list)  # per-epoch results not yet confirmed written
    static: dict[str, float] = field(default_factory=dict)
    budget: int = 0
    reported_state: str | None = None
    reported_reason: str | None = None
    state: str = RUNNING
    reason: str | None = None
    failures: int = 0
    start_ms: int | None = None
    end_ms: int | None = None
    nresults: int = 0

    def add_result(self, result: Mapping[str, Any]) -> None:
        """Keep the metrics of one Ray result (bookkeeping keys dropped)."""
        self.nresults += 1
        if result.get(_STATE_KEY):
            self.reported_state = str(result[_STATE_KEY])
            self.reported_reason = str(result.get(_REASON_KEY) or "") or None
        for key in STATIC_METRICS:
            if _is_number(result.get(key)) and key not in self.static:
                self.static[key] = float(result[key])
        epoch = result.get("epoch")
        ts = result.get("timestamp")
        if _is_number(ts):
            ms = int(float(ts) * 1000)
            self.end_ms = ms
            if self.start_ms is None:
                self.start_ms = ms - int(1000 * float(result.get("time_this_iter_s") or 0))
        if not _is_number(epoch) or (isinstance(epoch, float) and not math.isfinite(epoch)):
            return
        epoch = int(epoch)
        self.budget = max(self.budget, epoch)
        metrics = {
            k: float(v) for k, v in result.items()
            if _is_number(v) and k not in _RAY_KEYS and k not in STATIC_METRICS and k != "epoch"
        }
        self.pending.append({"epoch": epoch, "ms": self.end_ms, "metrics": metrics})

    def finish(self, max_t: int, errored: bool = False, error: str | None = None) -> None:
        """Decide the final state once the trial has ended."""
        if self.nresults == 0 and not errored:
            self.state, self.reason = "failed", "the trial ended without reporting a result"
            return
        self.state = trial_state(self.reported_state, self.budget, max_t, errored)
        if self.state == self.reported_state:
            self.reason = self.reported_reason
        elif errored:
            self.reason = error_summary(error or "")
        else:
            self.reason = None


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE_RE = re.compile(r"^[A-Za-z_][\w.()]*(Error|Exception|Interrupt|Exit|Failure)\w*\)?:")


def error_summary(text: str) -> str:
    """The exception line of a traceback (``RuntimeError: boom``) and what follows it, from Ray's error text.

    Ray's ``error.txt`` appends one traceback per failure; the last one counts. The full text stays in the trial
    directory; the tag needs the cause.
    """
    lines = [ln.rstrip() for ln in _ANSI_RE.sub("", text).splitlines() if ln.strip()]
    if not lines:
        return "Ray reported an error without a message"
    start = max((i for i, ln in enumerate(lines) if _EXC_LINE_RE.match(ln)), default=len(lines) - 1)
    return _tail("\n".join(lines[start:]))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_REASON else "..." + text[-_MAX_REASON:]


# ---------------------------------------------------------------------------------------------------------------
# The store: idempotent reconciliation of trial records with child runs


@dataclass
class _RunState:
    run_id: str
    params: set[str]
    last_epoch: int | None
    static: set[str]
    tags: dict[str, str]
    status: str

    @classmethod
    def of(cls, run: Any) -> "_RunState":
        metrics = run.data.metrics
        epoch = metrics.get("epoch")
        return cls(
            run_id=run.info.run_id,
            params=set(run.data.params),
            last_epoch=int(epoch) if epoch is not None and math.isfinite(epoch) else None,
            static={k for k in STATIC_METRICS if k in metrics},
            tags=dict(run.data.tags),
            status=run.info.status,
        )


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _artifact_location(uri: str, experiment: str) -> str | None:
    # MLflow would put a local store's artifacts under the *current* directory (./mlruns); pin them next to the db.
    db = _sqlite_path(uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "default"
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def _ensure_experiment(client: MlflowClient, uri: str, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", experiment)
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _find_parent(client: MlflowClient, experiment_id: str, study_id: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_STUDY}` = {_quote(study_id)} and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0] if runs else None


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class _Store:
    """A study's child runs in one tracking store, cached by trial id."""

    def __init__(self, uri: str, parent_run_id: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        parent = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = parent.info.experiment_id
        self.study_id = parent.data.tags.get(TAG_STUDY, "")
        self.runs: dict[str, _RunState] = {}
        for run in sorted(self._children(), key=lambda r: r.info.start_time or 0):
            tid = run.data.tags.get(TAG_TRIAL)
            if tid and tid not in self.runs:  # oldest wins if a race ever made two
                self.runs[tid] = _RunState.of(run)

    def _children(self, trial_id: str | None = None) -> list[Any]:
        flt = f"tags.`{TAG_PARENT}` = {_quote(self.parent_run_id)}"
        if trial_id is not None:
            flt += f" and tags.`{TAG_TRIAL}` = {_quote(trial_id)}"
        return _search_all(self.client, [self.experiment_id], flt)

    def _run_for(self, record: TrialRecord, counts: dict[str, int]) -> _RunState:
        state = self.runs.get(record.trial_id)
        if state is not None:
            return state
        found = sorted(self._children(record.trial_id), key=lambda r: r.info.start_time or 0)
        if found:
            state = _RunState.of(found[0])
        else:
            _, types = encode_params(record.config)
            tags = {
                TAG_PARENT: self.parent_run_id, TAG_STUDY: self.study_id, TAG_ROLE: "trial",
                TAG_TRIAL: record.trial_id, TAG_STATE: RUNNING,
                TAG_PARAM_TYPES: json.dumps(types, sort_keys=True),
            }
            run = self.client.create_run(
                self.experiment_id, start_time=record.start_ms, tags=tags, run_name=run_name(record.config)
            )
            counts["runs_created"] += 1
            state = _RunState(run.info.run_id, set(), None, set(), {**tags}, run.info.status)
        self.runs[record.trial_id] = state
        return state

    def reconcile(self, record: TrialRecord) -> dict[str, int]:
        """Write what the store is missing for this trial; return what was written."""
        counts = {"runs_created": 0, "params": 0, "metrics": 0, "tags": 0, "finished": 0}
        rs = self._run_for(record, counts)
        values, types = encode_params(record.config)
        params = [Param(k, v) for k, v in values.items() if k not in rs.params]
        for i in range(0, len(params), _MAX_PARAMS_TAGS):
            chunk = params[i:i + _MAX_PARAMS_TAGS]
            self.client.log_batch(rs.run_id, params=chunk)
            rs.params.update(p.key for p in chunk)
            counts["params"] += len(chunk)

        now = int(time.time() * 1000)
        static = [
            Metric(k, v, record.start_ms or now, 0) for k, v in record.static.items() if k not in rs.static
        ]
        # One group per epoch with "epoch" last, chunks cut between epochs: the stored "epoch" metric (its value
        # at the highest step) is then always the last completely written epoch, which is what a resume reads.
        chunks, cur, cur_epoch, last = [], static, rs.last_epoch, rs.last_epoch
        for res in record.pending:
            if last is not None and res["epoch"] <= last:
                continue  # a retried trial repeating epochs: keep the first value of each step
            ms = res["ms"] or now
            group = [Metric(k, v, ms, res["epoch"]) for k, v in res["metrics"].items()]
            group.append(Metric("epoch", float(res["epoch"]), ms, res["epoch"]))
            if cur and len(cur) + len(group) > _MAX_METRICS - _MAX_PARAMS_TAGS:  # room for the tags
                chunks.append((cur, cur_epoch))
                cur = []
            cur, cur_epoch, last = cur + group, res["epoch"], res["epoch"]
        chunks.append((cur, cur_epoch))

        budget = max(record.budget, cur_epoch or 0)
        desired = {TAG_STATE: record.state, TAG_BUDGET: str(budget)}
        if record.reason:
            desired[TAG_REASON] = _tail(record.reason)
        if record.failures:
            desired[TAG_FAILURES] = str(record.failures)
        known = json.loads(rs.tags.get(TAG_PARAM_TYPES) or "{}")
        if not set(types) <= set(known):
            desired[TAG_PARAM_TYPES] = json.dumps({**known, **types}, sort_keys=True)
        tags = [RunTag(k, v) for k, v in desired.items() if rs.tags.get(k) != v]
        # Tags travel with the last metrics in one log_batch (one transaction): state/budget never run ahead.
        for i, (metrics, epoch) in enumerate(chunks):
            batch_tags = tags if i == len(chunks) - 1 else []
            if not metrics and not batch_tags:
                continue
            self.client.log_batch(rs.run_id, metrics=metrics, tags=batch_tags)
            counts["metrics"] += len(metrics)
            counts["tags"] += len(batch_tags)
            rs.static.update(m.key for m in metrics if m.step == 0 and m.key in STATIC_METRICS)
            rs.last_epoch = epoch
            rs.tags.update({t.key: t.value for t in batch_tags})
        record.pending.clear()

        final = record.state in STATES
        if final and rs.status in ("RUNNING", "SCHEDULED"):
            status = "FAILED" if record.state == "failed" else "FINISHED"
            self.client.set_terminated(rs.run_id, status, end_time=record.end_ms)
            rs.status = status
            counts["finished"] += 1
        elif not final and rs.status not in ("RUNNING", "SCHEDULED"):
            self.client.update_run(rs.run_id, status="RUNNING")  # a restarted trial (resume --restart-errored)
            rs.status = "RUNNING"
        return counts


# ---------------------------------------------------------------------------------------------------------------
# Study (parent run)


def _redact_text(text: str) -> str:
    return re.sub(r"([A-Za-z][\w+.-]*://)[^/@\s:]+:[^/@\s]+@", r"\1***@", text)


def start_study(
    uri: str,
    experiment: str,
    study_id: str,
    job_yaml_text: str,
    space_dict: Mapping[str, Any],
    resume: bool,
) -> str:
    """Create (or, with ``resume``, reuse) the study's parent run; return its run id.

    Logs ``job.yaml`` and ``search_space.yaml`` as artifacts of the parent run. Raises ``TrackingError`` when the
    study already exists and ``resume`` is false (two searches would otherwise share one parent run).
    """
    with _fast_http():
        client = MlflowClient(uri)
        try:
            experiment_id = _ensure_experiment(client, uri, experiment)
            parent = _find_parent(client, experiment_id, study_id)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {_first_line(e)}") from e
        if parent is not None and not resume:
            raise TrackingError(
                f"study {study_id!r} already has a parent run ({parent.info.run_id}) in MLflow experiment "
                f"{experiment!r}; resume it (attnsearch run --resume) or start a new study"
            )
        if parent is None:
            if resume:
                logger.warning("resuming study %r: no parent run in %s; creating one", study_id, redact_uri(uri))
            run = client.create_run(
                experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study"}, run_name=study_id
            )
            run_id = run.info.run_id
        else:
            run_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        client.log_text(run_id, _redact_text(job_yaml_text), "job.yaml")
        client.log_text(run_id, yaml.safe_dump(dict(space_dict), sort_keys=False), "search_space.yaml")
    return run_id


def _open_or_create_parent(uri: str, experiment: str, study_id: str) -> str:
    client = MlflowClient(uri)
    experiment_id = _ensure_experiment(client, uri, experiment)
    parent = _find_parent(client, experiment_id, study_id)
    if parent is not None:
        return parent.info.run_id
    run = client.create_run(experiment_id, tags={TAG_STUDY: study_id, TAG_ROLE: "study"}, run_name=study_id)
    return run.info.run_id


# ---------------------------------------------------------------------------------------------------------------
# The Ray Tune callback


class MLflowTracker(Callback):
    """Ray Tune callback that mirrors every trial into a child run of the study's parent run (driver side only).

    ``experiment``/``study_id`` find (or recreate) the parent run should ``parent_run_id`` be gone, e.g. a
    restored search pointed at a new tracking server. MLflow errors never stop the search: the first one is
    logged as a warning, the tracker then retries at most every ``retry_interval_s`` seconds and, once the store
    answers again, writes everything it missed. Whatever is still missing at the end can be written later from
    the Ray experiment directory with ``sync_study``. ``strict=True`` raises instead (tests). Picklable (Ray
    stores it in ``tuner.pkl``).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        parent_run_id: str,
        study_id: str,
        max_t: int,
        *,
        retry_interval_s: float = 30.0,
        strict: bool = False,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri, os.getcwd())  # pin a relative store (driver cwd)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study_id = study_id
        self.max_t = int(max_t)
        self.retry_interval_s = float(retry_interval_s)
        self.strict = strict
        self._reset()

    def _reset(self) -> None:
        self._store: _Store | None = None
        self._records: dict[str, TrialRecord] = {}
        self._dirty: set[str] = set()
        self._offline_until = 0.0
        self._outage = False
        self.errors = 0  # MLflow calls that failed (for reports and tests)

    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment", "parent_run_id", "study_id", "max_t", "retry_interval_s", "strict")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- store access ---------------------------------------------------------------------------------------
    def _open(self) -> _Store:
        # reads back a resumed study's runs (last logged epoch, params, tags) so nothing is written twice
        try:
            return _Store(self.tracking_uri, self.parent_run_id)
        except Exception as e:  # noqa: BLE001
            if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
        self.parent_run_id = _open_or_create_parent(self.tracking_uri, self.experiment, self.study_id)
        logger.warning("parent run of study %r not found; using run %s", self.study_id, self.parent_run_id)
        return _Store(self.tracking_uri, self.parent_run_id)

    def _reconcile(self, record: TrialRecord) -> None:
        if self._store is None:
            self._store = self._open()
        self._store.reconcile(record)

    def _flush(self, trial_ids: list[str], force: bool = False) -> None:
        if not force and time.monotonic() < self._offline_until:
            self._dirty.update(trial_ids)
            return
        todo = list(dict.fromkeys([*sorted(self._dirty), *trial_ids]))
        for i, tid in enumerate(todo):
            try:
                with _fast_http():
                    self._reconcile(self._records[tid])
            except Exception as e:  # noqa: BLE001 - the search must go on without MLflow
                if self.strict:
                    raise
                self.errors += 1
                self._dirty.update(todo[i:])
                self._offline_until = time.monotonic() + self.retry_interval_s
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "MLflow tracking at %s failed (%s: %s); the search goes on, results stay in the Ray "
                        "experiment directory; retrying every %.0f s (or run `attnsearch sync JOB` later)",
                        redact_uri(self.tracking_uri), type(e).__name__, _first_line(e), self.retry_interval_s,
                    )
                return
            self._dirty.discard(tid)
        if self._outage:
            self._outage = False
            logger.warning("MLflow tracking at %s is back; caught up", redact_uri(self.tracking_uri))

    def _record(self, trial: Any) -> TrialRecord:
        tid = str(trial.trial_id)
        if tid not in self._records:
            record = TrialRecord(tid, _flatten(dict(trial.config)), start_ms=int(time.time() * 1000))
            self._records[tid] = record
        return self._records[tid]

    # -- Ray Tune hooks -------------------------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self._reset()
        try:
            with _fast_http():
                self._store = self._open()
        except Exception as e:  # noqa: BLE001
            if self.strict:
                raise
            self.errors += 1
            self._outage = True
            self._offline_until = time.monotonic() + self.retry_interval_s
            logger.warning(
                "MLflow tracking at %s is unavailable (%s: %s); the search goes on; run `attnsearch sync JOB` "
                "once it is back", redact_uri(self.tracking_uri), type(e).__name__, _first_line(e),
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.state != RUNNING:  # restarted after a final state (resume with restart_errored)
            record.state, record.reason = RUNNING, None
        self._flush([record.trial_id])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        record.add_result(result)
        self._flush([record.trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.nresults == 0 and trial.last_result:
            record.add_result(trial.last_result)  # restored trial that finished without a new result
        record.finish(self.max_t)
        self._flush([record.trial_id])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.failures = _num_failures(trial, record.failures + 1)
        self._flush([record.trial_id])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.failures = _num_failures(trial, record.failures + 1)
        record.finish(self.max_t, errored=True, error=_trial_error_text(trial))
        self._flush([record.trial_id])

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._dirty and time.monotonic() >= self._offline_until:
            self._flush([])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush([], force=True)
        if self._dirty:
            logger.warning(
                "%d trial(s) are incomplete in MLflow (%s unreachable); run `attnsearch sync JOB` when it is back",
                len(self._dirty), redact_uri(self.tracking_uri),
            )
            return
        try:
            with _fast_http():
                if self._store is not None:
                    self._store.client.set_terminated(self.parent_run_id, "FINISHED")
        except Exception as e:  # noqa: BLE001
            if self.strict:
                raise
            logger.warning("could not close the study's parent run: %s", _first_line(e))


def _num_failures(trial: Any, default: int) -> int:
    # Ray's own count survives Tuner.restore (resume_errored) and is what sync_study reads back
    try:
        return int(trial.run_metadata.num_failures)
    except (AttributeError, TypeError, ValueError):
        return default


def _trial_error_text(trial: Any) -> str:
    for get in (lambda: trial.get_error(), lambda: Path(trial.error_file).read_text()):
        try:
            err = get()
        except Exception:  # noqa: BLE001 - best effort: the error file may be remote or gone
            continue
        if err:
            return str(err)
    return f"trial {trial.trial_id} errored (no error file)"


# ---------------------------------------------------------------------------------------------------------------
# Offline sync from a Ray experiment directory


# Ray trial ids: "<5 hex>_<5 digits>" (variant generator) or 8 hex (searchers), in "<trainable>_<id>_<n>_..."
_TRIAL_ID_RE = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5}|[0-9a-f]{8})(?:_|$)")


def _read_experiment_state(exp_dir: Path) -> dict[str, dict[str, Any]]:
    # experiment_state-<date>.json: [trial json, run-metadata json] per trial; the newest file is the current one.
    files = sorted(glob.glob(str(exp_dir / "experiment_state-*.json")), key=os.path.getmtime)
    if not files:
        return {}
    try:
        data = json.loads(Path(files[-1]).read_text())
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", files[-1], e)
        return {}
    out = {}
    for item in data.get("trial_data", []):
        try:
            trial = json.loads(item[0])
            meta = json.loads(item[1]) if len(item) > 1 else {}
        except (ValueError, TypeError, IndexError):
            continue
        out[str(trial.get("trial_id"))] = {
            "status": trial.get("status"),
            "dir": trial.get("relative_logdir"),
            "config": trial.get("config"),
            "error_file": meta.get("error_filename"),
            "failures": meta.get("num_failures") or 0,
            "start_time": meta.get("start_time"),
        }
    return out


def _read_results(path: Path) -> list[dict[str, Any]]:
    results = []
    if not path.is_file():
        return results
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except ValueError:
            logger.warning("%s line %d is not JSON (interrupted write?); skipped", path, n)
    return results


def read_ray_trials(experiment_dir: str | os.PathLike, max_t: int) -> list[TrialRecord]:
    """Rebuild every trial's record from a local Ray Tune experiment directory.

    Reads each trial directory's ``params.json`` (config) and ``result.json`` (one result per line), plus the
    newest ``experiment_state-*.json`` for trial status and errors (``error.txt``). Trials Ray still lists as
    running or pending keep the ``running`` state.
    """
    exp_dir = Path(experiment_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"Ray experiment directory {exp_dir} does not exist")
    states = _read_experiment_state(exp_dir)
    dirs: dict[str, Path] = {}
    for tid, info in states.items():
        if info["dir"] and (exp_dir / info["dir"]).is_dir():
            dirs[tid] = exp_dir / info["dir"]
    for sub in sorted(p for p in exp_dir.iterdir() if (p / "params.json").is_file()):
        if sub in dirs.values():
            continue
        results = _read_results(sub / "result.json")
        tid = next((str(r["trial_id"]) for r in results if r.get("trial_id")), None)
        match = _TRIAL_ID_RE.search(sub.name)
        tid = tid or (match.group(1) if match else None)
        if tid is None:
            logger.warning("cannot tell the trial id of %s; skipped", sub)
            continue
        dirs.setdefault(tid, sub)
    records = []
    for tid, sub in sorted(dirs.items()):
        info = states.get(tid, {})
        try:
            config = json.loads((sub / "params.json").read_text())
        except (OSError, ValueError):
            config = info.get("config") or {}
        record = TrialRecord(tid, _flatten(config))
        if info.get("start_time"):
            record.start_ms = int(float(info["start_time"]) * 1000)
        for result in _read_results(sub / "result.json"):
            record.add_result(result)
        record.failures = int(info.get("failures") or 0)
        status = info.get("status")
        error_file = sub / (info.get("error_file") or "error.txt")
        errored = status == "ERROR" or (status is None and error_file.is_file())
        if status in ("RUNNING", "PENDING", "PAUSED") and not errored:
            record.state = RUNNING
        else:
            error = error_file.read_text() if errored and error_file.is_file() else None
            record.finish(max_t, errored=errored, error=error)
        records.append(record)
    return records


def sync_study(
    experiment_dir: str | os.PathLike, uri: str, experiment: str, study_id: str, max_t: int
) -> dict[str, int]:
    """Write whatever MLflow is missing for a study from its Ray experiment directory (``attnsearch sync JOB``).

    Creates the parent run if needed; never duplicates runs, params, metric steps or tags, so running it twice
    writes nothing the second time. Returns counts: trials, runs_created, params, metrics, tags, finished.
    """
    records = read_ray_trials(experiment_dir, max_t)
    totals = {"trials": len(records), "runs_created": 0, "params": 0, "metrics": 0, "tags": 0, "finished": 0}
    with _fast_http():
        try:
            store = _Store(uri, _open_or_create_parent(uri, experiment, study_id))
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {_first_line(e)}") from e
        for record in records:
            for key, value in store.reconcile(record).items():
                totals[key] += value
    return totals
