"""A study belongs to its job: study ids name the job exactly, two studies never share an id or a Ray folder, and
jobs ``exp`` and ``exp-big`` sharing one ``ray.storage_path`` and one MLflow experiment never take each other's
studies (``--resume``, ``sync``, ``pareto``, ``export``, ``retrain``, ``importance``); naming the other job's study
exits 2 naming both jobs, and nothing is started or written."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from _helpers import SE_SPACE, write_job
from mlflow import MlflowClient

from attnsearch import cli
from attnsearch import contract as C
from attnsearch import tracking as T
from attnsearch.config import load_job
from attnsearch.search import (
    IDENTITY_FILE,
    check_own_study,
    claim_study,
    existing_studies,
    new_study_id,
    recorded_identity,
    resolve_study,
)
from attnsearch.space import job_identity

OTHER_SPACE = SE_SPACE.replace("reduction: [4, 8]", "reduction: [2, 4]")
EXP_OLD = "exp-20261201-000000"  # made by an older version: no recorded identity, found by its exact name
BIG_OLD = "exp-big-20261202-010329"  # the other job's, newer, also without one: a name prefix would take it


def _jobs(tmp: Path, big_space: str = SE_SPACE) -> tuple[Path, Path]:
    """Jobs exp and exp-big (each with its own space file) in one storage path and one MLflow experiment."""
    shared = {"tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "shared"},
              "ray": {"storage_path": f"{tmp}/ray_results"}}
    exp = write_job(tmp, SE_SPACE, job_file="exp.yaml", space_file="exp_space.yaml", name="exp",
                    search={"space": "exp_space.yaml"}, **shared)
    big = write_job(tmp, big_space, job_file="big.yaml", space_file="big_space.yaml", name="exp-big",
                    search={"space": "big_space.yaml"}, **shared)
    return exp, big


def _restorable(job, study_id: str, identity: dict | None = None) -> Path:
    """A Ray folder Ray would restore (its ``tuner.pkl``), with the identity a study records when one is given."""
    folder = Path(job.ray.storage_path) / study_id
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"")
    if identity is not None:
        (folder / IDENTITY_FILE).write_text(json.dumps({"study": study_id, "job": identity}))
    return folder


def test_a_study_id_is_its_jobs_name_and_time_exactly():
    assert C.split_study_id(BIG_OLD) == ("exp-big", "20261202-010329")
    assert C.split_study_id("exp-20261202-010329-000042") == ("exp", "20261202-010329-000042")
    assert C.split_study_id("exp-a-20261202-010329-20261203-000000") == ("exp-a-20261202-010329", "20261203-000000")
    for not_an_id in ("study-1", "exp", "exp-20261202", "exp-20261202-010329-", "exp-20261202-0103291"):
        assert C.split_study_id(not_an_id) is None, not_an_id
    ident = {"name": "exp", "space": "a" * 16}
    assert C.study_conflict(ident, EXP_OLD, None) is None
    assert "job 'exp-big'" in C.study_conflict(ident, BIG_OLD, None)
    assert "job 'exp-big'" in C.study_conflict(ident, EXP_OLD, {"name": "exp-big", "space": "a" * 16})
    edited = {"name": "exp", "space": "b" * 16}
    assert C.study_conflict(ident, EXP_OLD, edited) is None  # the job's, read under another space
    assert "another definition of job 'exp'" in C.study_conflict(ident, EXP_OLD, edited, same_space=True)
    assert C.study_conflict(ident, "study-1", None) is not None


def test_two_studies_started_in_the_same_second_get_two_ids_and_two_folders(tmp_path):
    job = load_job(_jobs(tmp_path)[0])
    when = datetime(2026, 12, 2, 1, 3, 29, 500)
    first, later = new_study_id(job, when), new_study_id(job, when + timedelta(microseconds=1))
    assert first != later and C.split_study_id(first)[0] == C.split_study_id(later)[0] == "exp"
    # the same microsecond twice: the second claim never shares the first one's folder
    a, b = claim_study(job, first), claim_study(job, first)
    assert a == first and b == later and sorted([b, a]) == [a, b]
    for study in (a, b):
        folder = Path(job.ray.storage_path) / study
        assert json.loads((folder / IDENTITY_FILE).read_text()) == {"study": study, "job": job_identity(job)}
    assert recorded_identity(job, a) == job_identity(job)


def test_resume_and_the_ray_side_commands_never_take_another_jobs_study(tmp_path, monkeypatch, capsys):
    exp_path, big_path = _jobs(tmp_path, OTHER_SPACE)
    exp, big = load_job(exp_path), load_job(big_path)
    assert job_identity(exp) != job_identity(big) and job_identity(exp)["space"] != job_identity(big)["space"]
    _restorable(exp, EXP_OLD)
    _restorable(big, BIG_OLD)
    big_new = "exp-big-20261203-000000-000001"
    _restorable(big, big_new, job_identity(big))
    renamed = "exp-20261204-000000-000000"  # named like exp's, recorded by exp-big: exp-big's
    _restorable(big, renamed, job_identity(big))
    edited = "exp-20261205-000000-000000"  # exp's name, another space: another definition of the job
    _restorable(exp, edited, {"name": "exp", "space": job_identity(big)["space"]})
    assert existing_studies(exp) == [EXP_OLD, edited]  # read (sync, importance): every study of the job's name
    assert existing_studies(exp, same_space=True) == [EXP_OLD]  # continued (--resume): its space too
    assert existing_studies(big) == [BIG_OLD, big_new]
    assert resolve_study(exp, True) == (EXP_OLD, True)  # the job's newest with its space, not the storage path's
    assert resolve_study(big, C.LATEST) == (big_new, True)
    for other in (BIG_OLD, renamed):
        with pytest.raises(C.ConfigError, match="'exp-big'") as err:
            resolve_study(exp, other)
        assert "not job 'exp'" in str(err.value) and EXP_OLD in str(err.value)
    with pytest.raises(C.ConfigError, match="another definition") as err:
        resolve_study(exp, edited)
    assert "put that space back" in str(err.value) and "without --resume" in str(err.value)
    check_own_study(exp, edited, "importance --study")  # reading an earlier definition's study is fine

    monkeypatch.chdir(tmp_path)
    listing = sorted(p.name for p in Path(exp.ray.storage_path).iterdir())
    for args in (["run", exp_path, "--resume", BIG_OLD], ["sync", exp_path, "--study", big_new],
                 ["importance", exp_path, "--study", BIG_OLD], ["dashboard", exp_path, "--study", renamed]):
        assert cli.main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert "job 'exp-big'" in err and "not job 'exp'" in err and "that job's file" in err, err
    assert not (tmp_path / "mlflow.db").exists()  # nothing started, nothing written
    assert sorted(p.name for p in Path(exp.ray.storage_path).iterdir()) == listing

    from attnsearch.tracking import sync as sync_module

    synced = []

    def fake_sync(path, uri, experiment, study_id, max_t, *, objectives=None, datasets=(), identity=None):
        synced.append((study_id, identity))
        return {"trials": 0}

    monkeypatch.setattr(sync_module, "sync_study", fake_sync)
    assert cli.main(["sync", str(exp_path)]) == 0  # every study of the job (any space it had): exp's only
    assert synced == [(EXP_OLD, None), (edited, {"name": "exp", "space": job_identity(big)["space"]})]
    assert cli.main(["sync", str(big_path), "--study", "latest"]) == 0
    assert synced[2:] == [(big_new, job_identity(big))]  # the identity its folder records, for its parent run


def _study(uri: str, study_id: str, identity: dict | None, accs: list[float]) -> str:
    parent = T.start_study(uri, "shared", study_id, "name: x\n", {}, False, objectives={"val_acc": "max"},
                           max_t=2, identity=identity)
    store = T.Store(uri, parent)
    for i, acc in enumerate(accs):
        record = T.TrialRecord(f"{study_id[-6:]}_{i}", {"attention": "none", "train.lr": 0.1})
        for epoch in (1, 2):
            record.add_result({"epoch": epoch, "val_acc": acc, "flops": 1e6 * (i + 1), "params": 10.0})
        record.finish(2)
        store.reconcile(record)
    return parent


def test_the_mlflow_side_commands_never_take_another_jobs_study(tmp_path, monkeypatch, capsys):
    exp_path, big_path = _jobs(tmp_path)
    exp, big = load_job(exp_path), load_job(big_path)
    uri = exp.tracking.uri
    _study(uri, EXP_OLD, None, [0.5, 0.6])
    big_parent = _study(uri, "exp-big-20261202-010329-000000", job_identity(big), [0.9])  # the newest
    client = MlflowClient(uri)
    assert json.loads(client.get_run(big_parent).data.tags[C.TAG_JOB]) == job_identity(big)
    big_id = "exp-big-20261202-010329-000000"
    monkeypatch.chdir(tmp_path)

    def cli_run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = cli_run("export", exp_path, "--front", "--out", tmp_path / "models")
    assert code == 2 and f"study {EXP_OLD} has no recorded Pareto front" in err  # exp's, not the newest
    code, out, _ = cli_run("pareto", exp_path)
    assert code == 0 and f"study {EXP_OLD} (2 trials" in out
    code, out, _ = cli_run("pareto", exp_path, "--study", "all")
    assert code == 0 and f"all studies ({EXP_OLD})" in out and "exp-big" not in out
    code, out, _ = cli_run("pareto", "shared", "--tracking-uri", uri)  # an experiment: its newest, any job's
    assert code == 0 and f"study {big_id}" in out
    code, out, _ = cli_run("pareto", big_path)
    assert code == 0 and f"study {big_id} (1 trials" in out
    before = {r.info.run_id: dict(r.data.tags) for r in T.search_all(client, [client.get_experiment_by_name(
        "shared").experiment_id], "")}
    for args in (["pareto", exp_path, "--study", big_id],
                 ["export", exp_path, "--front", "--study", big_id, "--out", tmp_path / "models"],
                 ["retrain", exp_path, "--study", big_id],
                 ["prune", exp_path, "--front", "--study", big_id]):
        code, _, err = cli_run(*args)
        assert code == 2 and f"study {big_id} is job 'exp-big'" in err and "not job 'exp'" in err, (args, err)
        assert EXP_OLD in err  # the job's own studies, to pick from
    after = {r.info.run_id: dict(r.data.tags) for r in T.search_all(client, [client.get_experiment_by_name(
        "shared").experiment_id], "")}
    assert after == before and not (tmp_path / "models").exists() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("unfinished, code", [(2, 130), (0, 0)])
def test_run_says_how_to_resume_a_study_interrupted_with_trials_unfinished(tmp_path, monkeypatch, capsys,
                                                                           unfinished, code):
    import attnsearch.search
    from attnsearch.search import StudyOutcome, StudyProgress

    path = write_job(tmp_path, SE_SPACE)
    progress = StudyProgress(4, 2, {"val_acc": "max"}, states={"00000": C.COMPLETED})
    progress.unfinished = unfinished  # as ProgressPrinter.on_experiment_end leaves it
    outcome = StudyOutcome("tiny-20260101-000000", str(tmp_path / "ray_results"), "0" * 32, progress, None)
    monkeypatch.setattr(attnsearch.search, "run_study", lambda job, **kw: outcome)
    assert cli.main(["run", str(path), "--set", "search.objectives={val_acc: max}", "--no-pareto"]) == code
    err = capsys.readouterr().err
    again = f"attnsearch run {path} --set 'search.objectives={{val_acc: max}}' --resume tiny-20260101-000000"
    assert (again in err and "2 trial(s) unfinished" in err) is bool(unfinished), err
