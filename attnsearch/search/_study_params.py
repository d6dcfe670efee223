"""A study's definition as the MLflow params of its parent run, so that the UI compares two studies' settings."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import TYPE_CHECKING

from ..space import space_digest

if TYPE_CHECKING:
    from ..config import Job
    from ..space import SearchSpace

__all__ = ["space_digest", "study_params"]  # space_digest: attnsearch.space's, the parent run's param


def study_params(job: Job, space: SearchSpace) -> dict[str, str]:
    """The parent run's params: what the study searches and how, under the job's own key names.

    ``search.sampler``, ``scheduler.type`` (``auto`` resolved), for ASHA/MOASHA its ``rung_metric`` and ``rungs``
    (JSON ``{epoch: reduction factor}``, where it decides and how many it keeps there: ``Job.rungs`` for MOASHA),
    for ASHA also its ``grace_period`` and ``reduction_factor`` (resolved), ``search.num_samples``,
    ``search.max_concurrent``, ``search.seed``, ``search.baseline``, ``train.epochs``, ``search.objectives`` (JSON,
    the job's order), ``search.budget_epochs`` (``none`` without one), ``backbone.name``, ``backbone.width_mult``,
    ``data.dataset``, ``data.image_size``, ``data.validation`` (what the study validates on: a split of the training
    images or the dataset's official held-out split), ``search.space`` (the space file's name, ``inline`` for a
    space in the job) and ``search.space_digest`` (``space_digest``).
    """
    kind = job.scheduler_type
    params = {
        "search.sampler": job.search.sampler,
        "scheduler.type": kind,
        "search.num_samples": job.search.num_samples,
        "search.max_concurrent": job.search.max_concurrent,
        "search.seed": job.search.seed,
        "search.baseline": job.search.baseline,
        "train.epochs": job.train.epochs,
        "search.objectives": json.dumps(dict(job.search.objectives)),
        "search.budget_epochs": job.search.budget_epochs if job.search.budget_epochs is not None else "none",
        "backbone.name": job.backbone.name,
        "backbone.width_mult": job.backbone.width_mult,
        "data.dataset": job.data.dataset,
        "data.image_size": job.data.image_size if job.data.image_size is not None else "native",
        "data.validation": job.data.validation,
        "search.space": PurePath(job.search.space).name if isinstance(job.search.space, str) else "inline",
        "search.space_digest": space_digest(space),
    }
    if kind in ("asha", "moasha"):
        sched = job.scheduler
        params["scheduler.rung_metric"] = sched.rung_metric
        if kind == "asha":
            params["scheduler.grace_period"] = job.grace_period
            params["scheduler.reduction_factor"] = _number(job.reduction_factor)
        rungs = job.ladder if kind == "asha" else job.rungs
        params["scheduler.rungs"] = json.dumps({f"{_number(e)}": _number(f) for e, f in rungs.items()})
    return {key: str(value) for key, value in params.items()}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
