"""The searchers: the Optuna side of a study (the sampler, and the Ray searcher that tells Optuna what each trial
really was), and a fixed list of configs (a retrain)."""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..contract import (
    BASELINE_KEY,
    COMPLETED,
    EARLY_STOPPED,
    EPOCH_METRICS,
    INFEASIBLE,
    REASON_KEY,
    STATE_KEY,
    ConfigError,
    is_number,
    result_state,
)

# The user attribute that names the Ray trial an Optuna trial ran as: how a study's Optuna record, its Ray record
# and its MLflow child runs (tag attnsearch.trial_id) are matched.
TRIAL_ID_ATTR = "attnsearch_trial_id"
# The Optuna constraint an infeasible trial violates (``Trial.set_constraint``: > 0 is infeasible); TPE, NSGA-II
# and GP read every trial's constraints, so the sampler learns where the infeasible region lies.
INFEASIBLE_CONSTRAINT = "attnsearch_infeasible"


def make_sampler(sampler: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for ``search.sampler``; infeasible trials reach it through their constraint."""
    if sampler == "tpe":
        # multivariate+group model the joint, conditional (define-by-run) space, at a fraction of independent
        # sampling's cost per trial; group is experimental in Optuna 5, and says so once
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=False)
            return FinishedTrialsSampler(tpe)
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if sampler == "gp":
        # its Gaussian process models the parameters every trial has (attention type, width, side, the training
        # knobs); an attention type's own knobs exist only in its trials and are drawn at random, which Optuna
        # otherwise warns about on every trial
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.sampler: unknown sampler {sampler!r}; valid: tpe, nsga2, gp, random")


_COPY_NAME = "finished-trials"


class FinishedTrialsSampler(optuna.samplers.BaseSampler):
    """A sampler that, in a multi-objective study, learns from the finished trials only: not the early-stopped.

    Optuna's TPE ranks a PRUNED trial by its last intermediate value, which a multi-objective trial cannot
    report (``Trial.report`` is single-objective), so all of them tie; while fewer trials have completed than
    TPE's share of good trials (``gamma``), the earliest pruned ones fill that share, whatever they scored, and
    TPE proposes near them. Here the wrapped sampler sees, in a multi-objective study, an in-memory copy holding
    only the study's COMPLETE trials (trained to the full budget, or infeasible with their constraint), as BOHB
    models only the budget it has results on (Falkner et al. 2018, "BOHB: Robust and Efficient Hyperparameter
    Optimization at Scale"); the study itself keeps every trial as it was told (PRUNED stays PRUNED, for
    optuna-dashboard and ``attnsearch importance``). A single-objective study, whose pruned trials carry
    intermediate values, goes to the sampler unchanged.

    Args:
        sampler: the sampler that proposes. A ``TPESampler`` needs ``constant_liar=False`` (Optuna 5's default is
            True): the constant liar writes into the storage of the study it is given, about a trial the copy
            does not hold.
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler
        self._storage: optuna.storages.InMemoryStorage | None = None
        self._copy: optuna.Study | None = None
        self._copied: set[int] = set()

    def _sync(self, study: optuna.Study) -> None:
        """Bring the copy up to the study's COMPLETE trials: once per asked trial (``before_trial``), so the
        sampler's several calls for that trial read no storage."""
        if self._copy is None or self._copy.directions != study.directions:
            self._storage = optuna.storages.InMemoryStorage()
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # the storage logs every study it creates
            try:
                self._storage.create_new_study(study.directions, _COPY_NAME)
            finally:
                optuna.logging.set_verbosity(verbosity)
            self._copy, self._copied = optuna.load_study(study_name=_COPY_NAME, storage=self._storage), set()
        new = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
               if t.number not in self._copied]
        for trial in new:
            self._copy.add_trial(trial)
            self._copied.add(trial.number)
        if new:  # a Study object caches its trials until its own next ask/tell: a fresh one reads the added trials
            self._copy = optuna.load_study(study_name=_COPY_NAME, storage=self._storage)

    def _view(self, study: optuna.Study) -> optuna.Study:
        if len(study.directions) < 2:
            return study
        if self._copy is None:  # a call outside Study.ask, which calls before_trial first
            self._sync(study)
        return self._copy

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self.sampler.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self.sampler.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.sampler.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(study.directions) > 1:
            self._sync(study)
        self.sampler.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any,
                    values: Sequence[float] | None) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


class StudySearcher(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials that did not finish their budget.

    Ray reports an ASHA-stopped trial as complete with its last, partly trained result; left alone, epoch-1
    accuracies would enter the study (and its Pareto set) as final. Those are told as PRUNED; infeasible trials
    as complete with the worst values and the sampler's constraint violated; diverged or errored trials as FAIL.
    The telling itself is OptunaSearch's (``on_trial_complete``): this class only chooses what Ray passes it.
    Each Optuna trial carries the attnsearch state (and reason) as the user attributes ``attnsearch_state`` and
    ``attnsearch_reason``, and its Ray trial id as ``attnsearch_trial_id``; the study's objectives are its metric
    names. With a ``storage`` (``attnsearch.search.open_optuna_storage``) the study is kept where Optuna's tools
    (optuna-dashboard, ``optuna.load_study``) open it.

    Args:
        *args: OptunaSearch's arguments (``space``, ``metric``, ``mode``...), passed on unchanged.
        max_t: the full budget in epochs: a trial told as completed trained that many.
        points_to_evaluate: the study's baseline config(s), enqueued first. Optuna asks enqueued trials before it
            samples (``Study.enqueue_trial``), so the first ``len(points_to_evaluate)`` trials suggested are
            they: each gets ``BASELINE_KEY: True`` in its config, which the tracker turns into the child run's tag
            ``attnsearch.baseline`` (a sampled ``attention: none`` trial is never taken for the baseline).
        **kwargs: OptunaSearch's other keyword arguments (``sampler``...).
    """

    def __init__(self, *args: Any, max_t: int, points_to_evaluate: list[dict] | None = None, **kwargs: Any):
        super().__init__(*args, points_to_evaluate=points_to_evaluate, **kwargs)
        self._max_t = max_t
        self._enqueued = len(points_to_evaluate or [])
        self._baseline: dict[str, bool] = {}  # trial id -> whether it was served an enqueued point
        study = self.optuna_study
        if study is not None and not study.metric_names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(self._objectives()))

    @property
    def optuna_study(self) -> optuna.Study | None:
        """The Optuna study this searcher asks and tells (None before Ray gives it a space)."""
        return self._ot_study  # OptunaSearch's own; see _running_optuna_trial for why private state is read

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._running_optuna_trial(trial_id)
        if config is not None and ot_trial is not None and TRIAL_ID_ATTR not in ot_trial.user_attrs:
            ot_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        if config is None:
            return None
        if trial_id not in self._baseline:
            self._baseline[trial_id] = len(self._baseline) < self._enqueued
        return {**config, BASELINE_KEY: True} if self._baseline[trial_id] else config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._running_optuna_trial(trial_id)
        if ot_trial is None:
            return
        state = result_state(result, self._max_t, errored=error)
        ot_trial.set_user_attr(STATE_KEY, state)
        if state == COMPLETED:  # OptunaSearch tells the values of its metric list
            ot_trial.set_constraint(INFEASIBLE_CONSTRAINT, 0.0)
            super().on_trial_complete(trial_id, result=result)
        elif state == INFEASIBLE:  # complete, worst values, constraint violated: the sampler learns the region
            ot_trial.set_constraint(INFEASIBLE_CONSTRAINT, 1.0)
            ot_trial.set_user_attr(REASON_KEY, str(result.get(REASON_KEY, "")))
            worst = {m: _worst(result, m, mode) for m, mode in self._objectives().items()}
            super().on_trial_complete(trial_id, result={**result, **worst})
        elif state == EARLY_STOPPED:  # no result, no error: OptunaSearch tells PRUNED
            super().on_trial_complete(trial_id, result=None, error=False)
        else:  # failed: no result, error: OptunaSearch tells FAIL
            super().on_trial_complete(trial_id, result=None, error=True)

    def _running_optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial that Ray trial ``trial_id`` runs, or None when it is unknown or already told.

        The only access to OptunaSearch's private state: Ray has no public accessor for the Optuna trial of a
        Ray trial id, and the infeasible flag that the sampler's ``constraints_func`` reads (and the state
        attributes) must be set on that trial before OptunaSearch tells it. ``_completed_trials`` is read here
        too, because user attributes cannot be set on a trial Optuna has been told about. (No upstream issue asks
        for such an accessor yet; tests/test_search.py fails first if Ray renames these attributes.)
        """
        if trial_id in self._completed_trials:
            return None
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._ot_study.get_trials(deepcopy=False)[ot_trial.number].state.is_finished():
            # told before the driver stopped, after Ray last saved this searcher: a resumed study runs the Ray
            # trial again, and its Optuna trial (in the study's storage) keeps what it was told the first time
            self._completed_trials.add(trial_id)
            return None
        return ot_trial

    def _objectives(self) -> dict[str, str]:
        metrics, modes = self.metric, self.mode
        if isinstance(metrics, str):
            metrics, modes = [metrics], [modes]
        return dict(zip(metrics, modes, strict=False))


def _worst(result: Mapping[str, Any], metric: str, mode: str) -> float:
    """What an infeasible trial is told for ``metric``: its static counts as measured, the worst otherwise."""
    value = result.get(metric)
    if metric not in EPOCH_METRICS and is_number(value) and math.isfinite(value):
        return float(value)
    return 0.0 if mode == "max" else 1e12


class FixedConfigs(Searcher):
    """Hands Ray Tune a fixed list of trial configs, in order, then ``FINISHED`` (a retrain's runs).

    Ray's ``BasicVariantGenerator(points_to_evaluate=...)`` needs every key of a preset point in the
    ``param_space``; these configs are flat define-by-run dicts with different keys (each type its own knobs),
    as ``StudySearcher`` suggests them. Its state (configs, how many given) survives ``save``/``restore``.

    Args:
        configs: the trial configs, in the order they are to start.
    """

    def __init__(self, configs: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = [dict(c) for c in configs]
        self.given = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.given >= len(self.configs):
            return Searcher.FINISHED
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"configs": self.configs, "given": self.given}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
