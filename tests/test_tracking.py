"""MLflow tracking driven by real (tiny) Ray Tune searches on a local SQLite store, plus sync, resume, outage."""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from _helpers import Server, free_port  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402

from attnsearch import contract as C  # noqa: E402
from attnsearch import tracking as T  # noqa: E402
from attnsearch.search import FixedConfigs  # noqa: E402
from attnsearch.tracking._connection import _http_get  # noqa: E402
from attnsearch.tracking.callback import MLflowTracker  # noqa: E402
from attnsearch.tracking.sync import read_ray_trials, sync_study  # noqa: E402

MAX_T = 3
CONFIGS = [
    {"attention": "se", "stages": "3", "position": "default", "se.reduction": 8, "train.lr": 0.1},
    {"attention": "sa", "stages": "2,3", "position": "residual_end", "sa.groups": 4, "train.lr": 0.05},
    {"attention": "bam", "stages": "1,2,3", "position": "default", "bam.reduction": 16, "train.lr": 0.1},
    {"attention": "none", "stages": "3", "position": "default", "train.lr": 0.3},
    {"attention": "gc", "stages": "3", "position": "stage_end", "gc.fusion": "add", "train.lr": 0.1},
    {"attention": "eca", "stages": "3", "position": "default", "eca.kernel_size": None, "train.lr": 0.1},
]
EXPECTED = {  # attention -> (state, budget)
    "se": ("completed", 3),
    "sa": ("early_stopped", 1),  # returns after one epoch, as if ASHA stopped it
    "bam": ("infeasible", 0),
    "none": ("failed", 1),  # diverges in epoch 1 and says so
    "gc": ("completed", 3),  # raises once at epoch 2, retried from scratch (max_failures=1)
    "eca": ("failed", 1),  # raises on every attempt -> Ray ERROR
}
# se, gc and eca share the best accuracy so that ASHA (reduction 2) never stops them: expectations stay exact


def trainable(config, marker_dir=None):
    kind = config["attention"]
    acc = {"se": 0.9, "gc": 0.9, "eca": 0.9, "sa": 0.5, "none": 0.4}.get(kind, 0.0)
    counts = {"flops": 2_000_000, "macs": 990_000, "params": 1000, "attn_flops": 20_000, "attn_macs": 9_000,
              "attn_params": 100}
    if kind == "bam":
        # Ray aborts the whole search on a result without the scheduler's metric (strict metric checking)
        tune.report({"attnsearch_state": "infeasible", "attnsearch_reason": "flops 2000000 > max_flops 1000000",
                     "val_acc": float("nan"), **counts})
        return
    marker = Path(marker_dir) / f"{kind}.attempted"
    first_attempt = not marker.exists()
    marker.touch()
    for epoch in range(1, MAX_T + 1):
        if kind == "eca" and epoch == 2 or kind == "gc" and epoch == 2 and first_attempt:
            raise RuntimeError(f"boom {kind} at epoch {epoch}")
        result = {"epoch": epoch, "val_acc": acc + 0.01 * epoch, "val_loss": 1.0 / epoch, "train_loss": 1.2 / epoch,
                  "nam_penalty": 0.0, "lr": 0.1 / epoch, "epoch_time_s": 0.01, **counts}
        if kind == "none":
            result.update(val_loss=float("nan"), attnsearch_state="failed", attnsearch_reason="val_loss is nan")
            tune.report(result)
            return
        tune.report(result)
        if kind == "sa":
            return


def run_search(tmp: Path, tracker: MLflowTracker, name: str = "exp", configs=CONFIGS,
               first_callbacks=()) -> Path:
    (tmp / "markers").mkdir(exist_ok=True)
    tuner = tune.Tuner(
        tune.with_parameters(trainable, marker_dir=str(tmp / "markers")),
        tune_config=tune.TuneConfig(
            search_alg=FixedConfigs(configs), num_samples=len(configs), max_concurrent_trials=2,
            scheduler=ASHAScheduler(metric="val_acc", mode="max", time_attr="epoch", max_t=MAX_T, grace_period=1,
                                    reduction_factor=2),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(tmp / "ray"), callbacks=[*first_callbacks, tracker], verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    tuner.fit()
    return tmp / "ray" / name


@pytest.fixture(scope="module")
def ray_session(local_ray):
    # workers cannot import this test module: ship the trainable by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp)
    T.check_tracking(uri)
    parent = T.start_study(uri, "exp", "study-a", "name: exp\n", {"attention": {"type": ["se", "sa"]}}, False)
    t0 = time.perf_counter()
    exp_dir = run_search(tmp, MLflowTracker(uri, "exp", parent, "study-a", MAX_T, strict=True))
    return {"tmp": tmp, "uri": uri, "parent": parent, "exp_dir": exp_dir, "seconds": time.perf_counter() - t0}


def children(client: MlflowClient, parent: str) -> list:
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)


def diff(a: dict, b: dict, path: str = "") -> list[str]:
    """Readable differences between two nested dicts (for assertion messages)."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(x, dict) and isinstance(y, dict):
            out += diff(x, y, f"{path}/{key}")
        elif x != y:
            out.append(f"{path}/{key}: {x!r} != {y!r}")
    return out


def snapshot(uri: str, parent: str) -> dict:
    """Everything a child run holds, keyed by attention type (histories included) for comparisons."""
    client = MlflowClient(uri)
    out = {}
    for run in children(client, parent):
        kind = run.data.params["attention"]
        assert kind not in out, f"two runs for {kind}"
        hist = {k: [(m.step, "nan" if m.value != m.value else m.value)  # NaN != NaN would break comparisons
                    for m in client.get_metric_history(run.info.run_id, k)]
                for k in run.data.metrics}
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("attnsearch.") and k != "attnsearch.study"}
        out[kind] = {"params": run.data.params, "tags": tags, "hist": hist, "status": run.info.status,
                     "name": run.info.run_name}
    return out


# ------------------------------------------------------------------------------------------------ unit


def test_resolve_tracking_uri(tmp_path):
    assert T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert T.resolve_tracking_uri("sqlite:///sub/x.db?timeout=30", tmp_path) == \
        f"sqlite:///{tmp_path.resolve()}/sub/x.db?timeout=30"
    assert T.resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert T.resolve_tracking_uri("http://10.0.0.1:5000", tmp_path) == "http://10.0.0.1:5000"
    assert T.resolve_tracking_uri("mlruns", tmp_path) == (tmp_path / "mlruns").resolve().as_uri()
    with pytest.raises(ValueError, match="tracking.uri"):
        T.resolve_tracking_uri("  ", tmp_path)


def test_run_name():
    assert T.run_name({"attention": "sa", "sa.groups": 16, "stages": "2,3,4", "position": "residual_end",
                       "train.lr": 0.1}) == "sa-G16-s234-resend"
    assert T.run_name({"attention": "se", "se.reduction": 8, "stages": "3", "position": "default"}) == \
        "se-r8-s3-default"
    assert T.run_name({"attention": "none", "stages": "1,2", "train.lr": 0.1}) == "none"
    assert T.run_name({"attention": "eca", "eca.kernel_size": None, "stages": "3", "blocks": "last",
                       "position": "default"}) == "eca-kauto-s3-last-default"
    assert T.run_name({"attention": "nam", "nam.spatial": False, "nam.penalty": 0.001, "stages": "1,2,3,4,5,6,7",
                       "position": "mid"}) == "nam-nosp-p0.001-s1234567-mid"
    assert T.run_name({"attention": "bam", "stages": "1,12"}) == "bam-s1_12"


def test_trial_state_rule():
    assert C.trial_state(None, 3, 3) == "completed"
    assert C.trial_state(None, 1, 3) == "early_stopped"
    assert C.trial_state("infeasible", 0, 3) == "infeasible"
    assert C.trial_state(None, 3, 3, errored=True) == "failed"
    rec = T.TrialRecord("x", {})
    rec.finish(3)
    assert rec.state == "failed" and "without reporting" in rec.reason


def test_check_tracking_dead_port_is_fast_and_clear():
    port = free_port()
    uri = f"http://user:secret@127.0.0.1:{port}"
    t0 = time.perf_counter()
    with pytest.raises(T.TrackingError) as err:
        T.check_tracking(uri, timeout_s=2)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, elapsed
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "unreachable" in msg and "mlflow server" in msg
    assert "secret" not in msg  # credentials never shown


def test_check_tracking_sqlite_creates_directory(tmp_path):
    uri = T.resolve_tracking_uri("sqlite:///deep/er/mlflow.db", tmp_path)
    T.check_tracking(uri)
    assert (tmp_path / "deep" / "er" / "mlflow.db").is_file()


def test_ui_command():
    cmd = T.ui_command("postgresql://u:SECRET@db/mlflow")
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    # the store's URI (a password, for a database) is not on the command line every local user sees in `ps`
    assert not [part for part in cmd if "db" in part or "SECRET" in part]
    env = T.ui_environment("postgresql://u:SECRET@db/mlflow", {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "MLFLOW_BACKEND_STORE_URI": "postgresql://u:SECRET@db/mlflow"}
    assert T.ui_command("sqlite:////x.db", host="0.0.0.0", port=5123)[-3:] == ["0.0.0.0", "--port", "5123"]
    with pytest.raises(T.TrackingError, match="own UI"):
        T.ui_command("http://127.0.0.1:5000")


@pytest.mark.parametrize("text, secret", [
    ("http://u:SECRET@host:5000", "SECRET"),
    ("MLflow error: HTTPConnectionPool for url http://u:SECRET@host:5000/api/2.0/x failed", "SECRET"),
    ("https://SECRET@host/api", "SECRET"),  # a token as the user name
    ("http://user:p@SECRET@host:5000", "SECRET"),  # an '@' in the password
    ("http://user:a/SECRET@host:5000", "SECRET"),  # a '/' in the password (not a valid authority; typed anyway)
    ("two: postgresql://a:SECRET@db/x and s3://KEY:SECRET@bucket/p", "SECRET"),
    ("repr: {'uri': 'databricks://tok:SECRET@ws'}", "SECRET"),
])
def test_redaction_hides_the_userinfo_of_any_uri_anywhere_in_a_text(text, secret):
    from attnsearch.uris import has_credentials, redact_text

    shown = redact_text(text)
    assert secret not in shown and "***@" in shown and has_credentials(text)
    assert T.first_line(RuntimeError(text + "\nmore")) == shown[:500]
    assert redact_text("http://host:5000/api?x=1 mail a@b.c") == "http://host:5000/api?x=1 mail a@b.c"


def test_a_pickled_tracker_holds_no_credentials(monkeypatch):
    tracker = MLflowTracker("http://u:SECRET@127.0.0.1:5000", "e", "abc", "s", 3)
    blob = pickle.dumps(tracker)  # what Ray writes into tuner.pkl on the study's storage
    assert b"SECRET" not in blob and tracker.tracking_uri == "http://127.0.0.1:5000"
    assert tracker._uri == "http://u:SECRET@127.0.0.1:5000"  # this driver still logs in with them
    clone = pickle.loads(blob)
    assert clone._uri == "http://127.0.0.1:5000"  # a restored tracker logs in with MLflow's environment variables


def test_the_preflight_never_follows_a_redirect_with_credentials():
    import http.server
    import threading

    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirect(Elsewhere):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other.server_port}{self.path}")
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (server, other)]
    for t in threads:
        t.start()
    try:
        with pytest.raises(T.TrackingError, match="redirect") as err:
            T.check_tracking(f"http://u:SECRET@127.0.0.1:{server.server_port}", timeout_s=5)
        assert "SECRET" not in str(err.value)
        assert seen == []  # the other host never got a request, let alone the Authorization header
    finally:
        for s in (server, other):
            s.shutdown()
            s.server_close()


def test_tracker_is_picklable_without_runtime_state():
    tracker = MLflowTracker("sqlite:////x.db", "e", "abc", "s", 3)
    tracker._records["t"] = T.TrialRecord("t", {"a": 1})
    rel = MLflowTracker("sqlite:///rel.db", "e", "abc", "s", 3)
    assert rel.tracking_uri == f"sqlite:///{Path.cwd().resolve()}/rel.db"
    clone = pickle.loads(pickle.dumps(tracker))
    assert (clone.tracking_uri, clone.experiment, clone.parent_run_id, clone.study_id, clone.max_t) == \
        ("sqlite:////x.db", "e", "abc", "s", 3)
    assert clone._records == {}


def test_tracker_recreates_a_missing_parent_from_the_study_id(tmp_path):
    uri = T.resolve_tracking_uri("sqlite:///m.db", tmp_path)
    T.check_tracking(uri)
    tracker = MLflowTracker(uri, "e", "f" * 32, "study-x", 3, strict=True)
    tracker.setup()
    record = T.TrialRecord("t1", {"attention": "none"})
    record.add_result({"epoch": 1, "val_acc": 0.5})
    tracker._records["t1"] = record
    tracker._flush(["t1"])
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("e").experiment_id],
                                "tags.`attnsearch.study` = 'study-x' and tags.`attnsearch.role` = 'study'")
    assert len(parent) == 1 and tracker.parent_run_id == parent[0].info.run_id
    assert [r.data.tags["attnsearch.trial_id"] for r in children(client, tracker.parent_run_id)] == ["t1"]


def test_a_run_whose_trial_ray_forgot_ends_as_lost_at_the_studys_end(tmp_path):
    """A killed driver's trial that Ray's last saved state does not hold: the resumed study ends its run."""
    from types import SimpleNamespace

    from attnsearch.contract import LOST_REASON

    uri = T.resolve_tracking_uri("sqlite:///m.db", tmp_path)
    T.check_tracking(uri)
    parent = T.start_study(uri, "e", "study-l", "name: e\n", {"attention": {"type": ["none"]}}, False)
    first = MLflowTracker(uri, "e", parent, "study-l", 3, strict=True)  # the driver that gets killed
    first.setup()
    for tid in ("kept", "forgotten"):
        first.on_trial_start(0, [], SimpleNamespace(trial_id=tid, config={"attention": "none"}))
        first.on_trial_result(0, [], SimpleNamespace(trial_id=tid, config={"attention": "none"}),
                              {"epoch": 1, "val_acc": 0.5})
    resumed = MLflowTracker(uri, "e", parent, "study-l", 3, strict=True)
    resumed.setup()
    resumed.on_experiment_end([SimpleNamespace(trial_id="kept")])  # Ray restored "kept" only; it is still running
    client = MlflowClient(uri)
    runs = {r.data.tags["attnsearch.trial_id"]: r for r in children(client, parent)}
    assert runs["forgotten"].data.tags["attnsearch.state"] == "failed"
    assert runs["forgotten"].data.tags["attnsearch.reason"] == LOST_REASON
    assert runs["forgotten"].info.status == "KILLED"
    assert steps_of(client, runs["forgotten"].info.run_id) == [1]  # what it trained stays recorded
    assert runs["kept"].data.tags["attnsearch.state"] == "running" and runs["kept"].info.status == "RUNNING"
    assert client.get_run(parent).info.status == "FINISHED"


def steps_of(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))


def test_start_study_refuses_a_second_study_with_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    uri = T.resolve_tracking_uri("sqlite:///m.db", tmp_path)
    job = "name: e\ntracking: {uri: 'http://alice:hunter2@mlflow.example:5000'}\n"
    first = T.start_study(uri, "e", "s", job, {"attention": {"type": ["se"]}}, False)
    client = MlflowClient(uri)
    logged = Path(client.download_artifacts(first, "job.yaml", str(tmp_path))).read_text()
    assert "hunter2" not in logged and "http://***@mlflow.example:5000" in logged
    run = client.get_run(first)
    assert "hunter2" not in json.dumps([run.data.params, run.data.tags])
    with pytest.raises(T.TrackingError, match="resume"):
        T.start_study(uri, "e", "s", "name: e\n", {}, False)
    assert T.start_study(uri, "e", "s", "name: e\n", {}, True) == first
    # artifacts live next to the database, not in the current directory
    exp = MlflowClient(uri).get_experiment_by_name("e")
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").resolve().as_uri())


def test_parent_run_records_the_studys_definition_once(tmp_path):
    from attnsearch.tracking._parent_run import open_or_create_parent

    uri = T.resolve_tracking_uri("sqlite:///m.db", tmp_path)
    client = MlflowClient(uri)
    first = T.start_study(uri, "e", "s", "name: e\n", {}, False, objectives={"val_acc": "max", "params": "min"},
                          max_t=6)
    tags = client.get_run(first).data.tags
    assert json.loads(tags[C.TAG_OBJECTIVES]) == {"val_acc": "max", "params": "min"} and tags[C.TAG_MAX_T] == "6"
    assert list(json.loads(tags[C.TAG_OBJECTIVES])) == ["val_acc", "params"]  # the job's order
    # a resume (or a sync) with an edited job keeps the definition the study started with
    assert T.start_study(uri, "e", "s", "name: e\n", {}, True, objectives={"flops": "min"}, max_t=9) == first
    assert open_or_create_parent(uri, "e", "s", objectives={"flops": "min"}, max_t=9) == first
    assert client.get_run(first).data.tags[C.TAG_MAX_T] == "6"
    # a parent without a definition (a study from before the tags, or one sync creates) gets the missing tags
    old = T.start_study(uri, "e", "old", "name: e\n", {}, False)
    assert C.TAG_OBJECTIVES not in client.get_run(old).data.tags
    assert open_or_create_parent(uri, "e", "old", objectives={"val_acc": "max"}, max_t=3) == old
    assert json.loads(client.get_run(old).data.tags[C.TAG_OBJECTIVES]) == {"val_acc": "max"}
    created = open_or_create_parent(uri, "e", "new", objectives={"val_acc": "max"}, max_t=3)
    assert client.get_run(created).data.tags[C.TAG_MAX_T] == "3"
    with pytest.raises(ValueError, match="studies \\(oldest first\\): s, old, new"):
        T.latest_parent(client, "e", "nope")


def test_sync_command_picks_studies_and_records_their_own_fronts(tmp_path, monkeypatch, capsys):
    """`attnsearch sync JOB [--study ID|latest|all]` with the Ray side faked: which studies are synced, and each
    gets the front of its own objectives recorded once it has a completed trial."""
    from _helpers import write_job

    from attnsearch import cli, search
    from attnsearch.tracking import sync as sync_module
    from attnsearch.tracking._parent_run import open_or_create_parent

    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path, "attention:\n  type: [none, se]\n  stages: [[3]]\n",
                    search={"objectives": {"val_acc": "max", "params": "min"}})
    studies = ["tiny-20260101-000000", "tiny-20260102-000000"]
    synced = []

    def fake_sync(path, uri, experiment, study_id, max_t, *, objectives=None, datasets=(), identity=None):
        synced.append(study_id)
        parent = open_or_create_parent(uri, experiment, study_id, objectives=objectives, max_t=max_t)
        store = T.Store(uri, parent, datasets)
        record = T.TrialRecord("t-" + study_id[-6:], {"attention": "none"})
        epochs = max_t if study_id == studies[0] else 1  # the second study: only an early-stopped trial
        for e in range(1, epochs + 1):
            record.add_result({"epoch": e, "val_acc": 0.5, "params": 10.0, "flops": 5.0})
        record.finish(max_t)
        store.reconcile(record)
        return {"trials": 1}

    monkeypatch.setattr(search, "existing_studies", lambda job: list(studies))
    monkeypatch.setattr(sync_module, "sync_study", fake_sync)
    assert cli.main(["sync", str(job), "--study", "latest"]) == 0
    assert synced == studies[1:] and "no completed trial yet" in capsys.readouterr().out
    assert cli.main(["sync", str(job)]) == 0  # default: every study of the job
    out = capsys.readouterr().out
    assert synced == studies[1:] + studies and f"{studies[0]}: Pareto front recorded (1 trials" in out
    client = MlflowClient(T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path))
    first = T.latest_parent(client, "tiny", studies[0])
    assert json.loads(first.data.tags[C.TAG_OBJECTIVES]) == {"val_acc": "max", "params": "min"}
    assert json.loads(first.data.tags["attnsearch.pareto.objectives"]) == {"val_acc": "max", "params": "min"}
    assert "pareto.hypervolume" in first.data.metrics
    assert "pareto.hypervolume" not in T.latest_parent(client, "tiny", studies[1]).data.metrics
    assert cli.main(["sync", str(job), "--study", "tiny-nope"]) == 2
    assert "studies of job 'tiny': " + ", ".join(studies) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Ray searches


@pytest.mark.slow
def test_tracker_logs_every_trial(search):
    uri, parent = search["uri"], search["parent"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    parents = client.search_runs([exp.experiment_id], "tags.`attnsearch.role` = 'study'")
    assert [p.info.run_id for p in parents] == [parent]
    assert parents[0].data.tags["attnsearch.study"] == "study-a" and parents[0].info.status == "FINISHED"
    runs = children(client, parent)
    assert len(runs) == len(CONFIGS)
    ray_ids = {r.trial_id for r in read_ray_trials(search["exp_dir"], MAX_T)}
    assert {r.data.tags["attnsearch.trial_id"] for r in runs} == ray_ids
    snap = snapshot(uri, parent)
    for config in CONFIGS:
        kind = config["attention"]
        got, (state, budget) = snap[kind], EXPECTED[kind]
        assert got["tags"]["attnsearch.state"] == state, kind
        assert got["tags"]["attnsearch.budget"] == str(budget), kind
        assert got["status"] == ("FAILED" if state == "failed" else "FINISHED"), kind
        assert got["name"] == T.run_name(config)
        values, _ = T.encode_params(config)
        assert got["params"] == values, kind  # every sampled knob, nothing else
        for key in C.STATIC_METRICS:
            assert [s for s, _ in got["hist"][key]] == [0], (kind, key)  # logged once
        if budget:
            for key in ("val_acc", "val_loss", "train_loss", "nam_penalty", "lr", "epoch_time_s", "epoch"):
                assert [s for s, _ in got["hist"][key]] == list(range(1, budget + 1)), (kind, key)
    assert snap["sa"]["name"] == "sa-G4-s23-resend"
    assert snap["bam"]["tags"]["attnsearch.reason"].startswith("flops 2000000 > max_flops")
    assert "val_acc" not in snap["bam"]["hist"]
    assert snap["none"]["tags"]["attnsearch.reason"] == "val_loss is nan"
    assert "boom eca at epoch 2" in snap["eca"]["tags"]["attnsearch.reason"]
    assert snap["eca"]["tags"]["attnsearch.failures"] == "2"
    # the retried trial: one run, one value per epoch (the re-reported epoch 1 is not logged twice)
    assert snap["gc"]["tags"]["attnsearch.failures"] == "1"
    assert [v for _, v in snap["gc"]["hist"]["val_acc"]] == pytest.approx([0.91, 0.92, 0.93])
    types = json.loads(snap["eca"]["tags"]["attnsearch.param_types"])
    assert types["eca.kernel_size"] == "none" and types["train.lr"] == "float"


@pytest.mark.slow
def test_sync_fills_a_fresh_store_and_adds_nothing_twice(search, tmp_path):
    uri2 = T.resolve_tracking_uri("sqlite:///fresh.db", tmp_path)
    counts = sync_study(search["exp_dir"], uri2, "exp", "study-a", MAX_T)
    assert counts["trials"] == len(CONFIGS) and counts["runs_created"] == len(CONFIGS)
    assert counts["metrics"] > 0 and counts["finished"] == len(CONFIGS)
    parent2 = MlflowClient(uri2).search_runs(
        [MlflowClient(uri2).get_experiment_by_name("exp").experiment_id], "tags.`attnsearch.role` = 'study'"
    )[0].info.run_id
    # the same picture as the live callback wrote (reason texts of Ray errors included)
    live, synced = snapshot(search["uri"], search["parent"]), snapshot(uri2, parent2)
    assert synced == live, diff(synced, live)
    again = sync_study(search["exp_dir"], uri2, "exp", "study-a", MAX_T)
    assert again == {"trials": len(CONFIGS), "runs_created": 0, "params": 0, "metrics": 0, "tags": 0,
                     "finished": 0}
    assert snapshot(uri2, parent2) == synced


@pytest.mark.slow
def test_resumed_study_replay_creates_no_duplicates(search):
    uri, parent = search["uri"], search["parent"]
    before = snapshot(uri, parent)
    assert T.start_study(uri, "exp", "study-a", "name: exp\n", {}, resume=True) == parent
    counts = sync_study(search["exp_dir"], uri, "exp", "study-a", MAX_T)
    assert counts["runs_created"] == counts["metrics"] == counts["params"] == counts["tags"] == 0
    # a fresh tracker replaying every result of every trial (as after a driver restart) adds nothing either
    tracker = MLflowTracker(uri, "exp", parent, "study-a", MAX_T, strict=True)
    tracker.setup()
    for record in read_ray_trials(search["exp_dir"], MAX_T):
        tracker._records[record.trial_id] = record
        tracker._flush([record.trial_id])
    assert snapshot(uri, parent) == before, diff(snapshot(uri, parent), before)


@pytest.mark.slow
def test_tuner_restore_resuming_errored_trial_keeps_one_run(search):
    """Tuner.restore unpickles the tracker from tuner.pkl; the errored trial runs again into its own run.

    (resume_errored keeps the Ray trial id; restart_errored makes Ray create a new trial with a new id, which
    then gets a new child run, the old one staying failed.)"""
    uri, parent = search["uri"], search["parent"]
    before = snapshot(uri, parent)
    tuner = tune.Tuner.restore(str(search["exp_dir"]),
                               tune.with_parameters(trainable, marker_dir=str(search["tmp"] / "markers")),
                               resume_errored=True)
    tuner.fit()
    after = snapshot(uri, parent)
    assert set(after) == set(before) and len(children(MlflowClient(uri), parent)) == len(CONFIGS)
    assert after["eca"]["tags"]["attnsearch.state"] == "failed" and after["eca"]["status"] == "FAILED"
    assert after["eca"]["tags"]["attnsearch.failures"] == "3"  # Ray's cumulative count: 2 before, 1 now
    assert [s for s, _ in after["eca"]["hist"]["val_acc"]] == [1]  # epoch 1 re-reported, not re-logged
    for kind in set(before) - {"eca"}:
        assert after[kind] == before[kind], diff(after[kind], before[kind])


class FlakyTracker(MLflowTracker):
    """Fails the first `fail_calls` store writes, like a tracking server that is down for a while."""

    fail_calls = 4

    def _reconcile(self, record):
        type(self).calls = getattr(type(self), "calls", 0) + 1
        if type(self).calls <= self.fail_calls:
            raise ConnectionError("Connection refused (simulated)")
        super()._reconcile(record)


@pytest.mark.slow
def test_outage_warns_once_and_catches_up(ray_session, tmp_path, caplog):
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "exp", "study-b", "name: exp\n", {}, False)
    configs = CONFIGS[:2]
    tracker = FlakyTracker(uri, "exp", parent, "study-b", MAX_T, retry_interval_s=0.0)
    with caplog.at_level(logging.WARNING, logger="attnsearch.tracking"):
        run_search(tmp_path, tracker, name="flaky", configs=configs)
    warnings = [r for r in caplog.records if "failed" in r.getMessage() and "goes on" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    snap = snapshot(uri, parent)
    assert {k: v["tags"]["attnsearch.state"] for k, v in snap.items()} == {"se": "completed", "sa": "early_stopped"}
    assert [s for s, _ in snap["se"]["hist"]["val_acc"]] == [1, 2, 3]


@pytest.mark.slow
def test_dead_server_does_not_stop_the_search_and_sync_recovers(ray_session, tmp_path, caplog):
    tracker = MLflowTracker(f"http://127.0.0.1:{free_port()}", "exp", "0" * 32, "study-c", MAX_T)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="attnsearch.tracking"):
        exp_dir = run_search(tmp_path, tracker, name="dead", configs=CONFIGS[:2])
    assert time.perf_counter() - t0 < 60
    assert "unavailable" in caplog.text and tracker.errors >= 1
    uri = T.resolve_tracking_uri("sqlite:///later.db", tmp_path)
    counts = sync_study(exp_dir, uri, "exp", "study-c", MAX_T)
    assert counts["runs_created"] == 2
    assert {k: v["tags"]["attnsearch.state"] for k, v in snapshot(uri, MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("exp").experiment_id],
        "tags.`attnsearch.role` = 'study'")[0].info.run_id).items()} == {"se": "completed", "sa": "early_stopped"}


# ------------------------------------------------------------------------------------------------ real server


class KillServerOnFirstResult(tune.Callback):
    """Takes the tracking server away in the middle of the search (at the first result, after the first run
    was created). Holds only ids: Ray pickles callbacks into tuner.pkl."""

    def __init__(self, pgid: int, port: int) -> None:
        self.pgid, self.port, self.done = pgid, port, False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import os
        import signal

        if self.done:
            return
        self.done = True
        os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it really stops answering
            try:
                _http_get(f"http://127.0.0.1:{self.port}/health", 0.5)
            except OSError:
                return
            time.sleep(0.2)


@pytest.mark.slow
def test_real_mlflow_server_end_to_end(ray_session, tmp_path):
    from attnsearch import pareto

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    server = Server(cmd, port, tmp_path / "server.log").start()
    uri = f"http://127.0.0.1:{port}"
    configs = CONFIGS[:4]
    try:
        T.check_tracking(uri)
        parent = T.start_study(uri, "exp", "study-s", "name: exp\n", {"attention": {"type": ["se"]}}, False)
        tracker = MLflowTracker(uri, "exp", parent, "study-s", MAX_T, strict=True)
        run_search(tmp_path, tracker, name="live", configs=configs)
        client = MlflowClient(uri)
        assert len(children(client, parent)) == len(configs)
        snap = snapshot(uri, parent)
        for config in configs:
            kind = config["attention"]
            assert snap[kind]["tags"]["attnsearch.state"] == EXPECTED[kind][0], kind
            assert snap[kind]["tags"]["attnsearch.budget"] == str(EXPECTED[kind][1]), kind
        front, hv = pareto.analyze(uri, "exp", "study-s")
        assert list(front["attention"]) == ["se"] and hv > 0
        names = {a.path for a in client.list_artifacts(parent)}
        assert {"pareto.csv", "pareto.png", "job.yaml", "search_space.yaml"} <= names
        flags = {r.data.params["attention"]: r.data.tags["attnsearch.pareto"] for r in children(client, parent)}
        assert flags == {"se": "true", "sa": "false", "bam": "false", "none": "false"}
        # "resume": the same parent, a replay of the whole Ray directory, still one run per trial
        assert T.start_study(uri, "exp", "study-s", "name: exp\n", {}, resume=True) == parent
        counts = sync_study(tmp_path / "ray" / "live", uri, "exp", "study-s", MAX_T)
        assert counts["runs_created"] == counts["metrics"] == 0
        assert len(children(client, parent)) == len(configs)

        # the server goes away in the middle of a second study: the search finishes, sync fills MLflow later
        parent2 = T.start_study(uri, "exp", "study-t", "name: exp\n", {}, False)
        tracker = MLflowTracker(uri, "exp", parent2, "study-t", MAX_T, retry_interval_s=5)
        (tmp_path / "second").mkdir()
        t0 = time.perf_counter()
        exp_dir = run_search(tmp_path / "second", tracker, name="lost", configs=configs,
                             first_callbacks=[KillServerOnFirstResult(server.proc.pid, port)])
        lost_s = time.perf_counter() - t0
    finally:
        server.stop()
    assert tracker.errors >= 1 and lost_s < 120, (tracker.errors, lost_s)

    server = Server(cmd, port, tmp_path / "server.log").start()
    try:
        counts = sync_study(exp_dir, uri, "exp", "study-t", MAX_T)
        assert counts["trials"] == len(configs)
        snap2 = snapshot(uri, parent2)
        assert set(snap2) == {c["attention"] for c in configs}
        assert {k: v["tags"]["attnsearch.state"] for k, v in snap2.items()} == {
            c["attention"]: EXPECTED[c["attention"]][0] for c in configs}
        assert sync_study(exp_dir, uri, "exp", "study-t", MAX_T)["metrics"] == 0
        assert len(children(MlflowClient(uri), parent)) == len(configs)  # the first study is untouched
    finally:
        server.stop()
    assert server.proc.returncode is not None

    # `attnsearch ui` on a local store: the command serves the UI on 127.0.0.1
    ui_port = free_port()
    ui = Server(T.ui_command(f"sqlite:///{tmp_path}/server.db", port=ui_port), ui_port, tmp_path / "ui.log",
                env=T.ui_environment(f"sqlite:///{tmp_path}/server.db"))
    try:
        ui.start()
    finally:
        ui.stop()


def test_each_child_run_gets_its_dataset_inputs_once(tmp_path):
    from attnsearch.config import DataConfig

    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "exp", "s", "name: exp\n", {}, False)
    datasets = T.dataset_inputs(DataConfig(dataset="digits"))
    record = T.TrialRecord("t0", {"attention": "none"})
    record.add_result({"epoch": 1, "val_acc": 0.5})
    store = T.Store(uri, parent, datasets)
    store.reconcile(record)
    store.reconcile(record)
    T.Store(uri, parent, datasets).reconcile(record)  # a resumed driver reads the run back
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("exp").experiment_id
    (run,) = client.search_runs([experiment_id], "tags.`attnsearch.trial_id` = 't0'")
    inputs = run.inputs.dataset_inputs
    assert sorted((i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs) == sorted(
        (d["name"], d["digest"], d["context"]) for d in datasets)
    assert {i.dataset.source_type for i in inputs} == {"code"} and "load_digits" in inputs[0].dataset.source
    train, val = datasets
    assert train["digest"] != val["digest"]
    # the digest follows the split, not how batches are loaded
    assert T.dataset_inputs(DataConfig(dataset="digits", val_fraction=0.3))[0]["digest"] != train["digest"]
    assert T.dataset_inputs(DataConfig(dataset="digits", batch_size=7, image_size=24))[0]["digest"] == train["digest"]
    folder = T.dataset_inputs(DataConfig(dataset="folder", root=str(tmp_path)))[0]
    assert folder["source_type"] == "local" and json.loads(folder["source"])["uri"] == tmp_path.resolve().as_uri()


def test_the_parent_run_logs_the_studys_definition_once(tmp_path, caplog):
    from attnsearch.config import load_job
    from attnsearch.search import space_digest, study_params
    from attnsearch.space import load_space, space_to_dict

    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml")
    space = load_space(job)
    params = study_params(job, space)
    assert params["search.sampler"] == "tpe" and params["scheduler.type"] == "moasha"
    assert json.loads(params["scheduler.rungs"]) == {"2": 3} and params["train.epochs"] == "6"  # grace 2, factor 3
    assert "scheduler.grace_period" not in params and params["scheduler.rung_metric"] == "train_loss"  # in rungs
    assert json.loads(params["search.objectives"]) == {"val_acc": "max", "flops": "min"}
    assert params["search.space"] == "quickstart.yaml" and params["search.space_digest"] == space_digest(space)
    assert params["backbone.name"] == "resnet20" and params["data.dataset"] == "digits"
    assert params["data.validation"] == "split"  # the protocol: validated on a split of the training images
    cifar = job.data.model_copy(update={"dataset": "cifar10", "root": str(tmp_path), "validation": "official"})
    assert study_params(job.model_copy(update={"data": cifar}), space)["data.validation"] == "official"
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "q", "s", "name: q\n", space_to_dict(space), False, params=params)
    client = MlflowClient(uri)
    assert client.get_run(parent).data.params == params
    edited = {**params, "search.num_samples": "48", "search.new": "x"}
    with caplog.at_level(logging.WARNING):
        assert T.start_study(uri, "q", "s", "name: q\n", space_to_dict(space), True, params=edited) == parent
    assert client.get_run(parent).data.params == {**params, "search.new": "x"}
    assert "search.num_samples (24 -> 48)" in caplog.text
