"""``attnsearch retrain``: a study's front and its baseline retrained at the full budget with several seeds.

A search ranks each configuration on one training run, and the front is chosen on those single numbers: its
members are partly there by luck. A retrain trains every front member (or the runs named) and the study's
baseline again, ``len(seeds)`` times each, as one Ray Tune run over that fixed list (no searcher, FIFO, no early
stopping, ``search.budget_epochs`` ignored), and reports per configuration the mean and standard deviation of
``val_acc`` over the seeds, the difference to the baseline's mean with a 95 % Welch t interval, and whether the
configuration is still on the front of the means (the study's own objectives). When the job validates on a split
of the training images (``data.validation: split``) and its dataset has an official held-out split (CIFAR's test
batch, ``root/val``, Fashion-MNIST's t10k), every run is also evaluated on that split after its last epoch
(``test_acc``, ``test_loss``; no search saw it) and the table adds the mean and standard deviation of
``test_acc``: the unbiased figure. With ``official`` the validation split is the official one, so there is no
``test_acc``.

Seeds: ``train.seed + 1`` to ``train.seed + N``. The search trained with ``train.seed``; fresh seeds keep the
luck that put a configuration on the front out of its re-evaluation.

MLflow: a parent run of its own (role ``retrain``, ``attnsearch.study`` = the retrain's id, tags naming the
source study and its parent run), one child run per (configuration, seed) through the study's ``MLflowTracker``
(params: the configuration, ``train.seed``, ``retrain.source_run``, ``retrain.baseline``), and on the parent the
table as ``retrain.csv``, the ``retrain.*`` metrics and the table as its description. The statistics come from
Ray's results, so an MLflow outage does not change them. Ray's folder is ``ray.storage_path/retrain/<id>``,
outside the job's studies (``--resume`` and ``sync`` never take it for one).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import pandas as pd
from mlflow import MlflowClient
from pydantic import ValidationError
from ray.tune.schedulers import FIFOScheduler

from .. import tracking
from .._schema_messages import format_validation_error
from .._table import format_table
from ..config import TrainConfig
from ..contract import (
    ALL_STUDIES,
    COMPLETED,
    INFEASIBLE,
    LOGGED_EPOCH_METRICS,
    METRIC_RETRAIN_BASELINE_MEAN,
    METRIC_RETRAIN_BASELINE_STD,
    METRIC_RETRAIN_BASELINE_TEST_MEAN,
    METRIC_RETRAIN_BASELINE_TEST_STD,
    METRIC_RETRAIN_FRONT_KEPT,
    METRIC_RETRAIN_FRONT_SIZE,
    METRICS,
    PARAM_RETRAIN_BASELINE,
    PARAM_RETRAIN_SOURCE,
    STATIC_METRICS,
    TAG_NOTE,
    TEST_METRICS,
    TIME_ATTR,
    ConfigError,
    UsageError,
    is_number,
    result_state,
)
from ..pareto import (
    CONFIDENCE,
    Study,
    baseline_row,
    load_runs,
    mean_std,
    pareto_front,
    select_study,
    welch_interval,
)
from ..space import baseline_point, feasible, load_space
from ..tracking.callback import MLflowTracker
from ..uris import redact_uri, sqlite_path
from ._driver import build_tuner, prepare_driver, trainable_for
from ._progress import ProgressPrinter, StudyProgress
from ._searcher import FixedConfigs

if TYPE_CHECKING:
    from ..config import Job

__all__ = ["RetrainConfig", "RetrainOutcome", "retrain", "select_configs", "summarize",
           "format_retrain", "retrain_seeds", "protocol_mismatch"]

_RUN_METRICS = tuple(dict.fromkeys([TIME_ATTR, *METRICS, *LOGGED_EPOCH_METRICS, *TEST_METRICS]))


# --------------------------------------------------------------------------------------------------- what to retrain


@dataclass
class RetrainConfig:
    """One configuration of a retrain: the trial config it trains and the study run it comes from."""

    name: str  # the study run's name (MLflow run name), e.g. "se-r4-s3-default"
    params: dict[str, Any]  # the trial config (the study run's params)
    source_run_id: str | None  # the study's child run; None for a baseline the study never trained
    baseline: bool = False
    study_front: bool = False  # on the study's front (its own objectives, full budget)
    study_metrics: dict[str, float] = field(default_factory=dict)  # what the search measured (one seed)


def retrain_seeds(job: Job, n: int) -> list[int]:
    """The seeds of a retrain: ``train.seed + 1`` .. ``train.seed + n`` (module docstring)."""
    return [job.train.seed + 1 + k for k in range(n)]


def select_configs(client: MlflowClient, job: Job, study: Study, df: pd.DataFrame, objectives: dict[str, str], *,
                   front: bool = True, runs: Sequence[str] = ()) -> list[RetrainConfig]:
    """The study's baseline first, then its front members (``front``) and the runs named (``runs``), each
    configuration once. Raises ``UsageError`` for a run id that is not a trial of the study, ``ConfigError`` when
    the job's search space cannot train a configuration or the study has nothing to retrain."""
    on_front = pareto_front(df, objectives, "full") if len(df) else df
    front_ids = set(on_front["run_id"]) if len(on_front) else set()
    by_id = df.set_index("run_id") if len(df) else None
    unknown = [r for r in runs if by_id is None or r not in by_id.index]
    if unknown:
        pairs = zip(df["run_id"][:8], df["run_name"][:8], strict=True) if len(df) else []
        known = ", ".join(f"{i} ({n})" for i, n in pairs) or "none"
        raise UsageError(f"--runs: {', '.join(unknown)} is not a trial run of study {study.study}; give child run ids "
                         f"of that study (MLflow UI or `attnsearch pareto`), e.g. {known}")
    for run_id in runs:
        if by_id.loc[run_id, "state"] == INFEASIBLE:
            raise UsageError(f"--runs: run {run_id} ({by_id.loc[run_id, 'run_name']}) is infeasible (over the job's "
                             "constraints): it would never train; leave it out")
    wanted = list(dict.fromkeys([*(on_front["run_id"] if front and len(on_front) else []), *runs]))
    if not wanted:
        raise ConfigError(f"study {study.study} has no trial completed at the full budget, so no front to retrain; "
                          "wait for it to finish (`attnsearch run JOB --resume`) or name runs with --runs")

    def config_of(run_id: str, baseline: bool = False) -> RetrainConfig:
        row = by_id.loc[run_id]
        metrics = {k: float(row[k]) for k in dict.fromkeys(["val_acc", *objectives])
                   if k in row.index and pd.notna(row[k])}
        return RetrainConfig(str(row["run_name"]), tracking.run_params(client.get_run(run_id)), run_id, baseline,
                             run_id in front_ids, metrics)

    base = baseline_row(df)
    if base is not None:
        configs = [config_of(base["run_id"], baseline=True)]
    else:  # the study has none at the full budget (search.baseline: false, or it failed): the job's own
        configs = [RetrainConfig("none", baseline_point(job, load_space(job)), None, baseline=True)]
    seen = {_key(configs[0].params): configs[0]}
    for run_id in wanted:
        config = config_of(run_id)
        if _key(config.params) in seen:  # the baseline itself, or the same configuration trained twice
            seen[_key(config.params)].study_front |= config.study_front
            continue
        seen[_key(config.params)] = config
        configs.append(config)
    for config in configs:
        reason = feasible(job, config.params)
        if reason:
            what = f"run {config.source_run_id} ({config.name})" if config.source_run_id else "the baseline"
            raise ConfigError(f"retrain: {what} cannot be trained with this job's search space and constraints "
                              f"(edited since study {study.study}?): {reason}")
    return configs


def _key(params: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "train.seed"}, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------------- the table


def summarize(configs: Sequence[RetrainConfig], runs: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """One row per configuration (the baseline first) from ``runs`` (one row per retrain run: ``source``,
    ``baseline``, ``seed``, ``state`` and the metrics). Completed runs only. Columns: ``run_name``,
    ``source_run``, ``baseline``, ``study_front``, ``n``, ``failed``, ``val_acc_mean``, ``val_acc_std``,
    ``delta_val_acc`` (minus the baseline's mean), ``delta_low``/``delta_high`` (95 % Welch t interval),
    ``study_val_acc`` (the search's one run), ``test_acc_mean``/``test_acc_std`` when the runs reported
    ``test_acc`` (the official held-out split, ``data.validation: split``), the counts (``flops``, ``params``...),
    ``<objective>_mean`` for any other objective measured per run, and ``on_front``: on the front of the means,
    the study's objectives."""
    done = runs[runs["state"] == COMPLETED] if len(runs) else runs
    base = configs[0]
    base_acc = _values(done, base, "val_acc")
    tested = "test_acc" in done.columns and done["test_acc"].notna().any()
    rows = []
    for config in configs:
        mine = _of(done, config)
        acc = _values(done, config, "val_acc")
        mean, std = mean_std(acc)
        diff, low, high = (math.nan,) * 3 if config.baseline else welch_interval(acc, base_acc)
        row = {"run_name": config.name, "source_run": config.source_run_id, "baseline": config.baseline,
               "study_front": config.study_front, "n": len(acc), "failed": len(_of(runs, config)) - len(acc),
               "val_acc_mean": mean, "val_acc_std": std, "delta_val_acc": diff, "delta_low": low,
               "delta_high": high, "study_val_acc": config.study_metrics.get("val_acc", math.nan)}
        if tested:
            row["test_acc_mean"], row["test_acc_std"] = mean_std(_values(done, config, "test_acc"))
        for metric in dict.fromkeys([*STATIC_METRICS[:3], *objectives]):
            if metric == "val_acc" or metric not in mine.columns:
                continue
            row[_column(metric)] = float(pd.to_numeric(mine[metric], errors="coerce").mean()) if len(mine) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    means = table.rename(columns={_column(m): m for m in objectives})
    means = means[means["n"] > 0].assign(state=COMPLETED)
    present = {m: mode for m, mode in objectives.items() if m in means.columns}  # an objective no run reported
    front = pareto_front(means, present, "any") if len(means) and present else means.iloc[:0]
    table["on_front"] = table.index.isin(front.index)
    table.attrs["objectives"] = dict(objectives)
    return table


def _column(metric: str) -> str:
    """The table's column of a metric: the count itself (the same for every seed) or ``<metric>_mean``."""
    return metric if metric in STATIC_METRICS else f"{metric}_mean"


def _of(runs: pd.DataFrame, config: RetrainConfig) -> pd.DataFrame:
    if not len(runs):
        return runs
    if config.source_run_id is None:
        return runs[runs["baseline"] & runs["source"].isna()]
    return runs[runs["source"] == config.source_run_id]


def _values(runs: pd.DataFrame, config: RetrainConfig, metric: str) -> list[float]:
    mine = _of(runs, config)
    if metric not in mine.columns:
        return []
    return [float(v) for v in pd.to_numeric(mine[metric], errors="coerce") if math.isfinite(v)]


def format_retrain(table: pd.DataFrame) -> str:
    """The terminal table: per configuration n, mean +- std, the difference to the baseline with its interval,
    the mean +- std of ``test_acc`` when the table has it, FLOPs, and the front: ``kept`` / ``dropped`` (a study
    front member on or off the front of the means), ``new`` (on it, but not on the study's), ``yes`` / ``no`` for
    the baseline."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    tested = "test_acc_mean" in table.columns
    rows = []
    for _, r in table.iterrows():
        if r["baseline"]:
            delta, front = "(baseline)", "yes" if r["on_front"] else "no"
        else:
            delta = f"{num(r['delta_val_acc'], '+.4f')} [{num(r['delta_low'], '+.4f')}, {num(r['delta_high'], '+.4f')}]"
            front = ("kept" if r["on_front"] else "dropped") if r["study_front"] else ("new" if r["on_front"] else "-")
        flops = r.get("flops", math.nan)
        test = [f"{num(r['test_acc_mean'], '.4f')} +- {num(r['test_acc_std'], '.4f')}"] if tested else []
        rows.append([r["run_name"], f"{r['n']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                     f"{num(r['val_acc_mean'], '.4f')} +- {num(r['val_acc_std'], '.4f')}", delta,
                     num(r["study_val_acc"], ".4f"), *test, _count(flops), front])
    header = ["configuration", "n", "val_acc mean +- std", f"vs baseline [{CONFIDENCE:.0%} CI]", "search val_acc",
              *(["test_acc mean +- std"] if tested else []), "flops", "front"]
    return format_table(header, rows)


# --------------------------------------------------------------------------------------------------- the run


@dataclass
class RetrainOutcome:
    """What ``retrain`` returns: the table (``summarize``), one row per run, and where everything went."""

    retrain_id: str
    parent_run_id: str
    study: Study
    configs: list[RetrainConfig]
    seeds: list[int]
    epochs: int
    table: pd.DataFrame
    runs: pd.DataFrame
    experiment_path: str
    progress: StudyProgress


def _with_epochs(job: Job, epochs: int | None) -> Job:
    if epochs is None:
        return job
    try:
        train = TrainConfig.model_validate({**job.train.model_dump(), "epochs": epochs})
    except ValidationError as exc:
        raise UsageError(f"--epochs {epochs}: {format_validation_error(exc, 'job', TrainConfig, 'train.')}; choose "
                         "a number of epochs the job's train settings allow") from None
    return job.model_copy(update={"train": train})


def retrain(job: Job, *, study: str | None = None, front: bool = True, runs: Sequence[str] = (), seeds: int = 3,
            epochs: int | None = None, job_text: str | None = None, stream: IO[str] | None = None) -> RetrainOutcome:
    """Retrain study ``study`` (an id, or None/"latest": the newest of the job's experiment) as the module
    docstring says; returns the table and where it was recorded. Bad arguments raise ``InputError`` before Ray
    starts or MLflow is written.

    Args:
        job: the job whose study is retrained.
        study: the study's id, or None/``"latest"`` for the newest study of the job's experiment.
        front: retrain the study's recorded front (besides its baseline).
        runs: child run ids to retrain too.
        seeds: runs per configuration (2 or more for a standard deviation and an interval).
        epochs: the budget of each run (default: the job's ``train.epochs``).
        job_text: the job file's text, logged as the retrain's ``job.yaml``.
        stream: where the progress lines go (default: stdout).
    """
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: give at least 1 seed (2 or more for a standard deviation and an interval)")
    job = _with_epochs(job, epochs)
    epochs = job.max_t
    experiment, uri = job.experiment, job.tracking.uri
    if study == ALL_STUDIES:
        raise UsageError("--study all: a retrain re-evaluates the front of one study; name it (an id or latest)")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no MLflow store at {db} (the job's tracking.uri): run the study first "
                         "(`attnsearch run JOB`)")
    tracking.check_tracking(uri, create=False)
    client = MlflowClient(uri)
    try:
        source = select_study(client, experiment, study, job=job)
    except ValueError as exc:
        raise UsageError(f"--study {study or 'latest'}: {exc}; run the study first (`attnsearch run JOB`)") from None
    out = stream or sys.stdout
    note = protocol_mismatch(client, source, job)
    if note:
        print(note, file=out, flush=True)
    objectives = dict(source.objectives or job.search.objectives)
    df = load_runs(experiment, tracking_uri=uri, parent_run_id=source.parent_run_id)
    space = load_space(job)
    configs = select_configs(client, job, source, df, objectives, front=front, runs=runs)
    seed_list = retrain_seeds(job, seeds)
    prepare_driver(job)

    retrain_id = f"{source.study}-retrain-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    parent_run_id = tracking.start_retrain(
        uri, experiment, retrain_id, source_study=source.study, source_parent_run_id=source.parent_run_id or "",
        job_yaml_text=job_text or job.to_yaml(), objectives=objectives, max_t=epochs, seeds=seed_list)
    points = [{**config.params, "train.seed": seed, PARAM_RETRAIN_SOURCE: config.source_run_id,
               PARAM_RETRAIN_BASELINE: config.baseline} for seed in seed_list for config in configs]
    storage = f"{job.ray.storage_path.rstrip('/')}/retrain"
    progress = StudyProgress(len(points), epochs, objectives)
    tuner = build_tuner(
        job, trainable_for(job, space), search_alg=FixedConfigs(points), scheduler=FIFOScheduler(),
        name=retrain_id, storage=storage, num_samples=len(points),
        callbacks=[MLflowTracker(uri, experiment, parent_run_id, retrain_id, max_t=epochs,
                                 datasets=tracking.dataset_inputs(job.data)),
                   ProgressPrinter(progress, stream=stream)],
    )
    print(f"retrain {retrain_id} of study {source.study}: {len(configs)} configurations (baseline "
          f"{configs[0].name} and {len(configs) - 1} more) x seeds {seed_list} = {len(points)} runs of {epochs} "
          f"epochs, results in {redact_uri(storage)}/{retrain_id}", file=out, flush=True)
    results = tuner.fit()
    run_rows = [_run_row(r, epochs) for r in results]
    run_frame = pd.DataFrame(run_rows, columns=list(dict.fromkeys(
        ["source", "baseline", "seed", "state", *(k for row in run_rows for k in row)])))
    table = summarize(configs, run_frame, objectives)
    table.attrs.update({"study": source.study, "retrain": retrain_id, "seeds": seed_list, "epochs": epochs})
    _record(client, parent_run_id, table, out)
    return RetrainOutcome(retrain_id, parent_run_id, source, configs, seed_list, epochs, table, run_frame,
                          f"{storage}/{retrain_id}", progress)


def protocol_mismatch(client: MlflowClient, source: Study, job: Job) -> str | None:
    """A warning when the study was searched under another ``data.validation`` than the job's (its parent run's
    param; a study that predates the param is not judged): the retrain's ``val_acc`` is then not measured on the
    split the study selected its front on. None when they agree."""
    if source.parent_run_id is None:
        return None
    try:
        with tracking.fast_http():
            searched = client.get_run(source.parent_run_id).data.params.get("data.validation")
    except Exception:  # noqa: BLE001 - only a warning depends on it
        return None
    if searched is None or searched == job.data.validation:
        return None
    return (f"retrain: warning: study {source.study} was searched with data.validation: {searched}, this job has "
            f"{job.data.validation}; its val_acc is measured on another split than the front was selected on "
            f"(--set data.validation={searched} retrains it as it was searched)")


def _run_row(result: Any, epochs: int) -> dict[str, Any]:
    config, metrics = result.config or {}, result.metrics or {}
    row = {"source": config.get(PARAM_RETRAIN_SOURCE), "baseline": bool(config.get(PARAM_RETRAIN_BASELINE)),
           "seed": config.get("train.seed"), "state": result_state(metrics, epochs, errored=result.error is not None)}
    row.update({k: metrics[k] for k in _RUN_METRICS if is_number(metrics.get(k))})
    return row


def _record(client: MlflowClient, parent_run_id: str, table: pd.DataFrame, out: IO[str]) -> None:
    """The table on the retrain's parent run: ``retrain.csv``, the ``retrain.*`` metrics, the description."""
    base = table[table["baseline"]].iloc[0]
    members = table[table["study_front"] & ~table["baseline"]]
    metrics = {METRIC_RETRAIN_FRONT_SIZE: int(table["on_front"].sum()),
               METRIC_RETRAIN_FRONT_KEPT: int(members["on_front"].sum()),
               METRIC_RETRAIN_BASELINE_MEAN: base["val_acc_mean"], METRIC_RETRAIN_BASELINE_STD: base["val_acc_std"]}
    if "test_acc_mean" in table.columns:
        metrics[METRIC_RETRAIN_BASELINE_TEST_MEAN] = base["test_acc_mean"]
        metrics[METRIC_RETRAIN_BASELINE_TEST_STD] = base["test_acc_std"]
    try:
        with tracking.fast_http():
            client.log_text(parent_run_id, table.to_csv(index=False), "retrain.csv")
            for key, value in metrics.items():
                if value is not None and math.isfinite(float(value)):
                    client.log_metric(parent_run_id, key, float(value))
            note = (f"Retrain of study {table.attrs['study']}: seeds {table.attrs['seeds']}, "
                    f"{table.attrs['epochs']} epochs\n\n" + _markdown(format_retrain(table)))
            client.set_tag(parent_run_id, TAG_NOTE, note)
    except Exception as exc:  # noqa: BLE001 - the table is printed and written either way
        print(f"retrain: the table was not recorded in MLflow ({tracking.first_line(exc)})", file=out)


def _count(value: Any) -> str:
    if value is None or pd.isna(value):
        return "-"
    scale, unit = next(((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "K")) if abs(value) >= s), (1, ""))
    return f"{value / scale:.3g}{unit}"


def _markdown(text: str) -> str:
    return "```\n" + text + "\n```"

