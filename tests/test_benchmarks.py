"""The benchmark scripts still run and report every module (tiny shapes; the numbers themselves are not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
