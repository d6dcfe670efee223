"""``attnsearch prune`` end to end on a real (tiny) study: pruned models logged as child runs of a prune parent,
exported and loaded back with the same logits and accuracy; bad input refused with exit 2 and nothing logged."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch
import yaml
from _helpers import STUDY, evaluate
from mlflow import MlflowClient

pytest.importorskip("torch_pruning")

from attnsearch import cli
from attnsearch import tracking as T
from attnsearch.contract import (
    METRIC_VAL_ACC_PRUNED,
    ROLE_PRUNE,
    TAG_PARENT,
    TAG_PRUNE_IMPORTANCE,
    TAG_PRUNE_ON_FRONT,
    TAG_PRUNE_RATIO,
    TAG_PRUNE_STUDY,
    TAG_PRUNED_FROM,
    TAG_ROLE,
)
from attnsearch.export import PRUNED_SPEC_FORMAT, SPEC_FILE, load_model


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_pruned_model_is_logged_exported_and_loads_back_with_the_same_logits(study, tmp_path, capsys):
    uri, df = study["job"].tracking.uri, study["df"]
    source = df[df["run_name"].str.startswith("se")].iloc[0]
    rc = cli.main(["prune", str(study["job_path"]), "--run", source["run_id"], "--ratios", "0.5",
                   "--finetune-epochs", "1", "--importance", "bn"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "pruned models that joined the front:" in out and "Front over the study's and the pruned models" in out
    client = MlflowClient(uri)
    child = next(r for r in _runs(uri) if r.data.tags.get(TAG_PRUNED_FROM) == source["run_id"])
    tags, metrics = child.data.tags, child.data.metrics
    assert tags[TAG_ROLE] == "trial" and tags[TAG_PRUNE_RATIO] == "0.5" and tags[TAG_PRUNE_IMPORTANCE] == "bn"
    assert tags[TAG_PRUNE_ON_FRONT] in ("true", "false") and child.data.params["prune.ratio"] == "0.5"
    parent = client.get_run(tags[TAG_PARENT])
    assert parent.data.tags[TAG_ROLE] == ROLE_PRUNE and parent.data.tags[TAG_PRUNE_STUDY] == STUDY
    assert metrics["flops"] < source["flops"] and metrics["params"] < source["params"] and metrics["latency_ms"] > 0
    assert METRIC_VAL_ACC_PRUNED in metrics and 0 <= metrics["val_acc"] <= 1
    # exported from MLflow, loaded back: the logits at batch 2 and the accuracy the child run recorded
    rc = cli.main(["export", str(study["job_path"]), "--run", child.info.run_id, "--out", str(tmp_path / "out"),
                   "--formats", "pt2"])
    assert rc == 0, capsys.readouterr().err
    (folder,) = list((tmp_path / "out").iterdir())
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    assert spec["format"] == PRUNED_SPEC_FORMAT and spec["pruning"]["source_run"] == source["run_id"]
    from_folder = load_model(folder)
    from_mlflow = load_model(child.info.run_id, tracking_uri=uri)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(from_folder(x), from_mlflow(x))
        exported = torch.export.load(folder / "model.pt2").module()
        torch.testing.assert_close(exported(x), from_mlflow(x), rtol=1e-4, atol=1e-5)
    acc, _ = evaluate(from_mlflow, study["job"], 8)
    assert acc == pytest.approx(metrics["val_acc"])
    assert sum(p.numel() for p in from_mlflow.parameters()) == metrics["params"]


def test_the_front_pruned_at_two_ratios_without_finetuning(study, capsys):
    uri, df = study["job"].tracking.uri, study["df"]
    front = df[df["pareto"].fillna(False).astype(bool)]
    before = {r.info.run_id for r in _runs(uri)}
    rc = cli.main(["prune", str(study["job_path"]), "--front", "--ratios", "0.25,0.75", "--finetune-epochs", "0"])
    assert rc == 0, capsys.readouterr().err
    new = [r for r in _runs(uri) if r.info.run_id not in before]
    children = [r for r in new if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(children) == 2 * len(front) and len([r for r in new if r.data.tags[TAG_ROLE] == ROLE_PRUNE]) == 1
    for r in children:  # without fine-tuning, the final accuracy is the one right after pruning
        assert r.data.metrics["val_acc"] == r.data.metrics[METRIC_VAL_ACC_PRUNED]
        assert r.data.tags[TAG_PRUNE_IMPORTANCE] == "nam"


def _refused(study, capsys, *args: str) -> str:
    db = study["tmp"] / "mlflow.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    rc = cli.main(["prune", str(study["job_path"]), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # nothing logged: the store is byte-identical
    return err


@pytest.mark.parametrize("ratios", ["0", "1", "1.5", "-0.25", "0.5,abc"])
def test_a_ratio_outside_the_open_unit_interval_exits_2(study, capsys, ratios):
    run = study["df"]["run_id"].iloc[0]
    assert "--ratios" in _refused(study, capsys, "--run", run, "--ratios", ratios)


def test_a_run_not_in_the_study_exits_2(study, capsys):
    err = _refused(study, capsys, "--run", "0" * 32, "--ratios", "0.5")
    assert f"not a trial of study {STUDY}" in err


def test_a_type_that_cannot_be_pruned_exits_2(study, capsys):
    # a trained Shuffle Attention trial of the study (its weights are never read: the type is refused first)
    store = T.Store(study["job"].tracking.uri, study["parent"])
    record = T.TrialRecord("sa000004", {"attention": "sa", "stages": "3", "blocks": "all", "position": "default",
                                        "sa.groups": 2})
    record.add_result({"epoch": 1, "val_acc": 0.5, "flops": 1e6, "timestamp": time.time()})
    record.finish(1)
    store.reconcile(record)
    run_id = store.runs["sa000004"].run_id
    err = _refused(study, capsys, "--run", run_id, "--ratios", "0.5")
    assert "attention type 'sa' cannot be pruned" in err and "channel shuffle" in err


def test_neither_front_nor_runs_exits_2(study, capsys):
    assert "give --front" in _refused(study, capsys, "--ratios", "0.5")

