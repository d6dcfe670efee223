"""Which knobs matter: planted effects in real Optuna studies over attnsearch's own space (no training), the
unreliability rules, the plots and the record on an MLflow parent run."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import optuna
import pytest
from _helpers import write_job

from attnsearch.config import load_job
from attnsearch.importance import (
    EVALUATORS,
    format_importances,
    importance_metrics,
    study_importances,
    write_plots,
)
from attnsearch.search import INFEASIBLE_CONSTRAINT
from attnsearch.space import define_by_run, load_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space")
    shutil.copy(ROOT / "search_spaces" / "quickstart.yaml", folder / "space.yaml")
    job = load_job(write_job(folder, (folder / "space.yaml").read_text()))
    return load_space(job)


def planted_study(space, n: int, *, seed: int = 0, stopped: int = 0, infeasible: int = 0) -> optuna.Study:
    """A two-objective study (val_acc max, flops min) over the quickstart space, sampled at random: val_acc
    depends on train.lr alone (a peak at 0.06), flops on backbone.width_mult alone (quadratic, as a network's);
    the other knobs are sampled and ignored. ``stopped`` more trials end pruned, ``infeasible`` complete with the
    searcher's violated constraint and placeholder values."""
    fn = define_by_run(space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_acc", "flops"])
    noise = random.Random(seed)
    for i in range(n + stopped + infeasible):
        trial = study.ask()
        config = fn(trial)
        if i >= n + stopped:
            trial.set_constraint(INFEASIBLE_CONSTRAINT, 1.0)
            study.tell(trial, [0.0, 1e12])
        elif i >= n:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.set_constraint(INFEASIBLE_CONSTRAINT, 0.0)
            acc = 0.95 - 0.3 * math.log(config["train.lr"] / 0.06) ** 2 + noise.gauss(0, 0.002)
            flops = 2e7 * config["backbone.width_mult"] ** 2 * (1 + noise.gauss(0, 0.001))
            study.tell(trial, [acc, flops])
    return study


@pytest.mark.parametrize("evaluator", ["fanova", "mdi"])
def test_planted_effects_rank_first(space, evaluator):
    imp = study_importances(planted_study(space, 60), evaluator=evaluator)
    assert imp.ranking("val_acc")[0] == "train.lr"
    assert imp.ranking("flops")[0] == "backbone.width_mult"
    assert imp.overall["val_acc"]["train.lr"] > 0.5 and imp.overall["flops"]["backbone.width_mult"] > 0.5
    # conditional knobs are not in the whole-study ranking; they are scored among their type's trials
    assert not any(k.startswith(("se.", "stages")) for k in imp.overall["val_acc"])
    assert imp.reliable and imp.counts["completed"] == 60


def test_planted_effects_ped_anova(space):
    # PED-ANOVA contrasts the top 10 %: 120 trials give the 12 its rule asks for (at least 5)
    imp = study_importances(planted_study(space, 120), evaluator="ped-anova")
    assert imp.ranking("val_acc")[0] == "train.lr"
    assert imp.ranking("flops")[0] == "backbone.width_mult"
    assert imp.reliable


def test_a_types_own_knob_ranks_first_among_its_trials(space):
    # within the se trials, val_acc follows se.reduction only (elsewhere a constant): by_type finds it
    fn = define_by_run(space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(1))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_acc", "flops"])
    study.enqueue_trial({"attention": "se"})
    for _ in range(150):
        trial = study.ask()
        config = fn(trial)
        acc = 0.9 + (0.05 * math.log2(config["se.reduction"]) if config["attention"] == "se" else 0.0)
        study.tell(trial, [acc, 1e7 * config["backbone.width_mult"]])
    imp = study_importances(study, only="val_acc")
    assert list(imp.overall) == ["val_acc"]
    assert "se" in imp.by_type and next(iter(imp.by_type["se"]["val_acc"])) == "se.reduction"
    assert "importance.val_acc.se.reduction" in importance_metrics(imp)
    assert "importance.val_acc.se.stages" in importance_metrics(imp)


def test_early_stopped_and_infeasible_trials_are_left_out(space):
    imp = study_importances(planted_study(space, 40, stopped=5, infeasible=7), evaluator="mdi")
    assert imp.counts == {"completed": 40, "early_stopped": 5, "infeasible": 7, "failed": 0, "running": 0}
    assert imp.ranking("val_acc")[0] == "train.lr"  # the infeasible placeholders (val_acc 0) would swamp it


def test_few_trials_are_reported_as_ranks_not_numbers(space):
    imp = study_importances(planted_study(space, 6), evaluator="mdi")
    assert not imp.reliable and "only 6 trial(s)" in imp.warnings[0]
    text = format_importances(imp)
    assert "UNRELIABLE, ranks only" in text and "#1" in text
    assert f"{imp.overall['val_acc']['train.lr']:.3f}" not in text


def test_most_trials_stopped_early_is_reported(space):
    imp = study_importances(planted_study(space, 30, stopped=40), evaluator="mdi")
    assert not imp.reliable
    assert any("40 of 70 finished trials stopped early" in w for w in imp.warnings)
    reliable = study_importances(planted_study(space, 30, stopped=10), evaluator="mdi")
    assert reliable.reliable, reliable.warnings
    whole = format_importances(reliable).split("Each attention type")[0]
    assert f"{reliable.overall['val_acc']['train.lr']:.3f}" in whole and "#1" not in whole


def test_no_completed_trial_and_unknown_names(space):
    imp = study_importances(planted_study(space, 0, stopped=3))
    assert not imp.overall and "no trial trained the full budget" in imp.warnings[0]
    with pytest.raises(ValueError, match="valid: fanova, ped-anova, mdi"):
        study_importances(planted_study(space, 3), evaluator="shap")
    with pytest.raises(ValueError, match="not one of the study's: val_acc, flops"):
        study_importances(planted_study(space, 3), only="latency_ms")
    assert EVALUATORS == ("fanova", "ped-anova", "mdi")


def test_plots_are_pngs(space, tmp_path):
    study = planted_study(space, 30, stopped=3, infeasible=2)
    imp = study_importances(study, evaluator="mdi")
    written = write_plots(study, imp, tmp_path, title="planted")
    assert set(written) == {"param_importances.png", "parallel_coordinate_val_acc.png",
                            "parallel_coordinate_flops.png", "hypervolume_trials.png", "hypervolume_time.png"}
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_importances_and_plots_on_the_parent_run(space, tmp_path):
    import matplotlib.image
    from mlflow import MlflowClient

    from attnsearch import tracking
    from attnsearch.contract import TAG_IMPORTANCE_RELIABLE, TAG_NOTE
    from attnsearch.importance import record_importances
    from attnsearch.pareto import select_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = tracking.start_study(uri, "planted", "planted-1", "name: planted\n", {}, False,
                                  objectives={"val_acc": "max", "flops": "min"}, max_t=2)
    client = MlflowClient(uri)
    # a front's section written first (as the study's end does): the importances add theirs beside it
    client.set_tag(parent, "mlflow.note.content", "**Pareto front** of study `planted-1`")
    study = select_study(client, "planted", "planted-1")
    imp = record_importances(client, study, planted_study(space, 40, stopped=4), evaluator="mdi")

    run = client.get_run(parent)
    assert run.data.metrics["importance.val_acc.train.lr"] == imp.overall["val_acc"]["train.lr"]
    assert max(imp.overall["flops"], key=imp.overall["flops"].get) == "backbone.width_mult"
    assert run.data.tags[TAG_IMPORTANCE_RELIABLE] == "true"
    plots = sorted(a.path for a in client.list_artifacts(parent, "plots"))
    assert plots == ["plots/hypervolume_time.png", "plots/hypervolume_trials.png",
                     "plots/parallel_coordinate_flops.png", "plots/parallel_coordinate_val_acc.png",
                     "plots/param_importances.png"]
    for path in plots:  # each opens as a PNG image
        image = matplotlib.image.imread(client.download_artifacts(parent, path, str(tmp_path)))
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert [a.path for a in client.list_artifacts(parent, "importance")] == ["importance/importance.csv"]
    note = run.data.tags[TAG_NOTE]
    assert note.startswith("**Pareto front** of study `planted-1`")  # the front's section is kept
    assert "**Parameter importances**" in note and "| train.lr |" in note
    assert f"get-artifact?path=plots/param_importances.png&run_uuid={parent}" in note
    # recording the same again writes no metric point twice
    study = select_study(client, "planted", "planted-1")
    record_importances(client, study, planted_study(space, 40, stopped=4), evaluator="mdi")
    assert len(client.get_metric_history(parent, "importance.val_acc.train.lr")) == 1
