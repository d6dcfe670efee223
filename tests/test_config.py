"""Job file schema, loading, overrides, path resolution and error messages (attnsearch.config)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from _helpers import BAD_JOBS, needs_fashion_mnist, with_sections

from attnsearch.config import NATIVE_IMAGE_SIZE, ConfigError, DataConfig, Job, TrainConfig, load_job
from attnsearch.space import load_space
from attnsearch.uris import resolve_tracking_uri

SPACE = """\
attention:
  type: [none, se, sa]
  stages: [[1, 2, 3], [3]]
  knobs:
    se: {reduction: [4, 8]}
    sa: {groups: [2, 4]}
train:
  lr: {low: 0.01, high: 0.3, log: true}
"""

JOB = """\
name: quick
backbone: {name: resnet20}
data: {dataset: digits}
train: {epochs: 4}
search: {space: space.yaml}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def jobdir(tmp_path, monkeypatch):
    """A job file and its space in tmp_path/jobs; the working directory is tmp_path/run (elsewhere)."""
    write(tmp_path / "jobs" / "space.yaml", SPACE)
    write(tmp_path / "jobs" / "job.yaml", JOB)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    return tmp_path


def load_error(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_space(load_job(path, overrides))  # the job, then its search space: what every command checks
    return str(info.value)


def test_good_job_loads_with_defaults(jobdir):
    job = load_job(jobdir / "jobs" / "job.yaml")
    assert job.name == "quick" and job.backbone.name == "resnet20"
    assert job.train.epochs == 4 and job.train.lr == 0.1 and job.train.optimizer == "sgd"
    assert job.data.batch_size == 128 and job.data.val_fraction == 0.2 and job.data.augment is True
    assert job.search.sampler == "random" and job.search.num_samples == 20
    # the first rung at 3 epochs (at most train.epochs), ranked by the training loss
    assert job.scheduler.grace_period is None and job.grace_period == 3 and job.scheduler.rung_metric == "train_loss"
    assert list(job.search.objectives.items()) == [("val_acc", "max"), ("flops", "min")]
    assert job.scheduler.type == "auto" and job.scheduler_type == "moasha" and job.max_t == 4  # two objectives
    assert job.resources.cpu == 1 and job.resources.gpu == 0
    assert job.constraints.max_flops is None and job.tracking.experiment is None
    # relative paths become absolute on the driver: the space next to the job file, storage and DB in the cwd
    assert job.search.space == str(jobdir / "jobs" / "space.yaml")
    assert job.ray.storage_path == str(jobdir / "run" / "ray_results")
    assert job.tracking.uri == f"sqlite:///{jobdir / 'run' / 'mlflow.db'}"
    assert load_space(job).types.values() == ["none", "se", "sa"]


def test_cwd_path_wins_over_job_dir(jobdir):
    write(jobdir / "run" / "space.yaml", "attention: {type: [none, se]}\n")
    job = load_job(jobdir / "jobs" / "job.yaml")
    assert job.search.space == str(jobdir / "run" / "space.yaml")
    assert load_space(job).types.values() == ["none", "se"]


def test_missing_data_root_resolves_against_cwd(jobdir):
    job = load_job(jobdir / "jobs" / "job.yaml", ["data.dataset=cifar10", "data.root=data/c10"])
    assert job.data.root == str(jobdir / "run" / "data" / "c10")
    (jobdir / "jobs" / "data" / "c10").mkdir(parents=True)
    job = load_job(jobdir / "jobs" / "job.yaml", ["data.dataset=cifar10", "data.root=data/c10"])
    assert job.data.root == str(jobdir / "jobs" / "data" / "c10")


def test_tracking_uri_resolution(tmp_path):
    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"


def test_to_yaml_round_trips(jobdir):
    job = load_job(jobdir / "jobs" / "job.yaml", ["train.lr=0.05"])
    again = Job.model_validate(yaml.safe_load(job.to_yaml()))
    assert again.job_dict() == job.job_dict()
    assert again.train.lr == 0.05


def test_yaml_floats_with_bare_exponent(jobdir):
    path = write(jobdir / "jobs" / "job.yaml", JOB.replace("train: {epochs: 4}", "train: {epochs: 4, lr: 1e-3}"))
    assert load_job(path).train.lr == pytest.approx(1e-3)


def test_overrides(jobdir):
    path = jobdir / "jobs" / "job.yaml"
    job = load_job(path, ["train.lr=0.05", "search.objectives={val_acc: max}", "resources.gpu=0.5"])
    assert job.train.lr == 0.05 and job.search.objectives == {"val_acc": "max"} and job.resources.gpu == 0.5
    # a key that is absent from the file but exists in the schema
    assert load_job(path, ["constraints.max_flops=1.0e9"]).constraints.max_flops == 1e9


def test_measured_latency_and_throughput_are_objectives(jobdir):
    path = jobdir / "jobs" / "job.yaml"
    job = load_job(path, ["search.objectives={val_acc: max, latency_ms: min, throughput: max}",
                          "scheduler.type=moasha"])
    assert job.search.objectives == {"val_acc": "max", "latency_ms": "min", "throughput": "max"}
    # measured, not per-epoch: alone they give ASHA nothing to compare, as FLOPs alone do
    assert load_job(path, ["search.objectives={latency_ms: min}", "scheduler.type=none"]).search.objectives == {
        "latency_ms": "min"}
    msg = load_error(path, ["search.objectives={latency_ms: min}"])
    assert "scheduler.type 'asha'" in msg and "val_acc" in msg
    # the load next to the figures is reported, not optimised
    msg = load_error(path, ["search.objectives={val_acc: max, latency_load: min}"])
    assert "search.objectives" in msg and "latency_load" in msg


def test_prefetch_factor(jobdir):
    path = jobdir / "jobs" / "job.yaml"
    assert load_job(path).data.prefetch_factor == 2
    assert load_job(path, ["data.prefetch_factor=4", "data.num_workers=2"]).data.prefetch_factor == 4
    assert "data.prefetch_factor" in load_error(path, ["data.prefetch_factor=0"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=0.05", ["--set train.lrr=0.05", "unknown key 'train.lrr'", "did you mean 'lr'", "'momentum'"]),
        ("trian.lr=1", ["unknown key 'trian'", "did you mean 'train'", "'scheduler'"]),
        ("train.lr.x=1", ["train.lr is a value, not a mapping"]),
        ("train.lr", ["expected dotted.key=value"]),
        ("train.lr=-1", ["job.yaml", "train.lr", "greater than 0", "got -1"]),
    ],
)
def test_bad_overrides(jobdir, override, expected):
    msg = load_error(jobdir / "jobs" / "job.yaml", [override])
    for part in expected:
        assert part in msg, msg


@pytest.mark.parametrize("case", sorted(case for case, row in BAD_JOBS.items() if row.at_load))
def test_bad_job_gives_one_message(jobdir, case):
    """The rows of tests/_helpers.BAD_JOBS refused when the job and its space are read (tests/test_bad_input.py
    runs every row through `attnsearch run`)."""
    row = BAD_JOBS[case]
    path = write(jobdir / "jobs" / f"{case}.yaml", with_sections(JOB, row.sections))
    if row.space is not None:
        write(jobdir / "jobs" / "space.yaml", row.space)
    msg = load_error(path, row.overrides)
    named = path if row.file == "job.yaml" else jobdir / "jobs" / "space.yaml"
    assert msg.startswith(str(named) + ": "), msg
    assert len(msg.splitlines()) == 1, msg
    for part in row.parts:
        assert part in msg, msg


def test_several_errors_in_one_message(jobdir):
    path = write(jobdir / "jobs" / "two.yaml", JOB.replace("train: {epochs: 4}", "train: {epochs: 0, lr: 0}"))
    lines = load_error(path).splitlines()
    assert len(lines) == 2
    assert any("train.epochs" in line for line in lines) and any("train.lr" in line for line in lines)
    assert all(line.startswith(str(path)) for line in lines)


def test_malformed_yaml_names_file_and_line(jobdir):
    path = write(jobdir / "jobs" / "broken.yaml", "name: q\nbackbone: {name: resnet20\nsearch: {space: x}\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}:3:") and "malformed YAML" in msg and "line 2" in msg


def test_duplicate_key_is_an_error(jobdir):
    path = write(jobdir / "jobs" / "dup.yaml", "name: a\nname: b\n" + JOB.split("\n", 1)[1])
    assert "duplicate key 'name'" in load_error(path)


def test_empty_and_non_mapping_files(jobdir):
    assert "empty" in load_error(write(jobdir / "jobs" / "empty.yaml", "# nothing\n"))
    assert "expected a mapping" in load_error(write(jobdir / "jobs" / "list.yaml", "- a\n- b\n"))
    assert "no such job file" in load_error(jobdir / "jobs" / "absent.yaml")


def test_train_config_standalone_validation():
    assert TrainConfig().schedule == "cosine"
    with pytest.raises(Exception, match="milestones"):
        TrainConfig(epochs=10, schedule="step")
    assert TrainConfig(epochs=10, schedule="step", milestones=[3, 6]).milestones == [3, 6]


def test_auto_scheduler_is_moasha_for_several_objectives_and_asha_for_one(jobdir):
    path = jobdir / "jobs" / "job.yaml"
    assert load_job(path, ["search.objectives={val_acc: max}"]).scheduler_type == "asha"
    assert load_job(path, ["search.objectives={val_acc: max, params: min}"]).scheduler_type == "moasha"
    assert load_job(path, ["scheduler.type=asha"]).scheduler_type == "asha"
    assert load_job(path, ["scheduler.type=none", "search.objectives={flops: min}"]).scheduler_type == "none"
    with pytest.raises(ConfigError, match="scheduler.type 'moasha' stops trials on a per-epoch metric"):
        load_job(path, ["search.objectives={flops: min, params: min}"])


def test_derived_values_have_one_home():
    job = Job.model_validate({"name": "j", "backbone": {"name": "resnet20"}, "search": {"space": "s.yaml"},
                              "train": {"epochs": 7}})
    assert job.experiment == "j" and job.max_t == 7
    named = job.model_copy(update={"tracking": job.tracking.model_copy(update={"experiment": "exp"})})
    assert named.experiment == "exp"
    assert DataConfig(dataset="fake").resolved_image_size == NATIVE_IMAGE_SIZE["fake"] == 32
    assert DataConfig(dataset="digits").resolved_image_size == 16
    assert DataConfig(dataset="digits", image_size=24).resolved_image_size == 24


def test_contract_objectives_check_and_is_number():
    from attnsearch.contract import DEFAULT_OBJECTIVES, check_objectives, is_number

    assert check_objectives(DEFAULT_OBJECTIVES) == {"val_acc": "max", "flops": "min"}
    with pytest.raises(ValueError, match="at least one metric"):
        check_objectives({})
    with pytest.raises(ValueError, match=r"'max' or 'min', got \{'flops': 'low'\}"):
        check_objectives({"val_acc": "max", "flops": "low"})
    assert is_number(3) and is_number(0.5) and is_number(float("nan"))
    assert not is_number(True) and not is_number("3") and not is_number(None)


SHIPPED_JOBS = [pytest.param(p, id=p.name, marks=[needs_fashion_mnist] if p.name == "fashion_mnist.yaml" else [])
                for p in sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED_JOBS)
def test_every_shipped_job_loads_with_its_space(path):
    job = load_job(path)
    space = load_space(job)
    assert space.type_names() and job.max_t >= job.grace_period
