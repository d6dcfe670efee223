"""Search-space validation, the Optuna define-by-run function, materialize and the static checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from attnsearch.config import ConfigError, load_job
from attnsearch.models import check_attention_placement
from attnsearch.space import (
    check_space,
    define_by_run,
    feasible,
    load_space,
    materialize,
    parse_space,
    space_to_dict,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """\
attention:
  type: [none, se, sa, nam, eca, bam]
  stages: [[1, 2, 3], [2, 3], [3]]
  blocks: [all, last]
  position: [default]
  knobs:
    se: {reduction: [4, 8, 16]}
    sa: {groups: [2, 4, 8]}
    nam: {penalty: {low: 1.0e-4, high: 1.0e-2, log: true}, spatial: false}
    eca: {kernel_size: [null, 3, 5]}
    bam: {reduction: {low: 2, high: 16}, dilation: 2}
train:
  lr: {low: 0.01, high: 0.3, log: true}
  weight_decay: {low: 1.0e-5, high: 1.0e-3}
  label_smoothing: [0.0, 0.1]
  warmup_epochs: 1
"""

JOB = """\
name: spacetest
backbone: {name: resnet20}
data: {dataset: digits}
train: {epochs: 4}
search: {space: space.yaml}
"""


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "job.yaml").write_text(JOB)
    return load_job(tmp_path / "job.yaml")


def space_error(tmp_path: Path, space_text: str, backbone: str = "resnet20") -> str:
    (tmp_path / "bad_space.yaml").write_text(textwrap.dedent(space_text))
    (tmp_path / "bad_job.yaml").write_text(JOB.replace("space.yaml", "bad_space.yaml").replace("resnet20", backbone))
    with pytest.raises(ConfigError) as info:
        job = load_job(tmp_path / "bad_job.yaml")
        check_space(job, load_space(job))
    return str(info.value)


def run_study(space, sampler, n: int) -> list[tuple[dict, dict]]:
    """(returned dict, optuna trial.params) for n trials of a 2-objective study with a dummy objective."""
    fn = define_by_run(space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    out = []
    for i in range(n):
        trial = study.ask()
        config = fn(trial)
        out.append((config, dict(trial.params)))
        study.tell(trial, [float(len(config)) / (i + 1), float(config.get("train.lr", 0))])
    return out


def check_trial(space, config: dict, params: dict) -> None:
    att = config["attention"]
    assert att in space.types.values()
    # knobs appear only for the chosen type, and the returned dict covers every suggested param
    assert set(params) <= set(config)
    for key in config:
        if "." in key and not key.startswith("train."):
            assert key.split(".")[0] == att, (att, key)
    assert all("/" not in key for key in config)
    placement = {"stages", "blocks", "position"}
    if att == "none":
        assert not placement & set(config)
    else:
        assert config["stages"] in ("1,2,3", "2,3", "3") and config["blocks"] in ("all", "last")
        assert config["position"] == "default"  # constant, still present
        for knob, param in space.knobs.get(att, {}).items():
            name = f"{att}.{knob}"
            assert name in config, (name, config)
            assert param.contains(config[name]), (name, config[name])
    if att == "se":
        assert config["se.reduction"] in (4, 8, 16)
    if att == "sa":
        assert config["sa.groups"] in (2, 4, 8) and "se.reduction" not in config
    if att == "bam":
        assert isinstance(config["bam.reduction"], int) and 2 <= config["bam.reduction"] <= 16
        assert config["bam.dilation"] == 2 and "bam.dilation" not in params  # a constant is not sampled
    if att == "nam":
        assert 1e-4 <= config["nam.penalty"] <= 1e-2 and config["nam.spatial"] is False
    assert 0.01 <= config["train.lr"] <= 0.3 and 1e-5 <= config["train.weight_decay"] <= 1e-3
    assert config["train.label_smoothing"] in (0.0, 0.1) and config["train.warmup_epochs"] == 1


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_define_by_run_with_a_real_study(job, sampler):
    space = load_space(job)
    optuna_sampler = (optuna.samplers.RandomSampler(seed=0) if sampler == "random"
                      else optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=True))
    trials = run_study(space, optuna_sampler, 60)
    for config, params in trials:
        check_trial(space, config, params)
    chosen = {c["attention"] for c, _ in trials}
    assert len(chosen) >= 4, chosen
    # 'none' trials never carry a placement; 'se' trials never carry 'sa.groups'
    assert not any("sa.groups" in c for c, _ in trials if c["attention"] == "se")


def test_define_by_run_pickles(job):
    # Ray's OptunaSearch.save pickles its __dict__ (space included) when it checkpoints the searcher
    import pickle

    fn = pickle.loads(pickle.dumps(define_by_run(load_space(job))))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert "attention" in fn(trial)


def test_ray_optuna_search_uses_the_flat_names(job, tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=define_by_run(load_space(job)), metric=["val_acc", "flops"], mode=["max", "min"],
                            sampler=optuna.samplers.RandomSampler(seed=1))
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    for config in configs:
        assert "attention" in config and "train.lr" in config and "train.warmup_epochs" in config
        assert materialize(job, config).train.lr == config["train.lr"]
    searcher.save(str(tmp_path / "searcher.pkl"))  # what Ray does when it checkpoints the experiment


def test_materialize_round_trip(job):
    params = {"attention": "sa", "stages": "2,3", "blocks": "last", "position": "default", "sa.groups": 4,
              "train.lr": 0.05, "train.weight_decay": 1e-4, "train.label_smoothing": 0.1,
              "train.warmup_epochs": 1}
    s = materialize(job, params)
    assert s.attention == {"type": "sa", "stages": [2, 3], "blocks": "last", "position": "default", "groups": 4}
    assert s.train.lr == 0.05 and s.train.weight_decay == 1e-4 and s.train.label_smoothing == 0.1
    assert s.train.epochs == job.train.epochs and s.train.momentum == job.train.momentum
    assert s.nam_penalty == 0.0
    assert check_attention_placement("resnet20", s.attention, input_size=16)

    nam = materialize(job, {**params, "attention": "nam", "nam.penalty": 3e-3, "stages": "3"})
    assert nam.nam_penalty == 3e-3
    assert nam.attention == {"type": "nam", "stages": [3], "blocks": "last", "position": "default",
                             "spatial": False}  # penalty is a training knob; the constant comes from the space
    assert materialize(job, {**params, "attention": "none"}).attention is None


def test_materialize_accepts_params_read_back_as_strings(job):
    # MLflow returns params as strings
    params = {"attention": "se", "stages": "1,2,3", "blocks": "all", "position": "default", "se.reduction": "8",
              "train.lr": "0.1", "train.weight_decay": "0.0001", "train.label_smoothing": "0.0",
              "train.warmup_epochs": "1"}
    s = materialize(job, params)
    assert s.attention["reduction"] == 8 and s.train.lr == 0.1 and s.train.weight_decay == 1e-4


def test_materialize_rejects_out_of_space_values(job):
    with pytest.raises(ValueError, match="not in the search space"):
        materialize(job, {"attention": "cbam"})
    with pytest.raises(ValueError, match="train.lr"):
        materialize(job, {"attention": "none", "train.weight_decay": 1e-4, "train.label_smoothing": 0.0})


def test_feasible_sa_groups_vs_stage_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = "attention: {type: [sa], stages: [[1, 2, 3], [3]], knobs: {sa: {groups: [4, 16]}}}"
    (tmp_path / "s.yaml").write_text(space)
    (tmp_path / "j.yaml").write_text(JOB.replace("space.yaml", "s.yaml"))
    job = load_job(tmp_path / "j.yaml")
    check_space(job, load_space(job))  # G=16 fits stage 3 (64 channels), so the space is fine as a whole
    base = {"attention": "sa", "blocks": "all", "position": "default"}
    assert feasible(job, {**base, "stages": "3", "sa.groups": 16}) is None
    assert feasible(job, {**base, "stages": "1,2,3", "sa.groups": 4}) is None
    reason = feasible(job, {**base, "stages": "1,2,3", "sa.groups": 16})
    assert reason and "groups" in reason and "16" in reason


def test_check_space_names_the_knob_and_channels(tmp_path):
    msg = space_error(tmp_path, "attention: {type: [se, sa], stages: [[1, 2, 3], [3]], knobs: {sa: {groups: [2, 64]}}}")
    assert "bad_space.yaml: attention.knobs.sa.groups:" in msg
    assert "sa.groups=64" in msg and "[16, 32, 64]" in msg
    assert "sa.groups=2" not in msg


def test_subsets_and_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("attention: {type: [none, se], stages: subsets}\n")
    (tmp_path / "j.yaml").write_text(JOB.replace("space.yaml", "s.yaml"))
    job = load_job(tmp_path / "j.yaml")
    assert load_space(job).stages.values() == ["1", "2", "3", "1,2", "1,3", "2,3", "1,2,3"]
    (tmp_path / "s.yaml").write_text("attention: {type: se, stages: all}\n")
    # the baseline adds `none` to a space without it (search.baseline, default true)
    assert load_space(load_job(tmp_path / "j.yaml")).types.values() == ["none", "se"]
    job = load_job(tmp_path / "j.yaml", ["search.baseline=false"])
    assert load_space(job).types.is_const and load_space(job).types.value == "se"
    assert load_space(job).stages.is_const and load_space(job).stages.value == "1,2,3"
    config = define_by_run(load_space(job))(optuna.create_study().ask())
    assert config == {"attention": "se", "stages": "1,2,3", "blocks": "all", "position": "default"}


def test_inline_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_text = JOB.replace("search: {space: space.yaml}",
                           "search: {space: {attention: {type: [none, eca], knobs: {eca: {kernel_size: [3, 5]}}}}}")
    (tmp_path / "j.yaml").write_text(job_text)
    job = load_job(tmp_path / "j.yaml")
    assert load_space(job).knobs["eca"]["kernel_size"].choices == (3, 5)
    (tmp_path / "j.yaml").write_text(job_text.replace("kernel_size", "kernel"))
    with pytest.raises(ConfigError, match=r"j.yaml: search.space.attention.knobs.eca.kernel: .*has no knob 'kernel'"):
        load_space(load_job(tmp_path / "j.yaml"))


def test_space_to_dict_loads_back_unchanged(job):
    dumped = space_to_dict(load_space(job))
    yaml.safe_dump(dumped)  # plain types only
    again = parse_space(dumped, job, "dumped")
    assert [p for p in again.params()] == [p for p in load_space(job).params()]
    assert again.knobs == load_space(job).knobs and again.train == load_space(job).train


BAD_SPACES = {
    "wrong_type_knob": ("attention: {type: [se, nam], knobs: {nam: {groups: 2}}}",
                        "attention.knobs.nam.groups: attention type 'nam' has no knob 'groups'; its knobs are",
                        "'penalty'"),
    "unknown_type": ("attention: {type: [se, sx]}", "attention.type: unknown attention type 'sx'", "'sa'"),
    "unknown_knob_type": ("attention: {type: [se], knobs: {sx: {groups: 2}}}", "attention.knobs.sx",
                          "unknown attention type 'sx'"),
    "knobs_not_in_types": ("attention: {type: [se], knobs: {sa: {groups: [2]}}}", "attention.knobs.sa",
                           "not in attention.type"),
    "zero_r": ("attention: {type: [se], knobs: {se: {reduction: [0, 4]}}}", "attention.knobs.se.reduction",
               "se.reduction"),
    "negative_G": ("attention: {type: [sa], knobs: {sa: {groups: {low: -2, high: 8}}}}",
                   "attention.knobs.sa.groups", "sa.groups"),
    "zero_p": ("attention: {type: [nam], knobs: {nam: {penalty: 0}}}", "attention.knobs.nam.penalty", "> 0"),
    "negative_p_range": ("attention: {type: [nam], knobs: {nam: {penalty: {low: -1.0e-3, high: 1.0e-2}}}}",
                         "attention.knobs.nam.penalty", "> 0"),
    "float_range_int_knob": ("attention: {type: [se], knobs: {se: {reduction: {low: 2.5, high: 8}}}}",
                             "attention.knobs.se.reduction", "integer knob"),
    "range_on_bool": ("attention: {type: [nam], knobs: {nam: {spatial: {low: 0, high: 1}}}}",
                      "attention.knobs.nam.spatial", "list its values"),
    "bad_choice": ("attention: {type: [gc], knobs: {gc: {fusion: [add, concat]}}}", "attention.knobs.gc.fusion",
                   "concat"),
    "empty_types": ("attention: {type: []}", "attention.type: empty search space", "'se'"),
    "no_attention": ("train: {lr: 0.1}", "attention: empty search space", "attention.type"),
    "empty_file": ("# nothing here\n", "is empty", "bad_space.yaml"),
    "stage_range": ("attention: {type: [se], stages: [[1, 4]]}", "attention.stages[0]: stage 4 does not exist",
                    "[1, 2, 3]"),
    "flat_stages": ("attention: {type: [se], stages: [1, 2, 3]}", "attention.stages", "ambiguous",
                    "[[1], [2], [3]] to choose one stage"),
    "flat_one_stage": ("attention: {type: [se], stages: [3]}", "attention.stages", "write [[3]] for attention at "
                       "stage 3 only"),
    "flat_stage_range": ("attention: {type: [se], stages: [4]}", "attention.stages: stage 4 does not exist",
                         "[1, 2, 3]"),
    "position": ("attention: {type: [se], position: [default, top]}", "attention.position: unknown position 'top'",
                 "'residual_end'"),
    "blocks": ("attention: {type: [se], blocks: [every]}", "attention.blocks", "'first'"),
    "unknown_key": ("attention: {type: [se], knob: {}}", "attention.knob: unknown key 'knob'",
                    "did you mean 'knobs'"),
    "train_field": ("attention: {type: [se]}\ntrain: {weight_decy: [0.1, 0.2]}", "train.weight_decy",
                    "did you mean 'weight_decay'"),
    "train_epochs": ("attention: {type: [se]}\ntrain: {epochs: [5, 10]}", "train.epochs", "budget"),
    "train_value": ("attention: {type: [se]}\ntrain: {lr: {low: 0, high: 0.1}}", "train.lr", "greater than 0"),
    "log_low": ("attention: {type: [se]}\ntrain: {weight_decay: {low: 0, high: 0.1, log: true}}",
                "train.weight_decay", "`low > 0` must hold for `log=True`"),
    "range_order": ("attention: {type: [se]}\ntrain: {lr: {low: 0.3, high: 0.1}}", "train.lr",
                    "`low <= high` must hold, but got (low=0.3, high=0.1)"),
    "range_keys": ("attention: {type: [se]}\ntrain: {lr: {min: 0.1, high: 0.3}}", "train.lr.min",
                   "{low, high, log?, step?}"),
    "sa_channels": ("attention: {type: [sa], stages: [[1]], knobs: {sa: {groups: [16]}}}",
                    "attention.knobs.sa.groups", "16 channels"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_gives_one_message(tmp_path, case):
    text, *expected = BAD_SPACES[case]
    msg = space_error(tmp_path, text)
    assert "bad_space.yaml: " in msg, msg
    assert len(msg.splitlines()) == 1, msg
    for part in expected:
        assert part in msg, msg


def test_all_space_problems_reported_together(tmp_path):
    text = "attention: {type: [se, sa], position: [top], knobs: {se: {groups: 2}, sa: {groups: 0}}}"
    msg = space_error(tmp_path, text)
    lines = msg.splitlines()
    assert len(lines) == 3 and all(line.startswith(str(tmp_path / "bad_space.yaml")) for line in lines)


def test_load_space_is_cached_and_reflects_file_changes(job):
    import os

    first = load_space(job)
    assert load_space(job) is first
    path = Path(job.search.space)
    path.write_text(SPACE.replace("[none, se, sa, nam, eca, bam]", "[none, se, sa, nam, eca, bam, cbam]"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert "cbam" in load_space(job).types.values() and "cbam" not in first.types.values()


def test_materialized_trials_build_models(tmp_path, monkeypatch):
    """Every feasible trial of the quickstart-like space becomes a model that runs (the contract with models)."""
    import torch

    from attnsearch.attention import ATTENTION_TYPES
    from attnsearch.models import build_model

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    types = sorted(ATTENTION_TYPES)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"attention": {
        "type": types, "stages": "subsets", "blocks": ["all", "last"],
        "knobs": {"sa": {"groups": [1, 2, 4, 8]}, "nam": {"penalty": {"low": 1e-5, "high": 1e-3, "log": True},
                                                          "spatial": [False, True]}}}}))
    (tmp_path / "j.yaml").write_text(JOB.replace("space.yaml", "s.yaml"))
    job = load_job(tmp_path / "j.yaml")
    check_space(job, load_space(job))
    fn = define_by_run(load_space(job))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    built = set()
    for _i in range(40):
        trial = study.ask()
        config = fn(trial)
        study.tell(trial, 0.0)
        assert feasible(job, config) is None, config
        settings = materialize(job, config)
        net = build_model("resnet20", num_classes=10, attention=settings.attention, input_size=16)
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
        built.add(config["attention"])
    assert len(built) >= 8, built
