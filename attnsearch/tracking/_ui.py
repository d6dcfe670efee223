"""``attnsearch ui``: the MLflow UI on a local store, opened on the study's answer, and stopped as a whole.

The URL is the experiment's runs page in MLflow 3.17's model-training mode (``workflowType=machine_learning``;
the experiment's ``mlflow.experimentKind`` tag does the same for links without it) filtered to the recorded front
(``searchFilter``) and sorted by the first objective (``orderByKey``/``orderByAsc``): a sort other than by start
time is also what makes the UI list the front's child runs flat instead of folded under their parent. The
parameter names are those of MLflow 3.17.2's runs page (its JS bundle's URL state: ``searchFilter``,
``orderByKey``, ``orderByAsc``, ``startTime``, ``lifecycleFilter``, ``modelVersionFilter``, ``datasetsFilter``).

The server runs in a process group of its own; SIGTERM, SIGINT (Ctrl-C) and SIGHUP to ``attnsearch ui`` are
forwarded to the whole group (``mlflow ui`` starts worker processes that would otherwise outlive it and hold the
port), and the group is killed if it has not ended a few seconds later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import webbrowser
from collections.abc import Callable, Mapping, Sequence

from ..contract import TAG_PARETO, UsageError

__all__ = ["check_port_free", "front_filter", "serve_ui", "ui_url", "wait_for_port"]

STOP_GRACE_S = 5.0  # after forwarding a signal: how long the group gets before SIGKILL (MLflow 3.17's huey job
# consumers take longer than that to end on SIGTERM)


def front_filter() -> str:
    """The runs filter of a study's recorded front (MLflow's search syntax)."""
    return f"tags.`{TAG_PARETO}` = 'true'"


def ui_url(host: str, port: int, experiment_id: str | None = None,
           objectives: Mapping[str, str] | None = None) -> str:
    """The UI's URL: the experiment's runs page in model-training mode, filtered to the front and sorted by the
    first objective (best first); the UI's home when the experiment does not exist yet."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else (
        f"[{host}]" if ":" in host and not host.startswith("[") else host)
    base = f"http://{shown}:{int(port)}/"
    if experiment_id is None:
        return base
    query = {"workflowType": "machine_learning", "searchFilter": front_filter()}
    if objectives:
        metric, mode = next(iter(objectives.items()))
        query.update({"orderByKey": f"metrics.`{metric}`", "orderByAsc": "true" if mode == "min" else "false"})
    return f"{base}#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse (``UsageError``) a port outside 1-65535 or one a server already listens on at ``host``, before a UI
    server is started: MLflow's server and optuna-dashboard log the bind error and exit 0.

    Args:
        host: the address the server will bind.
        port: the TCP port it will bind.
        what: the command, for the message (``ui``, ``dashboard``).
    """
    if not 0 < port < 65536:
        raise UsageError(f"{what} --port {port}: must be a TCP port, 1-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: only a listener blocks
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"{what} --port {port}: cannot listen on {host}:{port} ({exc.strerror}); another server "
                             f"(an earlier attnsearch {what}?) holds it: stop it, or choose a free port, e.g. --port "
                             f"{port + 1 if port < 65535 else port - 1}") from None


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether something accepts connections on ``host:port`` within ``timeout_s`` (while ``alive()``)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((target, int(port)), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def serve_ui(command: Sequence[str], url: str, *, host: str, port: int, open_browser: bool = False,
             ready_timeout_s: float = 120.0, name: str = "MLflow UI", env: Mapping[str, str] | None = None) -> int:
    """Run the UI server ``command`` in its own process group until it ends or this process is told to stop
    (SIGTERM, SIGINT, SIGHUP: forwarded to the group, then SIGKILL after ``STOP_GRACE_S``); print ``url``, and
    open it in a browser once the port answers when ``open_browser``. Returns the server's exit status (0 when
    stopped by a signal); leaving by an exception stops the group too. ``name`` is what the messages call the
    server (``attnsearch dashboard``: optuna-dashboard).
    ``env``: the server's environment (default: this process's; ``ui_environment`` puts the store's URI there
    rather than on the command line)."""
    proc = subprocess.Popen(list(command), start_new_session=True, env=None if env is None else dict(env))
    pgid = proc.pid  # start_new_session: the server leads a new session and process group
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not stopping:
            print(f"stopping the {name} (process group {pgid})", file=sys.stderr, flush=True)
        stopping.append(signum)
        _signal_group(pgid, signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        print(f"{name}: {url}", flush=True)
        if open_browser:
            if wait_for_port(host, port, ready_timeout_s, alive=lambda: proc.poll() is None and not stopping):
                webbrowser.open(url)
            elif proc.poll() is None and not stopping:
                print(f"the {name} did not answer on port {port} within {ready_timeout_s:.0f} s; open {url} yourself",
                      file=sys.stderr, flush=True)
        stop_at = None  # when the first stop signal came (monotonic)
        while True:
            try:
                code = proc.wait(timeout=0.2)  # a short wait: a signal's handler runs between two
                break
            except subprocess.TimeoutExpired:
                if stopping and stop_at is None:
                    stop_at = time.monotonic()
                if stop_at is not None and time.monotonic() - stop_at > STOP_GRACE_S:
                    _signal_group(pgid, signal.SIGKILL)
        _signal_group(pgid, signal.SIGKILL)  # any worker left behind by a server that ended on its own
        return 0 if stopping else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # leaving by an exception (a closed stdout, a browser that failed): the server too
            _stop_group(proc, pgid)


def _stop_group(proc: subprocess.Popen, pgid: int) -> None:
    """SIGTERM to the server's group, SIGKILL to whatever of it is left after ``STOP_GRACE_S``; reap the server."""
    _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()
