"""Pareto analysis of a study: trials from MLflow as a DataFrame, fronts, hypervolume, export, plot, and the
study's recorded front in MLflow.

One module per job (as Optuna's packages): ``_runs`` (loading trials, choosing the study), ``_front`` (fronts,
hypervolume, the baseline comparison), ``_output`` (plot, CSV/Parquet, terminal table), ``_record`` (writing a
front to MLflow), ``_analysis`` (one query end to end: ``analyze``, ``record_study``) and ``_statistics`` (mean,
standard deviation and the Welch interval over repeated runs: ``attnsearch retrain``'s numbers).

Conventions (documented here because results depend on them):
- Only trials at equal budget compete (README, "Early stopping"): by default ``budget="full"``, i.e. trials whose
  state is ``completed`` (when several budgets were completed, only the largest); ``budget="any"`` lets
  early-stopped trials in too, ``budget=<int>`` compares trials that trained exactly that many epochs. Failed,
  infeasible and still-running trials never compete.
- Rows with a NaN (or missing) objective are excluded; how many is in ``front.attrs["excluded_nan"]`` and logged.
- Dominance is the usual weak-in-all, strict-in-one; exact duplicates of a non-dominated point are all kept
  (they are distinct trials that reached the same point), so ties never depend on row order.
- Hypervolume reference (default): 0 for a maximised objective whose values are all >= 0 (accuracy), else 10 %
  of |worst| beyond the worst value; 1.1 x the worst (largest) value for a minimised one (FLOPs, params), worst
  over all trials that competed (``front.attrs["reference"]``), not only the front. Hypervolumes of two studies
  are comparable only with an explicit ``reference``.
- A study's recorded front (the child-run tag ``attnsearch.pareto``, the parent's ``pareto.hypervolume``,
  ``pareto.csv``...) is the front of its own objectives (``search.objectives``, recorded on its parent run as
  ``attnsearch.objectives``) at the full budget. Any other query is read-only unless recorded on request, and
  then under names keyed by ``front_key`` (``_record``); ``--study all`` queries are never recorded.
"""

from ..contract import ALL_STUDIES, DEFAULT_OBJECTIVES, LATEST
from ._analysis import analyze, record_study
from ._front import (
    baseline_row,
    baseline_rows,
    competing,
    default_reference,
    hypervolume,
    pareto_front,
    relative_to_baseline,
)
from ._output import export_front, format_front, front_markdown, plot_front
from ._record import RecordNames, front_key, record_names
from ._runs import Study, load_runs, select_study, study_definition
from ._statistics import CONFIDENCE, mean_std, welch_interval

__all__ = [
    "CONFIDENCE",
    "DEFAULT_OBJECTIVES",
    "ALL_STUDIES",
    "LATEST",
    "load_runs",
    "Study",
    "select_study",
    "study_definition",
    "competing",
    "pareto_front",
    "default_reference",
    "hypervolume",
    "baseline_row",
    "baseline_rows",
    "relative_to_baseline",
    "plot_front",
    "export_front",
    "format_front",
    "front_markdown",
    "front_key",
    "RecordNames",
    "record_names",
    "analyze",
    "record_study",
    "mean_std",
    "welch_interval",
]
