"""End to end through the real Ray Tune, Optuna, ASHA and MLflow path, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from _helpers import assert_optuna_record_matches_mlflow, write_job  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from attnsearch.config import ConfigError, load_job  # noqa: E402
from attnsearch.contract import REASON_KEY, STATE_KEY, TAG_JOB, result_state, split_study_id  # noqa: E402
from attnsearch.search import (  # noqa: E402
    IDENTITY_FILE,
    INFEASIBLE_CONSTRAINT,
    StudySearcher,
    check_cluster_resources,
    existing_studies,
    make_sampler,
    run_study,
)
from attnsearch.search._run_study import _restored_run_config  # noqa: E402
from attnsearch.space import job_identity  # noqa: E402

SPACE = """\
attention:
  type: [none, se]
  stages: [[3]]
  position: [default]
  knobs:
    se: {reduction: [4]}
train:
  lr: [1.0e-6, 0.2]
"""


def e2e_job(tmp_path: Path, *, num_samples: int, **sections) -> Path:
    """A tiny study; ``sections`` replace these defaults (seed 10, random order without the baseline: none@0.2
    first, later none@1e-6 (stopped by ASHA) and se (infeasible))."""
    defaults = dict(
        name="e2e", data={"image_size": 16, "batch_size": 128}, train={"epochs": 3},
        search={"num_samples": num_samples, "seed": 10, "baseline": False},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        ray={"storage_path": f"{tmp_path}/ray_results", "max_failures": 0})
    return write_job(tmp_path, SPACE, **{**defaults, **sections})


def child_runs(job):
    client = mlflow.MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_trial_state_rule():
    assert result_state({"epoch": 3, "val_acc": 0.5}, max_t=3) == "completed"
    assert result_state({"epoch": 1, "val_acc": 0.5}, max_t=3) == "early_stopped"
    assert result_state({"epoch": 0, "attnsearch_state": "infeasible"}, max_t=3) == "infeasible"
    assert result_state({"epoch": 2, "attnsearch_state": "failed"}, max_t=3) == "failed"
    assert result_state({"epoch": 3}, max_t=3, errored=True) == "failed"


def _attention_space(trial):
    trial.suggest_categorical("attention", ["none", "se"])


def test_searcher_tells_optuna_what_each_trial_was():
    """Without Ray running: each end of a trial reaches Optuna as what it was, through OptunaSearch's own tell."""
    import pickle

    searcher = StudySearcher(space=_attention_space, metric=["val_acc", "flops"], mode=["max", "min"],
                             sampler=make_sampler("nsga2", seed=0), max_t=3)
    for trial_id in "abcdef":
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_complete("a", {"epoch": 3, "val_acc": 0.9, "flops": 100})
    searcher.on_trial_complete("b", {"epoch": 1, "val_acc": 0.95, "flops": 100})  # stopped by ASHA at epoch 1
    searcher.on_trial_complete("c", {"epoch": 0, "flops": 500, STATE_KEY: "infeasible",
                                     REASON_KEY: "flops 500 > max_flops 200"})
    searcher.on_trial_complete("d", {"epoch": 2, "val_acc": 0.1, "flops": 100, STATE_KEY: "failed",
                                     REASON_KEY: "loss is nan"})
    searcher.on_trial_complete("e", None, error=True)  # a Ray error: no result
    searcher.on_trial_complete("a", {"epoch": 3, "val_acc": 0.1, "flops": 1})  # told twice: ignored
    searcher.on_trial_complete("nope", {"epoch": 3, "val_acc": 0.1, "flops": 1})  # not this searcher's: ignored

    a, b, c, d, e, f = searcher._ot_study.get_trials(deepcopy=False)
    assert (a.state, a.values, a.user_attrs[STATE_KEY]) == (TrialState.COMPLETE, [0.9, 100.0], "completed")
    assert a.constraints == {INFEASIBLE_CONSTRAINT: 0.0}
    # the partly trained accuracy never enters the study: pruned, no values
    assert (b.state, b.values, b.user_attrs[STATE_KEY]) == (TrialState.PRUNED, None, "early_stopped")
    # infeasible: complete with the worst accuracy and its measured FLOPs, and the sampler's constraint violated
    assert (c.state, c.values, c.user_attrs[STATE_KEY]) == (TrialState.COMPLETE, [0.0, 500.0], "infeasible")
    # what Optuna's constrained samplers read (Trial.set_constraint: > 0 is infeasible)
    assert c.constraints == {INFEASIBLE_CONSTRAINT: 1.0} and c.user_attrs[REASON_KEY] == "flops 500 > max_flops 200"
    assert (d.state, d.values, d.user_attrs[STATE_KEY]) == (TrialState.FAIL, None, "failed")
    assert (e.state, e.user_attrs[STATE_KEY]) == (TrialState.FAIL, "failed")
    assert f.state == TrialState.RUNNING and STATE_KEY not in f.user_attrs
    # Ray pickles the searcher (tuner.pkl, searcher state) and restores it on --resume
    restored = pickle.loads(pickle.dumps(searcher))
    assert type(restored) is StudySearcher and restored._max_t == 3
    restored.on_trial_complete("f", {"epoch": 3, "val_acc": 0.5, "flops": 7})
    assert restored._ot_study.get_trials(deepcopy=False)[-1].values == [0.5, 7.0]


def _seen_sampler():
    """A RandomSampler that records, at each proposal, the states and values of the study it was handed."""
    import optuna

    class Seen(optuna.samplers.RandomSampler):
        seen: list = []

        def sample_independent(self, study, trial, name, distribution):
            self.seen.append([(t.state, t.values) for t in study.get_trials(deepcopy=False)])
            return super().sample_independent(study, trial, name, distribution)

    return Seen(seed=0)


@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["maximize"]])
def test_the_sampler_learns_from_finished_trials_only_in_a_multi_objective_study(directions):
    """Optuna's TPE ranks PRUNED trials by intermediate values a multi-objective trial cannot report: there the
    sampler sees only the COMPLETE trials (full budget, or infeasible); the study keeps every state it was told."""
    import optuna

    from attnsearch.search import FinishedTrialsSampler

    seen = _seen_sampler()
    study = optuna.create_study(directions=directions, sampler=FinishedTrialsSampler(seen))
    values = [0.9, 100.0][: len(directions)]
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    last = seen.seen[-1]
    if len(directions) > 1:
        assert last == [(TrialState.COMPLETE, values)] * 2
    else:  # single-objective: the study itself (its pruned trials carry intermediate values)
        assert [s for s, _ in last] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    assert [t.state for t in study.get_trials(deepcopy=False)].count(TrialState.PRUNED) == 2


def test_the_tpe_sampler_is_tpe_behind_the_finished_trials_view():
    import pickle

    import optuna

    from attnsearch.search import FinishedTrialsSampler

    sampler = make_sampler("tpe", seed=3)
    assert type(sampler) is FinishedTrialsSampler and type(sampler.sampler) is optuna.samplers.TPESampler
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(14):  # past TPE's random start-up: its model proposes (the constant liar would raise here)
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 3 == 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [x, x * x])
    study.sampler = pickle.loads(pickle.dumps(sampler))  # Ray pickles the searcher, its sampler in use with it
    trial = study.ask()
    study.tell(trial, [trial.suggest_float("x", 0, 1), 0.5])
    assert [t.state for t in study.trials].count(TrialState.PRUNED) == 4 and len(study.trials) == 15


def test_the_gp_sampler_models_the_shared_knobs_and_draws_a_types_own_knobs_quietly(caplog):
    import logging

    import optuna

    sampler = make_sampler("gp", seed=0)
    assert type(sampler) is optuna.samplers.GPSampler
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    optuna.logging.enable_propagation()  # Optuna's logger keeps its records to itself otherwise
    try:
        with caplog.at_level(logging.WARNING, logger="optuna"):
            for _ in range(14):  # past its random start-up (10 trials): the GP proposes the shared knob
                trial = study.ask()
                lr = trial.suggest_float("train.lr", 1e-3, 1e-1, log=True)
                kind = trial.suggest_categorical("attention", ["se", "eca"])
                knob = trial.suggest_int(f"{kind}.knob", 1, 8)  # exists only in that type's trials
                study.tell(trial, [lr * knob, knob])
    finally:
        optuna.logging.disable_propagation()
    assert len(study.trials) == 14 and all(t.state is TrialState.COMPLETE for t in study.trials)
    assert not [r for r in caplog.records if "sampled independently" in r.getMessage()], caplog.text


def test_the_searcher_marks_the_enqueued_baseline_and_never_a_sampled_twin(tmp_path):
    from attnsearch.contract import BASELINE_KEY
    from attnsearch.space import baseline_point, define_by_run, load_space

    job = load_job(write_job(tmp_path, "attention: {type: [none, se]}\ntrain: {lr: [0.1, 0.2]}\n",
                             train={"lr": 0.1}))
    space = load_space(job)
    baseline = baseline_point(job, space)
    searcher = StudySearcher(space=define_by_run(space), metric=["val_acc", "flops"], mode=["max", "min"],
                             sampler=make_sampler("random", seed=0), max_t=3, points_to_evaluate=[baseline])
    configs = {trial_id: searcher.suggest(trial_id) for trial_id in map(str, range(12))}
    assert configs["0"][BASELINE_KEY] is True and {k: configs["0"][k] for k in baseline} == baseline
    assert [t for t, c in configs.items() if c.get(BASELINE_KEY)] == ["0"]
    twins = [t for t, c in configs.items() if t != "0" and all(c.get(k) == v for k, v in baseline.items())]
    assert twins, "the sampler must have drawn the baseline's values again for this test to mean anything"
    assert searcher.suggest("0")[BASELINE_KEY] is True  # asked again: still the baseline


def _noop(config):
    pass


class _Remember(ray.tune.Callback):
    def __init__(self, name: str):
        self.name = name


def test_restored_tuner_takes_this_drivers_callbacks(tmp_path):
    """Canary for the one private access of --resume: fails when Ray renames what it reaches."""
    from ray import tune

    tune.Tuner(_noop, run_config=tune.RunConfig(name="canary", storage_path=str(tmp_path),
                                                 callbacks=[_Remember("previous driver")]))
    assert tune.Tuner.can_restore(tmp_path / "canary")  # Tuner() writes tuner.pkl: nothing has to run
    restored = tune.Tuner.restore(str(tmp_path / "canary"), trainable=_noop)
    assert restored._is_ray_client is False  # what tells Ray Client from a renamed attribute
    config = _restored_run_config(restored)
    assert isinstance(config, tune.RunConfig) and config.name == "canary"
    assert [c.name for c in config.callbacks] == ["previous driver"]  # the pickled ones: to be replaced
    config.callbacks = [_Remember("this driver")]
    assert [c.name for c in _restored_run_config(restored).callbacks] == ["this driver"]


def test_resume_over_ray_client_is_refused_with_where_to_resume():
    class ClientTuner:  # what Tuner.restore gives under Ray Client: a remote tuner, no local one
        _is_ray_client = True
        _remote_tuner = object()

    with pytest.raises(ConfigError, match=r"Ray Client.*ray://.*attnsearch run JOB --resume.*ray.address: auto"
                                          r".*attnsearch submit"):
        _restored_run_config(ClientTuner())
    with pytest.raises(RuntimeError, match="_local_tuner"):  # neither: a Ray this code does not know
        _restored_run_config(object())


@pytest.mark.slow  # starts Ray and runs 8 trials, then resumes
def test_search_states_optuna_mlflow_and_resume(tmp_path, local_ray):
    from attnsearch.flops import count
    from attnsearch.models import build_model

    plain = count(build_model("resnet20", num_classes=10, input_size=16), input_size=(1, 3, 16, 16))["params"]
    # Any SE model is over this budget: SE trials must be infeasible and never trained.
    path = e2e_job(tmp_path, num_samples=8, constraints={"max_params": plain})
    job = load_job(path)
    outcome = run_study(job)

    states = outcome.progress.states
    assert len(states) == 8
    trials = outcome.searcher._ot_study.get_trials(deepcopy=False)
    by_state = {}
    for t in trials:
        by_state.setdefault(t.user_attrs.get("attnsearch_state"), []).append(t)
    assert set(by_state) >= {"completed", "early_stopped", "infeasible"}, by_state.keys()
    for t in by_state["infeasible"]:
        assert t.params["attention"] == "se"
        assert t.constraints[INFEASIBLE_CONSTRAINT] > 0
    for t in by_state["completed"] + by_state["early_stopped"]:
        assert t.params["attention"] == "none"
    # ASHA-stopped trials are pruned in Optuna, never completed with a partly trained accuracy.
    completed_numbers = {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert all(t.state == TrialState.PRUNED for t in by_state["early_stopped"])
    assert not completed_numbers & {t.number for t in by_state["early_stopped"]}

    parents, children = child_runs(job)
    assert len(parents) == 1 and len(children) == 8
    tags = [c.data.tags["attnsearch.state"] for c in children]
    assert sorted(tags) == sorted(states.values())
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert c.data.params["attention"] in ("none", "se")
        if c.data.tags["attnsearch.state"] == "completed":
            assert c.data.metrics["epoch"] == 3 and 0.0 <= c.data.metrics["val_acc"] <= 1.0
            assert c.data.tags["attnsearch.budget"] == "3"
    # the study's Optuna record (a journal file in its Ray folder) holds the same trials, once each
    assert Path(outcome.optuna_storage) == Path(outcome.experiment_path) / "optuna.journal"
    assert sum(assert_optuna_record_matches_mlflow(job, outcome.study_id).values()) == 8

    # The study's folder and parent run record the job they belong to; its id names the job exactly.
    assert split_study_id(outcome.study_id)[0] == job.name
    identity = json.loads((Path(outcome.experiment_path) / IDENTITY_FILE).read_text())
    assert identity == {"study": outcome.study_id, "job": job_identity(job)}
    assert json.loads(parents[0].data.tags[TAG_JOB]) == job_identity(job)

    # Resuming a finished study re-runs nothing and duplicates no run.
    assert existing_studies(job) == [outcome.study_id]
    resumed = run_study(job, resume=True)
    assert resumed.study_id == outcome.study_id
    assert resumed.progress.states == {}
    assert resumed.searcher is None  # Ray restores the searcher inside the Tuner
    parents, children = child_runs(job)
    assert len(parents) == 1 and len(children) == 8
    ids = [c.data.tags["attnsearch.trial_id"] for c in children]
    assert len(ids) == len(set(ids))
    assert sum(assert_optuna_record_matches_mlflow(job, outcome.study_id).values()) == 8


@pytest.mark.slow  # starts Ray: a study's baseline mark, its definition as params and the trials' datasets
def test_a_study_marks_its_baseline_logs_its_definition_and_each_trials_dataset(tmp_path, local_ray):
    from attnsearch.contract import TAG_BASELINE
    from attnsearch.search import study_params
    from attnsearch.space import baseline_point, load_space
    from attnsearch.tracking import dataset_inputs

    path = e2e_job(tmp_path, num_samples=4, search={"num_samples": 4, "seed": 3, "baseline": True,
                                                    "max_concurrent": 2}, train={"epochs": 1},
                   scheduler={"type": "none"})
    job = load_job(path)
    run_study(job)
    parents, children = child_runs(job)
    marked = [c for c in children if c.data.tags.get(TAG_BASELINE) == "true"]
    assert len(marked) == 1 and "attnsearch_baseline" not in marked[0].data.params
    baseline = baseline_point(job, load_space(job))
    assert {k: marked[0].data.params[k] for k in baseline} == {k: str(v) for k, v in baseline.items()}
    expected = study_params(job, load_space(job))
    assert parents[0].data.params == expected
    assert expected["search.space"] == "space.yaml" and expected["scheduler.type"] == "none"
    want = sorted((d["name"], d["digest"], d["context"]) for d in dataset_inputs(job.data))
    for c in children:  # what the runs table's Dataset column shows
        got = sorted((i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
                     for i in c.inputs.dataset_inputs)
        assert got == want, c.info.run_name
    # a resume with an edited job keeps the params the study started with (MLflow params never change)
    run_study(load_job(path, overrides=["search.num_samples=5"]), resume=True)
    parents, children = child_runs(job)
    assert parents[0].data.params["search.num_samples"] == "4"
    assert all(len(c.inputs.dataset_inputs) == 2 for c in children)


def test_resource_check_refuses_missing_gpus_unless_autoscaling(monkeypatch, tmp_path):
    import ray as ray_module

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray_module, "nodes", lambda: nodes)
    job = load_job(e2e_job(tmp_path, num_samples=1), overrides=["resources.gpu=1"])
    with pytest.raises(ConfigError, match=r"1 GPU.*node 0: 2 CPU, 0 GPU.*ray.autoscaling"):
        check_cluster_resources(job)
    check_cluster_resources(load_job(e2e_job(tmp_path, num_samples=1), overrides=["resources.gpu=1",
                                                                                  "ray.autoscaling=true"]))
    nodes.append({"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}})
    check_cluster_resources(job)


@pytest.mark.slow  # starts Ray: MOASHA through the real Ray Tune, Optuna and MLflow path
def test_moasha_study_stops_on_every_objective(tmp_path, local_ray):
    path = e2e_job(tmp_path, num_samples=6, scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2,
                                                       "rung_metric": "objectives"},
                   search={"num_samples": 6, "seed": 10, "baseline": True})
    job = load_job(path)
    outcome = run_study(job)
    assert len(outcome.progress.states) == 6
    first = outcome.searcher._ot_study.get_trials(deepcopy=False)[0]  # the baseline: enqueued first, never stopped
    assert first.params["attention"] == "none" and first.user_attrs["attnsearch_state"] == "completed"
    trials = {t.user_attrs["attnsearch_state"]: t for t in outcome.searcher._ot_study.get_trials(deepcopy=False)}
    assert "early_stopped" in trials, "six trials, half kept per rung: MOASHA must have stopped one"
    assert trials["early_stopped"].state == TrialState.PRUNED
    parents, children = child_runs(job)
    assert len(parents) == 1 and len(children) == 6
    for c in children:
        state, budget = c.data.tags["attnsearch.state"], int(c.data.tags["attnsearch.budget"])
        if state == "early_stopped":  # stopped at a rung (epochs 1 and 2 with max_t 3, reduction factor 2)
            assert budget in (1, 2), budget
        elif state == "completed":
            assert budget == 3
    assert sorted(c.data.tags["attnsearch.state"] for c in children) == sorted(outcome.progress.states.values())


@pytest.mark.slow  # starts Ray: a study whose every trial diverges
def test_a_study_whose_every_trial_failed_exits_1(tmp_path, local_ray, capsys):
    from attnsearch import cli

    path = write_job(
        tmp_path, "attention: {type: [none]}\ntrain: {lr: [1.0e+30, 1.0e+31]}\n", name="doomed",
        data={"image_size": 16, "batch_size": 128}, train={"epochs": 2},
        search={"num_samples": 2, "seed": 0}, scheduler={"type": "none"},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        ray={"storage_path": f"{tmp_path}/ray_results", "max_failures": 0})
    assert cli.main(["run", str(path), "--no-pareto"]) == 1
    err = capsys.readouterr().err
    assert "every trial failed (2 of 2)" in err and "attnsearch.reason" in err
    _, children = child_runs(load_job(path))
    assert [c.data.tags["attnsearch.state"] for c in children] == ["failed", "failed"]
    assert all("loss is" in c.data.tags["attnsearch.reason"] for c in children)


@pytest.mark.slow  # starts Ray: a study that minimises the measured latency, MOASHA deciding at its rungs
def test_latency_objective_is_measured_by_every_trial_and_known_at_every_rung(tmp_path, local_ray):
    path = e2e_job(tmp_path, num_samples=6, scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2})
    job = load_job(path, overrides=["search.objectives={val_acc: max, latency_ms: min}"])
    outcome = run_study(job)
    assert len(outcome.progress.states) == 6
    trials = outcome.searcher._ot_study.get_trials(deepcopy=False)
    told = [t for t in trials if t.state == TrialState.COMPLETE]
    assert told and all(t.values[1] > 0 for t in told)  # Optuna got each completed trial's own latency
    assert any(t.user_attrs[STATE_KEY] == "early_stopped" for t in trials), "MOASHA must have stopped one"
    _, children = child_runs(job)
    client = mlflow.MlflowClient(job.tracking.uri)
    for c in children:
        state, budget = c.data.tags["attnsearch.state"], int(c.data.tags["attnsearch.budget"])
        assert state in ("completed", "early_stopped"), (state, c.data.tags.get("attnsearch.reason"))
        assert c.data.metrics["latency_ms"] > 0 and c.data.metrics["throughput"] > 0
        assert c.data.metrics["latency_load"] >= 0
        # measured before the first epoch and reported with every result: a trial stopped at the first rung
        # (epoch 1) was compared on it there
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "latency_ms")]
        assert sorted(steps) == list(range(1, budget + 1)), (state, steps)


def test_moasha_compares_the_measured_latency_at_the_first_rung():
    """Why trials measure latency before their first epoch: their results carry it at every rung, so MOASHA keeps
    a fast, slightly less accurate model there. Measured only after the last epoch, a rung would rank on
    accuracy alone and stop exactly that model."""
    from ray.tune.schedulers import TrialScheduler

    from attnsearch.search import MOASHAScheduler

    def rung(with_latency: bool) -> dict[str, str]:
        sched = MOASHAScheduler({"val_acc": "max", "latency_ms": "min"}, max_t=4, grace_period=1, reduction_factor=2)
        results = {"accurate": (0.9, 10.0), "slow": (0.8, 12.0), "fast": (0.85, 2.0)}
        return {
            trial: sched.decide(trial, {"epoch": 1, "val_acc": acc, **({"latency_ms": ms} if with_latency else {})})
            for trial, (acc, ms) in results.items()
        }

    assert rung(with_latency=True) == {"accurate": TrialScheduler.CONTINUE, "slow": TrialScheduler.STOP,
                                       "fast": TrialScheduler.CONTINUE}
    assert rung(with_latency=False)["fast"] == TrialScheduler.STOP
