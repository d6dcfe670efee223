"""Assemble and run a study: Optuna (through Ray's OptunaSearch) proposes, ASHA stops, Ray Tune schedules."""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError, Job
from .train import REASON_KEY, STATE_KEY

STUDY_TAG = "attnsearch.study"
TRAINING_METRICS = ("val_acc", "val_loss", "train_loss")
_INFEASIBLE_ATTR = "attnsearch_infeasible"


def trial_state(result: Mapping[str, Any] | None, max_t: int, errored: bool = False) -> str:
    """The attnsearch state of a finished trial from its last result (the rule lives in ``tracking``).

    A trial that never trained or diverged says so itself; otherwise it either reached ``max_t`` epochs
    (completed) or the scheduler stopped it earlier (early_stopped). A Ray error is ``failed``.
    """
    from .tracking import trial_state as rule

    result = result or {}
    return rule(result.get(STATE_KEY), int(result.get("epoch", 0) or 0), max_t, errored)


def constraint_values(trial) -> list[float]:
    """Optuna ``constraints_func``: > 0 marks a trial infeasible (over budget or an invalid combination)."""
    return [float(trial.user_attrs.get(_INFEASIBLE_ATTR, 0.0))]


def make_sampler(sampler: str, seed: int | None):
    """The Optuna sampler for ``search.sampler``; infeasible trials are fed back through constraints."""
    import optuna

    if sampler == "tpe":
        # multivariate+group model the joint, conditional (define-by-run) space; ~3x cheaper per trial than
        # independent sampling at 1,000 trials (design notes).
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constraints_func=constraint_values,
            warn_independent_sampling=False,
        )
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraint_values)
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraint_values, warn_independent_sampling=False)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.sampler: unknown sampler {sampler!r}; valid: tpe, nsga2, gp, random")


def _make_searcher_class():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about trials that did not finish their budget.

        Ray reports an ASHA-stopped trial as complete with its last, partly trained result; left alone, epoch-1
        accuracies would enter the study (and its Pareto set) as final. Those are told as PRUNED; infeasible
        trials are told through the sampler's constraints; diverged trials as FAIL.
        """

        def __init__(self, *args, max_t: int, objectives: Mapping[str, str], **kwargs):
            super().__init__(*args, **kwargs)
            self._max_t = max_t
            self._objectives = dict(objectives)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            state = trial_state(result, self._max_t, errored=error)
            ot_trial.set_user_attr("attnsearch_state", state)
            try:
                if state == "completed":
                    ot_trial.set_user_attr(_INFEASIBLE_ATTR, 0.0)
                    values = [float(result[m]) for m in self._objectives]
                    self._ot_study.tell(ot_trial, values)
                elif state == "infeasible":
                    ot_trial.set_user_attr(_INFEASIBLE_ATTR, 1.0)
                    ot_trial.set_user_attr("attnsearch_reason", str(result.get(REASON_KEY, "")))
                    self._ot_study.tell(ot_trial, [_worst(result, m, mode) for m, mode in self._objectives.items()])
                elif state == "early_stopped":
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                else:
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            finally:
                self._completed_trials.add(trial_id)

    return StudySearcher


def _worst(result: Mapping[str, Any], metric: str, mode: str) -> float:
    value = result.get(metric)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value) if metric not in TRAINING_METRICS else (0.0 if mode == "max" else 1e12)
    return 0.0 if mode == "max" else 1e12


@dataclass
class StudyProgress:
    """What the terminal shows while a study runs."""

    num_samples: int
    max_t: int
    objectives: Mapping[str, str]
    states: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    finals: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, trial_id: str, result: dict | None, errored: bool) -> None:
        self.running.discard(trial_id)
        self.states[trial_id] = trial_state(result, self.max_t, errored)
        if result:
            self.finals[trial_id] = {k: result.get(k) for k in ("val_acc", "flops", "params", "epoch")}

    def best_acc(self) -> float | None:
        accs = [r["val_acc"] for t, r in self.finals.items()
                if self.states.get(t) == "completed" and isinstance(r.get("val_acc"), (int, float))]
        return max(accs) if accs else None

    def front_size(self) -> int:
        objs = [m for m in self.objectives]
        rows = [r for t, r in self.finals.items()
                if self.states.get(t) == "completed"
                and all(isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for m in objs)]
        if not rows:
            return 0
        import pandas as pd

        from .pareto import pareto_front

        return len(pareto_front(pd.DataFrame(rows).assign(state="completed", budget=self.max_t),
                                dict(self.objectives), budget="any"))

    def line(self) -> str:
        counts = {s: sum(1 for v in self.states.values() if v == s)
                  for s in ("completed", "early_stopped", "infeasible", "failed")}
        best = self.best_acc()
        elapsed = time.monotonic() - self.started
        return (
            f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] trials {len(self.states)}/{self.num_samples} done "
            f"({counts['completed']} completed, {counts['early_stopped']} stopped early, "
            f"{counts['infeasible']} infeasible, {counts['failed']} failed), {len(self.running)} running | "
            f"best val_acc {'-' if best is None else f'{best:.4f}'} | Pareto front {self.front_size()}"
        )


def _make_progress_callback():
    from ray.tune import Callback

    class ProgressPrinter(Callback):
        def __init__(self, progress: StudyProgress, stream=None, every_s: float = 15.0):
            self.progress, self.stream, self.every_s = progress, stream, every_s
            self._last = 0.0

        def _print(self, force: bool = False) -> None:
            now = time.monotonic()
            if force or now - self._last >= self.every_s:
                self._last = now
                print(self.progress.line(), file=self.stream or sys.stdout, flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.progress.running.add(trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.progress.record(trial.trial_id, trial.last_result, errored=False)
            self._print(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.progress.record(trial.trial_id, trial.last_result, errored=True)
            self._print(force=True)

        def on_step_end(self, iteration, trials, **info):
            self._print()

    return ProgressPrinter


def asha_metric(job: Job) -> tuple[str, str]:
    """ASHA gets one metric of its own: the first training objective, else val_acc."""
    for metric, mode in job.search.objectives.items():
        if metric in TRAINING_METRICS:
            return metric, mode
    return "val_acc", "max"


def new_study_id(job: Job) -> str:
    return f"{job.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _storage_fs(storage_path: str):
    import pyarrow.fs

    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), storage_path


def existing_studies(job: Job) -> list[str]:
    """Study ids of this job under ``ray.storage_path`` (oldest first), those Ray can restore."""
    import pyarrow.fs

    fs, root = _storage_fs(job.ray.storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    prefix = f"{job.name}-"
    found = []
    for info in infos:
        name = info.base_name
        if info.type == pyarrow.fs.FileType.Directory and name.startswith(prefix):
            if fs.get_file_info(f"{info.path}/tuner.pkl").type == pyarrow.fs.FileType.File:
                found.append(name)
    return sorted(found)


def study_path(job: Job, study_id: str) -> str:
    return f"{job.ray.storage_path.rstrip('/')}/{study_id}"


def resolve_study(job: Job, resume: bool | str) -> tuple[str, bool]:
    """(study_id, restoring) for a run: a new id, the newest study of the job, or the one named."""
    if not resume:
        return new_study_id(job), False
    studies = existing_studies(job)
    if isinstance(resume, str) and resume not in ("latest", "true"):
        if resume not in studies:
            raise ConfigError(
                f"--resume {resume}: no study of that name under ray.storage_path={job.ray.storage_path}; "
                f"studies of job {job.name!r}: {studies or 'none'}"
            )
        return resume, True
    if not studies:
        raise ConfigError(
            f"--resume: job {job.name!r} has no study under ray.storage_path={job.ray.storage_path} to resume; "
            "run it without --resume first"
        )
    return studies[-1], True


# Seconds to wait for a TCP answer at ray.address: ray.init itself retries a dead GCS address for minutes.
RAY_CONNECT_TIMEOUT_S = 5.0
_RAY_ADDRESS_FORMS = (
    "the head's GCS address HOST:PORT that `ray start --head` prints (port 6379 by default), ray://HOST:10001 "
    "for Ray Client, or auto for the cluster this machine belongs to"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def _split_host_port(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _discover_address() -> tuple[str, str]:
    """What ``ray.init(address="auto")`` would join, and where that came from, without joining it."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, "$RAY_ADDRESS"
    from ray._private import services  # Ray's own lookup: `ray start`'s address file, then running GCS processes

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    if not found or found == "auto":
        raise ConfigError(
            "ray.address: 'auto' found no running Ray cluster on this machine (RAY_ADDRESS is unset and no "
            "`ray start` node runs here); start one (`ray start --head`), give the head's address as "
            "ray.address: HOST:6379, or set ray.address: null to start a local Ray"
        )
    return found, "Ray's lookup on this machine"


def resolve_ray_address(address: str | None, timeout_s: float | None = None) -> str | None:
    """The Ray cluster address the driver joins, checked to answer within ``timeout_s``; None: a local Ray.

    ``null``/``local`` -> a local Ray, unless ``$RAY_ADDRESS`` names a cluster (as Ray's own ``ray.init`` does);
    ``auto`` -> ``$RAY_ADDRESS``, else the cluster Ray finds on this machine. Raises ``ConfigError`` naming
    ``ray.address`` and the fix when the address is malformed, is a dashboard (Jobs API) address, or no Ray
    server answers there: a bounded check (seconds) before ``ray.init``, which retries a dead address for minutes.
    """
    import socket

    address = (address or "").strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "local"):
        if not address and env and env not in ("auto", "local"):
            address, label = env, f"$RAY_ADDRESS={env!r} (ray.address is null)"
        else:
            return None
    elif address == "auto":
        found, where = _discover_address()
        address, label = found, f"ray.address='auto' (-> {found!r} from {where})"
    else:
        label = f"ray.address={address!r}"
    timeout_s = RAY_CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    scheme = _SCHEME.match(address)
    target = address
    if scheme:
        if scheme.group(1).lower() in ("http", "https"):
            raise ConfigError(
                f"{label}: that is a Ray dashboard (Jobs API) address; a driver joins the cluster's GCS address "
                f"instead ({_RAY_ADDRESS_FORMS}); or let the cluster run the study: "
                f"`attnsearch submit JOB --address {address}`"
            )
        if scheme.group(1).lower() != "ray":
            return address  # a client scheme Ray resolves itself (e.g. anyscale://)
        target = scheme.group(2)
    hostport = _split_host_port(target)
    if hostport is None:
        raise ConfigError(f"{label}: not a Ray address; expected {_RAY_ADDRESS_FORMS}, or null for a local Ray")
    host, port = hostport
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.timeout:
        reason = f"no answer within {timeout_s:g} s"
    except socket.gaierror as exc:
        reason = f"unknown host: {exc.strerror or exc}"
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
    else:
        if _speaks_grpc(host, port, max(1.0, timeout_s - (time.monotonic() - started))):
            return address
        raise ConfigError(
            f"{label}: something accepts connections at {host}:{port} but it is not a Ray GCS or Ray Client "
            f"server (no gRPC answer within {timeout_s:g} s; a dashboard port such as 8265 is for "
            f"`attnsearch submit`); correct ray.address ({_RAY_ADDRESS_FORMS})"
        )
    raise ConfigError(
        f"{label}: no Ray cluster answers at {host}:{port} ({reason}); start the head there "
        f"(`ray start --head --port {port}`), correct ray.address ({_RAY_ADDRESS_FORMS}), or set "
        f"ray.address: null for a local Ray"
    )


def _speaks_grpc(host: str, port: int, timeout_s: float) -> bool:
    """Whether an HTTP/2 (gRPC) handshake succeeds: what a GCS and a Ray Client server do and an HTTP server
    or a wrong port does not; ray.init would otherwise wait on such a port for minutes."""
    if os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"):
        return True  # a TLS cluster: a plaintext handshake proves nothing; the TCP check has to do
    try:
        import grpc
    except ImportError:  # pragma: no cover - Ray depends on grpcio
        return True
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def init_ray(job: Job) -> None:
    """Join the cluster at ``ray.address`` (checked to answer first) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    # Trial output stays in the trial's log files; the driver prints one progress line per event instead.
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, configure_logging=True, logging_level="WARNING",
        log_to_driver=os.environ.get("ATTNSEARCH_TRIAL_LOGS", "0") == "1",
    )
    address = resolve_ray_address(job.ray.address)
    if address is not None:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:  # auth, version mismatch...
            text = str(exc).strip().splitlines()
            raise ConfigError(
                f"ray.address={job.ray.address!r}: cannot join the Ray cluster at {address}: "
                f"{type(exc).__name__}: {text[0] if text else ''}"
            ) from None
        return
    # "local": a fresh local Ray even when a `ray start` node ran on this machine (address=None would join the
    # cluster in Ray's address file and then refuse num_cpus); joining a cluster is what ray.address is for.
    ray.init(
        address="local",
        num_cpus=job.ray.num_cpus or os.cpu_count(),
        num_gpus=job.ray.num_gpus,
        dashboard_host="127.0.0.1",
        **kwargs,
    )


def check_cluster_resources(job: Job) -> None:
    """Refuse a job whose per-trial resources no node can provide, instead of pending forever."""
    import ray

    if job.ray.autoscaling:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    want = {"CPU": float(job.resources.cpu), "GPU": float(job.resources.gpu)}
    have = [{k: float(n["Resources"].get(k, 0.0)) for k in want} for n in nodes]
    if not any(all(h[k] >= v for k, v in want.items()) for h in have):
        listing = "; ".join(f"node {i}: {h['CPU']:g} CPU, {h['GPU']:g} GPU" for i, h in enumerate(have)) or "no nodes"
        raise ConfigError(
            f"resources: each trial asks for {want['CPU']:g} CPU and {want['GPU']:g} GPU, but no node of the "
            f"cluster has that ({listing}); lower resources.cpu/resources.gpu, add nodes, or set ray.autoscaling: true "
            "if an autoscaler will start such nodes"
        )


@dataclass
class StudyOutcome:
    study_id: str
    experiment_path: str
    parent_run_id: str | None
    progress: StudyProgress
    searcher: Any


def run_study(job: Job, *, resume: bool | str = False, job_text: str | None = None, stream=None) -> StudyOutcome:
    """Run (or resume) the study of ``job`` to completion and return what happened.

    Everything that can be checked on the driver is checked before Ray starts a trial: the data, the space,
    the tracking store, the cluster's resources.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from . import tracking
    from .data import check_data
    from .space import check_space, define_by_run, load_space, space_to_dict
    from .train import run_trial

    space = load_space(job)
    check_space(job, space)
    check_data(job.data)
    resolve_ray_address(job.ray.address)  # seconds at most: a dead ray.address fails before MLflow is touched
    tracking.check_tracking(job.tracking.uri)
    study_id, restoring = resolve_study(job, resume)

    # Infeasible and diverged trials end with a result that carries no objective values on purpose (a NaN
    # accuracy would enter ASHA's rungs); Tune's strict check would abort the whole study on it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # One small checkpoint per epoch is the point of short trials; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    init_ray(job)
    check_cluster_resources(job)

    experiment = job.tracking.experiment or job.name
    parent_run_id = tracking.start_study(
        job.tracking.uri, experiment, study_id, job_text or job.to_yaml(), space_to_dict(space), resume=restoring,
    )
    max_t = job.train.epochs
    objectives = dict(job.search.objectives)
    progress = StudyProgress(job.search.num_samples, max_t, objectives)
    callbacks = [
        tracking.MLflowTracker(job.tracking.uri, experiment, parent_run_id, study_id, max_t=max_t),
        _make_progress_callback()(progress, stream=stream),
    ]

    job_dict = job.model_dump(mode="json")
    # The space travels inline: workers on other nodes cannot read the driver's search-space file.
    job_dict["search"]["space"] = space_to_dict(space)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job_dict=job_dict),
        {"cpu": job.resources.cpu, "gpu": job.resources.gpu},
    )
    path = study_path(job, study_id)
    if restoring:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # The pickled callbacks hold the previous driver's state; this driver's callbacks replace them.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        searcher = tuner._local_tuner._tune_config.search_alg
    else:
        StudySearcher = _make_searcher_class()
        searcher = StudySearcher(
            space=define_by_run(space),
            metric=list(objectives),
            mode=list(objectives.values()),
            sampler=make_sampler(job.search.sampler, job.search.seed),
            max_t=max_t,
            objectives=objectives,
        )
        if job.scheduler.type == "asha":
            metric, mode = asha_metric(job)
            scheduler = ASHAScheduler(
                time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                grace_period=job.scheduler.grace_period, reduction_factor=job.scheduler.reduction_factor,
            )
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=job.search.max_concurrent),
                scheduler=scheduler,
                num_samples=job.search.num_samples,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=study_id,
                storage_path=job.ray.storage_path,
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=job.ray.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
    print(f"study {study_id}: {job.search.num_samples} trials, {job.search.sampler} sampler, "
          f"{job.scheduler.type} scheduler, results in {path}", file=stream or sys.stdout, flush=True)
    tuner.fit()
    inner = getattr(searcher, "searcher", searcher)
    return StudyOutcome(study_id, path, parent_run_id, progress, inner)
