"""The driver-side check that a job's data exists (``check_data``), before any trial starts."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError, DataConfig
from ._dali import check_dali
from ._datasets import _CIFAR, _class_dirs, _folder_layout, stratified_split, train_subset
from ._idx import download_fashion_mnist, fashion_mnist_arrays, fashion_mnist_files


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _has_image(folder: Path, extensions: tuple[str, ...]) -> bool:
    return any(any(f.lower().endswith(extensions) for f in files) for _, _, files in os.walk(folder, followlinks=True))


def _check_image_folder(folder: Path, what: str) -> None:
    extensions = _image_extensions()
    if not folder.is_dir():
        raise ConfigError(f"data.root: {what} {folder} does not exist; {_LAYOUT}")
    classes = _class_dirs(folder)
    if not classes:
        raise ConfigError(f"data.root: {what} {folder} has no class folders (no images); {_LAYOUT}")
    empty = [c.name for c in classes if not _has_image(c, extensions)]
    if len(empty) == len(classes):
        raise ConfigError(f"data.root: {what} {folder} holds no images ({', '.join(extensions)}); {_LAYOUT}")
    if empty:
        raise ConfigError(f"data.root: class folders without images in {folder}: {empty[:10]}; remove them or add "
                          "images (ImageFolder refuses empty classes)")


_LAYOUT = "expected an ImageFolder tree: <root>/<class>/<image>.png (or <root>/train/<class>/..., <root>/val/...)"


def _missing_cifar(cfg: DataConfig) -> tuple[Path, list[str]]:
    meta = _CIFAR[cfg.dataset]
    folder = Path(cfg.root) / meta["folder"]
    files = [*meta["train"], *meta["test"], meta["meta"][0]]
    return folder, [f for f in files if not (folder / f).is_file()]


def _download_cifar(cfg: DataConfig) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.dataset == "cifar10" else datasets.CIFAR100
    Path(cfg.root).mkdir(parents=True, exist_ok=True)
    try:
        cls(cfg.root, train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; the user needs the path and the cause
        raise ConfigError(f"data.root: downloading {cfg.dataset} into {cfg.root} failed: {exc}; download it "
                          "elsewhere and copy it there, or fix the network") from None


def _check_fashion_mnist(cfg: DataConfig) -> None:
    if cfg.download:
        try:
            fashion_mnist_files(cfg)
        except ConfigError:
            download_fashion_mnist(cfg)
    elif cfg.root and not Path(cfg.root).exists():
        raise ConfigError(f"data.root: {cfg.root} does not exist; point data.root at the folder that holds the "
                          "Fashion-MNIST IDX files, leave it unset to use the Debian package dataset-fashion-mnist, "
                          "or set data.download: true to download them there")
    arrays = fashion_mnist_arrays(cfg)  # reads and checks all four files (headers, lengths, labels)
    labels = arrays["train-labels"]
    train_idx = (range(len(labels)) if cfg.validation == "official" else
                 stratified_split(labels, cfg.val_fraction, seed=cfg.split_seed)[0])
    train_subset(train_idx, labels, cfg)  # data.train_size fits the training split


def check_data(cfg: DataConfig) -> None:
    """Driver-side check that the data exists (downloading CIFAR when ``download: true``) and that
    ``data.loader: dali`` can read it here; ``ConfigError`` else."""
    check_dali(cfg)
    if cfg.dataset == "digits":
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            raise ConfigError("data.dataset: 'digits' needs scikit-learn (pip install scikit-learn)") from None
        return
    if cfg.dataset == "fake":
        return
    if cfg.dataset == "fashion_mnist":
        _check_fashion_mnist(cfg)
        return
    if not cfg.root:
        raise ConfigError(f"data.root: dataset {cfg.dataset!r} needs data.root (the folder that holds it)")
    root = Path(cfg.root)
    if cfg.dataset in _CIFAR:
        meta = _CIFAR[cfg.dataset]
        folder, missing = _missing_cifar(cfg)
        if missing and cfg.download:
            _download_cifar(cfg)
            folder, missing = _missing_cifar(cfg)
        if not root.exists():
            raise ConfigError(f"data.root: {root} does not exist; point data.root at the folder that contains "
                              f"{meta['folder']}/, or set data.download: true to download {cfg.dataset} there")
        if missing:
            raise ConfigError(f"data.root: {folder} is missing {', '.join(missing)}; point data.root at the folder "
                              f"that contains {meta['folder']}/, or set data.download: true to download it")
        return
    if not root.exists():
        raise ConfigError(f"data.root: {root} does not exist; {_LAYOUT}")
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a directory; {_LAYOUT}")
    train_dir, val_dir = _folder_layout(cfg)
    _check_image_folder(train_dir, "training folder" if train_dir != root else "folder")
    if val_dir is not None:
        _check_image_folder(val_dir, "validation folder" if cfg.validation == "official" else
                            "held-out folder (the official split retrain tests on)")
        train_classes = [c.name for c in _class_dirs(train_dir)]
        val_classes = [c.name for c in _class_dirs(val_dir)]
        if train_classes != val_classes:
            only = sorted(set(train_classes) ^ set(val_classes))
            raise ConfigError(f"data.root: {train_dir} and {val_dir} must have the same class folders; "
                              f"they differ in {only[:10]}")
