"""``attnsearch submit/status/logs`` (attnsearch.ray_jobs, attnsearch.cli._ray_jobs): the working_dir a job travels
in, address handling, and a real Ray head with its dashboard (the Jobs API server) on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from _helpers import SE_SPACE, free_port, ray_env, write_job

from attnsearch import ray_jobs, uris
from attnsearch.cli import _ray_jobs as commands
from attnsearch.cli import build_parser
from attnsearch.config import ConfigError, load_job
from attnsearch.ray_jobs import build_working_dir, check_reachable, resolve_address
from attnsearch.space import load_space

SPACE = SE_SPACE


def cluster_job(root: Path, space_ref: str | dict = "../spaces/tiny.yaml", **sections) -> Path:
    """A job in root/jobs whose space lives in root/spaces and whose data folder sits beside it."""
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "data" / "big.bin").write_bytes(b"\0" * 1024)
    return write_job(root, SPACE, job_file="jobs/tiny.yaml", space_file="spaces/tiny.yaml",
                     search={"space": space_ref}, **sections)


# --------------------------------------------------------------------------------------------------- working_dir


def test_working_dir_holds_job_and_space_with_rewritten_path(tmp_path, monkeypatch):
    job_path = cluster_job(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    bundle = build_working_dir(job_path, ["train.epochs=3"], tmp_path / "wd")

    files = sorted(str(p.relative_to(bundle.working_dir)) for p in bundle.working_dir.rglob("*") if p.is_file())
    assert files == ["search_spaces/tiny.yaml", "tiny.yaml"]  # the data folder beside the job stays home
    assert (bundle.working_dir / "search_spaces" / "tiny.yaml").read_text() == SPACE
    raw = yaml.safe_load((bundle.working_dir / "tiny.yaml").read_text())
    assert raw["search"]["space"] == "search_spaces/tiny.yaml"
    assert raw["ray"]["address"] == "auto"  # the driver joins the cluster it runs on
    assert raw["train"]["epochs"] == 2  # overrides travel on the command line, not baked in
    assert bundle.entrypoint == "attnsearch run tiny.yaml --set train.epochs=3"

    # On the head the job's cwd is the working_dir: the job must load there with the copied space.
    other = tmp_path / "elsewhere"
    shutil.copytree(bundle.working_dir, other)
    monkeypatch.chdir(other)
    job = load_job("tiny.yaml", ["train.epochs=3"])
    assert job.search.space == str(other / "search_spaces" / "tiny.yaml")
    assert job.train.epochs == 3 and job.ray.address == "auto"
    assert list(load_space(job).types.choices) == ["none", "se"]


def test_space_override_is_applied_locally_and_not_passed_on(tmp_path, monkeypatch):
    job_path = cluster_job(tmp_path)
    other_space = tmp_path / "other.yaml"
    other_space.write_text(SPACE.replace("[none, se]", "[se]"))
    monkeypatch.chdir(tmp_path)
    bundle = build_working_dir(job_path, [f"search.space={other_space}", "search.num_samples=4"], tmp_path / "wd")
    raw = yaml.safe_load((bundle.working_dir / "tiny.yaml").read_text())
    assert raw["search"]["space"] == "search_spaces/other.yaml"
    assert (bundle.working_dir / "search_spaces" / "other.yaml").read_text() == other_space.read_text()
    assert not (bundle.working_dir / "search_spaces" / "tiny.yaml").exists()
    assert bundle.overrides == ["search.num_samples=4"]
    assert str(other_space) not in bundle.entrypoint


def test_inline_space_and_explicit_address_are_kept(tmp_path, monkeypatch):
    inline = {"attention": {"type": ["none"]}, "train": {"lr": [0.1]}}
    job_path = cluster_job(tmp_path, space_ref=inline, ray={"address": "ray://head:10001"})
    monkeypatch.chdir(tmp_path)
    bundle = build_working_dir(job_path, ["search.space.train.lr=[0.2]"], tmp_path / "wd")
    raw = yaml.safe_load((bundle.working_dir / "tiny.yaml").read_text())
    assert raw["search"]["space"] == {"attention": {"type": ["none"]}, "train": {"lr": [0.2]}}
    assert raw["ray"]["address"] == "ray://head:10001"
    assert bundle.space_file is None and bundle.overrides == []
    assert [str(p.relative_to(bundle.working_dir)) for p in bundle.working_dir.rglob("*")] == ["tiny.yaml"]


def test_paths_that_vanish_on_the_cluster_are_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_path = cluster_job(tmp_path)
    warned = " ".join(build_working_dir(job_path, [], tmp_path / "a").warnings)
    assert "ray.storage_path='ray_results'" in warned and "tracking.uri='sqlite:///mlflow.db'" in warned

    fine = ["ray.storage_path=s3://bucket/results", "tracking.uri=http://mlflow:5000"]
    assert build_working_dir(job_path, fine, tmp_path / "b").warnings == []
    absolute = ["ray.storage_path=/shared/results", f"tracking.uri=sqlite:////{tmp_path}/m.db"]
    assert build_working_dir(job_path, absolute, tmp_path / "c").warnings == []
    cifar = fine + ["data.dataset=cifar10", "data.root=data/cifar10"]
    warned = build_working_dir(job_path, cifar, tmp_path / "d").warnings
    assert len(warned) == 1 and "data.root='data/cifar10'" in warned[0]


def test_bad_job_fails_before_anything_is_sent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_path = cluster_job(tmp_path)
    # the address is dead too: the job's own error must come first, naming the key
    with pytest.raises(ConfigError, match=r"train\.lr"):
        ray_jobs.submit(job_path, ["train.lr=-1"], address="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="search.space: no such search-space file"):
        ray_jobs.submit(job_path, ["search.space=missing.yaml"], address="http://127.0.0.1:1")


# --------------------------------------------------------------------------------------------------- addresses


def test_address_resolution_order(monkeypatch):
    for name in ray_jobs.ADDRESS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert resolve_address(None) == ("http://127.0.0.1:8265", "the default address")
    monkeypatch.setenv("RAY_ADDRESS", "")  # CI exports it empty
    assert resolve_address(None)[0] == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "head:8265")
    assert resolve_address(None) == ("http://head:8265", "$RAY_ADDRESS")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://ray.example.org/")
    assert resolve_address(None) == ("https://ray.example.org", "$RAY_API_SERVER_ADDRESS")
    assert resolve_address("http://10.0.0.5:8265")[0] == "http://10.0.0.5:8265"
    for bad in ("auto", "ray://head:10001"):
        with pytest.raises(ConfigError, match="dashboard's HTTP address"):
            resolve_address(bad)
    for bad in ("ftp://head", "http://head:notaport", "http://"):
        with pytest.raises(ConfigError, match=r"http\(s\)://HOST"):
            resolve_address(bad)


def test_dead_address_is_a_clear_error_not_a_hang():
    address = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        ray_jobs.connect(address)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert address in message and "connection refused" in message and "--address" in message


def test_silent_address_times_out(monkeypatch):
    monkeypatch.setattr(uris, "RAY_CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as server:  # accepts TCP (the kernel does) but never answers HTTP
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        address = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"no answer within 1 s"):
            ray_jobs.connect(address)
        assert time.monotonic() - start < 4


def test_something_else_on_the_port_is_named():
    class NotRay(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConfigError, match="not a Ray dashboard"):
            check_reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def test_auth_refusal_names_the_fix(monkeypatch):
    from ray.exceptions import AuthenticationError

    class Refusing:
        def __init__(self, address):
            raise AuthenticationError("Authentication required: Unauthorized")

    import ray.job_submission

    monkeypatch.setattr(ray_jobs, "check_reachable", lambda address, source="", timeout=None: None)
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Refusing)
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token.*RAY_AUTH_TOKEN"):
        ray_jobs.connect("http://head:8265")


def test_commands_register_on_the_cli_parser():
    parser = build_parser()
    args = parser.parse_args(["submit", "jobs/x.yaml", "--set", "a.b=1", "--address", "http://h:8265", "--follow"])
    assert args.func is commands.cmd_submit and args.set == ["a.b=1"] and args.address == "http://h:8265"
    args = parser.parse_args(["status"])
    assert args.func is commands.cmd_status and args.submission_id is None and args.address is None
    args = parser.parse_args(["logs", "raysubmit_1", "-f"])
    assert args.func is commands.cmd_logs and args.follow and args.submission_id == "raysubmit_1"


def test_dry_run_writes_the_working_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job_path = cluster_job(tmp_path)
    args = build_parser().parse_args(["submit", str(job_path), "--dry-run", str(tmp_path / "wd"), "--resume"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "search_spaces/tiny.yaml, tiny.yaml" in out
    assert "entrypoint  attnsearch run tiny.yaml --resume latest" in out


# --------------------------------------------------------------------------------------------------- a real head


def _dashboard_deps_missing() -> str | None:
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:
        return None
    return get_dashboard_dependency_error()


@pytest.fixture(scope="module")
def ray_head():
    """A one-CPU Ray head with its dashboard on 127.0.0.1, in its own process group so teardown ends only it."""
    missing = _dashboard_deps_missing()
    if missing:
        pytest.skip(f"the Ray Jobs server needs ray[default] (dashboard packages): {missing}")
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - the head outlives this block; closed in finally
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", "0",
        "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port),
        "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--temp-dir", temp, "--disable-usage-stats",
    ]
    proc = subprocess.Popen(cmd, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{(Path(temp) / 'head.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{address}/api/jobs/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer in 60 s:\n{(Path(temp) / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # --block shuts the node down on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of this head's group is left
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def cli_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# Stands in for `attnsearch run` on the head: loads the job exactly as `run` would, from the job's working_dir.
PROBE = (
    "import os, sys; from attnsearch.config import load_job; from attnsearch.space import load_space; "
    "a = sys.argv[1:]; "
    "job = load_job(a[0], a[2::2]); "
    "print('SPACE', os.path.relpath(job.search.space, os.getcwd())); print('ADDRESS', job.ray.address); "
    "print('EPOCHS', job.train.epochs); print('TYPES', list(load_space(job).types.choices)); print('CWD', os.getcwd())"
)


@pytest.mark.slow
def test_submit_status_logs_on_a_real_head(ray_head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job_path = cluster_job(tmp_path / "src")
    submission_id = ray_jobs.submit(job_path, ["train.epochs=5"], address=ray_head,
                                   command=[sys.executable, "-c", PROBE], stream=sys.stdout)
    capsys.readouterr()

    args = cli_args("logs", submission_id, "--address", ray_head, "--follow")
    assert args.func(args) == 0
    followed = capsys.readouterr()
    assert "SUCCEEDED" in followed.err
    lines = dict(line.split(" ", 1) for line in followed.out.splitlines() if line.split(" ")[0].isupper())
    assert lines["SPACE"] == "search_spaces/tiny.yaml"  # found inside the uploaded working_dir
    assert lines["ADDRESS"] == "auto" and lines["EPOCHS"] == "5" and lines["TYPES"] == "['none', 'se']"
    assert not lines["CWD"].startswith(str(tmp_path))  # it ran in Ray's copy, not in the submitter's folder

    args = cli_args("logs", submission_id, "--address", ray_head)
    assert args.func(args) == 0
    assert "SPACE search_spaces/tiny.yaml" in capsys.readouterr().out

    args = cli_args("status", submission_id, "--address", ray_head)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"submission id  {submission_id}" in out and "status         SUCCEEDED" in out
    assert "--set train.epochs=5" in out

    monkeypatch.setenv("RAY_ADDRESS", ray_head)  # the default address comes from the environment
    args = cli_args("status")
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert submission_id in table and "SUCCEEDED" in table


@pytest.mark.slow
def test_failed_job_and_unknown_id_on_a_real_head(ray_head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job_path = cluster_job(tmp_path / "src")
    submission_id = ray_jobs.submit(job_path, address=ray_head, submission_id="attnsearch-test-fail",
                                   command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                                   stream=sys.stdout)
    assert submission_id == "attnsearch-test-fail"
    args = cli_args("logs", submission_id, "--address", ray_head, "--follow")
    assert args.func(args) == 1  # the exit status follows the job's
    followed = capsys.readouterr()
    assert "boom" in followed.out and "FAILED" in followed.err

    args = cli_args("status", "raysubmit_nosuchjob", "--address", ray_head)
    with pytest.raises(ConfigError, match="no job 'raysubmit_nosuchjob'.*attnsearch status"):
        args.func(args)

