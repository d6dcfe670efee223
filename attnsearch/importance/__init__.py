"""Which knobs matter: parameter importances per objective (Optuna's evaluators on a study's Optuna record), the
study's plots, and both on its MLflow parent run.

One module per job: ``_evaluate`` (the evaluators, the trials they read, the unreliability rules), ``_output``
(terminal table, description section), ``_plots`` (Optuna's matplotlib plots and attnsearch's own, headless) and
``_record`` (the parent run's metrics, tags, artifacts and description). Imports no Ray.
"""

from ._evaluate import (
    ATTENTION_PARAM,
    EVALUATORS,
    MAX_STOPPED_SHARE,
    MIN_TRIALS,
    MIN_TYPE_TRIALS,
    TRIALS_PER_KNOB,
    Importances,
    evaluated_trials,
    make_evaluator,
    objective_names,
    study_importances,
    substudy,
)
from ._output import format_importances, importance_markdown
from ._plots import TOP_KNOBS, plot_file, write_plots
from ._record import PLOTS_DIR, importance_metrics, record_importances

__all__ = [
    "ATTENTION_PARAM",
    "EVALUATORS",
    "MAX_STOPPED_SHARE",
    "MIN_TRIALS",
    "MIN_TYPE_TRIALS",
    "PLOTS_DIR",
    "TOP_KNOBS",
    "TRIALS_PER_KNOB",
    "Importances",
    "evaluated_trials",
    "format_importances",
    "importance_markdown",
    "importance_metrics",
    "make_evaluator",
    "objective_names",
    "plot_file",
    "record_importances",
    "study_importances",
    "substudy",
    "write_plots",
]
