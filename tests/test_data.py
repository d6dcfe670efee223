"""Datasets, loaders and the driver-side data check, on small data the tests create (attnsearch.data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnsearch.config import ConfigError, DataConfig
from attnsearch.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    build_datasets,
    build_loaders,
    check_data,
    dataset_info,
    stratified_split,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_split():
    train, val, info = build_datasets(DataConfig(dataset="digits", augment=False))
    assert len(train) + len(val) == 1797
    assert abs(len(val) / 1797 - 0.2) < 0.01
    assert info.num_classes == 10 and info.image_size == 16 and info.in_channels == 3
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to 3 channels
    # stratified: every class in both splits, in proportion
    val_counts = torch.bincount(val.targets, minlength=10)
    train_counts = torch.bincount(train.targets, minlength=10)
    assert (val_counts >= 30).all() and ((val_counts / (val_counts + train_counts) - 0.2).abs() < 0.02).all()
    # normalised with the training split's statistics
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(xs.mean())) < 1e-3 and abs(float(xs.std()) - 1) < 1e-2


def test_digits_is_deterministic_and_resizable():
    a_train, a_val, _ = build_datasets(DataConfig(dataset="digits", augment=False))
    b_train, b_val, _ = build_datasets(DataConfig(dataset="digits", augment=False))
    assert torch.equal(a_val.images, b_val.images) and torch.equal(a_train.targets, b_train.targets)
    train, val, info = build_datasets(DataConfig(dataset="digits", image_size=24, val_fraction=0.5))
    assert train[0][0].shape == (3, 24, 24) and info.image_size == 24
    assert abs(len(val) - len(train)) <= 10


def test_digits_augmentation_shifts_train_only():
    train, val, _ = build_datasets(DataConfig(dataset="digits", augment=True))
    torch.manual_seed(0)
    views = torch.stack([train[5][0] for _ in range(20)])
    assert views.shape == (20, 3, 16, 16)
    assert (views - views[0]).abs().amax() > 0.1  # shifted views differ
    assert torch.equal(val[5][0], val[5][0])


def test_stratified_split_is_seeded():
    labels = [0] * 10 + [1] * 20 + [2] * 5
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(35)) and not set(train) & set(val)
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [2, 4, 1]
    assert stratified_split(labels, 0.2, seed=0) == (train, val)
    assert stratified_split(labels, 0.2, seed=1) != (train, val)


# --------------------------------------------------------------------------------------------------- folders


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=4, size=(20, 14)) -> Path:
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., ci % 3] = 255  # a class-dependent colour channel
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_with_train_and_val(tmp_path):
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "val", per_class=2)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), image_size=32)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (12, 6, 3)
    assert train.classes == ["cat", "dog", "fox"]
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert dataset_info(cfg).num_classes == 3
    # the same tree as an ImageNet root
    train, val, info = build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path), image_size=16))
    assert train[3][0].shape == (3, 16, 16) and len(val) == 6


def test_image_folder_split_by_val_fraction(tmp_path):
    make_image_folder(tmp_path, per_class=5)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), image_size=16, val_fraction=0.4)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (9, 6, 3)
    assert sorted(set(train.indices) | set(val.indices)) == list(range(15))
    assert sorted(val[i][1] for i in range(len(val))) == [0, 0, 1, 1, 2, 2]


def test_check_data_folder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=rf"data.root: {missing} does not exist"):
        check_data(DataConfig(dataset="folder", root=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.root: .*empty has no class folders"):
        check_data(DataConfig(dataset="folder", root=str(tmp_path / "empty")))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"holds no images"):
        check_data(DataConfig(dataset="folder", root=str(tmp_path / "noimg")))
    make_image_folder(tmp_path / "partial", classes=("a",))
    (tmp_path / "partial" / "b").mkdir()
    with pytest.raises(ConfigError, match=r"class folders without images .*\['b'\]"):
        check_data(DataConfig(dataset="folder", root=str(tmp_path / "partial")))
    make_image_folder(tmp_path / "inet" / "train", classes=("a", "b"))
    with pytest.raises(ConfigError, match=r"validation folder .*val does not exist"):
        check_data(DataConfig(dataset="imagenet", root=str(tmp_path / "inet")))
    make_image_folder(tmp_path / "inet" / "val", classes=("a", "c"))
    with pytest.raises(ConfigError, match=r"same class folders; they differ in \['b', 'c'\]"):
        check_data(DataConfig(dataset="imagenet", root=str(tmp_path / "inet")))


# --------------------------------------------------------------------------------------------------- CIFAR


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 3) -> dict[str, np.ndarray]:
    """A tiny tree in the python-pickle format torchvision downloads; returns the images per file."""
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, train, test, n = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 10
        meta, key, names_key = "batches.meta", "labels", "label_names"
    else:
        folder, train, test, n = "cifar-100-python", ["train"], ["test"], 100
        meta, key, names_key = "meta", "fine_labels", "fine_label_names"
    (root / folder).mkdir(parents=True)
    written = {}
    for i, fname in enumerate(train + test):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i * per_batch + j) % n for j in range(per_batch)]
        with open(root / folder / fname, "wb") as f:
            pickle.dump({"data": data, key: labels, "batch_label": fname}, f)
        written[fname] = data
    with open(root / folder / meta, "wb") as f:
        pickle.dump({names_key: [f"c{i}" for i in range(n)]}, f)
    return written


def test_cifar10_pickle_tree(tmp_path):
    written = write_cifar(tmp_path, "cifar10", per_batch=3)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), augment=False)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes, info.image_size) == (15, 3, 10, 32)
    assert train.classes[:2] == ["c0", "c1"]
    assert [train[i][1] for i in range(4)] == [0, 1, 2, 3] and val[0][1] == 5
    # pixel values survive decoding + normalisation: first training image == first row of data_batch_1
    x, _ = train[0]
    original = torch.from_numpy(written["data_batch_1"][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(x * std + mean, original, atol=1e-5)
    # augmentation: same shape, random crop/flip
    train_aug, _, _ = build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path), augment=True, image_size=40))
    torch.manual_seed(0)
    views = torch.stack([train_aug[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 40, 40) and (views - views[0]).abs().amax() > 0.1


def test_cifar100_pickle_tree(tmp_path):
    write_cifar(tmp_path, "cifar100", per_batch=4)
    cfg = DataConfig(dataset="cifar100", root=str(tmp_path))
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (4, 4, 100)
    assert val[1][1] == 5 and dataset_info(cfg).num_classes == 100


def test_check_data_cifar_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root: .*absent does not exist.*data.download: true"):
        check_data(DataConfig(dataset="cifar10", root=str(tmp_path / "absent")))
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py is missing data_batch_3, test_batch"):
        check_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"cifar-100-python is missing train, test, meta"):
        check_data(DataConfig(dataset="cifar100", root=str(tmp_path)))


# --------------------------------------------------------------------------------------------------- fake


def test_fake_is_deterministic_and_learnable():
    cfg = DataConfig(dataset="fake", fake_train_size=200, fake_val_size=100, fake_num_classes=4, image_size=16)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes, info.image_size) == (200, 100, 4, 16)
    assert torch.equal(train[7][0], build_datasets(cfg)[0][7][0])
    assert not torch.equal(train[7][0], val[7][0])
    assert torch.bincount(train.targets).tolist() == [50] * 4
    # nearest class mean on the training split separates the validation split far above chance (0.25)
    xs = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    means = torch.stack([xs[train.targets == c].mean(0) for c in range(4)])
    xv = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    acc = (torch.cdist(xv, means).argmin(1) == val.targets).float().mean()
    assert acc > 0.8, acc


# --------------------------------------------------------------------------------------------------- loaders


def test_loaders_seeded_shuffle_and_drop_last():
    cfg = DataConfig(dataset="fake", fake_train_size=50, fake_val_size=20, batch_size=16, eval_batch_size=8)
    train, val, _ = build_datasets(cfg)
    a, v = build_loaders(cfg, train, val, seed=3)
    b, _ = build_loaders(cfg, train, val, seed=3)
    c, _ = build_loaders(cfg, train, val, seed=4)
    labels = lambda loader: torch.cat([y for _, y in loader]).tolist()  # noqa: E731
    assert labels(a) == labels(b) and labels(a) != labels(c)
    assert a.drop_last and len(a) == 3  # 50 // 16
    assert [len(y) for _, y in v] == [8, 8, 4] and labels(v) == val.targets.tolist()
    small = DataConfig(dataset="fake", fake_train_size=10, fake_val_size=5, batch_size=16)
    train, val, _ = build_datasets(small)
    loader, _ = build_loaders(small, train, val)
    assert not loader.drop_last and [len(y) for _, y in loader] == [10]


def test_loader_with_workers_is_persistent():
    cfg = DataConfig(dataset="fake", fake_train_size=32, fake_val_size=8, batch_size=8, num_workers=1)
    train, val, _ = build_datasets(cfg)
    loader, val_loader = build_loaders(cfg, train, val, seed=0, pin_memory=False)
    assert loader.persistent_workers and loader.num_workers == 1
    assert sum(len(y) for _, y in loader) == 32
