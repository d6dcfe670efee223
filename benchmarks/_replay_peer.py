"""The peer of the replay: Syne Tune 0.16's own schedulers in Syne Tune's own simulator backend, over the same
table (``benchmarks/_replay.py``), the way Syne Tune's users benchmark on a table.

Syne Tune is a benchmark-only dependency, never one of attnsearch: ``pip install --no-deps syne-tune==0.16.0
dill`` and ``pip install huggingface_hub`` (``syne_tune.blackbox_repository`` imports it at import time; nothing
is downloaded).

What is Syne Tune's: the ``Tuner`` loop, ``UserBlackboxBackend`` (its simulator backend over a user's
``Blackbox``: event queue, simulated clock, N asynchronous workers), ``SimulatorCallback``, the stopping rule of
``MOASHA`` and its random sampling of configurations (``MOASHA.suggest``), and random search
(``MultiObjectiveRandomSearcher`` in a ``SingleFidelityScheduler``: what ``RandomSearch`` is for one objective).
What is ours: the ``Blackbox`` serving the table (``TableBlackbox``: a configuration is mapped to its recorded one by
the replay's own ``NearestConfig``, so both simulators see the same table through the same map), the flat Syne Tune
configuration space made from the job's space (Syne Tune has no conditional spaces: every knob of every type
is sampled, and the study's define-by-run function, run on those values through ``optuna.trial.FixedTrial``,
keeps those of the chosen type), and the baseline evaluated first, as in a study (the random searcher's
``points_to_evaluate``; ``MOASHA`` has none, so ``BaselineFirstMOASHA`` returns it from its first ``suggest`` and
then defers to MOASHA's; the baseline is not protected from stopping: Syne Tune has no such notion). The
simulator's delays (``SimulatorConfig``) are set to 0, as the replay has none; its clock also advances by the
real time the Tuner loop spends (Syne Tune's design), milliseconds against epochs of seconds, and by the Tuner's
polling interval while every worker is busy (``tuner_sleep_time``: set to a twentieth of the table's median
epoch instead of its 5 s default, which would leave a freed worker idle for seconds).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from _replay import NearestConfig, ReplayRun, Table, _space_params

if TYPE_CHECKING:
    from attnsearch.config import Job
    from attnsearch.space import SearchSpace

__all__ = ["PEER_METHODS", "SYNE_TUNE_VERSION", "peer_replay"]

SYNE_TUNE_VERSION = "0.16.0"
PEER_METHODS = ("st-random", "st-moasha")
ELAPSED = "elapsed_s"
ROW = "table_row"


def _oriented(objectives: Mapping[str, str]) -> dict[str, tuple[str, float]]:
    """Syne Tune 0.16 has one direction for every metric: each objective as a minimised column."""
    return {m: (m if mode == "min" else f"neg_{m}", 1.0 if mode == "min" else -1.0) for m, mode in objectives.items()}


def config_space(space: SearchSpace) -> dict[str, Any]:
    """The job's space as a flat Syne Tune configuration space (every parameter of every type)."""
    import syne_tune.config_space as sp
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, p in _space_params(space).items():
        if p.is_const:
            continue
        d = p.dist
        if isinstance(d, CategoricalDistribution):
            out[name] = sp.choice(list(d.choices))
        elif isinstance(d, IntDistribution):
            if d.step != 1:
                out[name] = sp.choice(list(range(d.low, d.high + 1, d.step)))
            else:
                out[name] = (sp.lograndint if d.log else sp.randint)(d.low, d.high)
        elif d.step is not None:
            out[name] = sp.choice(list(np.arange(d.low, d.high + d.step / 2, d.step)))
        else:
            out[name] = (sp.loguniform if d.log else sp.uniform)(d.low, d.high)
    return out


def conditional(space: SearchSpace, flat: Mapping[str, Any]) -> dict[str, Any]:
    """What the study's define-by-run function makes of the flat values: the chosen type's knobs only."""
    import optuna

    from attnsearch.space import define_by_run

    return define_by_run(space)(optuna.trial.FixedTrial(dict(flat)))


def _blackbox_class():
    from syne_tune.blackbox_repository.blackbox import Blackbox

    class TableBlackbox(Blackbox):
        """The table as a Syne Tune ``Blackbox``: all epochs of the nearest recorded configuration at once."""

        def __init__(self, table: Table, space: SearchSpace, objectives: Mapping[str, str], cs: dict[str, Any],
                     mapper: NearestConfig):
            import syne_tune.config_space as sp

            self.table, self.space, self.mapper = table, space, mapper
            self.oriented = _oriented(objectives)
            names = [col for col, _ in self.oriented.values()] + [ELAPSED, ROW]
            super().__init__(configuration_space=cs, fidelity_space={"epoch": sp.randint(1, table.max_t)},
                             objectives_names=names)

        @property
        def fidelity_values(self) -> np.ndarray:
            return np.arange(1, self.table.max_t + 1)

        def _objective_function(self, configuration: dict[str, Any], fidelity: dict | None = None,
                                seed: int | None = None) -> np.ndarray:
            row = self.mapper(conditional(self.space, configuration))
            cols = []
            for metric, (_, sign) in self.oriented.items():
                if metric in self.table.curves:
                    cols.append(sign * self.table.curves[metric][row])
                else:
                    cols.append(np.full(self.table.max_t, sign * float(self.table.configs.iloc[row][metric])))
            cols.append(np.cumsum(self.table.curves["epoch_time_s"][row]))
            cols.append(np.full(self.table.max_t, float(row)))
            values = np.stack(cols, axis=1)
            if fidelity is None:
                return values
            return dict(zip(self.objectives_names, values[int(fidelity["epoch"]) - 1], strict=False))

    return TableBlackbox


def _flat_baseline(job: Job, space: SearchSpace, cs: Mapping[str, Any]) -> dict[str, Any]:
    """The study's baseline as a flat Syne Tune configuration (knobs of other types: any value, unused)."""
    from attnsearch.space import baseline_point

    point = baseline_point(job, space)
    out = {}
    for name, domain in cs.items():
        if name in point:
            out[name] = point[name]
        else:
            out[name] = domain.categories[0] if hasattr(domain, "categories") else domain.lower
    return out


def peer_replay(table: Table, job: Job, space: SearchSpace, *, method: str, seed: int, workers: int = 4,
                budget_s: float, mapper: NearestConfig | None = None) -> ReplayRun:
    """Run Syne Tune's ``method`` (``PEER_METHODS``) in its simulator backend for ``budget_s`` worker-seconds.

    Args: as ``_replay.replay``'s. Syne Tune's MOASHA takes one ladder: from ``Job.grace_period`` by
    ``Job.reduction_factor`` (not ``Job.rungs``' factor per rung).
    """
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_backend import SimulatorConfig
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository import UserBlackboxBackend
    from syne_tune.optimizer.schedulers.searchers.random_searcher import MultiObjectiveRandomSearcher
    from syne_tune.optimizer.schedulers.single_fidelity_scheduler import SingleFidelityScheduler

    if method not in PEER_METHODS:
        raise ValueError(f"unknown peer method {method!r}; known: {PEER_METHODS}")
    objectives = dict(job.search.objectives)
    mapper = mapper or NearestConfig(table, space)
    calls0, exact0 = mapper.calls, mapper.exact
    cs = config_space(space)
    blackbox = _blackbox_class()(table, space, objectives, cs, mapper)
    metrics = [col for col, _ in blackbox.oriented.values()]
    baseline = [_flat_baseline(job, space, cs)] if job.search.baseline else []
    np.random.seed(seed)  # MOASHA.suggest and on_trial_add draw from numpy's global generator
    if method == "st-random":
        # RandomSearch's own searcher is single-objective; its multi-objective twin, in the same scheduler
        searcher = MultiObjectiveRandomSearcher(cs, points_to_evaluate=baseline, random_seed=seed)
        scheduler = SingleFidelityScheduler(cs, metrics=metrics, do_minimize=True, searcher=searcher,
                                            random_seed=seed)
    else:
        scheduler = _baseline_first_moasha()(
            baseline, config_space=cs, metrics=metrics, do_minimize=True, time_attr="epoch", max_t=table.max_t,
            grace_period=job.grace_period, reduction_factor=job.reduction_factor,
            brackets=1, random_seed=seed)
    horizon = budget_s / workers
    # The Tuner polls: while every worker is busy it "sleeps", and the simulated clock moves by the backend's
    # tuner_sleep_time (default 5 s, made for epochs of minutes): a freed worker idles until the next poll. A
    # twentieth of the table's median epoch keeps that idling small against the epochs themselves.
    poll = 0.05 * float(np.median(table.curves["epoch_time_s"]))
    backend = UserBlackboxBackend(blackbox=blackbox, elapsed_time_attr=ELAPSED, tuner_sleep_time=poll,
                                  simulator_config=SimulatorConfig(0, 0, 0, 0, 0))
    callback = SimulatorCallback()
    for name in ("syne_tune", "syne_tune.tuner"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="attnsearch-peer-") as tmp:
        previous = os.environ.get("SYNETUNE_FOLDER")
        os.environ["SYNETUNE_FOLDER"] = tmp
        try:
            tuner = Tuner(trial_backend=backend, scheduler=scheduler,
                          stop_criterion=StoppingCriterion(max_wallclock_time=horizon), n_workers=workers,
                          sleep_time=0, callbacks=[callback], save_tuner=False, print_update_interval=1e9,
                          results_update_interval=1e9, tuner_name=f"peer-{method}-{seed}", suffix_tuner_name=False)
            with contextlib.redirect_stdout(io.StringIO()):  # its progress report
                tuner.run()
        finally:
            if previous is None:
                os.environ.pop("SYNETUNE_FOLDER", None)
            else:
                os.environ["SYNETUNE_FOLDER"] = previous
    run = _as_run(callback.dataframe(), table, method, seed, workers, budget_s, horizon)
    calls = mapper.calls - calls0
    run.exact_share = (mapper.exact - exact0) / calls if calls else 1.0
    return run


def _baseline_first_moasha():
    from syne_tune.optimizer.scheduler import TrialSuggestion
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    class BaselineFirstMOASHA(MOASHA):
        """Syne Tune's MOASHA whose first suggestions are ``points`` (the study's baseline), then its own."""

        def __init__(self, points: list[dict[str, Any]], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._points = [dict(p) for p in points]

        def suggest(self) -> TrialSuggestion | None:
            if self._points:
                return TrialSuggestion.start_suggestion(self._points.pop(0))
            return super().suggest()

    return BaselineFirstMOASHA


def _as_run(df, table: Table, method: str, seed: int, workers: int, budget_s: float, horizon: float) -> ReplayRun:
    """The Syne Tune results as a ``ReplayRun`` (only what happened by the simulated time ``horizon``)."""
    from syne_tune.constants import ST_TUNER_TIME

    run = ReplayRun(method, seed, workers, budget_s, horizon)
    if df is None or not len(df):
        return run
    df = df[df[ST_TUNER_TIME] <= horizon + 1e-9].sort_values([ST_TUNER_TIME, "trial_id", "epoch"], kind="stable")
    for _, r in df.iterrows():
        row, epoch = int(r[ROW]), int(r["epoch"])
        run.events.append((float(r[ST_TUNER_TIME]), str(r["trial_id"]), epoch))
        run.worker_seconds += float(table.curves["epoch_time_s"][row, epoch - 1])
        if epoch >= table.max_t:
            run.full.append((float(r[ST_TUNER_TIME]), row))
    for trial_id, rows in df.groupby("trial_id"):
        run.trials.append({"trial_id": str(trial_id), "row": int(rows[ROW].iloc[0]),
                           "epochs": int(rows["epoch"].max())})
    return run
