"""What attnsearch promises on top of MLflow's and Ray's own security: credentials of URIs never leave the process,
bounded input stays bounded, names never escape their folders, the UI says when it is exposed.

(Device claims in a private folder: tests/test_latency.py; the compose stack's secrets: tests/test_docker.py;
redaction and the tracker's pickle: tests/test_tracking.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from _helpers import free_port, write_job

from attnsearch import cli
from attnsearch.export import folder_name

SPACE = "attention: {type: [none, se], stages: [[3]], knobs: {se: {reduction: [4]}}}\n"
SECRET = "S3CR3T-pw"


def _alias_bomb(levels: int = 10, fanout: int = 10) -> str:
    """A flow sequence whose items define ten nested levels of ten aliases each: 10**10 nodes in < 1 KB."""
    items = ["&a0 [" + ", ".join(["x"] * fanout) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


BOMBED = {  # where a 1 KB file puts the bomb: (job file sections, space file)
    "search.sampler": ({"search": {"sampler": "BOMB"}}, SPACE),
    "an inline space": ({"search": {"space": {"attention": {"type": "BOMB"}}}}, SPACE),
    "a knob's choices": ({}, "attention: {type: [se], knobs: {se: {reduction: BOMB}}}\n"),
}

# One interpreter for the three files (importing torch takes most of the time): each `attnsearch run` must exit 2.
_DRIVER = textwrap.dedent("""\
    import json, resource, sys, time
    import attnsearch.space  # torch and the zoo first: the seconds below are the job's own
    from attnsearch.cli import main
    out = {}
    for job in sys.argv[1:]:
        t0 = time.perf_counter()
        code = main(["run", job])
        out[job] = [code, time.perf_counter() - t0]
    out["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # this interpreter's own peak
    print(json.dumps(out))
""")


def test_a_1kb_alias_bomb_in_any_field_exits_2_in_seconds_and_small_memory(tmp_path):
    import resource

    bomb = _alias_bomb()
    jobs = []
    for i, (label, (sections, space)) in enumerate(BOMBED.items()):
        folder = tmp_path / f"case{i}"
        job = write_job(folder, space.replace("BOMB", bomb), **sections)
        job.write_text(job.read_text().replace("BOMB", bomb).replace(f"'{bomb}'", bomb))
        (folder / "space.yaml").write_text(space.replace("BOMB", bomb))
        size = max(job.stat().st_size, (folder / "space.yaml").stat().st_size)
        assert size < 1200 and bomb in job.read_text() + (folder / "space.yaml").read_text(), label
        jobs.append(str(job))

    def limit():  # a safety net for the machine: a regression dies at 8 GiB instead of taking all of its memory
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run([sys.executable, "-c", _DRIVER, *jobs], capture_output=True, text=True, timeout=240,
                          preexec_fn=limit, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # the child's own peak: RUSAGE_CHILDREN would be the largest of every child this pytest process ever waited for
    peak_mib = results.pop("peak_kib") / 1024
    for (label, _), job in zip(BOMBED.items(), jobs, strict=True):
        code, seconds = results[job]
        assert code == 2 and seconds < 10, (label, code, seconds)
    assert proc.stderr.count("YAML aliases expand this document beyond") == len(jobs), proc.stderr[-3000:]
    assert peak_mib < 2048, f"peak RSS {peak_mib:.0f} MiB"  # torch alone is ~1 GiB here; a bomb is many more


def test_names_made_only_of_dots_are_refused(tmp_path, capsys):
    for sections, key in (({"name": ".."}, "name"), ({"tracking": {"experiment": "."}}, "tracking.experiment")):
        job = write_job(tmp_path, SPACE, **sections)
        assert cli.main(["run", str(job)]) == 2
        err = capsys.readouterr().err
        assert f"{key}:" in err and "made only of dots" in err
    assert not (tmp_path / "ray_results").exists()
    # names that come from MLflow (run names) never name the export folder itself or its parent either
    assert folder_name("..", None) == "_." and folder_name(".", None) == "_"
    assert folder_name("../../x", "t1") == "_._.._x-t1"  # one folder name: no separator, no leading dot


def test_set_values_are_redacted_in_every_message(tmp_path, capsys):
    job = write_job(tmp_path, SPACE)
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    assert cli.main(["run", str(job), "--set", f"tracking.uri={uri}", "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "http://***@127.0.0.1" in err and SECRET not in err
    assert cli.main(["run", str(job), "--set", f"nope.key={uri}"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and SECRET not in err


@pytest.mark.parametrize("command", [
    ["pareto", "JOB"], ["pareto", "some-experiment", "--tracking-uri", "URI"], ["export", "JOB", "--front",
                                                                                "--out", "OUT"],
])
def test_pareto_and_export_get_the_preflight_of_run(tmp_path, capsys, command):
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
    job = write_job(tmp_path, SPACE, tracking={"uri": uri})
    argv = [str(job) if a == "JOB" else uri if a == "URI" else str(tmp_path / "out") if a == "OUT" else a
            for a in command]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "unreachable" in err and "http://***@127.0.0.1" in err
    assert SECRET not in out + err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_ui_warns_when_it_listens_beyond_this_machine_and_keeps_the_store_off_its_command_line(
        tmp_path, capsys, monkeypatch):
    from attnsearch import tracking

    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path, SPACE)
    tracking.check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # the store exists
    started = []
    monkeypatch.setattr(tracking, "serve_ui", lambda command, url, **kw: started.append((command, kw)) or 0)
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        assert cli.main(["ui", str(job), "--host", host, "--port", "5999"]) == 0
        err = capsys.readouterr().err
        assert ("without authentication" in err) is warned, (host, err)
    command, kw = started[-1]
    assert not [part for part in command if "mlflow.db" in part]
    assert kw["env"]["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path}/mlflow.db"


def test_submit_dry_run_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    job = write_job(tmp_path, SPACE, ray={"storage_path": "/shared/results"},
                    tracking={"uri": "http://mlflow:5000"})
    before = job.read_text()
    assert cli.main(["submit", str(job), "--dry-run", str(tmp_path)]) == 2  # the job's own folder
    assert "not an empty folder" in capsys.readouterr().err and job.read_text() == before
    assert cli.main(["submit", str(job), "--dry-run", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new").is_dir() and any((tmp_path / "new").iterdir())


# ------------------------------------------------------------------------------- credentials never leave the process

def _secret_uri(port: int | None = None) -> str:
    return f"http://user:{SECRET}@127.0.0.1:{port or free_port()}"


def test_submit_sends_no_credentials_anywhere(tmp_path, capsys):
    """A Ray Job's entrypoint and uploaded job file are shown to every dashboard user: submit refuses a URI with
    credentials in a --set value or in the job file, naming the key and where the credentials go instead."""
    job = write_job(tmp_path, SPACE, ray={"storage_path": "/shared/results"},
                    tracking={"uri": "http://mlflow:5000"})
    cases = [
        (["--set", f"tracking.uri={_secret_uri()}"], "tracking.uri holds credentials", "MLFLOW_TRACKING_USERNAME"),
        # refused for every command, by the job's own check (Ray would pickle it into the study's tuner.pkl)
        (["--set", f"ray.storage_path=s3://KEY:{SECRET}@bucket/results"], "ray.storage_path: credentials in the URI",
         "AWS_ACCESS_KEY_ID"),
        (["--set", f"search.optuna_storage=postgresql://u:{SECRET}@db/optuna"],
         "search.optuna_storage holds credentials", "without them"),
    ]
    for extra, key, fix in cases:
        out_dir = tmp_path / "wd"
        for argv in (["submit", str(job), *extra, "--dry-run", str(out_dir)],
                     ["submit", str(job), *extra, "--address", "http://127.0.0.1:1"]):  # refused before connecting
            assert cli.main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert key in err and fix in err, err
            assert SECRET not in out + err and not out_dir.exists()
    in_file = write_job(tmp_path / "f", SPACE, tracking={"uri": _secret_uri(5000)})  # the file itself is uploaded
    assert cli.main(["submit", str(in_file), "--dry-run", str(tmp_path / "wd")]) == 2
    assert "tracking.uri holds credentials" in capsys.readouterr().err and not (tmp_path / "wd").exists()
    # without credentials the same job is sent as before
    assert cli.main(["submit", str(job), "--set", "tracking.uri=http://mlflow:5000", "--dry-run",
                     str(tmp_path / "wd")]) == 0
    assert "entrypoint  attnsearch run job.yaml --set tracking.uri=http://mlflow:5000" in capsys.readouterr().out


def test_trials_get_the_job_without_the_driver_s_credentials(tmp_path):
    """What Ray stores for every trial (its object store, the study's state) holds no credential of the URIs only
    the driver uses, and is still a job the trial validates."""
    import pickle

    from attnsearch.config import Job, load_job
    from attnsearch.search import trial_job
    from attnsearch.space import load_space

    job = load_job(write_job(tmp_path, SPACE, tracking={"uri": _secret_uri(5000)},
                             search={"optuna_storage": f"postgresql://u:{SECRET}@db:5432/optuna"}))
    space = load_space(job)
    # a job refuses such a storage path (test below); were one to get through anyway, trials would not see it
    job = job.model_copy(update={"ray": job.ray.model_copy(update={"storage_path": f"s3://KEY:{SECRET}@bucket/results"})})
    given = trial_job(job, space)
    assert SECRET.encode() not in pickle.dumps(given)
    assert given["tracking"]["uri"] == "http://127.0.0.1:5000"
    assert given["search"]["optuna_storage"] == "postgresql://db:5432/optuna"
    assert given["ray"]["storage_path"] == "s3://bucket/results"
    assert Job.model_validate(given).search.space == given["search"]["space"]  # what run_trial does with it
    assert job.tracking.uri == _secret_uri(5000)  # the driver keeps them
    job.tracking.uri = f"http://user:pa/{SECRET}@127.0.0.1:5000"  # not an authority: urlsplit sees no userinfo
    assert SECRET not in trial_job(job, space)["tracking"]["uri"]


def test_storage_path_credentials_are_redacted_in_messages(tmp_path, capsys):
    from attnsearch.config import load_job
    from attnsearch.search import optuna_storage_url

    job = load_job(write_job(tmp_path, SPACE))
    job = job.model_copy(update={"ray": job.ray.model_copy(update={"storage_path": f"s3://KEY:{SECRET}@bucket/results"})})
    with pytest.raises(Exception, match=r"s3://\*\*\*@bucket/results") as err:
        optuna_storage_url(job, "tiny-1")
    assert SECRET not in str(err.value)


# Every command that reads a study's MLflow records, as a user runs it after the study; then the two that read only
# its Optuna record (`importance` ranks offline, `dashboard` serves it: both only without a study).
MLFLOW_COMMANDS = [
    ["pareto", "JOB"], ["export", "JOB", "--front", "--out", "OUT"], ["sync", "JOB"], ["retrain", "JOB", "--front"],
    ["ui", "JOB"], ["prune", "JOB", "--front"], ["run", "JOB"],
]
OPTUNA_COMMANDS = [["importance", "JOB"], ["dashboard", "JOB"]]


def _run_commands(job, uri: str, out_dir, commands) -> dict[str, tuple[int, str]]:
    """Each of ``commands`` with ``--set tracking.uri=URI``: its exit status and everything it printed."""
    import contextlib
    import io

    results = {}
    for command in commands:
        argv = [str(job) if a == "JOB" else str(out_dir) if a == "OUT" else a for a in command]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*argv, "--set", f"tracking.uri={uri}"])
        results[command[0]] = code, out.getvalue() + err.getvalue()
    return results


def test_every_study_command_against_a_dead_server_with_credentials(tmp_path):
    job = write_job(tmp_path, SPACE)
    for name, (code, text) in _run_commands(job, _secret_uri(), tmp_path / "out",
                                            MLFLOW_COMMANDS + OPTUNA_COMMANDS).items():
        assert code == 2, (name, text)
        assert SECRET not in text and "Traceback" not in text, (name, text)
    assert not (tmp_path / "out").exists()


def _files_holding(root, secret: bytes) -> list[str]:
    """The files under ``root`` whose bytes hold ``secret`` (binary-safe: pickles, SQLite pages, logs)."""
    from pathlib import Path

    return [str(p) for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()
            and secret in p.read_bytes()]


@pytest.mark.slow
def test_a_study_through_an_outage_leaves_its_credentials_nowhere(tmp_path):
    """`attnsearch run` against an MLflow server reached as http://user:SECRET@..., killed once the first trial's
    run exists: the study ends on its own, and no byte of the secret is in its output, in any file under its
    ray.storage_path, in Ray's session folder, in the server's store, or in what every study command prints
    afterwards against the dead server."""
    import contextlib
    import os
    import signal
    import sqlite3
    import tempfile
    import threading
    import time
    from pathlib import Path

    from _helpers import BIN, SE_SPACE, Server, ray_env, remove_dir

    port = free_port()
    server = Server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                     f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    port, tmp_path / "server.log").start()
    uri = _secret_uri(port)
    job = write_job(tmp_path / "job", SE_SPACE, tracking={"uri": uri}, train={"epochs": 2},
                    search={"num_samples": 2, "max_concurrent": 1, "seed": 0},
                    ray={"storage_path": str(tmp_path / "ray_results"), "num_cpus": 1})
    killed = threading.Event()

    def kill_at_first_trial_run() -> None:  # the outage: once MLflow holds the first trial's run
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(sqlite3.Error), sqlite3.connect(tmp_path / "server.db") as db:
                if db.execute("select count(*) from tags where key = 'attnsearch.role' and value = 'trial'"
                              ).fetchone()[0]:
                    server.stop()
                    killed.set()
                    return
            time.sleep(0.1)

    temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # this study's Ray session, grepped too
    env = ray_env(RAY_TMPDIR=str(temp), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    killer = threading.Thread(target=kill_at_first_trial_run, daemon=True)
    killer.start()
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "attnsearch"), "run", str(job)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver's group: its local Ray
        proc.wait()
        server.stop()
        killer.join(timeout=5)
    seconds = time.monotonic() - t0
    try:
        text = output.decode(errors="replace")
        assert killed.is_set(), text[-3000:]  # the server did go down in the middle of the study
        assert proc.returncode == 0 and "2 trials" in text, text[-3000:]
        assert "http://***@127.0.0.1" in text, text[-3000:]  # the outage was reported, redacted
        assert SECRET.encode() not in output
        studies = [p for p in (tmp_path / "ray_results").iterdir() if p.is_dir()]
        assert len(studies) == 1 and any(studies[0].glob("trial_*/result.json"))
        for root in (tmp_path / "ray_results", tmp_path / "artifacts", temp):
            assert _files_holding(root, SECRET.encode()) == [], root
        assert _files_holding(tmp_path, SECRET.encode()) == [str(job)]  # the user's own file, nothing else
        # every study command, the study there, the server dead (`importance` needs no MLflow: it ranks the
        # study's Optuna record)
        for name, (code, printed) in _run_commands(job, uri, tmp_path / "out",
                                                   [*MLFLOW_COMMANDS, ["importance", "JOB"]]).items():
            assert SECRET not in printed and "Traceback" not in printed, (name, printed)
            assert code != 0 or name == "importance", (name, printed)
        assert not (tmp_path / "out").exists()
    finally:
        remove_dir(temp)
    print(f"study through the outage: {seconds:.0f} s")


def test_a_storage_path_with_credentials_is_refused_by_every_command(tmp_path, capsys):
    """Ray pickles the storage path it is given into the study's tuner.pkl on that very storage: refused at load."""
    job = write_job(tmp_path, SPACE)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["run"], ["pareto"], ["sync"], ["submit", "--dry-run", str(tmp_path / "wd")]):
        argv = [command[0], str(job), "--set", f"ray.storage_path=s3://KEY:{SECRET}@bucket/results", *command[1:]]
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "ray.storage_path: credentials in the URI" in err and "AWS_ACCESS_KEY_ID" in err, err
        assert SECRET not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
