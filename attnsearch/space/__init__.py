"""Search-space files -> a validated ``SearchSpace`` -> an Optuna define-by-run function, and back to a trial.

Format (a file referenced by ``search.space`` or the same mapping inline)::

    attention:
      type: [none, se, sa, nam]          # attention types to choose from
      stages: [[1, 2, 3], [3]]           # stage sets; or "all" (fixed) or "subsets" (every non-empty subset)
      blocks: [all]                      # subset of all|first|last
      position: [default]                # subset of default|residual_end|mid|post_add|stage_end
      knobs:                             # per type; sampled only when that type is chosen
        sa: {groups: [2, 4, 8]}
        nam: {penalty: {low: 1.0e-4, high: 1.0e-2, log: true}}
    train:                               # any TrainConfig field except epochs (the budget)
      lr: {low: 0.01, high: 0.3, log: true}

Value forms: a scalar is a constant, a list is a categorical choice (a one-element list is a constant),
``{low, high, log?, step?}`` is a range (int when low and high are both ints, else float).

Decisions: knobs given for a type that is not in ``attention.type`` are an error (a typo or a stale list would
otherwise silently search something else). ``nam.penalty`` is NAM's sparsity weight p, a training knob; it must
be > 0 when given and is 0 (the official code's default: regularisation off) when not. The type ``none``
samples no stages/blocks/position. Optuna parameter names are flat: ``attention``, ``stages`` ("1,2,3"),
``blocks``, ``position``, ``<type>.<knob>``, ``train.<field>``; no name contains "/" (Ray's nesting separator).
"""

from ._cost import (
    COST_METRICS,
    build_trial_model,
    cheapest,
    check_constraints,
    count_model,
    over_budget,
)
from ._model import Param, SearchSpace, parse_stages_key, stages_key
from ._parse import (
    FIXED_TRAIN_FIELDS,
    NAM_PENALTY,
    backbone_stages,
    load_space,
    parse_space,
)
from ._trial import (
    DefineByRun,
    TrialSettings,
    baseline_point,
    check_space,
    define_by_run,
    feasible,
    is_point,
    job_identity,
    materialize,
    space_digest,
    space_to_dict,
)

__all__ = [
    "Param",
    "SearchSpace",
    "TrialSettings",
    "DefineByRun",
    "FIXED_TRAIN_FIELDS",
    "NAM_PENALTY",
    "stages_key",
    "parse_stages_key",
    "backbone_stages",
    "load_space",
    "parse_space",
    "baseline_point",
    "is_point",
    "define_by_run",
    "materialize",
    "feasible",
    "check_space",
    "space_to_dict",
    "job_identity",
    "space_digest",
    "COST_METRICS",
    "build_trial_model",
    "count_model",
    "over_budget",
    "cheapest",
    "check_constraints",
]
