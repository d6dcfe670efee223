"""attnsearch.latency: what a model costs on its device (the numbers themselves are never asserted), the device
claims behind ``latency_load``, and ``attnsearch flops --latency``."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnsearch import cli
from attnsearch.latency import DeviceClaim, amp_dtype, measure, private_folder, runtime_dir, use_channels_last
from attnsearch.models import build_model


class Recorder(nn.Module):
    """Records the batch size, mode, grad mode, autocast state and memory format of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"),
                           x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
        return self.conv(x)


def test_measure_times_batch_one_and_the_batch_in_eval_mode():
    model = Recorder().train()
    cost = measure(model, 8, batch_size=3, runs=4, warmup=2)
    assert set(cost) == {"latency_ms", "throughput"}
    assert all(math.isfinite(v) and v > 0 for v in cost.values())
    assert [c[0] for c in model.calls] == [1] * 6 + [3] * 6  # warm-up + timed runs of each
    assert {c[1:] for c in model.calls} == {(False, False, False, False)}  # eval, inference, no autocast
    assert model.training  # put back


def test_measure_runs_in_the_given_precision_and_memory_format():
    model = Recorder().to(memory_format=torch.channels_last).eval()
    measure(model, 6, batch_size=2, dtype=torch.bfloat16, channels_last=True, runs=1, warmup=0)
    assert {c[3:] for c in model.calls} == {(True, True)}
    assert not model.training


def test_measure_leaves_the_global_random_state_alone():
    model = Recorder()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    measure(model, 5, batch_size=2, runs=2, warmup=1)
    assert torch.equal(torch.rand(4), expected)


def test_measure_refuses_bad_arguments():
    with pytest.raises(ValueError, match="runs"):
        measure(Recorder(), 5, batch_size=2, runs=0)
    with pytest.raises(ValueError, match="batch_size"):
        measure(Recorder(), 5, batch_size=0)


def test_precision_and_memory_format_follow_the_training_rules():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, False) is None
    assert amp_dtype(cpu, True) == torch.bfloat16
    assert not use_channels_last(cpu, "auto") and use_channels_last(cpu, True)


def test_device_claims_count_the_other_live_processes(tmp_path):
    cpu = torch.device("cpu")
    with DeviceClaim(cpu, tmp_path) as mine:
        assert mine.others() == 0
        with DeviceClaim(cpu, tmp_path) as second:  # another claim of this process: another user of the device
            assert mine.others() == 1 and second.others() == 1
        assert mine.others() == 0  # released
        # a claim left behind by a process that died is not counted, and is removed
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        stale = mine.folder / f"{dead}-0123"
        stale.touch()
        assert mine.others() == 0 and not stale.exists()
        # a claim of a live process is counted
        alive = mine.folder / f"{os.getppid()}-4567"
        alive.touch()
        assert mine.others() == 1
    assert not any(p.name.startswith(f"{os.getpid()}-") for p in mine.folder.iterdir())


def test_a_claim_that_cannot_be_written_never_fails_its_holder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="latency_load unknown"), DeviceClaim(torch.device("cpu"), blocker) as claim:
        assert claim.others() is None  # a file where the folder should be


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _victim(tmp_path, name: str):
    """A file of the victim's that an attacker wants a trial to delete: named like a claim of a dead process."""
    victims = tmp_path / "victim"
    victims.mkdir(exist_ok=True)
    file = victims / name
    file.write_text("precious")
    return file


def test_claims_live_in_a_private_folder_of_this_user(tmp_path, monkeypatch):
    root = tmp_path / "runtime"
    with DeviceClaim(torch.device("cpu"), root) as claim:
        assert claim.others() == 0
        for folder in (root, claim.folder):
            assert folder.is_dir() and not folder.is_symlink() and (folder.stat().st_mode & 0o777) == 0o700
        assert (claim.path.stat().st_mode & 0o777) == 0o600
    # the default folder: under the session's runtime directory when it is a private one, else the temp folder
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert runtime_dir() == xdg / "attnsearch"
    xdg.chmod(0o755)  # a runtime directory others can read is not used
    assert runtime_dir().parent != xdg


def test_a_planted_folder_or_symlink_is_refused_and_the_victims_files_survive(tmp_path, monkeypatch):
    dead = _dead_pid()
    cpu = torch.device("cpu")
    # a symlink planted where the claims folder goes, pointing at the victim's folder
    victim = _victim(tmp_path, f"{dead}-0a1b")
    link = tmp_path / "claims-link"
    link.symlink_to(victim.parent, target_is_directory=True)
    with pytest.warns(UserWarning, match="symlink"), DeviceClaim(cpu, link) as claim:
        assert claim.others() is None
    with pytest.raises(PermissionError, match="symlink"):
        private_folder(link)
    # a device folder planted by another user, holding a symlink to the victim's file
    root = tmp_path / "runtime"
    private_folder(root)
    planted = DeviceClaim(cpu, root).folder
    planted.mkdir()
    (planted / f"{dead}-0c0d").symlink_to(victim)
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # the folder now belongs to "another user"
    with pytest.warns(UserWarning, match="another user"), DeviceClaim(cpu, root) as claim:
        assert claim.others() is None
    monkeypatch.undo()
    # in this user's own folder, an entry that is not a regular file of this user's is neither counted nor deleted
    with DeviceClaim(cpu, root) as claim:
        assert claim.others() == 0
        assert (planted / f"{dead}-0c0d").is_symlink()
    stray = planted / f"{dead}-not-a-claim"
    stray.write_text("kept")
    with DeviceClaim(cpu, root) as claim:
        assert claim.others() == 0
    assert victim.read_text() == "precious" and stray.exists()


def test_flops_latency_prints_both_figures(capsys):
    args = ["flops", "--backbone", "resnet20", "--input-size", "16", "--num-classes", "10", "--latency",
            "--device", "cpu", "--batch-size", "4", "--runs", "3", "--warmup", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert cli.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    values = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("latency_ms", "throughput"):
            values[words[0]] = float(words[1])
    assert set(values) == {"latency_ms", "throughput"} and all(v > 0 for v in values.values()), out
    assert "batch 4" in out and "median of 3 runs" in out and "cpu" in out
    assert "flops" in out  # the counts are still printed


def test_flops_without_latency_measures_nothing(capsys, monkeypatch):
    import attnsearch.latency

    monkeypatch.setattr(attnsearch.latency, "measure", lambda *a, **k: pytest.fail("measured without --latency"))
    assert cli.main(["flops", "--backbone", "resnet20", "--input-size", "16"]) == 0
    assert "latency_ms" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--runs", "0"], "--runs must be >= 1"),
    (["--batch-size", "0"], "--batch-size >= 1"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], "is not available"),
])
def test_flops_latency_bad_arguments_exit_2_before_measuring(capsys, monkeypatch, extra, message):
    import attnsearch.latency

    monkeypatch.setattr(attnsearch.latency, "measure", lambda *a, **k: pytest.fail("measured on bad input"))
    assert cli.main(["flops", "--backbone", "resnet20", "--input-size", "16", "--latency", *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "macs" not in captured.out


def test_every_backbone_family_measures(tmp_path):
    """A torchvision ResNet and MobileNetV2 with attention, at a tiny size: the trial's path, no numbers."""
    for backbone, attention in (("resnet18", {"type": "cbam"}), ("mobilenet_v2", {"type": "coord"})):
        model = build_model(backbone, num_classes=10, attention=attention, input_size=32)
        cost = measure(model, 32, batch_size=2, runs=1, warmup=0)
        assert cost["latency_ms"] > 0 and cost["throughput"] > 0
