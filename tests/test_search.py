"""End to end through the real Ray Tune, Optuna, ASHA and MLflow path, on tiny data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from optuna.trial import TrialState  # noqa: E402

from attnsearch.config import load_job  # noqa: E402
from attnsearch.search import existing_studies, run_study, trial_state  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_job(tmp_path: Path, *, num_samples: int, extra: str = "", space: str | None = None) -> Path:
    space = space or textwrap.dedent(
        """\
        attention:
          type: [none, se]
          stages: [[3]]
          position: [default]
          knobs:
            se: {reduction: [4]}
        train:
          lr: [1.0e-6, 0.2]
        """
    )
    (tmp_path / "space.yaml").write_text(space)
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""\
            name: e2e
            backbone: {{name: resnet20}}
            data: {{dataset: digits, image_size: 16, batch_size: 128}}
            train: {{epochs: 3, lr: 0.1, threads: 1}}
            search:
              space: space.yaml
              sampler: random
              num_samples: {num_samples}
              max_concurrent: 1
              seed: 10  # random order: none@0.2 first, later none@1e-6 (stopped by ASHA) and se (infeasible)
            scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
            resources: {{cpu: 1}}
            tracking: {{uri: sqlite:///{tmp_path}/mlflow.db}}
            ray: {{storage_path: {tmp_path}/ray_results, max_failures: 0}}
            """
        )
        + extra
    )
    return job


def child_runs(job):
    client = mlflow.MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.tracking.experiment or job.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_trial_state_rule():
    assert trial_state({"epoch": 3, "val_acc": 0.5}, max_t=3) == "completed"
    assert trial_state({"epoch": 1, "val_acc": 0.5}, max_t=3) == "early_stopped"
    assert trial_state({"epoch": 0, "attnsearch_state": "infeasible"}, max_t=3) == "infeasible"
    assert trial_state({"epoch": 2, "attnsearch_state": "failed"}, max_t=3) == "failed"
    assert trial_state({"epoch": 3}, max_t=3, errored=True) == "failed"


def test_search_states_optuna_mlflow_and_resume(tmp_path, local_ray):
    from attnsearch.flops import count
    from attnsearch.models import build_model

    plain = count(build_model("resnet20", num_classes=10, input_size=16), input_size=(1, 3, 16, 16))["params"]
    # Any SE model is over this budget: SE trials must be infeasible and never trained.
    path = write_job(tmp_path, num_samples=8, extra=f"constraints: {{max_params: {plain}}}\n")
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
        assert t.user_attrs["attnsearch_infeasible"] > 0
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

    # Resuming a finished study re-runs nothing and duplicates no run.
    assert existing_studies(job) == [outcome.study_id]
    resumed = run_study(job, resume=True)
    assert resumed.study_id == outcome.study_id
    assert resumed.progress.states == {}
    parents, children = child_runs(job)
    assert len(parents) == 1 and len(children) == 8
    ids = [c.data.tags["attnsearch.trial_id"] for c in children]
    assert len(ids) == len(set(ids))


def test_resource_check_refuses_missing_gpus_unless_autoscaling(monkeypatch, tmp_path):
    import ray as ray_module

    from attnsearch.config import ConfigError
    from attnsearch.search import check_cluster_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray_module, "nodes", lambda: nodes)
    job = load_job(write_job(tmp_path, num_samples=1), overrides=["resources.gpu=1"])
    with pytest.raises(ConfigError, match=r"1 GPU.*node 0: 2 CPU, 0 GPU.*ray.autoscaling"):
        check_cluster_resources(job)
    check_cluster_resources(load_job(write_job(tmp_path, num_samples=1), overrides=["resources.gpu=1",
                                                                                  "ray.autoscaling=true"]))
    nodes.append({"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}})
    check_cluster_resources(job)
