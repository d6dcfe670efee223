"""Pareto fronts and hypervolume against brute force; export round trips; load_runs types; analyze on SQLite."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pandas as pd
import pytest

from attnsearch import pareto as P
from attnsearch import contract as C
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
    assert P.hypervolume(competing, objectives, reference=dict(zip(objectives, ref))) == pytest.approx(got)


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
    # budget="any": the early-stopped NAM trial (0.95 at 1 epoch) now dominates t0
    front_any, _ = P.analyze(uri, "exp", parent_run_id=parent, budget="any")
    assert "t2" in set(front_any["trial_id"]) and "t0" not in set(front_any["trial_id"])
    df = P.load_runs("exp", tracking_uri=uri, parent_run_id=parent).set_index("trial_id")
    assert bool(df.loc["t2", "pareto"]) and not bool(df.loc["t0", "pareto"])
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
