"""Plain helpers shared by the test modules (the fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import yaml

BIN = Path(sys.executable).parent  # the venv's `ray`, `attnsearch`, `mlflow` scripts

# The job every test module starts from: one flow-style line per top-level key (see write_job).
BASE_JOB: dict[str, Any] = {
    "name": "tiny",
    "backbone": {"name": "resnet20"},
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 64},
    "train": {"epochs": 2, "lr": 0.1, "threads": 1},
    "search": {"space": "space.yaml", "sampler": "random", "num_samples": 1, "max_concurrent": 1},
    "scheduler": {"type": "none"},
    "resources": {"cpu": 1},
}

# The smallest search space a Ray run needs: the baseline and SE (two reductions) at stage 3, two learning rates.
SE_SPACE = """\
attention:
  type: [none, se]
  stages: [[3]]
  position: [default]
  knobs:
    se: {reduction: [4, 8]}
train:
  lr: [0.05, 0.1]
"""


# The finished study of conftest.py's ``study`` fixture (test_export, test_prune_cli): its Ray experiment folder.
STUDY = "tiny-20260101-000000"


def evaluate(model: Any, job: Any, image_size: int) -> tuple[float, Any]:
    """Accuracy and logits of ``model`` on the digits validation split, as a trial evaluates (CPU, float32)."""
    import torch

    from attnsearch.data import build_loaders
    from attnsearch.train import load_data

    train_ds, val_ds, _ = load_data(job, image_size)
    _, val_loader = build_loaders(job.data, train_ds, val_ds, seed=0, pin_memory=False)
    logits, targets = [], []
    with torch.inference_mode():
        for x, y in val_loader:
            logits.append(model(x))
            targets.append(y)
    logits, targets = torch.cat(logits), torch.cat(targets)
    return (logits.argmax(1) == targets).sum().item() / len(targets), logits


def write_job(folder: Path, space: str, *, job_file: str = "job.yaml", space_file: str = "space.yaml",
              **sections: Any) -> Path:
    """Write ``folder/space_file`` (``space``, dedented) and ``folder/job_file``; return the job's path.

    The job is BASE_JOB with ``sections`` applied per top-level key: a dict is merged into the base section
    (``train={"epochs": 3}`` keeps lr and threads), None drops the key, anything else replaces it. Each key is
    one flow-style YAML line, under a comment line (jobs are hand-written files; comments must survive).
    """
    job: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE_JOB.items()}
    for key, value in sections.items():
        if value is None:
            job.pop(key, None)
        elif isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key].update(value)
        else:
            job[key] = value
    space_path, job_path = folder / space_file, folder / job_file
    space_path.parent.mkdir(parents=True, exist_ok=True)
    job_path.parent.mkdir(parents=True, exist_ok=True)
    space_path.write_text(textwrap.dedent(space))
    lines = [f"{key}: {yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()}"
             for key, value in job.items()]
    lines = [line.removesuffix("\n...") for line in lines]  # safe_dump ends a bare scalar with a document end
    job_path.write_text("# written by tests/_helpers.write_job\n" + "\n".join(lines) + "\n")
    return job_path


class BadInput(NamedTuple):
    """One row of BAD_JOBS: the bad input, and the parts its one message must hold."""

    sections: str  # YAML: the top-level sections that replace the base job's ("" for none)
    parts: tuple[str, ...]  # what the message must hold, besides the file it names first (``file``)
    space: str | None = None  # the search space's whole text instead of the base's
    args: tuple[str, ...] = ()  # after `attnsearch run job.yaml`
    at_load: bool = True  # refused when the job and its space are read (load_space(load_job(...))), or later

    @property
    def file(self) -> str | None:
        """The file the message starts with: the space's or the job's; None for a refusal after loading (its
        message names the key or the option)."""
        return None if not self.at_load else "space.yaml" if self.space is not None else "job.yaml"

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` values among ``args``, as ``load_job`` takes them."""
        return [value for flag, value in zip(self.args, self.args[1:], strict=False) if flag == "--set"]


def bad(sections: str, *parts: str, space: str | None = None, args: tuple[str, ...] = (),
        at_load: bool = True) -> BadInput:
    """A BAD_JOBS row: ``sections`` (YAML), the message's ``parts``, and what else the input changes."""
    return BadInput(sections, parts, space, args, at_load)


# The catalogue of bad input to `attnsearch run` that needs no setup of its own, one table for both of its tests:
# the loader's (tests/test_config.py, the rows refused when the job and its space are read: one message naming
# the file and the key) and the command's (tests/test_bad_input.py, every row: `attnsearch run` exits 2, starts
# nothing, creates nothing, loses nothing). Each row: the top-level sections that replace the base job's (YAML),
# then the parts the message must hold; a search space that replaces the base's, arguments after the job file,
# and whether it is refused only after loading (static checks of the space, data, Ray, resume). The base is either
# test file's job: a row sets whatever it depends on. tests/test_bad_input.py keeps apart the cases that need a
# setup of their own (files, a port, a server, a patched lookup), each with why.
BAD_JOBS = {
    "unknown_top": bad("trian: {lr: 0.1}", "trian: unknown key 'trian' (did you mean 'train'?)", "valid keys"),
    "unknown_nested": bad("train: {epochs: 4, lrr: 0.1}", "train.lrr: unknown key 'lrr' (did you mean 'lr'?)",
                          "'weight_decay'"),
    "wrong_type": bad("train: {epochs: four}", "train.epochs: Input should be a valid integer", "got 'four'"),
    "negative_lr": bad("train: {epochs: 4, lr: -1}", "train.lr: Input should be greater than 0", "(got -1)"),
    "backbone_not_mapping": bad("backbone: resnet20", "backbone: expected a mapping", "'resnet20'"),
    "backbone": bad("backbone: {name: resnet21}", "backbone.name: unknown backbone 'resnet21'", "'resnet20'"),
    "sampler": bad("search: {space: space.yaml, sampler: tpee}", "search.sampler:", "did you mean 'tpe'"),
    "storage_path_credentials": bad("ray: {storage_path: 's3://KEY:S3CR3T@bucket/x'}", "ray.storage_path:",
                                    "credentials in the URI", "tuner.pkl", "AWS_ACCESS_KEY_ID"),
    "scheduler": bad("scheduler: {type: hyperband}", "scheduler.type:", "'auto', 'asha', 'moasha' or 'none'"),
    "num_samples": bad("search: {space: space.yaml, num_samples: 0}", "search.num_samples:",
                       "greater than or equal to 1"),
    "max_concurrent": bad("search: {space: space.yaml, max_concurrent: 0}", "search.max_concurrent:", "(got 0)"),
    "objective_mode": bad("search: {space: space.yaml, objectives: {val_acc: maximize}}",
                          "search.objectives.val_acc", "'max' or 'min'"),
    "objective_metric": bad("search: {space: space.yaml, objectives: {flopz: min, val_acc: max}}",
                            "search.objectives", "did you mean 'flops'"),
    "no_objectives": bad("search: {space: space.yaml, objectives: {}}", "search.objectives", "at least one metric"),
    "max_t": bad("train: {epochs: 4}\nscheduler: {type: asha, grace_period: 5}", "train.epochs (4)",
                 "scheduler.grace_period (5)"),
    "asha_metric": bad("search: {space: space.yaml, objectives: {flops: min}}", "scheduler.type 'asha'", "val_acc"),
    "reduction": bad("scheduler: {reduction_factor: 1}", "scheduler.reduction_factor", "greater than 1"),
    "rungs_factor": bad("scheduler: {type: moasha, rungs: {1: 1}}", "scheduler.rungs", "{1: 1.0}",
                        "reduction factor (> 1)"),
    "rungs_with_ladder": bad("scheduler: {type: moasha, grace_period: 1, rungs: {1: 2}}", "scheduler.rungs {1: 2.0}",
                             "replaces scheduler.grace_period: give one or the other"),
    "rungs_asha": bad("scheduler: {type: asha, rungs: {1: 2}}", "scheduler.rungs", "needs scheduler.type moasha"),
    "rungs_epoch": bad("train: {epochs: 4}\nscheduler: {type: moasha, rungs: {4: 2}}", "scheduler.rungs",
                       "has epoch 4, not below train.epochs (4)"),
    "dataset": bad("data: {dataset: cifar}", "data.dataset:", "did you mean 'cifar10'"),
    "root_needed": bad("data: {dataset: cifar100}", "data.root:", "needs data.root"),
    "validation_official": bad("data: {dataset: digits, validation: official}", "data.validation: dataset 'digits' "
                               "has no official held-out split", "set it to split"),
    "cpu": bad("resources: {cpu: 0}", "resources.cpu", "greater than 0"),
    "gpu": bad("resources: {gpu: -0.5}", "resources.gpu", "greater than or equal to 0"),
    "gpu_fraction": bad("resources: {gpu: 1.5}", "resources.gpu", "only below 1"),
    "constraint": bad("constraints: {max_flops: -5}", "constraints.max_flops", "greater than 0"),
    "max_failures": bad("ray: {max_failures: -1}", "ray.max_failures", "greater than or equal to 0"),
    "name": bad("name: 'my job!'", "name: may only contain", "'my job!'"),
    "amp": bad("train: {epochs: 4, amp: maybe}", "train.amp: must be auto, true or false", "'maybe'"),
    "warmup": bad("train: {epochs: 4, warmup_epochs: 4}", "train:", "warmup_epochs (4) must be smaller than epochs"),
    "space_missing": bad("search: {space: nowhere.yaml}", "search.space: no such search-space file", "nowhere.yaml"),
    "space_bad": bad("search: {space: 3}", "search.space:", "file path or an inline mapping"),
    "set_unknown_key": bad("", "--set train.learning_rate=0.1", "unknown key 'train.learning_rate'", "'lr'",
                           args=("--set", "train.learning_rate=0.1")),
    # the search space
    "attention_type": bad("", "attention.type", "unknown attention type 'cbm'", "did you mean 'cbam'",
                          space="attention: {type: [none, se, cbm], stages: [[3]]}"),
    "knob_of_another_type": bad("", "attention.knobs.se.groups", "'se' has no knob 'groups'", "['reduction']",
                                space="attention: {type: [none, se], knobs: {se: {reduction: [4], groups: [2]}}}"),
    "empty_space": bad("", "attention.type", "empty search space", space="attention: {type: []}"),
    **{f"sa_groups_{value}": bad("", "attention.knobs.sa.groups", f"got {value}",
                                 space=f"attention: {{type: [none, sa], knobs: {{sa: {{groups: [{value}]}}}}}}")
       for value in (0, -2)},
    **{f"se_reduction_{value}": bad("", "attention.knobs.se.reduction", f"got {value}",
                                    space=f"attention: {{type: [none, se], knobs: {{se: {{reduction: [{value}]}}}}}}")
       for value in (0, -4)},
    **{f"nam_penalty_{value}": bad("", "attention.knobs.nam.penalty", "must be a number > 0", f"got {float(value)}",
                                   space=f"attention: {{type: [none, nam], knobs: {{nam: {{penalty: [{value}]}}}}}}")
       for value in ("0.0", "-1.0e-4")},
    # refused after loading: the space's static checks, the data, Ray's address, --resume
    "sa_groups_unplaceable": bad("", "space.yaml", "attention.knobs.sa.groups", "sa.groups=48", "no valid placement",
                                 "layer3.0", "valid sa.groups for 64 channels", at_load=False,
                                 space="attention: {type: [none, sa], stages: [[3]], position: [default], "
                                       "knobs: {sa: {groups: [48]}}}"),
    "data_root_missing": bad("data: {dataset: folder, root: nothere, image_size: 8, batch_size: 64}", "data.root",
                             "/nothere does not exist", "ImageFolder", at_load=False),
    "ray_address_dashboard": bad("ray: {storage_path: ray_results, address: 'http://127.0.0.1:8265'}",
                                 "ray.address='http://127.0.0.1:8265'", "dashboard", "GCS address",
                                 "attnsearch submit", at_load=False),
    "ray_address_not_an_address": bad("ray: {storage_path: ray_results, address: head}", "ray.address='head'",
                                      "not a Ray address", "HOST:PORT", at_load=False),
    "resume_no_study": bad("name: bad", "--resume", "job 'bad' has no study", "ray.storage_path=", "/ray_results",
                           args=("--resume",), at_load=False),
    "resume_unknown_study": bad("", "--resume bad-20260101-000000", "no study of that name", "ray.storage_path=",
                                args=("--resume", "bad-20260101-000000"), at_load=False),
}


def with_sections(job_text: str, sections: str) -> str:
    """``job_text`` (YAML) with the top-level sections in ``sections`` (YAML) replaced: a BAD_JOBS row applied."""
    job = yaml.safe_load(job_text)
    job.update(yaml.safe_load(sections) or {})
    return yaml.safe_dump(job, sort_keys=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for servers the tests start, or an address nobody answers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A real process (``mlflow server`` / ``mlflow ui``) in its own process group, stopped cleanly."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.port, self.log, self.env = cmd, port, log, env
        self.proc = None

    def start(self, timeout_s: float = 90.0) -> Server:
        from attnsearch.tracking._connection import _http_get

        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if _http_get(f"http://127.0.0.1:{self.port}/health", 1.0) == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"server did not come up in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group holds the uvicorn workers this server started
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process (/proc/PID/stat)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return out


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` lives. Zombies do not count: an orphan's exit status waits for PID 1,
    which in a container may never reap it."""
    return any(group == pgid and state != "Z" for _, state, _, group in processes())


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return [p for p, state, parent, _ in processes() if parent == pid and state != "Z"]


def alive(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that still live (zombies do not count, as for ``group_alive``)."""
    wanted = set(pids)
    return sorted(p for p, state, _, _ in processes() if p in wanted and state != "Z")


def group_members(pgid: int) -> set[int]:
    """The live processes of group ``pgid``."""
    return {p for p, state, _, group in processes() if group == pgid and state != "Z"}


def stop_server(proc: subprocess.Popen, groups: Iterable[int] = (), timeout_s: float = 30.0) -> list[int]:
    """A test's teardown of a command that serves (``attnsearch ui|dashboard``, ``serve_ui``): SIGTERM to it (it
    stops its server's group), SIGKILL to it after ``timeout_s``, then SIGKILL to each process group its children
    led when this was called and to ``groups``. Returns the processes of those groups still alive afterwards
    (none, unless one survived SIGKILL); a test asserts that, so a server never outlives the test that started it.
    """
    groups = {*groups, *(_pgid(c) for c in children_of(proc.pid))} - {None, os.getpgrp()}  # never the test's own
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(p for g in groups for p in group_members(g))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def remove_dir(path: Path) -> None:
    """rmtree that outlasts Ray processes still writing their last log lines while they exit."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.5)


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of the Ray processes the tests start (`ray start`, `attnsearch run`): throwaway local
    clusters without token auth (it turns itself on when ~/.ray/auth_token exists) or usage stats, the venv's
    scripts first on PATH, no inherited RAY_ADDRESS."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def load_benchmark(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package; its own imports resolve)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_optuna_record_matches_mlflow(job: Any, study_id: str) -> dict[str, int]:
    """The study's Optuna record holds each of its MLflow child runs once (matched by Ray trial id), in the state
    and with the values MLflow has: completed -> COMPLETE with the objectives' last values and the constraint
    met, early_stopped -> PRUNED, infeasible -> COMPLETE with the constraint violated, failed -> FAIL. Any other
    Optuna trial is one the record marked lost. Returns the count of MLflow states."""
    import math

    import mlflow
    from optuna.trial import TrialState

    from attnsearch.contract import STATE_KEY
    from attnsearch.search import INFEASIBLE_CONSTRAINT, TRIAL_ID_ATTR, load_optuna_study, optuna_storage_url

    study = load_optuna_study(optuna_storage_url(job, study_id), study_id)
    trials = study.get_trials()
    by_id: dict[str, Any] = {}
    for trial in trials:
        tid = trial.user_attrs.get(TRIAL_ID_ATTR)
        assert tid not in by_id, f"Ray trial {tid} twice in the Optuna record"
        by_id[tid] = trial
    client = mlflow.MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.tracking.experiment or job.name)
    runs = [r for r in client.search_runs([exp.experiment_id], "tags.`attnsearch.role` = 'trial'", max_results=1000)
            if r.data.tags.get("attnsearch.study") == study_id]
    expected = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.PRUNED,
                "infeasible": TrialState.COMPLETE, "failed": TrialState.FAIL}
    counts: dict[str, int] = {}
    for run in runs:
        state, tid = run.data.tags["attnsearch.state"], run.data.tags["attnsearch.trial_id"]
        counts[state] = counts.get(state, 0) + 1
        trial = by_id.pop(tid, None)
        assert trial is not None, f"MLflow run {run.info.run_name} (trial {tid}) is not in the Optuna record"
        assert (trial.state, trial.user_attrs.get(STATE_KEY)) == (expected[state], state), (tid, trial)
        if state == "completed":
            assert trial.constraints[INFEASIBLE_CONSTRAINT] == 0.0
            for name, value in zip(study.metric_names, trial.values, strict=False):
                assert math.isclose(value, run.data.metrics[name], rel_tol=1e-6), (tid, name)
        if state == "infeasible":
            assert trial.constraints[INFEASIBLE_CONSTRAINT] > 0
    for tid, trial in by_id.items():
        assert trial.state == TrialState.FAIL and trial.user_attrs.get("attnsearch_reason", "").startswith("lost"), tid
    return counts


def _fashion_mnist_installed() -> bool:
    from attnsearch.data import SYSTEM_FASHION_MNIST

    return (SYSTEM_FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file()


needs_fashion_mnist = pytest.mark.skipif(not _fashion_mnist_installed(),
                                         reason="the Debian package dataset-fashion-mnist is not installed")


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 3) -> dict[str, np.ndarray]:
    """A tiny tree in the python-pickle format torchvision downloads; returns the images per file."""
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, train, test, n = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 10
        meta, key, names_key = "batches.meta", "labels", "label_names"
    else:
        folder, train, test, n = "cifar-100-python", ["train"], ["test"], 100
        meta, key, names_key = "meta", "fine_labels", "fine_label_names"
    (root / folder).mkdir(parents=True)
    written = {}
    for i, fname in enumerate(train + test):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i * per_batch + j) % n for j in range(per_batch)]
        with open(root / folder / fname, "wb") as f:
            pickle.dump({"data": data, key: labels, "batch_label": fname}, f)
        written[fname] = data
    with open(root / folder / meta, "wb") as f:
        pickle.dump({names_key: [f"c{i}" for i in range(n)]}, f)
    return written
