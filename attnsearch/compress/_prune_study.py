"""``attnsearch prune``: a study's trained models channel-pruned at several ratios, fine-tuned, measured, logged, and
the front recomputed over the study's and the pruned models.

Everything the user named is checked before anything is logged: the ratios (each in (0, 1)), the importance, the
study, every run (a trained trial of that study), every model's attention type (``attnsearch.prune.UNPRUNABLE``)
and its weights (its MLflow model, else its final Ray checkpoint). Then, per model and ratio: prune
(``attnsearch.prune.prune_model``), evaluate (``val_acc_pruned``), fine-tune N epochs with the trial's own settings,
evaluate and count (``_finetune``).

MLflow: a parent run of its own (role ``prune``, ``attnsearch.study`` = the prune's id, tags naming the source study
and its parent run, the study's objectives), one child run per pruned model written like a trial's
(``tracking.Store``: the trial's params plus ``prune.*``, per-epoch metrics with step 0 = right after pruning),
tagged ``attnsearch.pruned_from``, ``attnsearch.prune.ratio``, ``attnsearch.prune.importance`` and
``attnsearch.prune.on_front``, with its model logged as the study's are (``attnsearch.export.log_model``: spec
with the pruning history, weights, pickled module) and linked to the parent; the pruned models on the recomputed
front are registered under the experiment's name. The parent's description and ``prune.csv`` hold the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput

from .. import tracking
from .._table import format_table
from ..config import Job
from ..contract import (
    METRIC_VAL_ACC_PRUNED,
    STATE_KEY,
    TAG_NOTE,
    TAG_PRUNE_IMPORTANCE,
    TAG_PRUNE_ON_FRONT,
    TAG_PRUNE_RATIO,
    TAG_PRUNED_FROM,
    TAG_STUDY,
    TAG_TRIAL,
    UsageError,
)
from ..export import ModelSpec, log_model, model_name, rebuild, registered_name, tracking_context, trained_model
from ..export import trial_params as read_trial_params
from ..pareto import LATEST, load_runs, pareto_front, select_study
from ..prune import IMPORTANCES, UNPRUNABLE, check_ratio, prune_model
from ..space import materialize
from ._finetune import finetune

__all__ = ["PruneOutcome", "PrunedModel", "parse_ratios", "prune_study", "format_pruned"]


@dataclass
class PrunedModel:
    """One pruned model: where it came from, how it was pruned, what it scored and costs, where it is logged."""

    source_run_id: str
    source_name: str
    ratio: float
    importance: str
    metrics: dict[str, float]
    val_acc_pruned: float
    source_metrics: dict[str, float]
    run_id: str | None = None
    run_name: str = ""
    model_uri: str | None = None
    on_front: bool = False


@dataclass
class PruneOutcome:
    prune_id: str
    parent_run_id: str
    study: str
    models: list[PrunedModel] = field(default_factory=list)
    front: pd.DataFrame | None = None  # the front over the study's and the pruned models
    objectives: dict[str, str] = field(default_factory=dict)


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    """``"0.25,0.5"`` (or numbers) -> [0.25, 0.5]; ``UsageError`` naming ``--ratios`` for anything outside (0, 1)."""
    parts = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    if not parts:
        raise UsageError("--ratios: give at least one ratio of channels to remove, e.g. --ratios 0.25,0.5")
    out = []
    for part in parts:
        try:
            out.append(check_ratio(float(part)))
        except ValueError:
            raise UsageError(f"--ratios: {part!r} is not a ratio in (0, 1) (the fraction of channels removed, e.g. "
                             "0.25); fix: --ratios 0.25,0.5") from None
    return list(dict.fromkeys(out))


def _select(client: MlflowClient, job: Job, experiment: str, *, study: str | None, front: bool,
            runs: Sequence[str]) -> tuple[Any, pd.DataFrame]:
    try:
        chosen = select_study(client, experiment, study or LATEST, job=job)
    except ValueError as exc:
        raise UsageError(f"--study: {exc}") from None
    df = load_runs(experiment, tracking_uri=job.tracking.uri, parent_run_id=chosen.parent_run_id)
    picked = []
    if front:
        on = df["pareto"].fillna(False).astype(bool) & (df["state"] == "completed") if len(df) else []
        if not len(df) or not on.any():
            raise UsageError(f"--front: study {chosen.study} has no recorded Pareto front yet; record it with "
                             "attnsearch pareto JOB (or attnsearch sync JOB), or name models with --run ID[,ID...]")
        picked += list(df[on]["run_id"])
    by_id = df.set_index("run_id") if len(df) else None
    for run_id in runs:
        if by_id is None or run_id not in by_id.index:
            pairs = zip(df["run_id"][:5], df["run_name"][:5], strict=True) if len(df) else []
            known = ", ".join(f"{i} ({n})" for i, n in pairs)
            raise UsageError(f"--run {run_id}: not a trial of study {chosen.study} (experiment {experiment!r}); give "
                             f"child run ids of that study (attnsearch pareto JOB --out front.csv, column run_id, or "
                             f"the MLflow UI){', e.g. ' + known if known else ''}; another study: --study ID")
        if by_id.loc[run_id, "state"] not in ("completed", "early_stopped"):
            raise UsageError(f"--run {run_id}: trial {by_id.loc[run_id, 'run_name']} is {by_id.loc[run_id, 'state']}: "
                             "only a trained trial (completed or early_stopped) has weights to prune")
        picked.append(run_id)
    if not picked:
        raise UsageError("prune: give --front (the study's recorded front) or --run ID[,ID...] (trained trials)")
    rows = df.set_index("run_id").loc[list(dict.fromkeys(picked))].reset_index()
    return chosen, rows


def _metrics_of(row: pd.Series) -> dict[str, float]:
    keys = ("val_acc", "val_loss", "flops", "macs", "params", "attn_flops", "attn_params", "latency_ms",
            "throughput")
    return {k: float(row[k]) for k in keys if k in row.index and pd.notna(row[k])}


def prune_study(
    job: Job,
    *,
    ratios: Sequence[float],
    importance: str = "nam",
    finetune_epochs: int = 1,
    front: bool = False,
    runs: Sequence[str] = (),
    study: str | None = None,
    storage_path: str | None = None,
    log=print,
) -> PruneOutcome:
    """Prune the study's recorded front (``front``) and/or the trials ``runs`` at every ratio of ``ratios`` with
    ``importance``, fine-tune each ``finetune_epochs`` epochs, log them under a ``prune`` parent run and recompute
    the front of the study's objectives over the study's and the pruned models.

    Args:
        job: the study's job (its tracking store, data, training settings, objectives).
        ratios: fractions of channels removed, each in (0, 1).
        importance: ``nam``, ``bn``, ``l1`` or ``random`` (``attnsearch.prune``).
        finetune_epochs: epochs of fine-tuning per pruned model (0: none).
        front: prune the study's recorded front.
        runs: child run ids of the study to prune (with ``front``: both).
        study: the study id (default: the newest study of the job's experiment).
        storage_path: where the study's Ray checkpoints are (default ``ray.storage_path``).
        log: where progress lines go.

    Raises:
        UsageError: bad input (nothing is logged then).
    """
    ratios = parse_ratios(ratios)
    if importance not in IMPORTANCES:
        raise UsageError(f"--importance: {importance!r} is not one of {list(IMPORTANCES)}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs: must be an integer >= 0, got {finetune_epochs!r}")
    uri, experiment = job.tracking.uri, job.tracking.experiment or job.name
    storage = (storage_path or job.ray.storage_path).rstrip("/")
    with tracking.fast_http():
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            raise UsageError(f"prune: no MLflow experiment {experiment!r} at {tracking.redact_uri(uri)}; run the "
                             "study first (attnsearch run JOB)")
        chosen, rows = _select(client, job, experiment, study=study, front=front, runs=runs)
        sources = []
        for _, row in rows.iterrows():
            params = read_trial_params(client, row)
            kind = params.get("attention")
            if kind in UNPRUNABLE:
                raise UsageError(f"--run {row['run_id']} ({row['run_name']}): attention type {kind!r} cannot be "
                                 f"pruned: {UNPRUNABLE[kind]}; leave it out")
            spec, state, _ = trained_model(client, job, row, chosen.experiment_id, chosen.study,
                                           f"{storage}/{chosen.study}")
            sources.append((row, params, spec, state))
    objectives = dict(chosen.objectives or job.search.objectives)
    prune_id = f"{chosen.study}-prune-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    parent = tracking.start_prune(uri, experiment, prune_id, source_study=chosen.study,
                                  source_parent_run_id=chosen.parent_run_id, objectives=objectives,
                                  max_t=chosen.max_t, params={"prune.ratios": json.dumps(ratios),
                                                              "prune.importance": importance,
                                                              "prune.finetune_epochs": str(finetune_epochs)})
    outcome = PruneOutcome(prune_id, parent, chosen.study, objectives=objectives)
    store = tracking.Store(uri, parent)
    for row, params, spec, state in sources:
        for ratio in ratios:
            outcome.models.append(_prune_one(job, store, row, params, spec, state, ratio, importance,
                                             finetune_epochs, log))
    outcome.front = _front(job, experiment, chosen, outcome, objectives)
    _finish(client, uri, experiment, parent, outcome)
    return outcome


def _prune_one(job: Job, store: tracking.Store, row: pd.Series, params: dict[str, Any], spec: ModelSpec,
               state: dict, ratio: float, importance: str, epochs: int, log) -> PrunedModel:
    source = str(row["run_name"] or row["run_id"])
    settings = materialize(job, dict(params))
    result = prune_model(rebuild(spec, state), ratio, input_size=spec.image_size, importance=importance,
                         seed=settings.train.seed)
    config = {**params, "prune.ratio": ratio, "prune.importance": importance, "prune.finetune_epochs": epochs,
              "prune.source_run": row["run_id"]}
    trial_id = f"{row['trial_id']}-p{ratio:g}-{importance}"
    record = tracking.TrialRecord(trial_id, config)
    pruned_acc: list[float] = []

    def report(epoch: int, metrics: dict) -> None:
        if epoch == 0:
            pruned_acc.append(metrics["val_acc"])
            metrics = {**metrics, METRIC_VAL_ACC_PRUNED: metrics["val_acc"]}
        last = epoch == epochs
        record.add_result({**metrics, "epoch": epoch, "timestamp": time.time(),
                           **({STATE_KEY: "completed"} if last else {})})
        log(f"  {source} pruned {ratio:g} ({importance}): epoch {epoch}/{epochs} val_acc {metrics['val_acc']:.4f}")

    started = time.time()
    metrics = finetune(result.model, job, settings, epochs, report)
    record.start_ms = int(started * 1000)
    record.finish(epochs)
    store.reconcile(record)
    run_id = store.runs[trial_id].run_id
    name = f"{source}-pruned{ratio:g}-{importance}"
    client = store.client
    client.update_run(run_id, name=name)
    for key, value in {TAG_PRUNED_FROM: str(row["run_id"]), TAG_PRUNE_RATIO: f"{ratio:g}",
                       TAG_PRUNE_IMPORTANCE: importance}.items():
        client.set_tag(run_id, key, value)
    pruned_spec = ModelSpec(**{**spec.__dict__, "pruning": {
        "ratio": ratio, "importance": importance, "finetune_epochs": epochs, "source_run": str(row["run_id"]),
        "widths": result.widths_after, "history": result.history}})
    pruned_spec.source = {**spec.source, "run_id": run_id, "run_name": name, "trial_id": trial_id,
                          "study": store.study_id}
    with tracking_context(job.tracking.uri):
        logged = log_model(client, pruned_spec, result.model.state_dict(), experiment_id=store.experiment_id,
                           run_id=run_id, name=model_name(name), step=epochs,
                           tags={TAG_TRIAL: trial_id, TAG_STUDY: store.study_id, TAG_PRUNED_FROM: str(row["run_id"])})
        client.log_outputs(store.parent_run_id, models=[LoggedModelOutput(logged.model_id, step=epochs)])
    return PrunedModel(str(row["run_id"]), source, ratio, importance, metrics, pruned_acc[0], _metrics_of(row),
                       run_id, name, logged.model_uri)


def _front(job: Job, experiment: str, chosen: Any, outcome: PruneOutcome, objectives: dict[str, str]
           ) -> pd.DataFrame:
    df = load_runs(experiment, tracking_uri=job.tracking.uri, parent_run_id=chosen.parent_run_id)
    done = df[df["state"] == "completed"] if len(df) else df
    budget = int(done["budget"].max()) if len(done) else 0
    study_rows = done.assign(pruned_from=None, ratio=float("nan"), importance=None)
    pruned = pd.DataFrame([{"run_id": m.run_id, "run_name": m.run_name, "state": "completed", "budget": budget,
                            "pruned_from": m.source_name, "ratio": m.ratio, "importance": m.importance, **m.metrics}
                           for m in outcome.models])
    both = pd.concat([study_rows, pruned], ignore_index=True)
    both["budget"] = both["budget"].astype("Int64")
    front = pareto_front(both, objectives, "full")
    on = set(front["run_id"])
    for m in outcome.models:
        m.on_front = m.run_id in on
    return front


def _finish(client: MlflowClient, uri: str, experiment: str, parent: str, outcome: PruneOutcome) -> None:
    table = pruned_table(outcome)
    name = registered_name(experiment)
    with tracking_context(uri):
        for m in outcome.models:
            client.set_tag(m.run_id, TAG_PRUNE_ON_FRONT, str(m.on_front).lower())
            if m.on_front and m.model_uri:
                mlflow.register_model(m.model_uri, name, tags={TAG_PRUNED_FROM: m.source_run_id})
        client.log_text(parent, table.to_csv(index=False), "prune.csv")
        note = [f"Channel pruning of study `{outcome.study}`: {len(outcome.models)} pruned models, "
                f"{sum(m.on_front for m in outcome.models)} on the front over the study's and the pruned models "
                f"({', '.join(f'{k}:{v}' for k, v in outcome.objectives.items())}).", "",
                "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        note += ["| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)]
        client.set_tag(parent, TAG_NOTE, "\n".join(note))
        client.set_terminated(parent, "FINISHED")


def _fmt(value: float | None, kind: str) -> str:
    if value is None or pd.isna(value):
        return "-"
    if kind == "acc":
        return f"{value:.4f}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def pruned_table(outcome: PruneOutcome) -> pd.DataFrame:
    """One row per pruned model: source, ratio, importance, accuracy before and after, costs, on the front."""
    rows = []
    for m in outcome.models:
        src = m.source_metrics
        rows.append({
            "pruned_from": m.source_name, "ratio": m.ratio, "importance": m.importance,
            "source_val_acc": src.get("val_acc"), "val_acc_pruned": m.val_acc_pruned,
            "val_acc": m.metrics.get("val_acc"), "flops": m.metrics.get("flops"),
            "flops_x_source": (m.metrics.get("flops", float("nan")) / src["flops"]) if src.get("flops") else None,
            "params": m.metrics.get("params"), "latency_ms": m.metrics.get("latency_ms"), "on_front": m.on_front,
            "run_id": m.run_id,
        })
    return pd.DataFrame(rows)


def format_pruned(outcome: PruneOutcome) -> str:
    """The terminal table of ``attnsearch prune``: each pruned model, then the recomputed front."""
    table = pruned_table(outcome)
    header = ("pruned from", "ratio", "importance", "val_acc src", "after prune", "after ft", "flops",
              "flops x src", "params", "latency_ms", "on front")
    rows = [(r.pruned_from, f"{r.ratio:g}", r.importance, _fmt(r.source_val_acc, "acc"),
             _fmt(r.val_acc_pruned, "acc"), _fmt(r.val_acc, "acc"), _fmt(r.flops, "n"),
             "-" if r.flops_x_source is None or pd.isna(r.flops_x_source) else f"{r.flops_x_source:.3f}x",
             _fmt(r.params, "n"), _fmt(r.latency_ms, "n"), "yes" if r.on_front else "no")
            for r in table.itertuples(index=False)]
    out = [format_table(header, rows, right={1, 3, 4, 5, 6, 7, 8, 9})]
    front = outcome.front
    if front is not None:
        keys = list(outcome.objectives)
        out.append(f"\nFront over the study's and the pruned models ({len(front)} members, "
                   f"{', '.join(f'{k}:{v}' for k, v in outcome.objectives.items())}):")
        frows = [(str(r["run_name"]), "pruned" if isinstance(r.get("pruned_from"), str) else "study",
                  *[_fmt(r[k], "acc" if k.endswith("acc") else "n") for k in keys]) for _, r in front.iterrows()]
        out.append(format_table(("run", "from", *keys), frows, right=set(range(2, 2 + len(keys)))))
        joined = [m.run_name for m in outcome.models if m.on_front]
        out.append(f"pruned models that joined the front: {', '.join(joined) if joined else 'none'}")
    return "\n".join(out)
