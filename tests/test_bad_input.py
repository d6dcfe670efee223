"""Bad input to `attnsearch run`: one clear message naming what and where, exit status 2, nothing started, nothing lost.

Every case runs the real CLI entry point (``cli.main``) in a folder that already holds an MLflow store with a
previous study of the same experiment: each row of the catalogue tests/_helpers.BAD_JOBS, and apart from it only
the cases that need a setup of their own (each says why). After the refusal: no Ray experiment directory exists,
Ray was not started (except where the cluster itself must be asked, the GPU case), and the MLflow store is
byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from _helpers import BAD_JOBS, free_port, with_sections  # noqa: E402

from attnsearch import search  # noqa: E402
from attnsearch.cli import main  # noqa: E402
from attnsearch.config import ConfigError  # noqa: E402

JOB = textwrap.dedent(
    """\
    name: bad
    backbone: {name: resnet20}
    data: {dataset: digits, image_size: 8, batch_size: 64}
    train: {epochs: 2, lr: 0.1, threads: 1}
    search:
      space: space.yaml
      sampler: random
      num_samples: 2
      max_concurrent: 1
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1}
    tracking: {uri: sqlite:///mlflow.db}
    ray: {storage_path: ray_results, num_cpus: 1}
    """
)
SPACE = textwrap.dedent(
    """\
    attention:
      type: [none, se, sa]
      stages: [[3]]
      position: [default]
      knobs:
        se: {reduction: [4]}
        sa: {groups: [2]}
    """
)
# The store's earlier study: the table's row resuming it finds it in MLflow, but Ray has no such study.
PREVIOUS_STUDY = BAD_JOBS["resume_unknown_study"].args[1]


@pytest.fixture(scope="module")
def previous_store(tmp_path_factory) -> Path:
    """An MLflow store holding a finished earlier study of experiment 'bad': a parent run and a trial run."""
    from mlflow.entities import Metric

    from attnsearch import tracking

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    parent = tracking.start_study(uri, "bad", PREVIOUS_STUDY, JOB, {"attention": {"type": ["none"]}}, resume=False)
    client = mlflow.MlflowClient(uri)
    child = client.create_run(client.get_run(parent).info.experiment_id, tags={
        "mlflow.parentRunId": parent, "attnsearch.study": PREVIOUS_STUDY, "attnsearch.role": "trial",
        "attnsearch.trial_id": "0000abcd", "attnsearch.state": "completed",
    })
    client.log_batch(child.info.run_id, metrics=[Metric("val_acc", 0.5 + e / 10, 0, e) for e in (1, 2)])
    client.set_terminated(child.info.run_id)
    client.set_terminated(parent)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the store, its artifacts) by content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch, previous_store, ray_driver):
    """The job's folder: job.yaml + space.yaml + the previous study's store; Ray state kept out of /tmp/ray."""
    shutil.copy(previous_store / "mlflow.db", tmp_path / "mlflow.db")
    shutil.copytree(previous_store / "mlartifacts", tmp_path / "mlartifacts")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refuse(workdir: Path, capsys, *, job: str = JOB, space: str = SPACE, args: tuple[str, ...] = (),
           job_file: str = "job.yaml", ray_may_start: bool = False) -> str:
    """Run `attnsearch run JOB_FILE ARGS`; assert exit 2, nothing started, nothing lost; return the message."""
    (workdir / "job.yaml").write_text(job)
    (workdir / "space.yaml").write_text(space)
    store = {k: v for k, v in snapshot(workdir).items() if not k.endswith(".yaml")}
    capsys.readouterr()
    rc = main(["run", job_file, *args])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.startswith("attnsearch run: error: ") and "Traceback" not in err, err
    assert not (workdir / "ray_results").exists()  # no study directory, no trial
    assert {k: v for k, v in snapshot(workdir).items() if not k.endswith(".yaml")} == store  # MLflow untouched
    assert ray_may_start or not ray.is_initialized()
    return err.removeprefix("attnsearch run: error: ").strip()


def has(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


# --------------------------------------------------------------------------------------------------- job file


def test_malformed_yaml(workdir, capsys):
    # apart from the table: its rows replace parsed sections, and this job text does not parse
    msg = refuse(workdir, capsys, job=JOB.replace("backbone: {name: resnet20}", "backbone: {name: resnet20"))
    has(msg, "job.yaml:3:", "malformed YAML", "flow mapping")


def test_missing_job_file(workdir, capsys):
    # apart from the table: every row runs the job file it writes
    msg = refuse(workdir, capsys, job_file="nojob.yaml")
    has(msg, "nojob.yaml", "no such job file")


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_each_bad_input_of_the_catalogue_is_refused_by_run(workdir, capsys, case):
    """Every row of tests/_helpers.BAD_JOBS (the job's, the space's, the data's, Ray's, --resume's), the table
    tests/test_config.py checks the loader with. The cases below need a setup of their own."""
    row = BAD_JOBS[case]
    msg = refuse(workdir, capsys, job=with_sections(JOB, row.sections),
                 space=SPACE if row.space is None else row.space, args=row.args)
    has(msg, *([row.file] if row.file else []), *row.parts)


# --------------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("layout", ["empty", "no images"])
def test_data_root_without_images(workdir, capsys, layout):
    # apart from the table: the folder tree is made first
    root = workdir / "images"
    root.mkdir()
    if layout == "no images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("not an image")
    msg = refuse(workdir, capsys, job=JOB.replace("dataset: digits", "dataset: folder, root: images"))
    has(msg, "data.root", str(root), "no class folders" if layout == "empty" else "holds no images")


@pytest.mark.parametrize("problem", ["missing", "bad magic", "count mismatch"])
def test_fashion_mnist_files_missing_or_malformed(workdir, capsys, problem):
    # apart from the table: the IDX files are written first
    root = workdir / "fm"
    root.mkdir()
    good = {"train-images-idx3-ubyte": bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 784),
            "train-labels-idx1-ubyte": bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7]),
            "t10k-images-idx3-ubyte": bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(784),
            "t10k-labels-idx1-ubyte": bytes([0, 0, 8, 1, 0, 0, 0, 1, 4])}
    if problem == "missing":
        del good["t10k-images-idx3-ubyte"]
    elif problem == "bad magic":
        good["train-images-idx3-ubyte"] = b"\x1f\x8b" + good["train-images-idx3-ubyte"][2:]
    else:
        good["train-labels-idx1-ubyte"] = bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 7, 1])
    for name, data in good.items():
        (root / name).write_bytes(data)
    msg = refuse(workdir, capsys, job=JOB.replace("dataset: digits", "dataset: fashion_mnist, root: fm"))
    expected = {"missing": "is missing t10k-images-idx3-ubyte", "bad magic": "bad magic number",
                "count mismatch": "holds 2 images but"}[problem]
    has(msg, "data.root", str(root), expected)


# --------------------------------------------------------------------------------------------------- services


def test_unreachable_tracking_server(workdir, capsys):
    # apart from the table: a port nothing listens on is found when the test runs, and the refusal is timed
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    msg = refuse(workdir, capsys, job=JOB.replace("sqlite:///mlflow.db", uri))
    assert time.monotonic() - started < 30
    has(msg, uri, "unreachable", "Connection refused", "mlflow server")


def test_ray_address_that_does_not_answer(workdir, capsys):
    # apart from the table: a port nothing listens on is found when the test runs, and the refusal is timed
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    msg = refuse(workdir, capsys, job=JOB.replace("num_cpus: 1", f"address: '{address}'"))
    assert time.monotonic() - started < 30  # ray.init alone keeps retrying such an address for minutes
    has(msg, f"ray.address='{address}'", "no Ray cluster answers", "connection refused", "ray start --head",
        "ray.address: null")


def test_ray_address_from_the_environment_that_does_not_answer(workdir, capsys, monkeypatch):
    # apart from the table: the address comes from the environment, not the job
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)  # ray.address stays null: Ray's own convention applies
    msg = refuse(workdir, capsys)
    has(msg, f"$RAY_ADDRESS='{address}' (ray.address is null)", "no Ray cluster answers", "connection refused")


def test_ray_address_auto_without_a_cluster(workdir, capsys, monkeypatch):
    # apart from the table: Ray's own cluster lookup is patched (other tests' clusters may run on this machine)
    from ray._private import services

    def none_running() -> frozenset:
        return frozenset()

    none_running.cache_clear = lambda: None  # ray.shutdown() calls it
    # Other Ray instances may run on this machine (other tests); Ray's own lookup must not find them here.
    monkeypatch.setattr(services, "find_gcs_addresses", none_running)
    msg = refuse(workdir, capsys, job=JOB.replace("num_cpus: 1", "address: auto"))
    has(msg, "ray.address", "'auto' found no running Ray cluster", "ray start --head", "ray.address: null")


def test_ray_address_where_something_else_answers(workdir, capsys):
    # apart from the table: an HTTP server answers at the address meanwhile
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_port}"
        msg = refuse(workdir, capsys, job=JOB.replace("num_cpus: 1", f"address: '{address}'"))
    finally:
        server.shutdown()
        server.server_close()
    has(msg, f"ray.address='{address}'", "not a Ray GCS", "no gRPC answer")


def test_silent_ray_address_times_out(monkeypatch):
    # apart from the table: a listener that never speaks, and a shortened timeout, on the resolver itself
    monkeypatch.setattr("attnsearch.uris.RAY_CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as listener:  # the kernel accepts the connection; nobody ever speaks
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConfigError, match="no gRPC answer within 1 s"):
            search.resolve_ray_address(address)
        assert time.monotonic() - started < 5


@pytest.mark.slow  # starts a local Ray: the cluster's resources are what is checked
def test_gpus_the_cluster_lacks(workdir, capsys):
    # apart from the table: a local Ray starts (slow), as the cluster's resources are what is checked
    # ray.num_gpus: 0 makes the local cluster GPU-less on any machine
    job = JOB.replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}")
    job = job.replace("num_cpus: 1", "num_cpus: 1, num_gpus: 0")
    msg = refuse(workdir, capsys, job=job, ray_may_start=True)
    has(msg, "resources", "1 CPU and 1 GPU", "node 0: 1 CPU, 0 GPU", "resources.gpu")


@pytest.mark.slow  # starts a local Ray: a job refused for its resources leaves no new store behind
def test_refused_job_creates_no_tracking_store(tmp_path, monkeypatch, capsys, ray_driver):
    # apart from the table: a folder without the previous study's store, and a local Ray (slow)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.yaml").write_text(JOB.replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}")
                                       .replace("num_cpus: 1", "num_cpus: 1, num_gpus: 0"))
    (tmp_path / "space.yaml").write_text(SPACE)
    assert main(["run", "job.yaml"]) == 2
    assert "resources.gpu" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "space.yaml"]  # no mlflow.db, no ray_results


def test_a_value_error_while_running_is_a_failure_not_bad_input(workdir, monkeypatch, capsys):
    # apart from the table: not bad input (exit 1); the study itself is patched to raise
    # only the project's own input-error type means exit 2; a bug deep inside a study is a failure (1) with its
    # traceback, credentials of URIs in it redacted
    def broken(*args, **kwargs):
        raise ValueError("deep inside a running study at http://u:SECRET@mlflow:5000")

    monkeypatch.setattr("attnsearch.search.run_study", broken)
    (workdir / "job.yaml").write_text(JOB)
    (workdir / "space.yaml").write_text(SPACE)
    assert main(["run", "job.yaml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: deep inside a running study at http://***@mlflow:5000" in err
    assert "SECRET" not in err


@pytest.mark.parametrize("args, message", [
    (["modules", "--channels", "-3"], "modules: --channels must be a positive integer, got -3"),
    (["modules", "--size", "0"], "modules: --size must be a positive integer, got 0"),
    (["flops", "--backbone", "resnet20", "--input-size", "0"], "flops: --input-size must be a positive integer"),
    (["flops", "--backbone", "resnet20", "--input-size", "-16"], "got -16"),
    (["sites", "resnet20", "--input-size", "0"], "input_size must be positive"),
])
def test_inspection_commands_refuse_sizes_below_one(capsys, args, message):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "", captured


@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_ui_servers_refuse_a_port_taken_or_out_of_range_before_starting(workdir, capsys, monkeypatch, command):
    """MLflow's server and optuna-dashboard log a bind error and exit 0: the command must refuse first."""
    from attnsearch import tracking

    (workdir / "job.yaml").write_text(JOB)
    (workdir / "space.yaml").write_text(SPACE)
    monkeypatch.setattr(tracking, "serve_ui", lambda *a, **k: pytest.fail("a server started on a bad port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([command, "job.yaml", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"{command} --port {port}: cannot listen on 127.0.0.1:{port}" in err and "choose a free port" in err
    assert main([command, "job.yaml", "--port", "99999"]) == 2
    assert f"{command} --port 99999: must be a TCP port, 1-65535" in capsys.readouterr().err


def test_the_readmes_bad_input_table_lists_each_case_once():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| bad input |")]
    cases = [row.split(" | ", 1)[0].removeprefix("| ").strip() for row in rows]
    messages = [row.split(" | ", 1)[1].strip() for row in rows]
    assert len(rows) > 20, rows  # the table itself, not a lost heading
    assert len(set(cases)) == len(cases), sorted(c for c in cases if cases.count(c) > 1)
    assert len(set(messages)) == len(messages), sorted(m for m in messages if messages.count(m) > 1)
