"""Session-wide settings every test's Ray processes must agree on, the shared Ray fixtures, the finished study
of test_export and test_prune_cli, and the rule that the ``slow`` marker marks exactly the tests that start Ray or
a server (enforced below, not only by hand).

Plain helpers (free_port, write_job, remove_dir, ray_env, evaluate) live in tests/_helpers.py.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _helpers import STUDY, remove_dir, write_job

# A ~/.ray/auth_token on the machine turns Ray's token auth on for new clusters, and Ray caches the mode per
# process: tests that start clusters with auth disabled and tests that start them with the default would then
# disagree inside one pytest process ("Missing authorization header"). Every cluster the tests start is local.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# --------------------------------------------------------------------------------------------------- Ray fixtures


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray in this process for the module's tests (Tune searches, run_study joining it).

    Module-scoped rather than session-scoped: other tests shut Ray down on purpose (ray_driver), and a module
    that needs none never pays for one."""
    ray = pytest.importorskip("ray")
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def ray_driver(monkeypatch):
    """This process drives a study (`attnsearch run`, run_study) that starts its own local Ray, or must refuse
    before starting one: no Ray running before or after, none joined through $RAY_ADDRESS, and Ray's state in
    a fresh /tmp folder removed afterwards instead of /tmp/ray."""
    ray = pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.shutdown()
    try:
        yield temp
    finally:
        ray.shutdown()
        remove_dir(temp)


# --------------------------------------------------------------------------------------------------- a study

_STUDY_SPACE = """\
attention:
  type: [none, se, eca]
  stages: [[3], [2, 3]]
  knobs:
    se: {reduction: [4]}
"""
_STUDY_CONFIGS = {  # trial id -> config, as the searcher would suggest them
    "base0001": {"attention": "none"},
    "se000002": {"attention": "se", "stages": "3", "blocks": "all", "position": "default", "se.reduction": 4},
    "eca00003": {"attention": "eca", "stages": "2,3", "blocks": "all", "position": "default"},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished study of three trained trials (``_helpers.STUDY``): job, MLflow store, parent run, Ray-style
    experiment folder (test_export, test_prune_cli).

    Real training without Ray: three tiny trials (resnet20 at 8 px on digits, one epoch each) go through
    ``attnsearch.train.fit``; their checkpoints are laid out as Ray's (``trial_<id>/checkpoint_<n>/checkpoint.pt``,
    the newest kept) and their results reach MLflow through ``tracking.Store`` and the study's recorded front
    (``pareto.record_study``), as a finished study's do."""
    import torch

    from attnsearch import pareto as P
    from attnsearch import tracking as T
    from attnsearch.config import load_job
    from attnsearch.space import materialize
    from attnsearch.train import CHECKPOINT_FILE, fit

    tmp = tmp_path_factory.mktemp("study")
    path = write_job(tmp, _STUDY_SPACE, data={"dataset": "digits", "image_size": 8, "batch_size": 64},
                     train={"epochs": 1, "lr": 0.1, "threads": 1},
                     tracking={"uri": f"sqlite:///{tmp}/mlflow.db"}, ray={"storage_path": f"{tmp}/ray_results"})
    job = load_job(path)
    exp_dir = Path(job.ray.storage_path) / STUDY
    parent = T.start_study(job.tracking.uri, "tiny", STUDY, path.read_text(), {}, False,
                           objectives=dict(job.search.objectives), max_t=1)
    store = T.Store(job.tracking.uri, parent)
    started = time.perf_counter()
    for trial_id, config in _STUDY_CONFIGS.items():
        record = T.TrialRecord(trial_id, config)
        folder = exp_dir / f"trial_{trial_id}"

        def report(metrics, state, folder=folder, record=record):
            record.add_result({**metrics, "timestamp": time.time()})
            if state is not None:  # Ray keeps the newest checkpoint only (num_to_keep=1)
                shutil.rmtree(folder, ignore_errors=True)
                target = folder / f"checkpoint_{metrics['epoch'] - 1:06d}"
                target.mkdir(parents=True)
                torch.save(state, target / CHECKPOINT_FILE)

        fit(job, materialize(job, config), report)
        record.finish(job.train.epochs)
        store.reconcile(record)
    P.record_study(job.tracking.uri, "tiny", STUDY, definition=dict(job.search.objectives))
    df = P.load_runs("tiny", tracking_uri=job.tracking.uri, parent_run_id=parent)
    return {"tmp": tmp, "job": job, "job_path": path, "parent": parent, "exp_dir": str(exp_dir), "df": df,
            "train_s": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------------- slow rule
#
# `slow` marks exactly the tests that start Ray or a server. A test not marked slow fails (an error at its
# teardown) when, from its setup to its teardown, this process called ray.init (tune.Tuner.fit and Ray's
# auto-init call it too), or spawned `ray start`, `mlflow server|ui` or `attnsearch run|ui|dashboard`, or Ray came
# up, or the test uses the local_ray fixture. The reverse (a slow test that starts nothing) is checked by hand.

_STARTS: list[str] = []  # what this process started, in order: "ray.init(...)", "`ray start ...`"
_SERVER_COMMANDS = {("ray", "start"), ("mlflow", "server"), ("mlflow", "ui"), ("attnsearch", "run"),
                    ("attnsearch", "ui"), ("attnsearch", "dashboard")}
_BEFORE = pytest.StashKey[tuple[int, bool]]()
_UNDO: list = []


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized()


def _server_command(args) -> str | None:
    # a shell command line (or one program without arguments), or an argument list
    one = isinstance(args, (str, bytes, os.PathLike))
    words = os.fsdecode(args).split() if one else [os.fsdecode(a) for a in args]
    names = [os.path.basename(w) for w in words]
    if any(pair in _SERVER_COMMANDS for pair in itertools.pairwise(names)):
        return " ".join(words)
    return None


def pytest_configure(config):
    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None:
        real_init = ray.init

        @functools.wraps(real_init)
        def init(*args, **kwargs):
            _STARTS.append(f"ray.init(address={kwargs.get('address', args[0] if args else None)!r})")
            return real_init(*args, **kwargs)

        ray.init = init
        _UNDO.append(lambda: setattr(ray, "init", real_init))

    real_popen_init = subprocess.Popen.__init__

    @functools.wraps(real_popen_init)
    def popen_init(self, args, *rest, **kwargs):
        command = _server_command(args)
        if command:
            _STARTS.append(f"`{command}`")
        return real_popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen_init
    _UNDO.append(lambda: setattr(subprocess.Popen, "__init__", real_popen_init))


def pytest_unconfigure(config):
    while _UNDO:
        _UNDO.pop()()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where torch sees no CUDA device (``make gpu-check`` runs them on one)."""
    cuda = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it on one)")
    for item in cuda:
        item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_BEFORE] = (len(_STARTS), _ray_up())  # before any fixture of this test is set up


@pytest.fixture(autouse=True)
def _slow_marks_what_starts_ray_or_a_server(request):
    yield
    item = request.node
    if item.get_closest_marker("slow") is not None:
        return
    first, was_up = item.stash.get(_BEFORE, (len(_STARTS), True))
    started = list(_STARTS[first:])
    if not started and not was_up and _ray_up():
        started.append("a Ray that is still initialized")
    if "local_ray" in request.fixturenames:
        started.append("the local_ray fixture (it needs one)")
    if started:
        pytest.fail(f"{item.nodeid} is not marked slow but started Ray or a server: {'; '.join(started)}. Mark it "
                    "@pytest.mark.slow (slow marks exactly the tests that start Ray or a server)", pytrace=False)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (timing- and count-sensitive tests share the machine), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
