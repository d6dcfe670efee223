"""Faults a study must survive, with real processes on this machine (loopback addresses only).

* a two-node Ray cluster (two `ray start` processes with one logical GPU each): two trials share the worker's GPU
  (0.5 each), the worker node dies mid-trial, both resume from their checkpoints on the head; one MLflow run per
  trial, its failure counted;
* the driver is SIGKILLed mid-study: `attnsearch run --resume` finishes it without re-running or losing a trial;
* trials that raise or diverge end `failed` with their reason while the other trials complete.

The two nodes use 127.0.0.2 and 127.0.0.3 (both loopback on Linux): Ray replaces 127.0.0.1 by the machine's
network address, and distinct node addresses let every result say (``node_ip``) which node produced it. Every
Ray process these tests start lives in a process tree the tests own and kill; nothing global (`ray stop`) runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from _helpers import (  # noqa: E402
    BIN,
    assert_optuna_record_matches_mlflow,
    free_port,
    ray_env,
    remove_dir,
    write_job,
)

from attnsearch.config import load_job  # noqa: E402
from attnsearch.contract import LOST_REASON  # noqa: E402
from attnsearch.search import run_study  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc, 127.0.0.0/8 on lo)"),
]

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


# --------------------------------------------------------------------------------------------------- processes


def _loopback_alias_works() -> bool:
    try:
        free_port(HEAD_IP)
        free_port(WORKER_IP)
        return True
    except OSError:
        return False


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the name field may hold spaces and parentheses


def process_tree(pid: int) -> list[tuple[int, str]]:
    """``pid`` and all its descendants as (pid, start time): Ray's workers call setsid, so the process group does
    not hold them, and a start time tells a process from a later one that got its pid."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in starts:
            out.append((p, starts[p]))
        todo.extend(children.get(p, []))
    return out


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


def kill_tree(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGKILL a process we started, its process group and every descendant; wait until they are gone."""
    # collected before the kill: orphans lose their parent link
    tree = process_tree(proc.pid) if proc.poll() is None else []
    _kill(proc, tree, timeout_s)


def _kill(proc: subprocess.Popen, tree: list[tuple[int, str]], timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group id stays ours while any member lives
    for pid, start in tree:
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p, t) for p, t in tree) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM (a `ray start --block` node shuts itself down), then whatever of its tree is left is killed."""
    tree = process_tree(proc.pid) if proc.poll() is None else []
    if tree:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    _kill(proc, tree, timeout_s)


def wait_for(what: str, check, timeout_s: float, poll_s: float = 0.25, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tail}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------------- cluster


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path


class Cluster:
    """A Ray head and worker nodes, each a `ray start --block` process in its own session."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.head: Node | None = None
        self.workers: list[Node] = []

    def _start(self, name: str, ip: str, args: list[str]) -> Node:
        log = self.temp / f"{name}.log"
        cmd = [
            str(BIN / "ray"), "start", "--block", "--node-ip-address", ip, "--num-cpus", "1", "--num-gpus", "1",
            "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *args,
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return Node(proc, log)

    def start_head(self) -> None:
        self.head = self._start("head", HEAD_IP, [
            "--head", "--port", str(self.port), "--include-dashboard", "false",
            "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            "--temp-dir", str(self.temp),
        ])
        wait_for("the head's GCS port", lambda: self._answers() or self._exited(self.head), 60, log=self.head.log)
        self._assert_running(self.head)

    def add_worker(self) -> Node:
        node = self._start(f"worker{len(self.workers)}", WORKER_IP, ["--address", self.address])
        self.workers.append(node)
        # `ray start` prints this once the node has registered with the head
        wait_for("the worker node", lambda: "Ray runtime started" in node.log.read_text() or self._exited(node),
                 90, log=node.log)
        self._assert_running(node)
        return node

    def live_worker(self) -> Node:
        alive = [w for w in self.workers if w.proc.poll() is None]
        return alive[-1] if alive else self.add_worker()

    def _answers(self) -> bool:
        try:
            socket.create_connection((HEAD_IP, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @staticmethod
    def _exited(node: Node) -> bool:
        return node.proc.poll() is not None

    @staticmethod
    def _assert_running(node: Node) -> None:
        if node.proc.poll() is not None:
            pytest.fail(f"`ray start` exited {node.proc.returncode}:\n{node.log.read_text()[-3000:]}")

    def shutdown(self) -> None:
        for node in [*self.workers, self.head]:
            if node is not None:
                stop(node.proc)


@pytest.fixture
def cluster():
    if not _loopback_alias_works():
        pytest.skip(f"{HEAD_IP}/{WORKER_IP} are not usable loopback addresses here")
    temp = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))  # short: Ray's socket paths have a length limit
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")  # this process is the studies' driver
    mp.delenv("RAY_ADDRESS", raising=False)
    c = Cluster(temp)
    try:
        c.start_head()
        c.add_worker()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()
        remove_dir(temp)


# --------------------------------------------------------------------------------------------------- helpers


NONE_SPACE = """\
attention:
  type: [none]
train:
  lr: [0.05, 0.1]
"""


def trial_results(experiment_dir: Path, study: str = "") -> dict[str, list[dict]]:
    """{trial id: its result.json lines} of a Ray experiment directory (or of ``study`` under a storage path)."""
    out = {}
    for path in sorted(experiment_dir.glob(f"{study}/trial_*/result.json" if study else "trial_*/result.json")):
        lines = []
        for text in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written right now
                lines.append(json.loads(text))
        out[path.parent.name.removeprefix("trial_")] = lines
    return out


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("attnsearch.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def steps(uri: str, run_id: str, metric: str = "val_acc") -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, metric))


def assert_one_run_per_trial(uri: str, experiment: str, trial_ids, max_t: int) -> dict[str, object]:
    parents, children = mlflow_runs(uri, experiment)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    by_trial = {}
    for c in children:
        tid = c.data.tags["attnsearch.trial_id"]
        assert tid not in by_trial, f"two MLflow runs for trial {tid}"
        by_trial[tid] = c
    # A trial a killed driver started after Ray last saved the study's state is unknown to the resumed study: its
    # run is ended as lost (Ray's save is throttled, so whether the kill hits that window is a matter of timing).
    for tid in set(by_trial) - set(trial_ids):
        lost = by_trial.pop(tid)
        assert (lost.data.tags["attnsearch.state"], lost.data.tags["attnsearch.reason"], lost.info.status) == \
            ("failed", LOST_REASON, "KILLED"), tid
    assert set(by_trial) == set(trial_ids)
    for tid, run in by_trial.items():
        if run.data.tags["attnsearch.state"] == "completed":
            assert steps(uri, run.info.run_id) == list(range(1, max_t + 1)), tid  # each epoch once
    return by_trial


# --------------------------------------------------------------------------------------------------- blocker

BLOCKER = """\
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
# the whole node, pinned to it through its node:<ip> resource
pg = ray.util.placement_group([{"CPU": 1, "GPU": 1, "node:" + sys.argv[2]: 0.001}])
ray.get(pg.ready(), timeout=120)
print("HELD", flush=True)
sys.stdin.read()
ray.util.remove_placement_group(pg)
"""


class Blocker:
    """Another Ray job holding all of one node's CPU and GPU, so that trials can only start elsewhere."""

    def __init__(self, address: str, ip: str, log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BLOCKER, address, ip], env=ray_env(), stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(f"a placement group holding {ip}", lambda: "HELD" in log.read_text() or self.proc.poll() is not None,
                 120, log=log)
        if self.proc.poll() is not None:
            pytest.fail(f"the blocker exited {self.proc.returncode}:\n{log.read_text()[-3000:]}")

    def release(self) -> None:
        if self.proc.poll() is None and self.proc.stdin:
            self.proc.stdin.close()  # it removes its placement group and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        kill_tree(self.proc)


# --------------------------------------------------------------------------------------------------- tests


def test_fractional_gpu_trials_survive_losing_a_node(cluster, tmp_path):
    """Two trials share the worker node's one GPU (0.5 each); the worker dies mid-trial; both finish on the head.

    The head is held by another job until a trial has a checkpoint on the worker, so where each trial starts is
    decided by the cluster, not by timing; then the head is freed and the worker is SIGKILLed (every process of
    that node at once, like a machine that dies).
    """
    epochs = 4
    job_path = write_job(
        tmp_path, NONE_SPACE, name="nodes", train={"epochs": epochs, "lr": 0.05}, data={"image_size": 16},
        search={"seed": 0, "num_samples": 2, "max_concurrent": 2}, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        resources={"cpu": 0.5, "gpu": 0.5},
        ray={"address": cluster.address, "storage_path": f"{tmp_path}/ray_results", "max_failures": 1})
    job = load_job(job_path)
    worker = cluster.workers[-1]
    blocker = Blocker(cluster.address, HEAD_IP, tmp_path / "blocker.log")
    seen: dict = {}
    stop_watching = threading.Event()

    def watch() -> None:
        # before the kill: how much GPU the cluster had left (0 = the worker's GPU shared by two trials)
        seen["min_gpu"] = seen["min_cpu"] = 99.0
        while not stop_watching.is_set():
            if ray.is_initialized():
                try:
                    free = ray.available_resources()
                except Exception:  # noqa: BLE001 - the driver is still connecting
                    free = {}
                if f"node:{WORKER_IP}" in free:  # a complete answer (a resource used up is left out)
                    seen["min_gpu"] = min(seen["min_gpu"], free.get("GPU", 0.0))
                    seen["min_cpu"] = min(seen["min_cpu"], free.get("CPU", 0.0))
            for tid, lines in trial_results(tmp_path / "ray_results", "*").items():
                if any(r["node_ip"] == WORKER_IP and 1 <= r["epoch"] < epochs for r in lines):
                    # result.json gets the line as Ray processes the result, just before it registers the
                    # result's checkpoint: a kill in between restarts the trial from scratch, so let it finish
                    time.sleep(1.0)
                    seen["trial"], seen["epoch"] = tid, max(r["epoch"] for r in trial_results(
                        tmp_path / "ray_results", "*")[tid])
                    blocker.release()
                    kill_tree(worker.proc)
                    seen["killed"] = time.monotonic()
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = run_study(job)
    finally:
        stop_watching.set()
        watcher.join(timeout=60)
        blocker.release()

    assert "killed" in seen, "no trial ever reported an epoch on the worker node"
    results = trial_results(Path(outcome.experiment_path))
    print("killed the worker node after epoch", seen["epoch"], "of trial", seen["trial"], "; epochs by node:",
          {tid: [(r["epoch"], r["node_ip"]) for r in lines] for tid, lines in results.items()})
    assert seen["min_gpu"] == 0.0 and seen["min_cpu"] == 0.0, seen  # 2 x 0.5 GPU on the worker's single GPU
    assert sorted(outcome.progress.states.values()) == ["completed", "completed"]
    assert len(results) == 2
    for tid, lines in results.items():
        assert [r["epoch"] for r in lines] == list(range(1, epochs + 1)), (tid, lines)  # no epoch re-trained
    moved = results[seen["trial"]]
    ips = [r["node_ip"] for r in moved]
    assert ips[0] == WORKER_IP and ips[-1] == HEAD_IP, ips
    first_on_head = next(r["epoch"] for r in moved if r["node_ip"] == HEAD_IP)
    assert first_on_head > 1  # resumed from its checkpoint, not from scratch
    assert {ip for lines in results.values() for ip in (r["node_ip"] for r in lines)} == {HEAD_IP, WORKER_IP}

    runs = assert_one_run_per_trial(job.tracking.uri, "nodes", results, max_t=epochs)
    run = runs[seen["trial"]]
    assert int(run.data.tags["attnsearch.failures"]) >= 1
    assert run.data.tags["attnsearch.state"] == "completed" and run.data.tags["attnsearch.budget"] == str(epochs)


def test_killed_driver_resumes_without_rerunning_or_losing_trials(tmp_path):
    """SIGKILL `attnsearch run` after two trials finished and a third has trained an epoch; `--resume` ends it."""
    epochs, samples = 3, 3
    job_path = write_job(
        tmp_path, NONE_SPACE, name="driver", train={"epochs": epochs, "lr": 0.05},
        search={"seed": 0, "num_samples": samples, "max_concurrent": 1},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"}, resources={"cpu": 1},
        ray={"storage_path": "ray_results", "num_cpus": 1, "max_failures": 1})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    temp = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))  # the drivers' local Ray lives here, nowhere else
    env = ray_env(RAY_TMPDIR=str(temp))
    command = [str(BIN / "attnsearch"), "run", str(job_path), "--no-pareto"]

    def start(log: Path, *extra: str) -> subprocess.Popen:
        with open(log, "w") as out:
            return subprocess.Popen([*command, *extra], cwd=tmp_path, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def progress():
        _, children = mlflow_runs(uri, "driver")
        done = [c for c in children if c.data.tags.get("attnsearch.state") in ("completed", "failed")]
        training = [c for c in children if c.data.tags.get("attnsearch.state") == "running"
                    and c.data.metrics.get("epoch", 0) >= 1]
        return len(done) >= 2 and training

    started = time.monotonic()
    first = start(tmp_path / "first.log")
    resumed = None
    try:
        wait_for("two finished trials and a third one training", progress, 240, poll_s=0.5,
                 log=tmp_path / "first.log")
        kill_tree(first)
        assert first.returncode == -signal.SIGKILL
        killed_at = time.monotonic()

        studies = [p for p in (tmp_path / "ray_results").iterdir() if p.is_dir()]
        assert len(studies) == 1
        before = trial_results(studies[0])
        _, children = mlflow_runs(uri, "driver")
        finished = {c.data.tags["attnsearch.trial_id"]: steps(uri, c.info.run_id) for c in children
                    if c.data.tags["attnsearch.state"] == "completed"}
        assert len(finished) >= 2

        resumed = start(tmp_path / "resumed.log", "--resume")
        try:
            rc = resumed.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the resumed study did not end in 300 s:\n{(tmp_path / 'resumed.log').read_text()[-3000:]}")
        assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
        print(f"killed {killed_at - started:.0f} s after the start; the resumed run took "
              f"{time.monotonic() - killed_at:.0f} s")
    finally:
        kill_tree(first)
        if resumed is not None:
            kill_tree(resumed)
        remove_dir(temp)

    assert f"study {studies[0].name}:" in (tmp_path / "resumed.log").read_text()  # the same study, not a new one
    assert [p.name for p in (tmp_path / "ray_results").iterdir() if p.is_dir()] == [studies[0].name]
    after = trial_results(studies[0])
    print("finished before the kill:", sorted(finished), "; epochs after resume:",
          {tid: [r["epoch"] for r in lines] for tid, lines in after.items()})
    assert len(after) == samples
    for tid in finished:  # finished trials were not trained again
        assert after[tid] == before[tid], tid
    runs = assert_one_run_per_trial(uri, "driver", after, max_t=epochs)
    assert len(runs) == samples
    for tid, history in finished.items():
        assert steps(uri, runs[tid].info.run_id) == history == list(range(1, epochs + 1))
    assert all(r.data.tags["attnsearch.state"] == "completed" for r in runs.values())
    # the Optuna record (kept by the killed driver, then the resumed one) holds each trial once, as MLflow does
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # ray.storage_path is relative to where the drivers ran
        counts = assert_optuna_record_matches_mlflow(load_job(job_path), studies[0].name)
    lost = len(mlflow_runs(uri, "driver")[1]) - samples  # a run of a trial Ray forgot (assert_one_run_per_trial)
    assert counts == {"completed": samples, **({"failed": lost} if lost else {})}


def _unusable_device() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "cuda"
    if not torch.backends.mps.is_available():
        return "mps"
    return None


def test_raising_and_diverging_trials_fail_with_their_reason_and_the_rest_completes(ray_driver, tmp_path):
    bad_device = _unusable_device()
    if bad_device is None:
        pytest.skip("every device this test could ask for exists here")
    epochs = 2
    # seed 5 draws all four (lr, device) pairs in four trials (random sampler, fixed order)
    job_path = write_job(
        tmp_path, f"""\
            attention:
              type: [none]
            train:
              lr: [0.05, 1.0e+6]
              device: [cpu, {bad_device}]
            """,
        name="faults", train={"epochs": epochs, "lr": 0.05}, search={"seed": 5, "num_samples": 4, "max_concurrent": 2},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"}, resources={"cpu": 1},
        ray={"storage_path": f"{tmp_path}/ray_results", "num_cpus": 2, "max_failures": 0})
    job = load_job(job_path)
    outcome = run_study(job)

    parents, children = mlflow_runs(job.tracking.uri, "faults")
    assert len(parents) == 1 and len(children) == 4
    kinds = set()
    for run in children:
        lr, device = float(run.data.params["train.lr"]), run.data.params["train.device"]
        tags = run.data.tags
        if device == bad_device:
            kinds.add("raised")
            assert tags["attnsearch.state"] == "failed" and run.info.status == "FAILED"
            assert "RuntimeError" in tags["attnsearch.reason"] and bad_device in tags["attnsearch.reason"]
        elif lr > 1:
            kinds.add("diverged")
            assert tags["attnsearch.state"] == "failed" and run.info.status == "FAILED"
            assert tags["attnsearch.reason"].startswith("loss is nan"), tags["attnsearch.reason"]
        else:
            kinds.add("trained")
            assert tags["attnsearch.state"] == "completed" and run.info.status == "FINISHED"
            assert steps(job.tracking.uri, run.info.run_id) == list(range(1, epochs + 1))
            assert 0.5 < run.data.metrics["val_acc"] <= 1.0  # digits: a healthy trial learns
    assert kinds == {"raised", "diverged", "trained"}, kinds
    assert sorted(outcome.progress.states.values()).count("failed") == len(
        [c for c in children if c.data.tags["attnsearch.state"] == "failed"])

    from optuna.trial import TrialState

    told = outcome.searcher._ot_study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in told) == sorted(
        "FAIL" if c.data.tags["attnsearch.state"] == "failed" else "COMPLETE" for c in children)
    assert all(t.values is not None for t in told if t.state == TrialState.COMPLETE)
