"""Datasets and loaders: digits, CIFAR-10/100, ImageNet, any ImageFolder tree, and learnable synthetic data.

``check_data`` runs on the driver before any trial starts (and downloads CIFAR there when ``download: true``, so
that concurrent trials never race to download); ``build_datasets`` and ``build_loaders`` run inside each trial.

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), bilinearly upsampled to ``image_size`` (16),
  replicated to 3 channels, held in memory; stratified train/val split (``val_fraction``, ``split_seed``).
* ``fashion_mnist``: the four IDX files (plain or gzipped) in ``root`` (or torchvision's ``root/FashionMNIST/raw``;
  without ``root`` the Debian package's ``/usr/share/datasets/fashion-mnist``), 28x28 grey replicated to 3 channels,
  held in memory; official held-out split: the 10,000 t10k images.
* ``cifar10``/``cifar100``: the python-pickle batches torchvision downloads (``cifar-10-batches-py``,
  ``cifar-100-python``) under ``root``, read directly (no md5 check) and held in memory as uint8; official
  held-out split: the test batch.
* ``imagenet``: ImageFolder ``root/train``; official held-out split: ``root/val``.
* ``folder``: ImageFolder ``root/train``, with ``root/val`` as official held-out split when both exist; otherwise
  ``root/train`` (or ``root`` itself), which has none.
* ``fake``: class-dependent low-frequency patterns plus Gaussian noise, generated per index from a fixed seed.

Validation (``data.validation``): ``split`` (the default) validates on a stratified, seeded split of the training
images (``val_fraction``, ``split_seed``); the official held-out split (``official_split``) is then seen by no search,
only by ``attnsearch retrain``, which reports ``test_acc`` on it. ``official`` validates on the official held-out
split itself, as papers report (refused for a dataset without one). ``fake`` generates its validation images.

Loaders (``data.loader``): torch's DataLoader over these datasets, or for ``imagenet``/``folder`` an NVIDIA DALI
pipeline that decodes JPEGs on the GPU (``_dali.py``; ``auto`` takes it on CUDA when DALI is installed). Both yield
the same ``(images, targets)`` batches.

Every dataset but ``fake`` takes ``train_size``: a seeded, stratified subset (a count or a fraction) of its
training split.

Modules: ``_idx`` (Fashion-MNIST's IDX files), ``_datasets`` (the datasets, ``build_datasets``, ``dataset_info``),
``_dali`` (the DALI pipeline), ``_loaders`` (``build_loaders``, ``loader_kind``), ``_checks`` (``check_data``).
"""

from ._checks import check_data
from ._dali import DALI_DATASETS, DaliLoader, dali_installed
from ._datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    FakePatterns,
    ImageFiles,
    ImageTensorDataset,
    ImageTransform,
    build_datasets,
    dataset_info,
    image_files,
    official_split,
    resize_side,
    stratified_split,
    stratified_subset,
    train_subset,
)
from ._idx import FASHION_MNIST_CLASSES, SYSTEM_FASHION_MNIST, IdxError, fashion_mnist_files, read_idx
from ._loaders import build_eval_loader, build_loaders, loader_kind

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DALI_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DaliLoader",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IdxError",
    "SYSTEM_FASHION_MNIST",
    "DatasetInfo",
    "FakePatterns",
    "ImageFiles",
    "ImageTensorDataset",
    "ImageTransform",
    "build_datasets",
    "build_eval_loader",
    "build_loaders",
    "check_data",
    "dali_installed",
    "dataset_info",
    "image_files",
    "loader_kind",
    "official_split",
    "resize_side",
    "fashion_mnist_files",
    "read_idx",
    "stratified_split",
    "stratified_subset",
    "train_subset",
]
