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
