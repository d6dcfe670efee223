"""Simulated-time replay of a study over a recorded learning-curve table, through attnsearch's own searcher and
schedulers (``benchmarks/replay.py`` is the command line).

The table (``read_table``; format in the README, "Search quality"): one row per configuration and epoch, the
configuration's knobs in columns named as the study's Optuna parameters (``attention``, ``stages``, ``blocks``,
``position``, ``<type>.<knob>``, ``train.<field>``, ``backbone.width_mult``, ``data.image_size``), its static
counts (``flops``, ``params``...) and per epoch ``val_acc``, ``val_loss``, ``train_loss`` and ``epoch_time_s``
(the epoch's wall seconds).

The replay (``replay``), in the manner of Syne Tune's simulator backend (``syne_tune/backend/simulator_backend``)
but written for Ray Tune's interfaces: ``workers`` asynchronous workers and one simulated clock, moved only by the
epoch seconds the table records. A free worker asks the study's searcher (``StudySearcher``, wrapped in Ray's
``ConcurrencyLimiter`` as a study does) for a configuration, which is mapped to the nearest recorded one
(``NearestConfig``); a real ``ray.tune.experiment.Trial`` (a stub: no Ray is started) is added to the scheduler
and chosen by ``choose_trial_to_run``; each epoch's result is an event at the time the epoch ends; events are
processed in time order (ties: the order they were scheduled) and go to the scheduler, then the searcher, as Ray's
``TuneController`` passes them (``_process_trial_result``, ``stop_trial``). A trial the scheduler stops frees its
worker at once: its remaining epochs cost nothing. The budget is worker time: the replay ends at the simulated
time ``budget / workers`` (all workers busy throughout); an epoch still running then is cut and reports nothing.
The searcher's and scheduler's own compute time is not simulated (the replay is deterministic given its seed).
"""

from __future__ import annotations

import heapq
import logging
import math
import numbers
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from attnsearch.contract import REASON_KEY, STATE_KEY, STATIC_METRICS, ConfigError

if TYPE_CHECKING:
    from attnsearch.config import Job
    from attnsearch.space import SearchSpace

__all__ = [
    "CURVE_COLUMNS",
    "METHODS",
    "NearestConfig",
    "ReplayRun",
    "Table",
    "job_for_method",
    "oracle_rungs",
    "read_frame",
    "read_table",
    "replay",
    "synthetic_table",
    "table_from_mlflow",
    "table_from_ray",
]

CURVE_COLUMNS = ("val_acc", "val_loss", "train_loss", "epoch_time_s")  # per epoch, besides ``epoch``
CONFIG_ID = "config_id"
ID_ALIASES = ("trial_id", "run_id")  # read as config_id when the table has no config_id column
# method -> (search.sampler, scheduler.type); "+asha" is the baseline-protecting ASHA on the first per-epoch objective
METHODS: dict[str, tuple[str, str]] = {
    "random": ("random", "none"),
    "tpe": ("tpe", "none"),
    "tpe+asha": ("tpe", "asha"),
    "tpe+moasha": ("tpe", "moasha"),
    "random+moasha": ("random", "moasha"),
    "nsga2+moasha": ("nsga2", "moasha"),
    "gp+moasha": ("gp", "moasha"),  # a GP fit per proposal: replay.py runs it only when --methods names it
}


# --------------------------------------------------------------------------------------------------- the table


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == ""


def canonical(value: Any) -> str:
    """A categorical value as the map compares it: numbers (also numeric strings, as a CSV reads them back) by
    their float value, booleans and other strings as written; a missing value is ``""``."""
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if _is_number(value):
        return repr(float(value))
    text = str(value)
    try:
        return repr(float(text))
    except ValueError:
        return text


@dataclass
class Table:
    """A learning-curve table: per configuration its knobs and static counts, per epoch its curves.

    Args:
        configs: one row per configuration (index 0..n-1): ``config_id``, the knob columns, the static counts.
        curves: ``{column: array (configurations, max_t)}`` for ``CURVE_COLUMNS``.
        max_t: epochs recorded per configuration (every configuration has all of them).
        knobs: the knob columns (the space's parameters found in the table).
    """

    configs: pd.DataFrame
    curves: dict[str, np.ndarray]
    max_t: int
    knobs: list[str]
    source: str = "<table>"

    def __len__(self) -> int:
        return len(self.configs)

    def final(self) -> pd.DataFrame:
        """One row per configuration: its knobs, static counts and the curves' values at ``max_t``."""
        out = self.configs.copy()
        for name, values in self.curves.items():
            out[name] = values[:, -1]
        out["seconds"] = self.curves["epoch_time_s"].sum(axis=1)
        return out

    def result(self, row: int, epoch: int) -> dict[str, Any]:
        """The result a trial of configuration ``row`` reports after ``epoch`` (1-based), as a trial reports it."""
        cfg = self.configs.iloc[row]
        out: dict[str, Any] = {"epoch": epoch, "training_iteration": epoch}
        for name in CURVE_COLUMNS:
            out[name] = float(self.curves[name][row, epoch - 1])
        for name in STATIC_METRICS + ("latency_ms", "throughput"):
            if name in cfg.index and _is_number(cfg[name]) and not math.isnan(cfg[name]):
                out[name] = float(cfg[name])
        return out


def oracle_rungs(table: Table) -> Table:
    """A copy of ``table`` whose every epoch's ``train_loss`` is ``1 -`` the configuration's final ``val_acc``: rungs
    that rank by the training loss then rank by the answer itself (the ceiling of any rung rule)."""
    curves = dict(table.curves)
    curves["train_loss"] = np.repeat(1.0 - table.curves["val_acc"][:, -1:], table.max_t, axis=1)
    return Table(table.configs.copy(), curves, table.max_t, list(table.knobs), table.source)


def read_frame(path: str | Path) -> pd.DataFrame:
    """A table file as written (CSV or Parquet, by suffix); a CSV's id columns read as strings, where pandas would
    turn an all-digit trial id into an integer and a hex one like ``1234e567`` into a float."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)  # Parquet keeps the column's type; read_table casts ids to str
    return pd.read_csv(path, dtype={name: str for name in (CONFIG_ID, *ID_ALIASES)})


def read_table(source: str | Path | pd.DataFrame, space: SearchSpace, *, max_t: int | None = None) -> Table:
    """Read a long-format learning-curve table (CSV or Parquet, or a DataFrame) for the parameters of ``space``.

    Only configurations with every epoch ``1..max_t`` (default: the most epochs any configuration has) are kept;
    a ``ConfigError`` names what is missing (columns, epochs) and how to fix it.
    """
    label = str(source) if not isinstance(source, pd.DataFrame) else "<table>"
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"--table {path}: no such file; give a CSV or Parquet learning-curve table")
        df = read_frame(path)
    if CONFIG_ID not in df.columns:  # a table read back from MLflow/Ray names its configurations by run or trial
        alias = next((c for c in ID_ALIASES if c in df.columns), None)
        if alias is not None:
            df = df.rename(columns={alias: CONFIG_ID})
    if CONFIG_ID in df.columns:
        df[CONFIG_ID] = df[CONFIG_ID].astype(str)
    needed = [CONFIG_ID, "epoch", *CURVE_COLUMNS]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ConfigError(f"{label}: the table lacks column(s) {missing}; it needs {needed}, the knob columns and "
                          f"the static counts (flops, params); columns found: {list(df.columns)}")
    params = _space_params(space)
    owner = {p.name: t for t, ps in space.knobs.items() for p in ps.values()}  # a type's knob -> the type
    types = set(df[space.types.name].astype(str)) if space.types.name in df.columns else set()
    for name in params:  # a type the table never recorded leaves its knobs without a column: all missing
        if name not in df.columns and name in owner and owner[name] not in types:
            df[name] = None
    knobs = [name for name in params if name in df.columns]
    absent = [name for name, p in params.items() if name not in df.columns and not p.is_const]
    if absent:
        raise ConfigError(f"{label}: the table has no column for the searched parameter(s) {absent} of the job's "
                          "space; record the table from a study of this job's space, or give the job it was "
                          "recorded from (--job)")
    df = df.sort_values([CONFIG_ID, "epoch"], kind="stable")
    epochs = df.groupby(CONFIG_ID, sort=False)["epoch"].agg(["count", "max"])
    max_t = int(max_t or epochs["max"].max())
    if max_t < 1:
        raise ConfigError(f"{label}: no epoch >= 1 recorded")
    full = [cid for cid, rows in df.groupby(CONFIG_ID, sort=False)
            if set(range(1, max_t + 1)) <= set(rows["epoch"].astype(int))]
    if not full:
        raise ConfigError(f"{label}: no configuration has every epoch 1..{max_t}")
    df = df[df[CONFIG_ID].isin(full) & df["epoch"].between(1, max_t)].drop_duplicates([CONFIG_ID, "epoch"])
    per_config = [c for c in df.columns if c not in (CONFIG_ID, "epoch", *CURVE_COLUMNS, *_PER_EPOCH_EXTRA)]
    configs = df.groupby(CONFIG_ID, sort=False)[per_config].first().reset_index()
    curves = {name: df.pivot(index=CONFIG_ID, columns="epoch", values=name).loc[configs[CONFIG_ID]].to_numpy(float)
              for name in CURVE_COLUMNS}
    return Table(configs=configs, curves=curves, max_t=max_t, knobs=knobs, source=label)


_PER_EPOCH_EXTRA = ("lr", "nam_penalty", "training_iteration", "time_s")


def table_from_ray(experiment_dir: str | Path, max_t: int) -> pd.DataFrame:
    """The long-format table of a finished ``scheduler: none`` study from its Ray experiment directory.

    One row per completed trial and epoch: ``config_id`` (the Ray trial id), the trial's config (its Optuna
    parameters), its static counts, and every per-epoch metric it reported (``val_acc``, ``val_loss``,
    ``train_loss``, ``epoch_time_s``...). Trials that did not complete all ``max_t`` epochs are left out.
    """
    from attnsearch.tracking.sync import read_ray_trials

    rows = []
    for rec in read_ray_trials(experiment_dir, max_t):
        if rec.state != "completed":
            continue
        seen: dict[int, dict[str, Any]] = {}
        for res in rec.pending:  # a repeated epoch (a restored trial) keeps its last report
            seen[int(res["epoch"])] = res["metrics"]
        for epoch, metrics in sorted(seen.items()):
            rows.append({CONFIG_ID: rec.trial_id, **rec.config, **rec.static, "epoch": epoch, **metrics})
    if not rows:
        raise ConfigError(f"{experiment_dir}: no trial completed all {max_t} epochs; record the table with "
                          "scheduler.type: none")
    return pd.DataFrame(rows)


def table_from_mlflow(uri: str, experiment: str, study: str, max_t: int) -> pd.DataFrame:
    """The long-format table of a finished ``scheduler: none`` study from its MLflow record.

    ``study`` is a study id or ``latest`` (the experiment's newest study). One row per completed child run and
    epoch: ``config_id`` (the Ray trial id), the run's params cast back to their types, its static counts, and the
    per-epoch metrics (``val_acc``, ``val_loss``, ``train_loss``, ``epoch_time_s``) at each step. Runs that did not
    complete all ``max_t`` epochs are left out, as ``table_from_ray`` leaves them.
    """
    from mlflow import MlflowClient

    from attnsearch.pareto import load_runs, select_study

    client = MlflowClient(uri)
    try:
        chosen = select_study(client, experiment, study)
        runs = load_runs(experiment, uri, parent_run_id=chosen.parent_run_id)
    except ValueError as exc:
        raise ConfigError(f"--table mlflow:{study}: {exc}") from None
    runs = runs[(runs["state"] == "completed") & (runs["budget"] == max_t)]
    if runs.empty:
        raise ConfigError(f"--table mlflow:{study}: study {chosen.study} has no run that completed all {max_t} "
                          "epochs; record the table with scheduler.type: none")
    lead = {"run_name", "state", "budget", "pareto", "baseline", "reason", "trial_id", "study", "run_id", "status",
            "start_time"}
    static = [c for c in STATIC_METRICS if c in runs.columns]
    params = [c for c in runs.columns if c not in lead and c not in CURVE_COLUMNS and not c.startswith("metric.")
              and c not in _RUN_METRICS]
    rows = []
    for _, run in runs.iterrows():
        history = {m: {int(x.step): x.value for x in client.get_metric_history(run["run_id"], m)}
                   for m in CURVE_COLUMNS}
        fixed = {CONFIG_ID: run["trial_id"], **{k: run[k] for k in params}, **{k: run[k] for k in static}}
        for epoch in range(1, max_t + 1):
            rows.append({**fixed, "epoch": epoch, **{m: history[m].get(epoch, np.nan) for m in CURVE_COLUMNS}})
    return pd.DataFrame(rows)


# metrics a run logs besides the curves and the counts (not knobs of the table)
_RUN_METRICS = ("epoch", "lr", "nam_penalty", "latency_ms", "throughput", "latency_load")


def _space_params(space: SearchSpace) -> dict[str, Any]:
    """Every Optuna parameter of the space by name (scale, type, placement, knobs of every type, training)."""
    out = {p.name: p for p in space.scale.values()}
    for p in (space.types, space.stages, space.blocks, space.position):
        out[p.name] = p
    for knobs in space.knobs.values():
        out.update({p.name: p for p in knobs.values()})
    out.update({p.name: p for p in space.train.values()})
    return out


# ----------------------------------------------------------------------------------------- the nearest config


class NearestConfig:
    """Map a proposed configuration to the nearest recorded one.

    Distance, compared in this order (lexicographic):
    1. the number of categorical parameters (the space's categorical choices) whose values differ, a parameter
       present on one side only counting as different: 0 whenever the table recorded the proposed categorical
       combination, so categorical knobs match exactly when they can;
    2. a configuration the replay has not trained yet (``used``) before one it has: a live study that proposes
       a configuration near one it trained gets a new result, not the recorded one again, so the replay gives it
       the nearest configuration it has not seen while the table has one in that categorical combination;
    3. the Euclidean distance over the numeric ranges of the space, each normalised to [0, 1] by the space's
       ``low``/``high`` (on ``log`` of both for a log range); a range present on one side only adds 1;
    4. ties: the configuration first in the table (its row order).
    Constants of the space are not compared. ``exact`` counts proposals whose categorical values all matched.

    Args:
        table: the recorded configurations.
        space: the job's space (which parameters are categorical, their ranges).
    """

    def __init__(self, table: Table, space: SearchSpace) -> None:
        params = _space_params(space)
        self.categorical = [k for k in table.knobs if params[k].kind == "categorical"]
        self.numeric = [k for k in table.knobs if params[k].kind in ("int", "float")]
        self._cat = {k: np.array([canonical(v) for v in table.configs[k]], dtype=object) for k in self.categorical}
        self._scale = {}
        self._num = {}
        for k in self.numeric:
            d = params[k].dist
            lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (float(d.low), float(d.high))
            self._scale[k] = (d.log, lo, hi)
            self._num[k] = np.array([self._norm(k, v) for v in table.configs[k]], dtype=float)
        self.rows = len(table)
        self.calls = 0
        self.exact = 0

    def _norm(self, key: str, value: Any) -> float:
        if _missing(value):
            return math.nan
        log, lo, hi = self._scale[key]
        x = math.log(float(value)) if log else float(value)
        return 0.0 if hi == lo else (x - lo) / (hi - lo)

    def distances(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(categorical mismatches, numeric distance) of every recorded configuration to ``config``."""
        mismatches = np.zeros(self.rows, dtype=int)
        for k in self.categorical:
            mismatches += self._cat[k] != canonical(config.get(k))
        sq = np.zeros(self.rows)
        for k in self.numeric:
            p = self._norm(k, config.get(k))
            t = self._num[k]
            if math.isnan(p):
                sq += np.where(np.isnan(t), 0.0, 1.0)
            else:
                sq += np.where(np.isnan(t), 1.0, (t - p) ** 2)
        return mismatches, np.sqrt(sq)

    def __call__(self, config: Mapping[str, Any], used: Collection[int] = ()) -> int:
        """The table row of the nearest recorded configuration; among those with the fewest categorical
        mismatches, one not in ``used`` (the rows a replay has already trained) comes first."""
        mismatches, dist = self.distances(config)
        taken = np.zeros(self.rows, dtype=int)
        taken[list(used)] = 1
        row = int(np.lexsort((np.arange(self.rows), dist, taken, mismatches))[0])
        self.calls += 1
        self.exact += int(mismatches[row] == 0)
        return row


# ------------------------------------------------------------------------------------------------ the methods


def job_for_method(job: Job, method: str, seed: int) -> Job:
    """``job`` with the sampler and scheduler of ``method`` (``METHODS``) and the sampler seed ``seed``."""
    if method not in METHODS:
        raise ConfigError(f"--methods: unknown method {method!r}; known: {', '.join(METHODS)}")
    sampler, scheduler = METHODS[method]
    out = job.model_copy(deep=True)
    out.search.sampler = sampler
    out.search.seed = seed
    out.scheduler.type = scheduler
    return out


# ------------------------------------------------------------------------------------------------- the replay


class _Controller:
    """What a scheduler's hooks get as ``tune_controller``: the trials (as Ray's own scheduler tests pass one)."""

    def __init__(self) -> None:
        self.trials: list[Any] = []

    def get_trials(self) -> list[Any]:
        return self.trials

    def get_live_trials(self) -> list[Any]:
        from ray.tune.experiment import Trial

        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]


@dataclass
class ReplayRun:
    """What one replay did.

    ``trials``: per trial its id, table row, start and end time, epochs trained, final state. ``full``: the
    configurations that reached the full budget as ``(time their last epoch ended, table row)``, in time order.
    ``events``: every processed result as ``(time, trial id, epoch)``, in processing order. ``worker_seconds``:
    the worker time spent (cut epochs included up to the end).
    """

    method: str
    seed: int
    workers: int
    budget_s: float
    horizon_s: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    full: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, str, int]] = field(default_factory=list)
    worker_seconds: float = 0.0
    exact_share: float = 1.0
    searcher: Any = field(default=None, repr=False)  # the study's searcher and scheduler, as the run left them
    scheduler: Any = field(default=None, repr=False)


def replay(table: Table, job: Job, space: SearchSpace, *, method: str, seed: int, workers: int = 4,
           budget_s: float, mapper: NearestConfig | None = None) -> ReplayRun:
    """Replay ``method`` (``METHODS``) with sampler seed ``seed`` on ``table`` for ``budget_s`` worker-seconds.

    Args:
        table: the recorded learning curves (its ``max_t`` must be the job's ``train.epochs``).
        job: the job the table was recorded from (its space, objectives, scheduler settings, baseline).
        space: the job's loaded space.
        method: a key of ``METHODS``.
        seed: the sampler's seed (``search.seed``).
        workers: trials at once.
        budget_s: worker time; the replay ends at simulated time ``budget_s / workers``.
        mapper: the nearest-configuration map (built from ``table`` and ``space`` when not given).
    """
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import ConcurrencyLimiter

    from attnsearch.search import searcher_and_scheduler
    from attnsearch.space import feasible

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not budget_s > 0:
        raise ConfigError(f"--budget must be a positive worker time, got {budget_s}")
    if table.max_t != job.train.epochs:
        raise ConfigError(f"{table.source}: records {table.max_t} epochs per configuration but the job's "
                          f"train.epochs is {job.train.epochs}; give the job the table was recorded from")
    job = job_for_method(job, method, seed)
    mapper = mapper or NearestConfig(table, space)
    calls0, exact0 = mapper.calls, mapper.exact
    np.random.seed(seed)  # Ray's ASHA draws its bracket from numpy's global generator
    _quiet()
    searcher, scheduler = searcher_and_scheduler(job, space)  # exactly what a study of this job runs
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=workers)
    controller = _Controller()
    horizon = budget_s / workers
    run = ReplayRun(method, seed, workers, budget_s, horizon, searcher=searcher, scheduler=scheduler)
    max_t = table.max_t
    constraints = {"flops": job.constraints.max_flops, "macs": job.constraints.max_macs,
                   "params": job.constraints.max_params}
    queue: list[tuple[float, int, str, int]] = []  # (time, sequence, trial id, epoch)
    seq = 0
    trials: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    busy = 0
    used: set[int] = set()  # the rows this run has trained: a new proposal maps to another while it can

    def finish(trial: Any, result: dict[str, Any], now: float, state: str) -> None:
        nonlocal busy
        scheduler.on_trial_complete(controller, trial, result)
        search_alg.on_trial_complete(trial.trial_id, result=result)
        trial.set_status(Trial.TERMINATED)
        rec = info[trial.trial_id]
        rec.update(end=now, state=state)
        busy -= 1

    def start(now: float) -> bool:
        nonlocal busy, seq
        trial_id = f"{len(trials):05d}"
        config = search_alg.suggest(trial_id)
        if config is None or config == "FINISHED":
            return False
        row = mapper(config, used=used)
        used.add(row)
        trial = Trial("replay", config=config, trial_id=trial_id, stub=True)
        trials[trial_id] = trial
        controller.trials.append(trial)
        scheduler.on_trial_add(controller, trial)
        chosen = scheduler.choose_trial_to_run(controller)
        if chosen is None:  # FIFO-based schedulers always choose a pending trial
            raise RuntimeError(f"scheduler {type(scheduler).__name__} chose no trial to run")
        chosen.set_status(Trial.RUNNING)
        busy += 1
        info[chosen.trial_id] = {"trial_id": chosen.trial_id, "row": int(row), "start": now, "epochs": 0,
                                 "config": dict(chosen.config)}
        reason = feasible(job, config)
        counts = table.result(row, 1)
        over = [f"{k} {counts[k]:g} > {limit:g}" for k, limit in constraints.items()
                if limit is not None and k in counts and counts[k] > limit]
        if reason or over:  # a trial reports infeasible before training: no time, no epochs
            result = {STATE_KEY: "infeasible", REASON_KEY: reason or "; ".join(over), "epoch": 0,
                      **{k: counts[k] for k in STATIC_METRICS if k in counts}}
            scheduler.on_trial_result(controller, chosen, result)
            chosen.update_last_result(result)
            finish(chosen, result, now, "infeasible")
            return True
        heapq.heappush(queue, (now + table.curves["epoch_time_s"][row, 0], seq, chosen.trial_id, 1))
        seq += 1
        return True

    now = 0.0
    while True:
        while busy < workers and start(now):
            pass
        if not queue or queue[0][0] > horizon:
            break
        now, _, trial_id, epoch = heapq.heappop(queue)
        trial, rec = trials[trial_id], info[trial_id]
        row = rec["row"]
        run.events.append((now, trial_id, epoch))
        run.worker_seconds += float(table.curves["epoch_time_s"][row, epoch - 1])
        rec["epochs"] = epoch
        result = table.result(row, epoch)
        decision = scheduler.on_trial_result(controller, trial, result)
        if decision != TrialScheduler.STOP:
            search_alg.on_trial_result(trial_id, result)
        trial.update_last_result(result)
        if epoch >= max_t:
            run.full.append((now, row))
            finish(trial, result, now, "completed")
        elif decision == TrialScheduler.STOP:
            finish(trial, result, now, "early_stopped")
        else:
            heapq.heappush(queue, (now + table.curves["epoch_time_s"][row, epoch], seq, trial_id, epoch + 1))
            seq += 1
    for t_end, _, trial_id, epoch in queue:  # running at the end: the epoch under way is cut there
        rec = info[trial_id]
        seconds = table.curves["epoch_time_s"][rec["row"], epoch - 1]
        run.worker_seconds += float(horizon - (t_end - seconds))
        rec.update(end=horizon, state="running")
    run.trials = list(info.values())
    calls = mapper.calls - calls0
    run.exact_share = (mapper.exact - exact0) / calls if calls else 1.0
    return run


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# -------------------------------------------------------------------------------------------- hypervolume


def hv_curve(table: Table, run: ReplayRun, objectives: Mapping[str, str], reference: Mapping[str, float],
             times: Sequence[float]) -> np.ndarray:
    """The hypervolume of the configurations ``run`` trained to the full budget by each of ``times``."""
    from attnsearch.pareto import hypervolume

    final = table.final()[list(objectives)]
    out = np.zeros(len(times))
    done = [t for t, _ in run.full]
    rows = [r for _, r in run.full]
    k_prev, hv = -1, 0.0
    for i, t in enumerate(times):
        k = int(np.searchsorted(done, t, side="right"))
        if k != k_prev:
            hv = hypervolume(final.iloc[rows[:k]], objectives, reference) if k else 0.0
            k_prev = k
        out[i] = hv
    return out


def true_hypervolume(table: Table, objectives: Mapping[str, str], reference: Mapping[str, float]) -> float:
    """The hypervolume of the table's true front (every recorded configuration at the full budget)."""
    from attnsearch.pareto import hypervolume

    return hypervolume(table.final()[list(objectives)], objectives, reference)


def table_reference(table: Table, objectives: Mapping[str, str]) -> dict[str, float]:
    """The table's fixed reference point: ``attnsearch.pareto.default_reference`` over all its configurations
    at the full budget (a property of the table, never of a run's own observations)."""
    from attnsearch.pareto import default_reference

    return default_reference(table.final()[list(objectives)], objectives)


# --------------------------------------------------------------------------------------------------- synthetic


def synthetic_table(job: Job, space: SearchSpace, *, configs: int = 60, seed: int = 0,
                    best: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A long-format table with the columns a recorded one has, drawn from ``space`` (for tests and a dry run).

    Configurations are sampled by Optuna's RandomSampler through the study's define-by-run function, so the knob
    columns are exactly the space's parameters. Curves: ``val_acc`` rises towards a final accuracy that depends
    on the knobs (a smooth function plus noise), ``epoch_time_s`` grows with the FLOPs. ``best`` (a config)
    is appended last with an accuracy above every other and the lowest FLOPs: it dominates the table.
    """
    import optuna

    from attnsearch.space import define_by_run

    _quiet()
    rng = np.random.default_rng(seed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = define_by_run(space)
    rows: list[dict[str, Any]] = []
    max_t = job.train.epochs
    points = [fn(study.ask()) for _ in range(configs)]
    if best is not None:
        points.append(dict(best))
    types = sorted(space.types.values())
    for i, cfg in enumerate(points):
        width = float(cfg.get("backbone.width_mult", 1.0))
        size = float(cfg.get("data.image_size", 16))
        attention = cfg.get(space.types.name, "none")
        t_index = types.index(attention) if attention in types else 0
        n_stages = len(str(cfg.get(space.stages.name, ""))
                       .split(",")) if attention != "none" else 0
        flops = 2e7 * width ** 2 * (size / 16) ** 2 * (1 + 0.03 * n_stages * (1 + t_index % 3))
        lr = float(cfg.get("train.lr", 0.1))
        final = (0.80 + 0.04 * width + 0.02 * (size / 16) + 0.01 * math.sin(t_index) * n_stages / 3
                 - 0.03 * abs(math.log(lr / 0.08)) + rng.normal(0, 0.005))
        rate = 0.6 + 0.3 * rng.random()
        if best is not None and i == len(points) - 1:
            final, flops, rate = 0.99, 1e6, 1.0  # above every other curve at every epoch, and the cheapest
        for epoch in range(1, max_t + 1):
            acc = final - (final - 0.3) * math.exp(-rate * epoch)
            rows.append({CONFIG_ID: f"c{i:04d}", **cfg, "flops": flops, "params": flops / 50, "epoch": epoch,
                         "val_acc": acc, "val_loss": 2.3 * (1 - acc), "train_loss": 2.3 * (1 - acc) * 0.9,
                         "epoch_time_s": 1.0 + flops / 1e7 * (1 + 0.05 * rng.random())})
    return pd.DataFrame(rows)
