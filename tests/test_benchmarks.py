"""The benchmark scripts still run and report every module (tiny shapes; the numbers themselves are not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from attnsearch.attention import ATTENTION_TYPES

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_attention_benchmark_reports_every_module_and_the_floor(tmp_path: Path) -> None:
    bench = _load("attention_modules")
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    try:
        bench.main(["--shapes", "2x16x6x6", "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert "Bottleneck block (reference)" in rows and "floor: x * sigmoid(GAP(x))" in rows
    labels = {r.split(" ")[0] for r in rows}
    assert set(ATTENTION_TYPES) - {"none"} <= labels
    assert "nam (spatial)" in rows and "sa (G=8)" in rows  # 16 channels: the largest G with C % 2G == 0


def test_gate_floor_is_a_gate() -> None:
    bench = _load("attention_modules")
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(bench.GateFloor()(x), x * x.mean((2, 3), keepdim=True).sigmoid())


def test_triplet_convs_benchmark_runs(capsys) -> None:
    bench = _load("triplet_convs")
    threads = torch.get_num_threads()
    try:
        bench.main(["--shapes", "2x8x6x5", "--repeats", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "2x8x6x5: Triplet's three 7x7 convolutions fwd+bwd" in out and "% of the bottleneck" in out


def test_latency_vs_flops_reports_every_type_and_the_rank_correlation(tmp_path: Path) -> None:
    bench = _load("latency_vs_flops")
    out = tmp_path / "latency.md"
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--models", "resnet20:16", "--device", "cpu", "--threads", "1", "--runs", "1",
                              "--warmup", "0", "--rounds", "1", "--batch-size", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    rows = results["resnet20:16"]
    assert [r["type"] for r in rows] == list(ATTENTION_TYPES)  # every type, the baseline first
    for r in rows:  # every type fits ResNet-20 at 16x16 (Shuffle Attention with G=8 at 16 channels)
        assert r["flops"] > 0 and r["latency_ms"] > 0 and r["throughput"] > 0, r["type"]
    assert next(r for r in rows if r["type"] == "sa")["knobs"] == "groups=8"
    text = out.read_text()
    table = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert set(ATTENTION_TYPES) <= set(table)
    assert "### resnet20 at 16x16" in text and "Spearman's rho over the 11 attention types" in text


def test_spearman_and_ranks() -> None:
    bench = _load("latency_vs_flops")
    assert bench.average_ranks([30, 10, 20, 10]) == [4, 1.5, 3, 1.5]
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert bench.spearman([1], [2]) != bench.spearman([1], [2])  # NaN: nothing to correlate


def test_trial_throughput_reports_each_loader_against_the_step(tmp_path: Path) -> None:
    from attnsearch.data import dali_installed

    bench = _load("trial_throughput")
    out = tmp_path / "throughput.md"
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--device", "cpu", "--images", "12", "--classes", "2", "--width", "64", "--height", "48",
                             "--kib", "2", "--size", "32", "--batch-size", "4", "--cores", "1", "--rounds", "1",
                             "--step-batch", "2", "--steps", "1", "--step-warmup", "1", "--threads", "1",
                             "--data", str(tmp_path / "jpegs"), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 12 and result["kib"] > 0
    rows = {r["loader"]: r for r in result["rows"]}
    assert rows["torch"]["rate"] > 0 and result["step"] > 0
    assert ("rate" in rows["dali"]) == dali_installed()  # measured where DALI is installed, a note elsewhere
    text = out.read_text()
    assert "| torch | 1 |" in text and "| dali | 1 |" in text and "ratio loader/step" in text
    assert "GPU figures: not measured yet" in text  # on a CPU the GPU target is stated, not claimed


def test_prune_nam_benchmark_reports_every_model_ratio_and_importance(tmp_path: Path) -> None:
    pytest.importorskip("torch_pruning")
    bench = _load("prune_nam")
    out = tmp_path / "prune.md"
    threads = torch.get_num_threads()
    try:
        bench.main(["--seeds", "0", "--epochs", "1", "--image-size", "8", "--penalties", "1e-3", "--ratios", "0.5",
                    "--importances", "nam,random", "--finetune-epochs", "0", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == ["none", "nam p=0.001"]
    assert rows[0][5].strip() == "(= bn)" and "/" in rows[1][5] and "/" in rows[0][6]
    assert (tmp_path / "prune.csv").read_text().count("\n") == 4  # header + 1 + 2 pruned models
