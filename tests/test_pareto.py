"""Pareto fronts and hypervolume against brute force; export round trips; load_runs types; analyze on SQLite."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pandas as pd
import pytest

from attnsearch import contract as C
from attnsearch import pareto as P
from attnsearch import tracking as T

# ------------------------------------------------------------------------------------------------ brute force


def _oriented(points: np.ndarray, modes: list[str]) -> np.ndarray:
    # everything as minimisation
    return np.where(np.array(modes) == "max", -points, points)


def brute_front(points: np.ndarray, modes: list[str]) -> set[int]:
    q = _oriented(points, modes)
    keep = set()
    for i in range(len(q)):
        dominated = any(
            np.all(q[j] <= q[i]) and np.any(q[j] < q[i]) for j in range(len(q)) if j != i
        )
        if not dominated:
            keep.add(i)
    return keep


def brute_hv(points: np.ndarray, modes: list[str], ref: np.ndarray) -> float:
    """Union volume by cells of the grid of all coordinates: exact, O(n^(d+1))."""
    q, r = _oriented(points, modes), _oriented(ref[None, :], modes)[0]
    q = q[np.all(q < r, axis=1)]
    if not len(q):
        return 0.0
    axes = [np.unique(np.append(q[:, k], r[k])) for k in range(q.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        low = np.array([axes[k][c] for k, c in enumerate(cell)])
        if np.any(np.all(q <= low, axis=1)):
            total += float(np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)]))
    return total


def random_frame(rng: np.random.Generator, n: int, objectives: dict[str, str], nan_frac: float = 0.1):
    data = {}
    for name in objectives:
        # few distinct values -> many ties and exact duplicates
        data[name] = rng.integers(0, 6, n).astype(float)
    df = pd.DataFrame(data)
    dup = rng.integers(0, n, n // 5)
    df.iloc[dup[: len(dup) // 2]] = df.iloc[dup[len(dup) // 2: 2 * (len(dup) // 2)]].to_numpy()
    mask = rng.random((n, len(objectives))) < nan_frac
    df = df.mask(mask)
    df["attention"] = rng.choice(["se", "sa", "none"], n)
    df["state"] = "completed"
    df["budget"] = 3
    return df


CASES = [
    {"val_acc": "max", "flops": "min"},
    {"a": "min", "b": "min"},
    {"a": "max", "b": "max", "c": "min"},
    {"a": "min", "b": "max", "c": "min"},
]


@pytest.mark.parametrize("objectives", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_front_matches_brute_force(objectives, seed):
    rng = np.random.default_rng(seed)
    df = random_frame(rng, 40, objectives)
    front = P.pareto_front(df, objectives, budget="full")
    finite = df[list(objectives)].notna().all(axis=1)
    pts = df.loc[finite, list(objectives)].to_numpy()
    expected = {df.index[finite][i] for i in brute_front(pts, list(objectives.values()))}
    assert set(front.index) == expected
    assert front.attrs["excluded_nan"] == int((~finite).sum())
    assert front.attrs["candidates"] == int(finite.sum())
    # duplicates of a non-dominated point are all kept
    keys = [tuple(r) for r in front[list(objectives)].to_numpy()]
    for idx, row in df[finite].iterrows():
        if tuple(row[list(objectives)]) in keys:
            assert idx in front.index


@pytest.mark.parametrize("objectives", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_brute_force(objectives, seed):
    rng = np.random.default_rng(100 + seed)
    df = random_frame(rng, 25, objectives, nan_frac=0.05)
    modes = list(objectives.values())
    ref = np.array([-1.0 if m == "max" else 7.0 for m in modes])
    front = P.pareto_front(df, objectives)
    pts = front[list(objectives)].to_numpy()
    got = P.hypervolume(front, objectives, reference=ref)
    assert got == pytest.approx(brute_hv(pts, modes, ref))
    # the hypervolume of all points equals that of their front (dominated points add nothing), NaN rows ignored
    competing = df[df[list(objectives)].notna().all(axis=1)]
    reference = dict(zip(objectives, ref, strict=True))
    assert P.hypervolume(competing, objectives, reference=reference) == pytest.approx(got)


def test_hypervolume_known_values():
    # hand-made front, accuracy (max) vs FLOPs (min), reference (0, 5):
    # 0.9*(5-4) + 0.8*(4-2) + 0.5*(2-1) = 0.9 + 1.6 + 0.5 = 3.0
    df = pd.DataFrame({"val_acc": [0.9, 0.8, 0.5, 0.4], "flops": [4.0, 2.0, 1.0, 3.0]})
    front = P.pareto_front(df, budget="any")
    assert list(front.index) == [0, 1, 2]  # (0.4, 3) is dominated by (0.8, 2)
    assert P.hypervolume(front, reference={"val_acc": 0.0, "flops": 5.0}) == pytest.approx(3.0)
    assert P.hypervolume(front, reference=[0.0, 5.0]) == pytest.approx(3.0)
    # default reference: val_acc 0, flops 1.1 * max over the competing trials = 4.4
    assert front.attrs["reference"] == {"val_acc": 0.0, "flops": pytest.approx(4.4)}
    assert P.hypervolume(front) == pytest.approx(0.9 * 0.4 + 0.8 * 2.0 + 0.5 * 1.0)
    # a point not better than the reference contributes nothing (never negative)
    assert P.hypervolume(df, reference={"val_acc": 0.95, "flops": 5.0}) == 0.0
    # 1 objective: the best value's distance to the reference
    assert P.hypervolume(df, {"flops": "min"}, reference=[5.0]) == pytest.approx(4.0)


def test_budget_rules_and_states():
    df = pd.DataFrame({
        "val_acc": [0.5, 0.9, 0.95, 0.99, 0.3, np.nan, 0.6],
        "flops": [2.5, 20.0, 5.0, 1.0, 2.0, 1.0, 30.0],
        "state": ["completed", "completed", "early_stopped", "failed", "infeasible", "completed", "completed"],
        "budget": [3, 3, 1, 2, 0, 3, 3],
    })
    full = P.pareto_front(df)
    assert set(full.index) == {0, 1}  # 6 dominated by 1; 2 early stopped; 3 failed; 4 infeasible; 5 NaN
    assert full.attrs["excluded_nan"] == 1 and full.attrs["excluded_budget"] == 3
    anyb = P.pareto_front(df, budget="any")
    assert set(anyb.index) == {0, 2}  # early stopped 2 competes now and beats 1; failed/infeasible never do
    assert set(anyb["budget"]) == {1, 3}  # the output says which budget each row reached
    assert set(P.pareto_front(df, budget=1).index) == {2}
    with pytest.raises(ValueError, match="budget"):
        P.pareto_front(df, budget="half")
    with pytest.raises(ValueError, match="params"):
        P.pareto_front(df, {"val_acc": "max", "params": "min"})
    with pytest.raises(ValueError, match="mode"):
        P.pareto_front(df, {"val_acc": "up"})


def test_full_budget_without_state_column_uses_max_budget():
    df = pd.DataFrame({"val_acc": [0.9, 0.5, 0.99], "flops": [2.0, 1.0, 1.0], "budget": [3, 3, 1]})
    assert set(P.pareto_front(df).index) == {0, 1}


def test_nan_is_counted_and_warned(caplog):
    df = pd.DataFrame({"val_acc": [0.9, np.nan, 0.2], "flops": [1.0, 1.0, np.nan]})
    with caplog.at_level(logging.WARNING, logger="attnsearch.pareto"):
        front = P.pareto_front(df, budget="any")
    assert front.attrs["excluded_nan"] == 2 and list(front.index) == [0]
    assert "2 trial(s) with a NaN" in caplog.text


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trip(tmp_path, suffix):
    front = pd.DataFrame({
        "run_name": ["sa-G4-s23-default", "none"],
        "attention": ["sa", "none"],
        "stages": ["2,3", None],
        "sa.groups": pd.array([4, None], dtype="Int64"),
        "nam.spatial": pd.array([None, True], dtype="boolean"),
        "train.lr": [0.1, 0.0123456789012345],
        "val_acc": [0.91, 0.875],
        "flops": [1.25e9, 1.0e9],
        "budget": pd.array([10, 10], dtype="Int64"),
    })
    front.attrs = {"objectives": {"val_acc": "max"}, "reference": {"val_acc": 0.0}}
    path = P.export_front(front, tmp_path / f"front{suffix}")
    # CSV stores no dtypes: read it back with the front's (nullable Int64/boolean need them to keep <NA>)
    back = pd.read_csv(path, dtype=front.dtypes.to_dict()) if suffix == ".csv" else pd.read_parquet(path)
    assert list(back.columns) == list(front.columns)
    back.attrs = front.attrs
    pd.testing.assert_frame_equal(back, front, check_exact=True)
    with pytest.raises(ValueError, match="suffix"):
        P.export_front(front, tmp_path / "front.xlsx")


# ------------------------------------------------------------------------------------------------ MLflow-backed


def _record(tid, config, epochs, acc, flops, state=None, reason=None, max_t=3):
    rec = T.TrialRecord(tid, config)
    for e in range(1, epochs + 1):
        rec.add_result({"epoch": e, "val_acc": acc * e / epochs, "val_loss": 1.0 / e, "flops": flops,
                        "params": flops / 10, "timestamp": 1_700_000_000 + e})
    if state:
        rec.add_result({"attnsearch_state": state, "attnsearch_reason": reason, "flops": flops,
                        "timestamp": 1_700_000_100})
    rec.finish(max_t)
    return rec


@pytest.fixture()
def store(tmp_path):
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "exp", "study-1", "name: exp\n", {"attention": {"type": ["se", "sa"]}}, False)
    s = T.Store(uri, parent)
    records = [
        _record("t0", {"attention": "sa", "stages": "3", "sa.groups": 4, "train.lr": 0.1}, 3, 0.9, 2e6),
        _record("t1", {"attention": "se", "stages": "2,3", "se.reduction": 8, "train.lr": 0.05}, 3, 0.8, 1e6),
        _record("t2", {"attention": "nam", "stages": "1,2,3", "nam.spatial": True, "nam.penalty": 1e-3,
                       "train.lr": 0.2}, 1, 0.95, 1.5e6),  # early stopped
        _record("t3", {"attention": "eca", "stages": "3", "eca.kernel_size": None, "train.lr": 0.1}, 3, 0.5,
                3e6),
        _record("t4", {"attention": "bam", "stages": "3", "train.lr": 0.1}, 0, 0.0, 9e6, "infeasible",
                "max_flops exceeded"),
        _record("t5", {"attention": "none", "train.lr": 0.3}, 3, 0.7, 0.9e6),
    ]
    for r in records:
        s.reconcile(r)
    return uri, parent


def test_load_runs_types(store):
    uri, parent = store
    df = P.load_runs("exp", tracking_uri=uri, parent_run_id=parent)
    assert len(df) == 6 and df["trial_id"].is_unique
    by = df.set_index("trial_id")
    assert str(df["sa.groups"].dtype) == "Int64" and by.loc["t0", "sa.groups"] == 4
    assert df["train.lr"].dtype == np.float64 and by.loc["t1", "train.lr"] == 0.05
    assert str(df["nam.spatial"].dtype) == "boolean" and bool(by.loc["t2", "nam.spatial"]) is True
    assert by.loc["t0", "stages"] == "3" and isinstance(by.loc["t0", "stages"], str)  # not the int 3
    assert by.loc["t1", "stages"] == "2,3"
    assert pd.isna(by.loc["t3", "eca.kernel_size"])  # None (adaptive) -> missing
    assert str(df["budget"].dtype) == "Int64"
    assert by.loc["t2", "state"] == "early_stopped" and by.loc["t2", "budget"] == 1
    assert by.loc["t4", "state"] == "infeasible" and by.loc["t4", "reason"] == "max_flops exceeded"
    assert by.loc["t0", "val_acc"] == pytest.approx(0.9) and by.loc["t0", "flops"] == 2e6
    assert by.loc["t0", "run_name"] == "sa-G4-s3"
    # same rows by study id; all studies when neither is given
    assert len(P.load_runs("exp", tracking_uri=uri, study_id="study-1")) == 6
    with pytest.raises(ValueError, match="no MLflow experiment"):
        P.load_runs("nope", tracking_uri=uri)


def test_load_runs_guesses_types_without_type_tag(store):
    from mlflow import MlflowClient

    uri, parent = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp").experiment_id
    for stages, groups in (("3", "4"), ("2,3", "8")):
        run = client.create_run(exp, tags={C.TAG_ROLE: "trial", C.TAG_PARENT: parent, "attnsearch.trial_id": stages})
        client.log_batch(run.info.run_id, params=[
            __import__("mlflow").entities.Param("stages", stages),
            __import__("mlflow").entities.Param("sa.groups", groups),
            __import__("mlflow").entities.Param("flag", "True"),
        ])
    df = P.load_runs("exp", tracking_uri=uri, parent_run_id=parent)
    guessed = df[df["trial_id"].isin(["3", "2,3"])].set_index("trial_id")
    assert guessed.loc["3", "stages"] == "3"  # a column mixing "3" and "2,3" stays strings
    assert guessed.loc["2,3", "sa.groups"] == 8 and bool(guessed.loc["3", "flag"]) is True


def test_analyze_logs_artifacts_and_tags(store, tmp_path):
    from mlflow import MlflowClient

    uri, parent = store
    front, hv = P.analyze(uri, "exp", "study-1", out=tmp_path / "front.parquet", plot=tmp_path / "front.png")
    # completed trials: t0 (0.9, 2e6), t1 (0.8, 1e6), t3 (0.5, 3e6), t5 (0.7, 0.9e6) -> front t0, t1, t5
    assert list(front["trial_id"]) == ["t0", "t1", "t5"]
    pts = front[["val_acc", "flops"]].to_numpy()
    assert hv == pytest.approx(brute_hv(pts, ["max", "min"], np.array([0.0, 1.1 * 3e6])))
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.csv", "pareto.png", "job.yaml", "search_space.yaml"} <= names
    assert client.get_run(parent).data.metrics["pareto.hypervolume"] == pytest.approx(hv)
    df = P.load_runs("exp", tracking_uri=uri, parent_run_id=parent).set_index("trial_id")
    assert df["pareto"].to_dict() == {t: t in ("t0", "t1", "t5") for t in df.index}
    assert pd.read_parquet(tmp_path / "front.parquet")["trial_id"].tolist() == ["t0", "t1", "t5"]
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # budget="any": the early-stopped NAM trial (0.95 at 1 epoch) now dominates t0; an exploratory query, so the
    # study's record (its own objectives at the full budget) stays as it was
    front_any, _ = P.analyze(uri, "exp", parent_run_id=parent, budget="any")
    assert "t2" in set(front_any["trial_id"]) and "t0" not in set(front_any["trial_id"])
    assert front_any.attrs["recorded"] is False and front_any.attrs["study"] == "study-1"
    df = P.load_runs("exp", tracking_uri=uri, parent_run_id=parent).set_index("trial_id")
    assert not bool(df.loc["t2", "pareto"]) and bool(df.loc["t0", "pareto"])
    table = P.format_front(front)
    assert "sa" in table and "groups=4" in table and "lr=0.1" in table and "2M" in table
    assert "reduction=8" in table.splitlines()[3] or "reduction=8" in table


def test_plot_front_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"val_acc": rng.random(30), "flops": 10 ** rng.uniform(6, 9, 30),
                       "attention": rng.choice(["se", "sa", "cbam"], 30), "state": "completed", "budget": 3})
    front = P.pareto_front(df)
    path = P.plot_front(df, front, path=tmp_path / "sub" / "p.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
    assert "(empty Pareto front" in P.format_front(front.iloc[:0])


def test_params_encoding_round_trip():
    config = {"attention": "eca", "stages": "3", "eca.kernel_size": None, "nam.spatial": False, "sa.groups": 16,
              "train.lr": 0.1, "train.milestones": [3, 6], "train.weight_decay": 1e-5}
    values, types = T.encode_params(config)
    assert values["train.lr"] == "0.1" and values["nam.spatial"] == "False" and values["stages"] == "3"
    assert {k: T.decode_param(values[k], types[k]) for k in config} == config
    assert json.loads(json.dumps(types)) == types


def test_analyze_without_completed_trials_gives_an_empty_front(tmp_path):
    from mlflow import MlflowClient

    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "exp", "s", "name: exp\n", {}, False)
    store = T.Store(uri, parent)
    store.reconcile(_record("t0", {"attention": "se", "se.reduction": 4}, 1, 0.9, 1e6))  # early stopped
    front, hv = P.analyze(uri, "exp")  # no study named: the latest one
    assert len(front) == 0 and hv == 0.0
    assert {"pareto.csv", "pareto.png"} <= {a.path for a in MlflowClient(uri).list_artifacts(parent)}
    front, hv = P.analyze(uri, "exp", "s", budget="any")
    assert list(front["trial_id"]) == ["t0"] and hv == pytest.approx(0.9 * 0.1e6)


def test_front_relative_to_the_baseline(store, tmp_path):
    from mlflow import MlflowClient

    uri, parent = store
    front, _ = P.analyze(uri, "exp", "study-1", out=tmp_path / "front.csv", plot=tmp_path / "front.png")
    assert front.attrs["baseline"]["run_name"] == "none" and front.attrs["baseline"]["val_acc"] == pytest.approx(0.7)
    by = front.set_index("trial_id")
    assert by.loc["t0", "delta_val_acc"] == pytest.approx(0.9 - 0.7)
    assert by.loc["t0", "flops_ratio"] == pytest.approx(2e6 / 0.9e6)
    assert by.loc["t5", "delta_val_acc"] == 0 and by.loc["t5", "flops_ratio"] == 1  # the baseline itself
    table = P.format_front(front)
    assert "val_acc vs base" in table and "flops x base" in table and "+0.2000" in table and "2.22x" in table
    assert table.splitlines()[-1].startswith("baseline: none (val_acc 0.7000, flops 900K)")
    assert MlflowClient(uri).get_run(parent).data.metrics["baseline.val_acc"] == pytest.approx(0.7)
    assert {"delta_val_acc", "flops_ratio"} <= set(pd.read_csv(tmp_path / "front.csv").columns)


def test_baseline_is_the_first_none_trial_at_the_full_budget():
    df = pd.DataFrame({
        "attention": ["none", "se", "none", "none"],
        "state": ["early_stopped", "completed", "completed", "completed"],
        "budget": [1, 3, 3, 3],
        "start_time": pd.to_datetime([1, 2, 3, 4], unit="s"),
        "val_acc": [0.1, 0.8, 0.6, 0.9],
        "flops": [1.0, 2.0, 1.0, 1.0],
    })
    assert P.baseline_row(df)["val_acc"] == 0.6  # not the early-stopped one, not the later one
    assert P.baseline_row(df[df["attention"] != "none"]) is None
    front = P.pareto_front(df)
    assert "delta_val_acc" not in front.columns  # pareto_front alone adds nothing; analyze adds the comparison


# ------------------------------------------------------------------------------------------------ the study's record


def _files(folder) -> dict[str, str]:
    """The store (the SQLite file and its artifacts) by content hash, as tests/test_bad_input.py compares it."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.parts[len(folder.parts)] != "out"}


def _parent(uri, parent):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(parent)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(parent, k)] for k in run.data.metrics}
    return run.data.tags, history, {a.path for a in client.list_artifacts(parent)}


def _flags(uri, parent, tag=C.TAG_PARETO) -> dict[str, str | None]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.`{C.TAG_PARENT}` = '{parent}'", max_results=100)
    return {r.data.tags[C.TAG_TRIAL]: r.data.tags.get(tag) for r in runs}


def _pareto_cli(capsys, *args) -> tuple[int, str, str]:
    from attnsearch.cli import main

    capsys.readouterr()
    rc = main(["pareto", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _second_study(uri, objectives=None):
    """A later study of experiment 'exp' (two trials that beat study-1's on accuracy and FLOPs)."""
    parent = T.start_study(uri, "exp", "study-2", "name: exp\n", {}, False, objectives=objectives, max_t=3)
    s = T.Store(uri, parent)
    s.reconcile(_record("u0", {"attention": "gc", "stages": "3", "train.lr": 0.1}, 3, 0.97, 5e6))
    s.reconcile(_record("u1", {"attention": "se", "stages": "3", "se.reduction": 4, "train.lr": 0.1}, 3, 0.6,
                        0.5e6))
    return parent


def test_exploratory_query_leaves_the_store_byte_identical(store, tmp_path, monkeypatch, capsys):
    uri, parent = store
    monkeypatch.chdir(tmp_path)
    P.analyze(uri, "exp")  # the study's own front: recorded
    before = _files(tmp_path)
    assert {"mlflow.db"} < set(before) and any(k.endswith("pareto.csv") for k in before)
    # the query: other objectives, any budget (a trial trained 1 of 3 epochs would be on its front)
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, "--objectives", "val_acc:max,params:min",
                               "--budget", "any", "--out", "out/front.csv", "--plot", "out/front.png")
    assert rc == 0, err
    assert "study study-1" in out.splitlines()[0]
    assert "nam" in out and "not recorded in MLflow" in out and "--record" in out
    assert (tmp_path / "out" / "front.csv").is_file() and (tmp_path / "out" / "front.png").is_file()
    assert _files(tmp_path) == before  # tags, metrics, artifacts, description: nothing moved
    # the study's objectives at another budget, and another objective set at the full budget: read-only too
    for kwargs in ({"budget": "any"}, {"objectives": {"val_acc": "max", "params": "min"}}):
        front, _ = P.analyze(uri, "exp", "study-1", **kwargs)
        assert front.attrs["recorded"] is False
    assert _files(tmp_path) == before
    assert _flags(uri, parent) == {"t0": "true", "t1": "true", "t2": "false", "t3": "false", "t4": "false",
                                   "t5": "true"}


def test_the_studys_own_query_records_and_twice_adds_nothing(store, tmp_path, monkeypatch, capsys):
    uri, parent = store
    monkeypatch.chdir(tmp_path)
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri)
    assert rc == 0, err
    assert "recorded in MLflow as the study's own front" in out
    tags, history, artifacts = _parent(uri, parent)
    assert {"pareto.csv", "pareto.png"} <= artifacts and len(history["pareto.hypervolume"]) == 1
    assert json.loads(tags["attnsearch.pareto.objectives"]) == {"val_acc": "max", "flops": "min"}
    # same question again: same values, so no new metric points and no tag rewrites
    P.analyze(uri, "exp", "study-1", objectives={"flops": "min", "val_acc": "max"})  # order changes no front
    assert _parent(uri, parent)[1] == history


def test_record_writes_namespaced_names_and_keeps_the_studys_own(store, tmp_path, monkeypatch, capsys):
    uri, parent = store
    monkeypatch.chdir(tmp_path)
    own_front, own_hv = P.analyze(uri, "exp")
    own_tags, own_history, _ = _parent(uri, parent)
    own_flags = _flags(uri, parent)
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, "--objectives", "val_acc:max,params:min",
                               "--budget", "any", "--record")
    assert rc == 0, err
    key = P.front_key({"val_acc": "max", "params": "min"}, "any")
    assert key == "params-min.val_acc-max.budget-any" and f"under key {key}" in out
    tags, history, artifacts = _parent(uri, parent)
    # the study's own record is untouched: flags, tags, metric histories
    assert _flags(uri, parent) == own_flags
    assert {k: v for k, v in tags.items() if k in own_tags} == own_tags
    assert {k: history[k] for k in own_history} == own_history
    assert history["pareto.hypervolume"] == [(0, pytest.approx(own_hv))]
    # the query's own names
    assert json.loads(tags[f"attnsearch.pareto.objectives.{key}"]) == {"val_acc": "max", "params": "min"}
    assert tags[f"attnsearch.pareto.budget.{key}"] == "any"
    assert set(json.loads(tags[f"attnsearch.pareto.reference.{key}"])) == {"val_acc", "params"}
    flags = _flags(uri, parent, f"attnsearch.pareto.{key}")
    front, hv = P.analyze(uri, "exp", objectives={"val_acc": "max", "params": "min"}, budget="any", record=False)
    assert {t for t, v in flags.items() if v == "true"} == set(front["trial_id"]) and "t2" in set(front["trial_id"])
    assert set(flags) == {f"t{i}" for i in range(6)} and all(v in ("true", "false") for v in flags.values())
    assert history[f"pareto.hypervolume.{key}"] == [(0, pytest.approx(hv))]
    assert history[f"pareto.size.{key}"] == [(0, len(front))]
    client_paths = {a.path for a in __import__("mlflow").MlflowClient(uri).list_artifacts(parent, f"pareto/{key}")}
    assert client_paths == {f"pareto/{key}/pareto.csv", f"pareto/{key}/pareto.png"}
    # the baseline metrics follow the study's own front only
    assert not any(k.startswith("baseline.params") for k in history)
    # --record on the study's own question writes the plain names (nothing new here: same values)
    P.analyze(uri, "exp", record=True)
    assert _flags(uri, parent) == own_flags and _parent(uri, parent)[1]["pareto.hypervolume"] == own_history[
        "pareto.hypervolume"]
    assert own_front.attrs["record_key"] is None and own_front.attrs["recorded"] is True


def test_study_selects_the_trials_of_one_study_or_of_all(store, tmp_path, monkeypatch, capsys):
    uri, parent1 = store
    monkeypatch.chdir(tmp_path)
    parent2 = _second_study(uri)
    # default: the newest study, named in the output
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, "--out", "out/latest.csv")
    assert rc == 0, err
    assert "study study-2" in out.splitlines()[0]
    assert set(pd.read_csv(tmp_path / "out" / "latest.csv")["trial_id"]) == {"u0", "u1"}
    assert _flags(uri, parent1) == dict.fromkeys([f"t{i}" for i in range(6)])  # study-1 untouched
    assert _flags(uri, parent2) == {"u0": "true", "u1": "true"}
    # an older study by id
    before = _files(tmp_path)
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, "--study", "study-1", "--budget", "any",
                               "--out", "out/one.csv")
    assert rc == 0, err
    assert "study study-1" in out.splitlines()[0]
    assert set(pd.read_csv(tmp_path / "out" / "one.csv")["trial_id"]) == {"t1", "t2", "t5"}  # t2 beats t0 at any budget
    # every study of the experiment at equal budget: rows of both, the study on each row, never recorded
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, "--study", "all", "--out", "out/all.csv")
    assert rc == 0, err
    assert "all studies (study-1, study-2)" in out.splitlines()[0]
    assert out.splitlines()[1].split()[0] == "study"
    rows = pd.read_csv(tmp_path / "out" / "all.csv")
    # completed trials of both studies: u0 (0.97, 5e6), t0 (0.9, 2e6), t1 (0.8, 1e6), t5 (0.7, 0.9e6), u1 (0.6, 5e5)
    assert list(rows["trial_id"]) == ["u0", "t0", "t1", "t5", "u1"]
    assert dict(zip(rows["trial_id"], rows["study"], strict=False))["u1"] == "study-2"
    assert any(line.startswith("study-1 ") for line in out.splitlines())
    assert "a comparison of several studies is never recorded" in out
    assert _files(tmp_path) == before
    # asking to record a comparison, or a study that is not there: bad input, nothing written
    for args, words in ((("--study", "all", "--record"), "one study"),
                        (("--study", "study-9"), "study-1, study-2")):
        rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri, *args)
        assert rc == 2 and err.startswith("attnsearch pareto: error: ") and words in err, err
        assert _files(tmp_path) == before
    rc, _, err = _pareto_cli(capsys, "exp", "--tracking-uri", T.resolve_tracking_uri("sqlite:///no.db", tmp_path))
    assert rc == 2 and "no MLflow store" in err and not (tmp_path / "no.db").exists()


def test_a_study_without_a_job_file_is_analysed_with_its_own_objectives(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = _second_study(uri, objectives={"val_acc": "max", "params": "min"})
    assert P.study_definition(__import__("mlflow").MlflowClient(uri).get_run(parent).data.tags) == (
        {"val_acc": "max", "params": "min"}, 3)
    rc, out, err = _pareto_cli(capsys, "exp", "--tracking-uri", uri)
    assert rc == 0, err
    assert "recorded in MLflow as the study's own front" in out
    tags, history, _ = _parent(uri, parent)
    assert json.loads(tags["attnsearch.pareto.objectives"]) == {"val_acc": "max", "params": "min"}
    # the default objectives are now an exploratory question for this study
    front, _ = P.analyze(uri, "exp", objectives=dict(P.DEFAULT_OBJECTIVES))
    assert front.attrs["recorded"] is False and front.attrs["own"]["objectives"] == {"val_acc": "max",
                                                                                     "params": "min"}


def test_record_study_needs_a_completed_trial(tmp_path):
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = T.start_study(uri, "exp", "s", "name: exp\n", {}, False, objectives={"val_acc": "max"}, max_t=3)
    T.Store(uri, parent).reconcile(_record("t0", {"attention": "se", "se.reduction": 4}, 1, 0.9, 1e6))
    before = _files(tmp_path)
    assert P.record_study(uri, "exp", "s") is None  # only an early-stopped trial: nothing to record
    assert _files(tmp_path) == before
    T.Store(uri, parent).reconcile(_record("t1", {"attention": "none"}, 3, 0.5, 1e6))
    front, hv = P.record_study(uri, "exp", "s")
    assert list(front["trial_id"]) == ["t1"] and front.attrs["record_key"] is None
    tags, history, artifacts = _parent(uri, parent)
    assert json.loads(tags["attnsearch.pareto.objectives"]) == {"val_acc": "max"} and "pareto.csv" in artifacts
    with pytest.raises(ValueError, match="one study"):
        P.record_study(uri, "exp", "all")


# ------------------------------------------------------------------------------------------------ the baseline's mark


def _marked_study(uri, study_id, baseline_acc, sampled_acc, prefix):
    """A study whose first trial is a sampled `none` (untagged) and whose enqueued baseline starts later."""
    parent = T.start_study(uri, "marked", study_id, "name: marked\n", {}, False)
    store = T.Store(uri, parent)
    sampled = _record(f"{prefix}0", {"attention": "none", "train.lr": 0.02}, 3, sampled_acc, 1e6)
    base = _record(f"{prefix}1", {"attention": "none", "train.lr": 0.1, C.BASELINE_KEY: True}, 3, baseline_acc, 2e6)
    base.pending = [{**p, "ms": p["ms"] + 60_000} for p in base.pending]  # starts after the sampled one
    base.start_ms = sampled.start_ms + 60_000
    other = _record(f"{prefix}2", {"attention": "se", "se.reduction": 8}, 3, 0.95, 3e6)
    for record in (sampled, base, other):
        store.reconcile(record)
    return parent


def test_the_baseline_is_the_marked_trial_for_every_reader(tmp_path):
    from mlflow import MlflowClient

    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    parent = _marked_study(uri, "s-1", baseline_acc=0.6, sampled_acc=0.8, prefix="a")
    client = MlflowClient(uri)
    runs = {r.data.tags[C.TAG_TRIAL]: r for r in client.search_runs(
        [client.get_experiment_by_name("marked").experiment_id], f"tags.`{C.TAG_PARENT}` = '{parent}'")}
    assert runs["a1"].data.tags[C.TAG_BASELINE] == "true" and C.BASELINE_KEY not in runs["a1"].data.params
    assert C.TAG_BASELINE not in runs["a0"].data.tags
    df = P.load_runs("marked", tracking_uri=uri, parent_run_id=parent)
    assert dict(zip(df["trial_id"], df["baseline"], strict=False)) == {"a0": False, "a1": True, "a2": False}
    assert P.baseline_row(df)["trial_id"] == "a1"  # not the first `none` trial to start
    front, _ = P.analyze(uri, "marked", "s-1", plot=tmp_path / "front.png")
    assert front.attrs["baseline"]["run_id"] == runs["a1"].info.run_id
    by = front.set_index("trial_id")
    assert by.loc["a2", "delta_val_acc"] == pytest.approx(0.95 - 0.6)
    assert P.format_front(front).splitlines()[-1] == "baseline: none (val_acc 0.6000, flops 2M)"
    parent_run = client.get_run(parent)
    assert parent_run.data.metrics["baseline.val_acc"] == pytest.approx(0.6)
    note = parent_run.data.tags[C.TAG_NOTE]
    assert f"runs/{runs['a1'].info.run_id}) (baseline)" in note
    assert f"runs/{runs['a0'].info.run_id}) (baseline)" not in note
    # a marked baseline that did not finish is no baseline; the sampled `none` never stands in for it
    assert P.baseline_row(df.assign(state=df["state"].where(df["trial_id"] != "a1", "failed"))) is None
    # a study recorded before the mark: its first `none` trial at the full budget, as before
    assert P.baseline_row(df.assign(baseline=False))["trial_id"] == "a0"


def test_study_all_compares_each_study_with_its_own_baseline(tmp_path):
    uri = T.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    _marked_study(uri, "s-1", baseline_acc=0.6, sampled_acc=0.5, prefix="a")
    _marked_study(uri, "s-2", baseline_acc=0.7, sampled_acc=0.5, prefix="b")
    front, _ = P.analyze(uri, "marked", "all", budget="any", plot=tmp_path / "all.png")
    by = front.set_index("trial_id")
    assert by.loc["a2", "delta_val_acc"] == pytest.approx(0.95 - 0.6)  # study s-1's baseline
    assert by.loc["b2", "delta_val_acc"] == pytest.approx(0.95 - 0.7)  # study s-2's own
    assert sorted(b["study"] for b in front.attrs["baselines"]) == ["s-1", "s-2"]
    lines = P.format_front(front).splitlines()
    assert "baseline of study s-1: none (val_acc 0.6000, flops 2M)" in lines
    assert "baseline of study s-2: none (val_acc 0.7000, flops 2M)" in lines
