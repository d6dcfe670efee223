"""The datasets: digits, CIFAR-10/100, ImageNet, any ImageFolder tree, learnable synthetic data (see the
package docstring), and what a file-reading loader needs to know of an ImageFolder split (``image_files``)."""


import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..config import ConfigError, DataConfig
from ._idx import FASHION_MNIST_CLASSES, fashion_mnist_arrays

# Per-channel statistics of the training sets (computed over all training pixels; the same values appear in
# e.g. kuangliu/pytorch-cifar#19 for CIFAR-10 and weiaicunzai/pytorch-cifar100 for CIFAR-100).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# Fashion-MNIST's training pixels (all 60,000 images; measured on the IDX file, the usual 0.2860/0.3530).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3
# torchvision's ImageNet normalisation (used for ImageNet and any ImageFolder tree).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
        "num_classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
        "num_classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
    },
}


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    image_size: int
    in_channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ImageTransform:
    """What an ImageFolder split's torchvision transform does (``_image_transforms``), for a loader that reads
    the files itself (DALI): ``random_crop`` is RandomResizedCrop(size) + horizontal flip, else
    Resize(resize_side(size)) + CenterCrop(size); then normalisation with ``mean``/``std``."""

    size: int
    random_crop: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ImageFiles:
    """An ImageFolder split as files: paths and labels in the dataset's own order, and its transform."""

    files: list[str]
    labels: list[int]
    transform: ImageTransform


# --------------------------------------------------------------------------------------------------- datasets


class ImageTensorDataset(Dataset):
    """Images held in memory as one (N, C, H, W) tensor (uint8 0..255 or float 0..1).

    Per item: optional random shift (zero-pad by ``pad`` then crop back, i.e. ``RandomCrop(size, padding=pad)``),
    optional horizontal flip, resize to ``size``, then normalisation with ``mean``/``std``; grey images (C = 1)
    come out with ``channels`` identical channels (a view: memory holds one).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: Sequence[int] | torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 0,
        flip: bool = False,
        size: int | None = None,
        classes: Sequence[str] | None = None,
        channels: int | None = None,
    ) -> None:
        self.images = images
        self.channels = channels if channels and images.shape[1] == 1 else None
        self.targets = torch.as_tensor(labels, dtype=torch.long)
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} labels")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad, self.flip = pad, flip
        self.size = size if size and size != images.shape[-1] else None
        self.classes = list(classes) if classes is not None else [str(c) for c in range(int(self.targets.max()) + 1)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.pad:
            h, w = x.shape[-2:]
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x, (self.pad,) * 4)[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        if self.channels:
            x = x.expand(self.channels, -1, -1)
        return (x - self.mean) / self.std, int(self.targets[index])


class FakePatterns(Dataset):
    """Synthetic but learnable: image = pattern[class] + noise, generated per index (low memory, deterministic).

    Each class pattern is a random 4x4x3 field bilinearly upsampled to ``size`` (low frequency, so a small CNN
    separates classes within an epoch or two); noise is i.i.d. Gaussian with std ``noise``.
    """

    def __init__(self, n: int, num_classes: int, size: int, seed: int, noise: float = 1.0) -> None:
        g = torch.Generator().manual_seed(0)  # patterns are shared by the train and val splits
        coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
        self.patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        labels = torch.arange(n) % num_classes
        self.targets = labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
        self.seed, self.noise, self.size = seed, noise, size
        self.classes = [f"class_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(self.targets[index])
        x = self.patterns[label] + self.noise * torch.randn(3, self.size, self.size, generator=g)
        return x, label


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Per class, a seeded permutation; ``round(n * val_fraction)`` (at least 1 when n >= 2) go to val."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def stratified_subset(labels: Sequence[int], size: int | float, seed: int = 0) -> list[int]:
    """Sorted indices of a seeded subset of ``size`` items (a count, or a fraction of ``len(labels)``) that keeps
    the class proportions: per class a seeded permutation, its quota by largest remainder (the quotas sum to the
    size exactly). ``ConfigError`` naming ``data.train_size`` when the count exceeds the labels."""
    labels = np.asarray(labels)
    n = len(labels)
    count = size if isinstance(size, int) else int(round(size * n))
    if count > n:
        raise ConfigError(f"data.train_size: {count:,} training images asked for, the training split holds {n:,}; "
                          f"lower data.train_size (or give a fraction such as 0.5)")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * count / n
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: count - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, k in zip(classes, take, strict=True):
        chosen += rng.permutation(np.flatnonzero(labels == c))[:k].tolist()
    return sorted(chosen)


def train_subset(indices: Sequence[int], labels: Sequence[int], cfg: DataConfig) -> list[int]:
    """``indices`` (a training split, with the ``labels`` of the whole set) cut to ``data.train_size`` (seeded by
    ``data.split_seed``, stratified); all of them when it is null."""
    indices = list(indices)
    if cfg.train_size is None:
        return indices
    labels = np.asarray(labels)[indices]
    return [indices[i] for i in stratified_subset(labels, cfg.train_size, seed=cfg.split_seed + 1)]


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to ``size`` (bilinear, antialiased), as uint8 again."""
    if size == images.shape[-1]:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _fashion_mnist_split(cfg: DataConfig, images: np.ndarray, labels: np.ndarray, train: bool) -> ImageTensorDataset:
    size = cfg.resolved_image_size
    info = dataset_info(cfg)
    pad = max(1, size // 8) if train and cfg.augment else 0
    return ImageTensorDataset(_resized(torch.from_numpy(images)[:, None], size),
                              torch.from_numpy(labels.astype(np.int64)), info.mean, info.std, pad=pad,
                              flip=train and cfg.augment, classes=list(FASHION_MNIST_CLASSES), channels=3)


def _fashion_mnist(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    arrays = fashion_mnist_arrays(cfg)
    images, labels = arrays["train-images"], arrays["train-labels"]
    if cfg.validation == "official":  # validated on the 10,000 test images, as papers report
        train_idx = train_subset(range(len(labels)), labels, cfg)
        val = _fashion_mnist_split(cfg, arrays["test-images"], arrays["test-labels"], False)
    else:  # the validation split comes out of the 60,000 training images; the 10,000 test images stay unseen
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, seed=cfg.split_seed)
        train_idx = train_subset(train_idx, labels, cfg)
        val = _fashion_mnist_split(cfg, images[val_idx], labels[val_idx], False)
    return _fashion_mnist_split(cfg, images[train_idx], labels[train_idx], True), val, dataset_info(cfg)


def _digits_file() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=2)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in [0, 1], labels). Reads scikit-learn's bundled CSV directly: importing
    ``sklearn.datasets`` costs seconds per process, the file is the same array as ``load_digits()``."""
    path = _digits_file()
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        return table[:, :-1].reshape(-1, 8, 8) / 16.0, table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _digits(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    images, labels = _digits_arrays()
    size = cfg.resolved_image_size
    x = torch.from_numpy(images)[:, None]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, seed=cfg.split_seed)
    train_idx = train_subset(train_idx, labels, cfg)
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    info = DatasetInfo(10, size, 3, (mean,) * 3, (std,) * 3)
    classes = [str(c) for c in range(10)]
    # digits are not mirror-symmetric: shift augmentation only
    pad = max(1, size // 8) if cfg.augment else 0
    y = torch.from_numpy(labels)
    train = ImageTensorDataset(x[train_idx], y[train_idx], info.mean, info.std, pad=pad, classes=classes)
    val = ImageTensorDataset(x[val_idx], y[val_idx], info.mean, info.std, classes=classes)
    return train, val, info


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the CIFAR distribution format


@lru_cache(maxsize=4)
def _cifar_split(folder: str, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = [], []
    for name in files:
        entry = _unpickle(Path(folder) / name)
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(entry[label_key])
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)


def _cifar_test(cfg: DataConfig) -> ImageTensorDataset:
    meta = _CIFAR[cfg.dataset]
    folder = str(Path(cfg.root) / meta["folder"])
    x, y = _cifar_split(folder, tuple(meta["test"]), meta["labels"])
    info = dataset_info(cfg)
    return ImageTensorDataset(x, y, info.mean, info.std, size=info.image_size, classes=_cifar_classes(cfg))


def _cifar_classes(cfg: DataConfig) -> list[str]:
    meta = _CIFAR[cfg.dataset]
    return list(_unpickle(Path(cfg.root) / meta["folder"] / meta["meta"][0])[meta["meta"][1]])


def _cifar(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    meta = _CIFAR[cfg.dataset]
    folder = str(Path(cfg.root) / meta["folder"])
    classes = _cifar_classes(cfg)
    info = dataset_info(cfg)
    x_train, y_train = _cifar_split(folder, tuple(meta["train"]), meta["labels"])
    if cfg.validation == "official":  # the test batch, as papers report
        val = _cifar_test(cfg)
        keep = train_subset(range(len(y_train)), y_train.numpy(), cfg)
    else:  # a split of the training batches; the test batch stays unseen
        keep, val_idx = stratified_split(y_train.numpy(), cfg.val_fraction, seed=cfg.split_seed)
        keep = train_subset(keep, y_train.numpy(), cfg)
        val_keep = torch.tensor(val_idx, dtype=torch.long)
        val = ImageTensorDataset(x_train[val_keep], y_train[val_keep], info.mean, info.std, size=info.image_size,
                                 classes=classes)
    if len(keep) != len(y_train):
        keep_t = torch.tensor(keep, dtype=torch.long)
        x_train, y_train = x_train[keep_t], y_train[keep_t]
    # the standard CIFAR recipe: RandomCrop(32, padding=4) + horizontal flip
    train = ImageTensorDataset(x_train, y_train, info.mean, info.std, pad=4 if cfg.augment else 0,
                               flip=cfg.augment, size=info.image_size, classes=classes)
    return train, val, info


def resize_side(size: int) -> int:
    """The shorter side an evaluation image is resized to before its center crop of ``size``: the usual 0.875
    crop ratio (256 -> 224)."""
    return round(size * 256 / 224)


def _image_transforms(size: int, train: bool, mean: Sequence[float], std: Sequence[float]):
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(resize_side(size)), T.CenterCrop(size), *norm])


def _with_transform(dataset: Dataset, size: int, random_crop: bool) -> Dataset:
    transform = ImageTransform(size, random_crop, IMAGENET_MEAN, IMAGENET_STD)
    dataset.image_transform = transform  # type: ignore[attr-defined]
    return dataset


def image_files(dataset: Dataset) -> ImageFiles | None:
    """The files, labels and transform of an ``imagenet``/``folder`` split (an ImageFolder or a Subset of one,
    as ``build_datasets`` makes them); None for any other dataset."""
    transform = getattr(dataset, "image_transform", None)
    base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, None)
    samples = getattr(base, "samples", None)
    if transform is None or samples is None:
        return None
    if indices is not None:
        samples = [samples[i] for i in indices]
    return ImageFiles([path for path, _ in samples], [int(label) for _, label in samples], transform)


def _folder_layout(cfg: DataConfig) -> tuple[Path, Path | None]:
    """(train dir, the official held-out dir ``root/val`` or None when there is none). ``ConfigError`` naming
    ``data.validation`` when it is ``official`` and the tree has no ``val/`` to validate on."""
    root = Path(cfg.root)
    if cfg.dataset == "imagenet" or ((root / "train").is_dir() and (root / "val").is_dir()):
        return root / "train", root / "val"
    if cfg.validation == "official":
        raise ConfigError(f"data.validation: official validates on the official held-out split {root / 'val'}, "
                          f"and {root} has no train/ and val/ folders; set data.validation: split (validation from "
                          "the training images) or add the val/ folder beside train/")
    return (root / "train" if (root / "train").is_dir() else root), None


def _folder_test(cfg: DataConfig) -> Dataset | None:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import find_classes

    train_dir, val_dir = _folder_layout(cfg)
    if val_dir is None:
        return None
    size = cfg.resolved_image_size
    test = ImageFolder(str(val_dir), transform=_image_transforms(size, False, IMAGENET_MEAN, IMAGENET_STD))
    train_classes, _ = find_classes(str(train_dir))
    if test.classes != train_classes:
        raise ConfigError(f"data.root: {val_dir} has classes {test.classes[:5]}... but {train_dir} has "
                          f"{train_classes[:5]}...; both need the same class folders")
    return _with_transform(test, size, False)


def _folder(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    from torchvision.datasets import ImageFolder

    size = cfg.resolved_image_size
    train_tf = _image_transforms(size, cfg.augment, IMAGENET_MEAN, IMAGENET_STD)
    val_tf = _image_transforms(size, False, IMAGENET_MEAN, IMAGENET_STD)
    train_dir, _ = _folder_layout(cfg)
    if cfg.validation == "official":  # root/val, as papers report (the layout refuses a tree without one)
        train, val = ImageFolder(str(train_dir), transform=train_tf), _folder_test(cfg)
        num_classes = len(train.classes)
        if cfg.train_size is not None:
            classes = train.classes
            train = Subset(train, train_subset(range(len(train.targets)), train.targets, cfg))
            train.classes = classes  # type: ignore[attr-defined]
    else:  # the validation split comes out of the training folder; root/val (if any) stays unseen
        base_train = ImageFolder(str(train_dir), transform=train_tf)
        base_val = ImageFolder(str(train_dir), transform=val_tf)
        train_idx, val_idx = stratified_split(base_train.targets, cfg.val_fraction, seed=cfg.split_seed)
        train_idx = train_subset(train_idx, base_train.targets, cfg)
        train, val = Subset(base_train, train_idx), Subset(base_val, val_idx)
        train.classes = val.classes = base_train.classes  # type: ignore[attr-defined]
        num_classes = len(base_train.classes)
    _with_transform(train, size, cfg.augment)
    _with_transform(val, size, False)
    return train, val, DatasetInfo(num_classes, size, 3, IMAGENET_MEAN, IMAGENET_STD)


def _fake(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    size = cfg.resolved_image_size
    train = FakePatterns(cfg.fake_train_size, cfg.fake_num_classes, size, seed=1)
    val = FakePatterns(cfg.fake_val_size, cfg.fake_num_classes, size, seed=2)
    return train, val, DatasetInfo(cfg.fake_num_classes, size)


_BUILDERS = {"digits": _digits, "fashion_mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar,
             "imagenet": _folder, "folder": _folder, "fake": _fake}


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """(train dataset, val dataset, info) for ``cfg``; items are (float tensor (3, S, S) normalised, label)."""
    return _BUILDERS[cfg.dataset](cfg)


def official_split(cfg: DataConfig) -> Dataset | None:
    """The dataset's official held-out split, evaluated as the validation split is (no augmentation): CIFAR's test
    batch, an ImageFolder tree's ``root/val``, Fashion-MNIST's t10k images; None for a dataset without one
    (digits, fake, a folder without ``val/``). With ``data.validation: split`` no search sees it: it is the test
    split ``attnsearch retrain`` reports ``test_acc`` on; with ``official`` it is the validation split itself."""
    if cfg.dataset in _CIFAR:
        return _cifar_test(cfg)
    if cfg.dataset == "fashion_mnist":
        arrays = fashion_mnist_arrays(cfg)
        return _fashion_mnist_split(cfg, arrays["test-images"], arrays["test-labels"], False)
    if cfg.dataset in ("imagenet", "folder"):
        return _folder_test(cfg)
    return None


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Class count, image size and normalisation without loading any images (cheap, driver side)."""
    size = cfg.resolved_image_size
    if cfg.dataset == "digits":
        return DatasetInfo(10, size)
    if cfg.dataset == "fashion_mnist":
        return DatasetInfo(10, size, 3, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    if cfg.dataset in _CIFAR:
        meta = _CIFAR[cfg.dataset]
        return DatasetInfo(meta["num_classes"], size, 3, meta["mean"], meta["std"])
    if cfg.dataset == "fake":
        return DatasetInfo(cfg.fake_num_classes, size)
    train_dir, _ = _folder_layout(cfg)
    return DatasetInfo(len(_class_dirs(train_dir)), size, 3, IMAGENET_MEAN, IMAGENET_STD)


def _class_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
