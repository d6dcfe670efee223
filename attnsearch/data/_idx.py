"""Fashion-MNIST as IDX files: where they are (``fashion_mnist_files``), reading one (``read_idx``), the
torchvision download (``download_fashion_mnist``).

The IDX format (LeCun's MNIST page, also Fashion-MNIST's): a big-endian header of two zero bytes, a type code
(0x08: unsigned byte), the number of dimensions, one int32 per dimension, then the data in C order. The files are
``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each plain or gzipped (``.gz``), as the Debian package
``dataset-fashion-mnist`` installs them and as ``torchvision.datasets.FashionMNIST`` downloads them (into
``<root>/FashionMNIST/raw/``).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import ConfigError, DataConfig

# Debian's dataset-fashion-mnist package; used when data.root is not set.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# name stem -> (number of dimensions, expected shape after the count); counts: 60,000 train, 10,000 t10k
_FILES = {
    "train-images": ("train-images-idx3-ubyte", 3),
    "train-labels": ("train-labels-idx1-ubyte", 1),
    "test-images": ("t10k-images-idx3-ubyte", 3),
    "test-labels": ("t10k-labels-idx1-ubyte", 1),
}
_UBYTE = 0x08


class IdxError(ValueError):
    """A file that is not a well-formed unsigned-byte IDX file."""


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an unsigned-byte IDX file (gzipped when its name ends in ``.gz``); ``IdxError`` when the header
    or the length is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = bytearray(f.read())  # writable: torch.from_numpy wants it
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a truncated gzip stream an EOFError
        raise IdxError(f"{path}: cannot read: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != _UBYTE:
        raise IdxError(f"{path}: IDX type code 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IdxError(f"{path}: truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise IdxError(f"{path}: IDX header says shape {shape} ({expected:,} bytes of data), the file holds "
                       f"{len(data) - header:,}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _candidates(cfg: DataConfig) -> list[Path]:
    if cfg.root:
        root = Path(cfg.root)
        return [root, root / "FashionMNIST" / "raw"]  # the files themselves, or torchvision's download layout
    return [SYSTEM_FASHION_MNIST]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_files(cfg: DataConfig) -> dict[str, Path]:
    """The four IDX files of ``cfg`` (keys ``train-images``, ``train-labels``, ``test-images``, ``test-labels``):
    in ``data.root`` or its ``FashionMNIST/raw/`` (torchvision's layout), else in the Debian package's folder.
    ``ConfigError`` naming ``data.root`` and the fix when a folder does not hold all four."""
    folders = _candidates(cfg)
    for folder in folders:
        found = {key: _find(folder, stem) for key, (stem, _) in _FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    stems = ", ".join(f"{stem}[.gz]" for stem, _ in _FILES.values())
    where = " or ".join(str(f) for f in folders)
    if not cfg.root:
        raise ConfigError(f"data.root: not set and {SYSTEM_FASHION_MNIST} does not hold Fashion-MNIST ({stems}); "
                          "install the Debian package dataset-fashion-mnist, or set data.root to a folder with "
                          "these files, or set data.root and data.download: true to download them there")
    missing = [stem for stem, _ in _FILES.values() if not any(_find(f, stem) for f in folders)]
    raise ConfigError(f"data.root: {where} is missing {', '.join(missing) or 'some of ' + stems} (Fashion-MNIST "
                      f"needs {stems}); point data.root at the folder that holds them, or set data.download: true "
                      "to download them there")


@lru_cache(maxsize=2)
def _arrays(paths: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    files = dict(paths)
    arrays = {}
    for key, (_, ndim) in _FILES.items():
        try:
            arrays[key] = read_idx(files[key])
        except IdxError as exc:
            raise ConfigError(f"data.root: {exc}; replace the file with the original Fashion-MNIST file (or delete "
                              "it and set data.download: true)") from None
        if arrays[key].ndim != ndim or (ndim == 3 and arrays[key].shape[1:] != (28, 28)):
            raise ConfigError(f"data.root: {files[key]} has shape {arrays[key].shape}, Fashion-MNIST's "
                              f"{key.split('-')[1]} have {'(N, 28, 28)' if ndim == 3 else '(N,)'}; replace the file "
                              "with the original one")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        if len(images) != len(labels):
            raise ConfigError(f"data.root: {files[f'{split}-images']} holds {len(images):,} images but "
                              f"{files[f'{split}-labels']} {len(labels):,} labels; replace them with the original "
                              "Fashion-MNIST files")
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ConfigError(f"data.root: {files[f'{split}-labels']} has label {int(labels.max())}; Fashion-MNIST's "
                              "labels are 0..9; replace it with the original file")
    return arrays


def fashion_mnist_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """``{"train-images": (N, 28, 28) uint8, "train-labels": (N,) uint8, "test-images", "test-labels"}``, read
    once per process; ``ConfigError`` naming ``data.root`` when a file is missing or malformed."""
    files = fashion_mnist_files(cfg)
    return _arrays(tuple((key, str(path)) for key, path in sorted(files.items())))


def download_fashion_mnist(cfg: DataConfig) -> None:
    """torchvision's ``FashionMNIST`` downloader into ``data.root`` (``<root>/FashionMNIST/raw/``)."""
    from torchvision import datasets

    if not cfg.root:
        raise ConfigError("data.download: true needs data.root (the folder to download Fashion-MNIST into)")
    Path(cfg.root).mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            datasets.FashionMNIST(cfg.root, train=train, download=True)
    except Exception as exc:  # noqa: BLE001 -- network errors come in many types; the user needs the path and the cause
        raise ConfigError(f"data.root: downloading fashion_mnist into {cfg.root} failed: {exc}; download it "
                          "elsewhere and copy it there, or fix the network") from None
