"""What a model costs on its device, measured: latency of one image and throughput at a batch, in eval mode.

``measure(model, image_size, batch_size=...)`` times the model as it is (its device, parameters' dtype and
memory format) under an optional autocast dtype, in ``torch.inference_mode``:

* ``latency_ms``: the median over ``runs`` timed forward passes of a batch of 1, after ``warmup`` untimed ones;
* ``throughput``: images per second at ``batch_size``: the batch over the median of ``runs`` timed passes.

On CUDA each timed pass starts on an idle device (synchronize), between two ``torch.cuda.Event`` records, and is
waited for: the figure is what one caller waiting for its answer sees, launch overhead included. Elsewhere
``time.perf_counter`` around the pass (MPS synchronizes after it). The input is drawn from a generator of its
own, so measuring leaves the global random state (data augmentation, dropout) as it was.

A figure is only as good as the device was idle. ``DeviceClaim`` marks, for as long as a process holds it, that
the process uses a device on this node (one file per claim, named after the process id, in a folder private to
the user: ``runtime_dir()``, 0700, owner and symlinks checked); ``others()`` counts the live claims besides one's
own, which a trial reports as ``latency_load`` next to its figures. It sees only this user's attnsearch processes
(trials and ``attnsearch flops --latency``) on the same node and device; other users' and other programs' use of
the device is not counted, and CPU trials count as sharing the CPU whatever their ``resources.cpu`` share.

``resolve_device``, ``amp_dtype``, ``autocast`` and ``use_channels_last`` turn a job's ``train.device``,
``train.amp`` and ``train.channels_last`` into what they mean on a device; the trial loop trains with the same
helpers, so a trial is measured in the precision and memory format it trains in.

Only torch and the standard library are imported here.
"""

from __future__ import annotations

import os
import re
import stat
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "MIN_RUNS",
    "DeviceClaim",
    "amp_dtype",
    "autocast",
    "device_key",
    "measure",
    "private_folder",
    "resolve_device",
    "runtime_dir",
    "use_channels_last",
]

MIN_RUNS = 20  # timed runs a trial's figures are the median of
WARMUP = 5  # untimed runs before them (cuDNN's algorithm choice, the caching allocator, lazy initialisation)

Auto = Literal["auto"] | bool


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device on a node without CUDA is a ``RuntimeError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this node")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: Auto) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``, None for full precision.

    ``auto`` is on for CUDA only: bf16 where the device supports it, else fp16 (trained with a grad scaler);
    ``true`` elsewhere is CPU bf16 autocast.
    """
    if not (amp is True or (amp == "auto" and device.type == "cuda")):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for ``dtype`` on ``device`` (a no-op context for None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=dtype)


def use_channels_last(device: torch.device, channels_last: Auto) -> bool:
    """``train.channels_last`` on ``device``: ``auto`` is on for CUDA only."""
    return channels_last is True or (channels_last == "auto" and device.type == "cuda")


# --------------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return times


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def measure(
    model: nn.Module,
    image_size: int | tuple[int, int],
    *,
    batch_size: int,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    runs: int = MIN_RUNS,
    warmup: int = WARMUP,
    in_channels: int = 3,
) -> dict[str, float]:
    """``{"latency_ms": ..., "throughput": ...}`` of ``model`` on the device it is on (see the module docstring).

    ``dtype``: autocast dtype (None: none); ``channels_last``: feed channels_last inputs (convert the model
    itself first, as training does). The model is put in eval mode for the measurement and back afterwards.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    device = _model_device(model)
    generator = torch.Generator().manual_seed(0)  # not the global RNG: training must see the same random stream

    def batch(n: int) -> torch.Tensor:
        x = torch.randn(n, in_channels, h, w, generator=generator).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            one, many = batch(1), batch(batch_size)

            def forward(x: torch.Tensor) -> Callable[[], Any]:
                def run() -> Any:
                    with autocast(device, dtype):
                        return model(x)
                return run

            single = statistics.median(_timed(forward(one), device, runs, warmup))
            full = statistics.median(_timed(forward(many), device, runs, warmup))
    finally:
        model.train(was_training)
    return {"latency_ms": single * 1e3, "throughput": batch_size / full}


# --------------------------------------------------------------------------------------------------- load

_CLAIM_RE = re.compile(r"^(\d+)-[0-9a-f]+$")  # <pid>-<hex>: the only entries a claim ever counts or deletes


def runtime_dir() -> Path:
    """The user's private folder for attnsearch's node-local files: ``$XDG_RUNTIME_DIR/attnsearch`` when the
    session has a runtime directory of its own (systemd's ``/run/user/UID``), else ``<tmp>/attnsearch-UID``.
    Created 0700 by ``private_folder``, which also checks it before use."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and _owned_private(Path(base)):
        return Path(base) / "attnsearch"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"attnsearch-{uid}"


def _owned_private(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid()) and \
        not st.st_mode & 0o077


def private_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder only this user can use: created 0700 when missing, else refused (``PermissionError``
    naming it) when it is a symlink, not a folder, or owned by another user; group/other access this user left
    on a folder of its own is removed. Another local user who plants the folder (or a symlink to a victim's
    folder) before it exists gets it refused, never used."""
    path = Path(path)
    with suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is a symlink or not a folder: not used (remove it; attnsearch creates it "
                              "as a private folder)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {st.st_uid}): not used (remove it, or set "
                              "XDG_RUNTIME_DIR to a private folder of yours)")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def device_key(device: torch.device) -> str:
    """A name for the physical device on this node: the GPU's UUID on CUDA (two processes that see different
    devices as ``cuda:0`` get different keys), the device type elsewhere."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    uid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uid is None:
        return f"cuda-{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}-{index}"
    return f"cuda-{uid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class DeviceClaim:
    """``with DeviceClaim(device) as claim: ... claim.others()``: this process uses ``device`` meanwhile.

    Args:
        device: the device this process measures on (one claims folder per physical device, ``device_key``).
        folder: where the per-device folders live (default: ``runtime_dir()``, private to this user).

    The folders are private (``private_folder``: 0700, this user's, no symlink); only entries named like a claim
    (``<pid>-<hex>``), regular files of this user, are counted, and only those of dead processes deleted. Never
    fails its holder: when the folder cannot be used, ``others()`` is None (unknown) and a warning says why.
    """

    def __init__(self, device: torch.device, folder: str | os.PathLike | None = None) -> None:
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", device_key(device))
        self.root = Path(folder) if folder is not None else runtime_dir()
        self.folder = self.root / key
        self.path: Path | None = None

    def __enter__(self) -> DeviceClaim:
        try:
            private_folder(self.root)
            private_folder(self.folder)
            path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex}"
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600))
            self.path = path
        except OSError as exc:
            self.path = None
            warnings.warn(f"latency_load unknown: cannot claim the device in {self.folder}: {exc}", stacklevel=2)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path is not None:
            with suppress(OSError):
                self.path.unlink(missing_ok=True)
            self.path = None

    def others(self) -> int | None:
        """Live claims on the same device besides this one, or None when that cannot be known."""
        if self.path is None:
            return None
        count = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return None
        for entry in entries:
            match = _CLAIM_RE.match(entry.name)
            if entry == self.path or match is None or not _own_file(entry):
                continue
            if _alive(int(match[1])):
                count += 1
            else:
                with suppress(OSError):
                    entry.unlink(missing_ok=True)  # a regular file of this user's, in this user's private folder
        return count


def _own_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())
