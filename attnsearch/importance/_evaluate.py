"""Which knobs matter: Optuna's importance evaluators on a study's trials at the full budget, per objective, for the
whole space and for each attention type's own knobs, with the rules that say when the numbers are not to be
trusted.

The trials evaluated are what Optuna's evaluators read by default: the ``COMPLETE`` ones. A study's early-stopped
trials are ``PRUNED`` in its Optuna record (``attnsearch.search.StudySearcher``), so they are left out as Optuna
leaves them out; infeasible trials are ``COMPLETE`` with a violated constraint and placeholder values, and are left
out too (their values were never measured). What remains is the trials that trained the full budget.

Knobs are conditional: a reduction ratio exists only in the trials of a type that has one, and ``stages``,
``blocks``, ``position`` only where the type is not ``none``. Optuna's evaluators score the parameters every
evaluated trial has (its intersection search space), so the whole-study importances cover the knobs every trial
has (``attention``, the training settings, width and image size); each type's own knobs are scored among that
type's trials (``by_type``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.importance import (
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    PedAnovaImportanceEvaluator,
    get_param_importances,
)
from optuna.search_space import intersection_search_space
from optuna.study import StudyDirection
from optuna.trial import TrialState

if TYPE_CHECKING:
    import pandas as pd
    from optuna.importance import BaseImportanceEvaluator
    from optuna.trial import FrozenTrial

__all__ = [
    "ATTENTION_PARAM",
    "EVALUATORS",
    "MAX_STOPPED_SHARE",
    "MIN_TRIALS",
    "MIN_TYPE_TRIALS",
    "TRIALS_PER_KNOB",
    "Importances",
    "evaluated_trials",
    "make_evaluator",
    "objective_names",
    "study_importances",
    "substudy",
]

# `--evaluator`: Optuna's three importance evaluators (fANOVA: Hutter et al. 2014; PED-ANOVA: Watanabe et al.
# 2023; MDI: the random forest's mean decrease in impurity, Breiman 2001).
EVALUATORS = ("fanova", "ped-anova", "mdi")
ATTENTION_PARAM = "attention"  # the space's attention-type parameter (attnsearch.space)

# The unreliability rules (documented in the README's "Which knobs matter"). A ranking is shown without numbers
# when one of them holds for it:
MIN_TRIALS = 10  # fewer trials at the full budget than this (whole study) ...
MIN_TYPE_TRIALS = 5  # ... or than this among one type's trials (its own knobs) ...
TRIALS_PER_KNOB = 2  # ... or fewer than this many per knob scored: a forest of that few points fits noise
MAX_STOPPED_SHARE = 0.5  # more than this share of the finished trials stopped early: the evaluated trials are the
# scheduler's survivors, so a knob whose bad values were stopped early looks less important than it is
PED_ANOVA_QUANTILE = 0.1  # the top quantile PED-ANOVA contrasts (Optuna's default) ...
PED_ANOVA_TOP = 5  # ... and its own advice: at least 5 trials in it


def make_evaluator(name: str, seed: int | None = 0) -> BaseImportanceEvaluator:
    """Optuna's evaluator for ``--evaluator`` (``fanova``, ``ped-anova`` or ``mdi``), seeded where it has a seed."""
    if name == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if name == "mdi":
        return MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    if name == "ped-anova":
        return PedAnovaImportanceEvaluator(target_quantile=PED_ANOVA_QUANTILE)
    raise ValueError(f"unknown importance evaluator {name!r}; valid: {', '.join(EVALUATORS)}")


def objective_names(study: optuna.Study, objectives: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{objective: "max"|"min"}`` in the study's order: ``objectives`` when given (the job's), else the study's
    metric names (the searcher sets them), else ``objective0``, ``objective1``..."""
    modes = ["max" if d == StudyDirection.MAXIMIZE else "min" for d in study.directions]
    if objectives is not None:
        names = list(objectives)
        if len(names) != len(modes):
            raise ValueError(f"the Optuna study {study.study_name!r} has {len(modes)} objective(s), not "
                             f"{len(names)} ({', '.join(names)})")
    else:
        names = study.metric_names or [f"objective{i}" for i in range(len(modes))]
    return dict(zip(names, modes, strict=False))


def _feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


def evaluated_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials importances are computed on: complete, feasible, every value finite (module docstring)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _feasible(t) and t.values is not None and all(math.isfinite(v) for v in t.values)]


def substudy(study: optuna.Study, trials: list[FrozenTrial]) -> optuna.Study:
    """An in-memory study of ``trials`` with ``study``'s directions and objective names (what Optuna's evaluators
    and plots take: they read every complete trial of the study they are given)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sub = optuna.create_study(directions=study.directions, study_name=study.study_name)
    if study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sub.set_metric_names(list(study.metric_names))
    sub.add_trials(trials)
    return sub


@dataclass
class Importances:
    """What ``study_importances`` found.

    ``overall``: per objective, each knob every evaluated trial has -> importance (normalised to sum 1, highest
    first). ``by_type``: per attention type, per objective, that type's own knobs among its trials. ``counts``:
    the study's trials by state (``completed``, ``early_stopped``, ``infeasible``, ``failed``, ``running``);
    ``type_trials``: evaluated trials per type. ``warnings`` (the whole study) and ``type_warnings`` (per type)
    hold the unreliability rules that apply; a ranking with a warning is shown without numbers.
    """

    evaluator: str
    objectives: dict[str, str]
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    by_type: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    type_trials: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    type_warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def reliable(self) -> bool:
        """Whether no rule flags the whole-study ranking."""
        return not self.warnings

    def ranking(self, objective: str) -> list[str]:
        """The whole-study knobs for ``objective``, most important first."""
        return list(self.overall.get(objective, {}))

    def table(self) -> pd.DataFrame:
        """One row per (scope, objective, knob): ``scope`` ``all`` or an attention type, ``importance``, ``rank``
        (1 = most important), ``trials`` evaluated and ``reliable``."""
        import pandas as pd

        rows = []
        scopes = [("all", self.overall, self.counts.get("completed", 0), self.reliable)]
        scopes += [(kind, per, self.type_trials.get(kind, 0), self.reliable and not self.type_warnings.get(kind))
                   for kind, per in self.by_type.items()]
        for scope, per, trials, reliable in scopes:
            for objective, values in per.items():
                for rank, (knob, value) in enumerate(values.items(), 1):
                    rows.append({"scope": scope, "objective": objective, "knob": knob, "importance": value,
                                 "rank": rank, "trials": trials, "reliable": reliable})
        return pd.DataFrame(rows, columns=["scope", "objective", "knob", "importance", "rank", "trials", "reliable"])


def _target(index: int, mode: str, evaluator: str) -> Callable[[FrozenTrial], float]:
    # PED-ANOVA contrasts the best quantile and reads lower as better when given a target; fANOVA and MDI explain
    # the variance, where the sign does not matter
    sign = -1.0 if evaluator == "ped-anova" and mode == "max" else 1.0
    return lambda t: sign * t.values[index]


def _evaluate(study: optuna.Study, trials: list[FrozenTrial], objectives: Mapping[str, str],
              chosen: Mapping[str, str], evaluator: str, seed: int | None,
              exclude: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Importances of the knobs every trial of ``trials`` has, per ``chosen`` objective (``objectives``: all of the
    study's, in the order of its values); and the reasons for those that could not be scored."""
    space = intersection_search_space(trials)
    params = [p for p, d in space.items() if p not in exclude and not d.single()]
    out: dict[str, dict[str, float]] = {}
    notes = []
    if not params:
        return out, notes
    sub = substudy(study, trials)
    for i, (objective, mode) in enumerate(objectives.items()):
        if objective not in chosen:
            continue
        values = [t.values[i] for t in trials]
        if max(values) == min(values):
            notes.append(f"{objective} is the same in every trial ({values[0]:.4g}): no knob explains it")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # PED-ANOVA's reminder that it reads lower as better: _target has negated a maximised objective
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            try:
                result = get_param_importances(sub, evaluator=make_evaluator(evaluator, seed), params=params,
                                               target=_target(i, mode, evaluator))
            except (RuntimeError, ValueError) as exc:  # e.g. PED-ANOVA with too few trials per quantile
                notes.append(f"{objective}: {evaluator} could not score the knobs ({exc})")
                continue
        out[objective] = dict(sorted(result.items(), key=lambda kv: -kv[1]))
    return out, notes


def _count_rules(trials: int, knobs: int, minimum: int, evaluator: str) -> list[str]:
    rules = []
    need = max(minimum, TRIALS_PER_KNOB * knobs)
    if trials < need:
        rules.append(f"only {trials} trial(s) trained the full budget for {knobs} knob(s); at least {need} are "
                     "needed before a ranking means more than noise")
    if evaluator == "ped-anova" and knobs and trials * PED_ANOVA_QUANTILE < PED_ANOVA_TOP:
        rules.append(f"PED-ANOVA contrasts the top {PED_ANOVA_QUANTILE:.0%} of the trials and needs at least "
                     f"{PED_ANOVA_TOP} there ({trials} trials give {int(trials * PED_ANOVA_QUANTILE)}); use fanova "
                     "or run more trials")
    return rules


def study_importances(
    study: optuna.Study,
    objectives: Mapping[str, str] | None = None,
    evaluator: str = "fanova",
    *,
    only: str | None = None,
    seed: int | None = 0,
    attention_param: str = ATTENTION_PARAM,
) -> Importances:
    """Each knob's importance for each objective of ``study`` (an Optuna study, e.g. a study's record).

    Args:
        study: the Optuna study; its complete, feasible trials are evaluated (module docstring).
        objectives: ``{name: mode}`` in the study's order (default: the study's metric names and directions).
        evaluator: ``fanova`` (default), ``ped-anova`` or ``mdi``: Optuna's evaluators.
        only: one objective's name, to score that one alone.
        seed: the evaluators' random seed (fANOVA's and MDI's forests).
        attention_param: the parameter that names the attention type (its values split ``by_type``).

    Returns:
        ``Importances``; the unreliability rules that apply are in its ``warnings`` and ``type_warnings``.
    """
    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown importance evaluator {evaluator!r}; valid: {', '.join(EVALUATORS)}")
    named = objective_names(study, objectives)
    if only is not None and only not in named:
        raise ValueError(f"objective {only!r} is not one of the study's: {', '.join(named)}")
    chosen = {k: m for k, m in named.items() if only is None or k == only}
    all_trials = study.get_trials(deepcopy=False)
    trials = evaluated_trials(study)
    feasible_ids = {t.number for t in trials}
    completed_ids = {t.number for t in all_trials if t.state == TrialState.COMPLETE}
    counts = {
        "completed": len(trials),
        "early_stopped": sum(t.state == TrialState.PRUNED for t in all_trials),
        "infeasible": len(completed_ids - feasible_ids),
        "failed": sum(t.state == TrialState.FAIL for t in all_trials),
        "running": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in all_trials),
    }
    result = Importances(evaluator, dict(named), counts=counts)

    def scored(subset: list[FrozenTrial], exclude: tuple[str, ...]) -> tuple[dict[str, dict[str, float]], list[str]]:
        return _evaluate(study, subset, named, chosen, evaluator, seed, exclude)

    finished = counts["completed"] + counts["early_stopped"]
    if not trials:
        result.warnings.append("no trial trained the full budget yet: nothing to rank")
        return result
    result.overall, notes = scored(trials, ())
    knobs = len(next(iter(result.overall.values()), {}))
    result.warnings += _count_rules(len(trials), knobs, MIN_TRIALS, evaluator)
    if finished and counts["early_stopped"] / finished > MAX_STOPPED_SHARE:
        result.warnings.append(
            f"{counts['early_stopped']} of {finished} finished trials stopped early: the {len(trials)} that trained "
            "the full budget are the scheduler's survivors, so a knob whose bad values were stopped early looks "
            "less important than it is")
    result.warnings += notes

    overall_knobs = set(intersection_search_space(trials))
    types = sorted({str(t.params[attention_param]) for t in trials if attention_param in t.params})
    for kind in types:
        subset = [t for t in trials if str(t.params.get(attention_param)) == kind]
        per, notes = scored(subset, (attention_param,))
        if not per or not set(next(iter(per.values()))) - overall_knobs:
            continue  # a type without knobs of its own (none): its trials' ranking is the whole study's
        result.by_type[kind] = per
        result.type_trials[kind] = len(subset)
        knobs = len(next(iter(per.values())))
        rules = _count_rules(len(subset), knobs, MIN_TYPE_TRIALS, evaluator)
        rules += notes
        if rules:
            result.type_warnings[kind] = rules
    return result
