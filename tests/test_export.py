"""A study's models: logged to MLflow by the driver (front / completed / none), registered, linked to the parent
run, loaded back (``mlflow.pytorch.load_model`` and ``attnsearch.export.load_model``) with the trial's own
validation accuracy, exported to folders (weights, spec, card, torch.export/TorchScript), never logged twice.

The study here is conftest.py's ``study`` fixture, real training without Ray (three tiny trials through
``attnsearch.train.fit``, checkpoints laid out as Ray's, results in MLflow as a finished study's). The Ray path
itself (ASHA, resume, sync) is ``test_checkpoints_after_asha_and_resume_and_models_through_sync`` (slow).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from _helpers import BIN, STUDY, alive, children_of, evaluate, free_port, group_alive, stop_server, write_job
from mlflow import MlflowClient

from attnsearch import cli
from attnsearch import pareto as P
from attnsearch import tracking as T
from attnsearch.config import load_job
from attnsearch.contract import TAG_EXPERIMENT_KIND, TAG_NOTE
from attnsearch.export import (
    CARD_FILE,
    PT2_FILE,
    SPEC_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    export_model,
    export_study,
    final_weights,
    load_model,
    log_study_models,
    rebuild,
    spec_for_trial,
)


def front_ids(df) -> set[str]:
    return set(df[df["pareto"].fillna(False).astype(bool)]["run_id"])


def logged_models(uri: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return list(client.search_logged_models(experiment_ids=[exp]))


# --------------------------------------------------------------------------------------------------- spec


def test_spec_round_trips_and_names_what_is_wrong(tmp_path):
    spec = ModelSpec("resnet20", 10, 8, 0.5, {"type": "se", "reduction": 4, "stages": [3], "blocks": "all",
                                               "position": "default"}, "digits", [0.1] * 3, [0.3] * 3,
                     {"run_id": "abc"})
    (tmp_path / SPEC_FILE).write_text(spec.to_yaml())
    assert ModelSpec.read(tmp_path / SPEC_FILE) == spec
    assert spec.describe_attention() == "se (reduction=4) at stages [3], blocks all, position default"
    bad = dict(spec.to_dict(), colour="red")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        ModelSpec.from_dict(bad)
    with pytest.raises(ValueError, match="format: expected 'attnsearch-model/1'"):
        ModelSpec.from_dict({**spec.to_dict(), "format": "other/2"})
    model = spec.build()
    with pytest.raises(ValueError, match="do not fit the spec's model"):
        rebuild(ModelSpec("resnet20", 10, 8), model.state_dict())  # SE weights into a plain resnet20


def test_spec_of_a_trial_is_what_it_trained(study):
    job, df = study["job"], study["df"]
    row = df[df["trial_id"] == "se000002"].iloc[0]
    state = final_weights(study["exp_dir"], "se000002", 1).state
    spec = spec_for_trial(job, {"attention": "se", "stages": row["stages"], "blocks": "all", "position": "default",
                                "se.reduction": int(row["se.reduction"])}, state=state)
    assert (spec.backbone, spec.num_classes, spec.image_size, spec.width_mult) == ("resnet20", 10, 8, 1.0)
    assert spec.attention == {"type": "se", "stages": [3], "blocks": "all", "position": "default", "reduction": 4}
    assert spec.dataset == "digits" and len(spec.mean) == 3 and spec.std[0] > 0  # digits' own normalisation
    rebuild(spec, state)  # strict: every key and shape


# --------------------------------------------------------------------------------------------------- MLflow


@pytest.fixture
def global_uri(study):
    """MLflow's own loaders (mlflow.pytorch.load_model) read the global tracking URI."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(study["job"].tracking.uri)
    yield study["job"].tracking.uri
    mlflow.set_tracking_uri(before)


def test_front_models_are_logged_registered_linked_and_reproduce_the_trials_accuracy(study, global_uri):
    job, parent, df = study["job"], study["parent"], study["df"]
    uri = global_uri
    front = front_ids(df)
    assert front, "the study recorded a front"
    started = time.perf_counter()
    done = log_study_models(job, parent, study["exp_dir"])
    seconds = time.perf_counter() - started
    print(f"{len(done.logged)} models logged in {seconds:.1f} s; training took {study['train_s']:.1f} s")
    assert set(done.logged) == set(df[df["run_id"].isin(front)]["run_name"]) and not done.skipped
    client = MlflowClient(uri)
    models = logged_models(uri, parent)
    assert {m.source_run_id for m in models} == front
    versions = client.search_model_versions("name = 'tiny'")
    assert len(versions) == len(front)
    run_of = df.set_index("run_id")
    for m in models:
        row = run_of.loc[m.source_run_id]
        assert m.tags["attnsearch.trial_id"] == row["trial_id"] and m.tags["attnsearch.study"] == STUDY
        info = mlflow.models.get_model_info(m.model_uri)
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 8, 8)
        assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 10)
        assert info.saved_input_example_info is not None
        version = next(v for v in versions if v.source == m.model_uri)
        assert float(version.tags["val_acc"]) == row["val_acc"] and float(version.tags["flops"]) == row["flops"]

        # named after its run, linked to its child run (the run's "Logged models" too)
        assert m.name == row["run_name"].replace(".", "_")
        assert [o.model_id for o in client.get_run(m.source_run_id).outputs.model_outputs] == [m.model_id]
        # MLflow's own loader: a working module (eval mode, any batch size), by the model's URI and the run's
        module = mlflow.pytorch.load_model(m.model_uri)
        assert not module.training
        torch.testing.assert_close(mlflow.pytorch.load_model(f"runs:/{m.source_run_id}/{m.name}")(
            torch.zeros(3, 3, 8, 8)), module(torch.zeros(3, 3, 8, 8)))
        acc_mlflow, logits_mlflow = evaluate(module, job, 8)
        # attnsearch's: rebuilt from the spec, weights_only=True; by child run id and by registry URI
        model = load_model(m.source_run_id, tracking_uri=uri)
        acc, logits = evaluate(model, job, 8)
        assert acc == row["val_acc"] == acc_mlflow  # the trial's own validation accuracy, exactly
        torch.testing.assert_close(logits, logits_mlflow)
        by_version = load_model(f"models:/tiny/{version.version}", tracking_uri=uri)
        torch.testing.assert_close(evaluate(by_version, job, 8)[1], logits)
    # the parent run lists them (MLflow UI: "Logged models") and describes the front
    outputs = client.get_run(parent).outputs.model_outputs
    assert {o.model_id for o in outputs} == {m.model_id for m in models}
    note = client.get_run(parent).data.tags[TAG_NOTE]
    assert "| run | attention |" in note and "(baseline)" in note
    assert f"get-artifact?path=pareto.png&run_uuid={parent}" in note
    for name in df[df["run_id"].isin(front)]["run_name"]:
        assert name in note
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_logging_again_logs_nothing(study):
    job, parent = study["job"], study["parent"]
    log_study_models(job, parent, study["exp_dir"])  # first time, or already done by the test above
    before = {m.model_id for m in logged_models(job.tracking.uri, parent)}
    versions = len(MlflowClient(job.tracking.uri).search_model_versions("name = 'tiny'"))
    again = log_study_models(job, parent, study["exp_dir"])  # a resumed study's end, a sync
    assert not again.logged and set(again.present) and not again.skipped
    assert {m.model_id for m in logged_models(job.tracking.uri, parent)} == before
    assert len(MlflowClient(job.tracking.uri).search_model_versions("name = 'tiny'")) == versions


def test_completed_mode_and_none_and_a_missing_checkpoint(study, tmp_path):
    job, parent, df = study["job"], study["parent"], study["df"]
    assert log_study_models(job, parent, study["exp_dir"], mode="none").line().startswith("MLflow models: none")
    log_study_models(job, parent, study["exp_dir"])  # the front's, as the study's end logs them
    off_front = df[~df["run_id"].isin(front_ids(df))]
    # a copy of the experiment folder without an off-front trial's checkpoint: skipped, with the reason
    copy = tmp_path / "ray" / STUDY
    shutil.copytree(study["exp_dir"], copy)
    for trial_id in off_front["trial_id"]:
        shutil.rmtree(copy / f"trial_{trial_id}")
    done = log_study_models(job, parent, str(copy), mode="completed")
    assert set(done.present) == set(df[df["run_id"].isin(front_ids(df))]["run_name"])
    assert set(done.skipped) == set(off_front["run_name"]) and not done.logged
    assert all("no checkpoint" in why for why in done.skipped.values())
    done = log_study_models(job, parent, study["exp_dir"], mode="completed")  # with them: every completed trial
    assert set(done.logged) == set(off_front["run_name"])
    assert {m.source_run_id for m in logged_models(job.tracking.uri, parent)} == set(df["run_id"])
    # a checkpoint of another epoch is not a final one
    with pytest.raises(ValueError, match="of epoch 1, not of its last epoch 3"):
        final_weights(study["exp_dir"], "base0001", 3)


def test_description_follows_the_studys_own_front_only(study):
    uri, parent = study["job"].tracking.uri, study["parent"]
    client = MlflowClient(uri)
    note = client.get_run(parent).data.tags[TAG_NOTE]
    # an exploratory front recorded on request lives under its key and leaves the description alone
    front, _ = P.analyze(uri, "tiny", STUDY, objectives={"val_acc": "max", "params": "min"}, budget="any",
                         record=True)
    assert front.attrs["record_key"] and client.get_run(parent).data.tags[TAG_NOTE] == note
    assert P.record_study(uri, "tiny", STUDY) is not None  # the study's own again: the same text, not rewritten
    assert client.get_run(parent).data.tags[TAG_NOTE] == note


def test_front_markdown_keeps_the_baseline_row_within_the_limit():
    import pandas as pd

    front = pd.DataFrame({"run_id": [f"r{i}" for i in range(40)], "run_name": [f"se-r{i}" for i in range(40)],
                          "attention": "se", "stages": "3", "budget": 3, "val_acc": 0.9, "flops": 1e6,
                          "params": 1e4, "delta_val_acc": 0.01, "flops_ratio": 0.5})
    front.attrs = {"objectives": {"val_acc": "max", "flops": "min"}}
    base = pd.Series({"run_id": "b", "run_name": "none", "attention": "none", "budget": 3, "val_acc": 0.89,
                      "flops": 2e6, "params": 1e4})
    text = P.front_markdown(front, base, experiment_id="4", plot_url="p.png", limit=2000)
    assert len(text) <= 2000 and "| [none](#/experiments/4/runs/b) (baseline) | none |" in text
    assert "more front row(s) in pareto.csv" in text
    assert "[se-r0](#/experiments/4/runs/r0)" in text and text.rstrip().endswith("![Pareto front](p.png)")
    assert "| +0.0000 | 1x |" in text  # the baseline against itself


# --------------------------------------------------------------------------------------------------- folders


def test_export_folder_loads_back_with_the_trials_accuracy(study, tmp_path):
    job, df = study["job"], study["df"]
    row = df[df["trial_id"] == "se000002"].iloc[0]
    exported = export_study(job, tmp_path / "out", run_id=row["run_id"], formats=("pt2", "torchscript"))
    assert len(exported) == 1
    folder = exported[0].folder
    assert folder.name == f"{row['run_name']}-se000002"
    for name in (WEIGHTS_FILE, SPEC_FILE, CARD_FILE, PT2_FILE):
        assert (folder / name).is_file(), name
    # measured: SE's gate is a custom autograd.Function, which TorchScript cannot serialise; torch.export can
    assert "torchscript" in exported[0].unavailable and not (folder / TORCHSCRIPT_FILE).exists()
    model = load_model(folder)
    assert evaluate(model, job, 8)[0] == row["val_acc"]
    program = torch.export.load(folder / PT2_FILE).module()
    x = torch.randn(5, 3, 8, 8)  # another batch size than the export's example
    torch.testing.assert_close(program(x), model(x))
    card = (folder / CARD_FILE).read_text()
    assert f"| val_acc | {row['val_acc']:.4g} |" in card and "| flops |" in card and "| params |" in card
    assert "| `layer3.0.residual_end` | SqueezeExcite |" in card  # where the attention sits
    assert "| `layer2.0.residual_end` |" not in card
    assert "torchscript: not available for this module" in card
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    assert spec["attention"]["type"] == "se" and spec["source"]["run_id"] == row["run_id"]


def test_plain_backbone_traces_to_torchscript(study, tmp_path):
    job, df = study["job"], study["df"]
    row = df[df["trial_id"] == "base0001"].iloc[0]
    state = final_weights(study["exp_dir"], "base0001", 1).state
    spec = spec_for_trial(job, {"attention": "none"}, state=state)
    out = export_model(rebuild(spec, state), spec, tmp_path / "none", formats=("torchscript",))
    assert TORCHSCRIPT_FILE in out.files, out.unavailable
    scripted = torch.jit.load(str(tmp_path / "none" / TORCHSCRIPT_FILE))
    assert evaluate(scripted, job, 8)[0] == row["val_acc"]


def test_export_command_front_and_bad_input(study, tmp_path, capsys):
    job_path = str(study["job_path"])
    assert cli.main(["export", job_path, "--front", "--out", str(tmp_path / "front"), "--formats", ""]) == 0
    out = capsys.readouterr().out
    folders = sorted(p.name for p in (tmp_path / "front").iterdir())
    assert len(folders) == len(front_ids(study["df"])) and f"{len(folders)} model(s) exported" in out
    for folder in (tmp_path / "front").iterdir():
        model = load_model(folder)
        spec = json.loads(json.dumps(yaml.safe_load((folder / SPEC_FILE).read_text())))
        row = study["df"].set_index("run_id").loc[spec["source"]["run_id"]]
        assert evaluate(model, study["job"], 8)[0] == row["val_acc"]
    assert cli.main(["export", job_path, "--run", "0" * 32, "--out", str(tmp_path / "x")]) == 2
    assert "--run 00000000000000000000000000000000: no such run" in capsys.readouterr().err
    assert cli.main(["export", job_path, "--front", "--out", str(tmp_path / "x"), "--formats", "onnx"]) == 2
    assert "--formats" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # neither --front nor --run: argparse's own usage error
        cli.main(["export", job_path, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------------------- through Ray

RAY_SPACE = """\
attention:
  type: [none, se, eca]
  stages: [[3]]
  knobs:
    se: {reduction: [4]}
train:
  lr: [0.05, 0.1, 0.2]
"""


class InterruptAfterFirstTrial:
    """The study's progress stream: sends this process SIGINT (Ctrl-C) when the first trial has ended, while
    others are running; Ray Tune saves the experiment and returns, as an interrupted `attnsearch run` does."""

    def __init__(self) -> None:
        self.sent = False

    def write(self, text: str) -> int:
        import os
        import signal

        if not self.sent and "trials 1/" in text:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.slow  # starts Ray: an ASHA study, interrupted, resumed; then synced into a store that missed it
def test_checkpoints_after_asha_and_resume_and_models_through_sync(tmp_path, local_ray, capsys):
    from attnsearch.search import run_study

    path = write_job(tmp_path, RAY_SPACE, data={"dataset": "digits", "image_size": 8, "batch_size": 64},
                     train={"epochs": 3, "lr": 0.1, "threads": 1},
                     search={"num_samples": 5, "max_concurrent": 2, "seed": 3},
                     scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                     tracking={"uri": f"sqlite:///{tmp_path}/live.db"},
                     ray={"storage_path": f"{tmp_path}/ray_results", "max_failures": 0})
    job = load_job(path)
    interrupted = run_study(job, stream=InterruptAfterFirstTrial())
    assert len(interrupted.progress.states) < 5  # stopped with trials left: some mid-way, from checkpoints
    assert interrupted.progress.interrupted and interrupted.progress.unfinished >= 1  # `run` says how to resume
    resumed = run_study(job, resume=True)
    assert resumed.study_id == interrupted.study_id
    assert resumed.progress.unfinished == 0 and not resumed.progress.interrupted
    P.record_study(job.tracking.uri, "tiny", resumed.study_id, definition=dict(job.search.objectives))
    df = P.load_runs("tiny", tracking_uri=job.tracking.uri, parent_run_id=resumed.parent_run_id)
    assert set(df["state"]) >= {"completed", "early_stopped"}, df[["run_name", "state", "budget"]]

    # the contract: the checkpoint each trial keeps is of its last epoch (3 for a completed trial)
    for _, row in df.iterrows():
        kept = final_weights(resumed.experiment_path, row["trial_id"])
        assert kept.epoch == row["budget"] == (3 if row["state"] == "completed" else kept.epoch), row["run_name"]

    # the study's end logs the front's models once; its resume (or anything after) logs none again
    first = log_study_models(job, resumed.parent_run_id, resumed.experiment_path)
    assert first.logged and not first.skipped
    again = log_study_models(job, resumed.parent_run_id, resumed.experiment_path)
    assert not again.logged and set(again.present) == set(first.logged)

    # a store that missed the whole study (its server was down): `attnsearch sync` brings runs, front and models
    later = f"sqlite:///{tmp_path}/later.db"
    assert cli.main(["sync", str(path), "--set", f"tracking.uri={later}"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front recorded" in out and f"{len(first.logged)} logged" in out, out
    synced = P.load_runs("tiny", tracking_uri=later)
    on_front = synced[synced["pareto"].fillna(False).astype(bool)]
    assert set(on_front["run_name"]) == set(first.logged)
    for _, row in on_front.iterrows():
        model = load_model(row["run_id"], tracking_uri=later)
        assert evaluate(model, job, 8)[0] == row["val_acc"]  # the trial's own validation accuracy
    assert cli.main(["sync", str(path), "--set", f"tracking.uri={later}"]) == 0
    assert f"0 logged, {len(first.logged)} already there" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- the UI


def test_ui_url_opens_the_front_in_model_training_mode():
    url = T.ui_url("127.0.0.1", 5123, "7", {"val_acc": "max", "flops": "min"})
    assert url == ("http://127.0.0.1:5123/#/experiments/7/runs?workflowType=machine_learning&searchFilter=tags."
                   "%60attnsearch.pareto%60%20%3D%20%27true%27&orderByKey=metrics.%60val_acc%60&orderByAsc=false")
    assert T.ui_url("0.0.0.0", 80, None) == "http://127.0.0.1:80/"  # no experiment yet: the UI's home
    assert "orderByAsc=true" in T.ui_url("::", 1, "1", {"latency_ms": "min"}).replace("[::1]", "")


class UI:
    """`attnsearch ui JOB --port P` as a user runs it; its printed URL; stopped with SIGTERM."""

    def __init__(self, job_path: Path, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.proc = subprocess.Popen([str(BIN / "attnsearch"), "ui", str(job_path), "--port", str(port)],
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def url(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            found = re.search(r"MLflow UI: (\S+)", self.log.read_text())
            if found and T.wait_for_port("127.0.0.1", self.port, 1.0):
                return found.group(1)
            time.sleep(0.5)
        raise AssertionError(f"attnsearch ui did not serve in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def server_group(self) -> int:
        children = children_of(self.proc.pid)
        assert children, "attnsearch ui started no server"
        return os.getpgid(children[0])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


SERVER = """
import os, signal, subprocess, sys, time
# a stand-in server that ignores SIGTERM (as one waiting for slow workers does), and a worker that ignores it too
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "open(%r, 'w').write(str(__import__('os').getpid())); time.sleep(600)"])
time.sleep(600)
"""


def test_ctrl_c_on_serve_ui_stops_the_group_even_processes_that_ignore_sigterm(tmp_path):
    pid_file = tmp_path / "worker.pid"
    driver = ("import sys; from attnsearch.tracking import serve_ui; "
              f"sys.exit(serve_ui([sys.executable, '-c', {SERVER % str(pid_file)!r}], 'http://x/', host='127.0.0.1', "
              "port=1))")
    proc = subprocess.Popen([str(BIN / "python"), "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    groups: set[int] = set()  # the server's group, once known: the teardown kills it whatever happened
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        group = os.getpgid(worker)
        groups.add(group)
        assert group != os.getpgid(proc.pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "MLflow UI: http://x/" in out and "stopping the MLflow UI" in err
        assert T.STOP_GRACE_S <= time.monotonic() - started < T.STOP_GRACE_S + 10  # SIGTERM, then SIGKILL
        assert not group_alive(group)
    finally:
        left = stop_server(proc, groups)
    assert not left, f"processes left after the test: {left}"


def test_serve_ui_left_by_an_exception_stops_the_server_group(tmp_path, monkeypatch):
    """A serve_ui that raises (here: the browser's wait) stops its server's group before the exception leaves."""
    pid_file = tmp_path / "server.pid"

    def failing_wait(*args, **kwargs):
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("the browser failed")

    monkeypatch.setattr("attnsearch.tracking._ui.wait_for_port", failing_wait)
    server = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    try:
        with pytest.raises(RuntimeError, match="the browser failed"):
            T.serve_ui([sys.executable, "-c", server], "http://x/", host="127.0.0.1", port=1, open_browser=True)
        pid = int(pid_file.read_text())
        assert not group_alive(pid) and not alive([pid]), "the server outlived serve_ui's exception"
    finally:
        if pid_file.exists() and pid_file.read_text():  # nothing of it outlives the test, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow  # starts `attnsearch ui`
def test_sigterm_on_attnsearch_ui_stops_the_whole_server_group(study, tmp_path):
    ui = UI(study["job_path"], free_port(), tmp_path / "ui.log")
    groups: set[int] = set()  # the server's group, once known: the teardown kills it whatever happened
    try:
        ui.url()
        group = ui.server_group()
        groups.add(group)
        assert group != os.getpgid(ui.proc.pid)  # the server runs in a process group of its own
        started = time.monotonic()
        assert ui.stop() == 0
        print(f"attnsearch ui stopped {time.monotonic() - started:.1f} s after SIGTERM")
        deadline = time.monotonic() + 15
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(group), "MLflow server processes outlived attnsearch ui"
        assert not T.wait_for_port("127.0.0.1", ui.port, 1.0), "the port is still held"
    finally:
        left = stop_server(ui.proc, groups)
    assert not left, f"processes left after the test: {left}"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("ATTNSEARCH_REQUIRE_BROWSER"):  # .ci/run: this test runs in CI, it never skips there
        pytest.fail("chromium is not installed (apt-get install -y chromium); CI requires the browser test")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def dump_dom(url: str, budget_ms: int = 15000) -> str:
    """The page as headless Chromium renders it after ``budget_ms`` of virtual time (scripts and styles cut)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom",
                               url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return re.sub(r"<script.*?</script>|<style.*?</style>", "", done.stdout, flags=re.DOTALL)


def page_text(dom: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def dump_until(url: str, wanted: list[str], tries: int = 3) -> tuple[str, str]:
    """Dump the page until every ``wanted`` text is in it (a cold server answers its first requests slowly)."""
    for _ in range(tries):
        dom = dump_dom(url)
        text = page_text(dom)
        if all(w in text for w in wanted):
            break
    return dom, text


@pytest.mark.slow  # starts `attnsearch ui`, then headless Chromium against it
def test_browser_shows_the_front_its_description_and_its_models(study, tmp_path):
    _chromium()
    job, parent, df = study["job"], study["parent"], study["df"]
    log_study_models(job, parent, study["exp_dir"])
    front = df[df["run_id"].isin(front_ids(df))]
    client = MlflowClient(job.tracking.uri)
    exp_id = client.get_run(parent).info.experiment_id
    linked = len(client.get_run(parent).outputs.model_outputs)  # the front's, and more if another test logged them
    assert linked >= len(front)
    ui = UI(study["job_path"], free_port(), tmp_path / "ui.log")
    try:
        url = ui.url()
        assert f"#/experiments/{exp_id}/runs?workflowType=machine_learning&searchFilter=" in url
        # the runs page: the front's runs, listed (not folded under the study's run), and only them
        _, text = dump_until(url, list(front["run_name"]))
        for name in front["run_name"]:
            assert name in text, f"front run {name!r} not on the runs page: {text[:1500]}"
        assert f"{len(front)} matching runs" in text, text[:1500]
        # the study's run: the description (front table with the baseline row, the plot) and the logged models
        page = f"http://127.0.0.1:{ui.port}/#/experiments/{exp_id}/runs/{parent}?workflowType=machine_learning"
        dom, text = dump_until(page, ["Pareto front", f"Logged models ({linked})"])
        assert "No description" not in text
        assert "Pareto front of study" in text and "(baseline)" in text and "attention" in text, text[:3000]
        for name in front["run_name"]:
            assert name in text
        assert f'src="get-artifact?path=pareto.png&amp;run_uuid={parent}"' in dom
        assert f"Logged models ({linked})" in text and "Ready" in text, text[:3000]
        assert "Registered models" in text and "tiny" in text
    finally:
        if ui.proc.poll() is None:
            ui.stop()
