"""The study's plots, headless (matplotlib's Agg backend): what a user of Optuna expects to see after a search.

Which are Optuna's own (``optuna.visualization.matplotlib``) and which are attnsearch's:

* ``param_importances.png``: attnsearch's own bars of ``Importances.overall``, every objective's in one chart in
  one knob order. Optuna 5.0's ``plot_param_importances`` does not fit a multi-objective study: it sorts each
  objective's bars by that objective's importances but labels them all with the last objective's knob order, so a
  bar can stand next to another knob's name. A ranking an unreliability rule flags says so in its title;
* ``parallel_coordinate_<objective>.png``: Optuna's ``plot_parallel_coordinate`` of the most important knobs
  (``TOP_KNOBS``, the whole study's ranking for that objective) against that objective;
* ``hypervolume_trials.png``: Optuna's ``plot_hypervolume_history`` (the front's hypervolume after each trial, in
  trial order; infeasible trials add nothing), at the study's recorded reference point;
* ``hypervolume_time.png``: attnsearch's own (Optuna plots no wall time): the same hypervolume (``moocore``,
  through ``attnsearch.pareto.hypervolume``) after each trial that completed, against the wall time since the
  study's first trial started;
* the Pareto front itself stays ``pareto.png`` (``attnsearch.pareto.plot_front``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pandas as pd

from ..pareto import default_reference, hypervolume
from ._evaluate import Importances, evaluated_trials, substudy

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["TOP_KNOBS", "plot_file", "write_plots"]

logger = logging.getLogger(__name__)

TOP_KNOBS = 4  # knobs on a parallel-coordinate plot: the most important ones for its objective
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def plot_file(kind: str, objective: str | None = None) -> str:
    """The file name of one plot (``param_importances``, ``parallel_coordinate``, ``hypervolume_trials``,
    ``hypervolume_time``), e.g. ``parallel_coordinate_val_acc.png``."""
    return f"{kind}_{_UNSAFE.sub('_', objective)}.png" if objective else f"{kind}.png"


def _save(ax, path: Path, title: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    fig = ax.figure if not isinstance(ax, Sequence) else ax[0].figure
    if title:
        fig.suptitle(title, fontsize=10)
    fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _time_history(trials: list[FrozenTrial], objectives: Mapping[str, str],
                  reference: Mapping[str, float]) -> tuple[list[float], list[float]]:
    done = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    if not done:
        return [], []
    start = min(t.datetime_start or t.datetime_complete for t in trials)
    rows, xs, ys = [], [], []
    for t in done:
        rows.append(dict(zip(objectives, t.values, strict=True)))
        xs.append((t.datetime_complete - start).total_seconds())
        ys.append(hypervolume(pd.DataFrame(rows), objectives, reference))
    return xs, ys


def write_plots(
    study: optuna.Study,
    importances: Importances,
    out_dir: str | Path,
    *,
    reference: Mapping[str, float] | None = None,
    title: str = "",
) -> dict[str, Path]:
    """Write the study's plots (module docstring) into ``out_dir``; returns ``{file name: path}`` of those written.

    Args:
        study: the Optuna study (its record).
        importances: ``study_importances`` of it (the objectives and their rankings the plots follow).
        out_dir: folder for the PNG files.
        reference: the hypervolume reference point, ``{objective: value}`` (default: ``attnsearch.pareto``'s
            default for the evaluated trials).
        title: a heading for every plot (e.g. the study's id).

    A plot that cannot be drawn (no evaluated trial, a single objective for the hypervolume) is left out and the
    reason logged; the others are still written.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: CI, Ray drivers, SSH
    import matplotlib.pyplot as plt

    with plt.style.context("default"):  # Optuna's plots set the ggplot style globally: it stays inside this call
        return _draw(study, importances, out_dir, reference, title)


def _draw(study: optuna.Study, importances: Importances, out_dir: str | Path, reference: Mapping[str, float] | None,
          title: str) -> dict[str, Path]:
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objectives = importances.objectives
    trials = evaluated_trials(study)
    written: dict[str, Path] = {}
    if not trials:
        logger.info("no plots for study %s: no trial trained the full budget", study.study_name)
        return written
    sub = substudy(study, trials)
    names = list(objectives)
    heading = f"{title}: " if title else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if importances.overall:
            name = plot_file("param_importances")
            written[name] = _save(_importance_bars(importances), out / name,
                                  f"{heading}parameter importances ({importances.evaluator})")
        for k in objectives:
            top = importances.ranking(k)[:TOP_KNOBS]
            if not top:
                continue
            name = plot_file("parallel_coordinate", k)
            try:
                ax = ovm.plot_parallel_coordinate(sub, params=top, target=_value(names.index(k)),
                                                  target_name=k)
                written[name] = _save(ax, out / name, f"{heading}{k} against its {len(top)} most important knobs")
            except (RuntimeError, ValueError) as exc:
                logger.warning("%s not drawn: %s", name, exc)
        if len(objectives) >= 2:
            ref = dict(reference) if reference else default_reference(
                pd.DataFrame([dict(zip(objectives, t.values, strict=True)) for t in trials]), objectives)
            name = plot_file("hypervolume_trials")
            try:
                ax = ovm.plot_hypervolume_history(study, [float(ref[k]) for k in objectives])
                written[name] = _save(ax, out / name, f"{heading}hypervolume of the front after each trial")
            except (RuntimeError, ValueError, KeyError) as exc:
                logger.warning("%s not drawn: %s", name, exc)
            name = plot_file("hypervolume_time")
            xs, ys = _time_history(trials, objectives, ref)
            if xs:
                written[name] = _save(_step_plot(xs, ys, ref), out / name,
                                      f"{heading}hypervolume of the front against wall time")
    return written


def _value(index: int):
    return lambda t: t.values[index]


def _importance_bars(imp: Importances):
    import matplotlib.pyplot as plt
    import numpy as np

    objectives = [k for k in imp.objectives if k in imp.overall]
    first = imp.overall[objectives[0]]
    knobs = sorted(dict.fromkeys(k for o in objectives for k in imp.overall[o]), key=lambda k: -first.get(k, 0.0))
    _, ax = plt.subplots(figsize=(7, max(3.0, 0.45 * len(knobs) * len(objectives) + 1.5)))
    height = 0.8 / len(objectives)
    pos = np.arange(len(knobs))[::-1]  # the most important on top
    for j, objective in enumerate(objectives):
        values = [imp.overall[objective].get(k, 0.0) for k in knobs]
        bars = ax.barh(pos + (len(objectives) - 1 - j) * height - 0.4 + height / 2, values, height=height,
                       label=objective, color=f"C{j}")
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(pos, knobs)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("importance (normalised per objective)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    if not imp.reliable:
        ax.set_title("UNRELIABLE: " + "; ".join(imp.warnings)[:150], fontsize=7, color="darkred", wrap=True)
    return ax


def _step_plot(xs: list[float], ys: list[float], ref: Mapping[str, float]):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(7, 4.5))
    minutes = max(xs) > 600
    scale = 60.0 if minutes else 1.0
    ax.step([0.0, *(x / scale for x in xs)], [0.0, *ys], where="post", color="C0")
    ax.plot([x / scale for x in xs], ys, "o", color="C0", markersize=4)
    ax.set_xlabel(f"wall time since the first trial started ({'min' if minutes else 's'})")
    ax.set_ylabel("hypervolume")
    ax.set_title("reference " + ", ".join(f"{k}={v:.4g}" for k, v in ref.items()), fontsize=9)
    ax.grid(True, alpha=0.3)
    return ax
