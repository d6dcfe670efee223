"""Datasets, loaders and the driver-side data check, on small data the tests create (attnsearch.data)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import needs_fashion_mnist, write_cifar
from PIL import Image

from attnsearch.config import ConfigError, DataConfig
from attnsearch.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SYSTEM_FASHION_MNIST,
    IdxError,
    build_datasets,
    build_loaders,
    check_data,
    dataset_info,
    image_files,
    official_split,
    read_idx,
    stratified_split,
    stratified_subset,
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
    # official: validated on val/, as papers report (what every such tree did before data.validation)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), image_size=32, validation="official")
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (12, 6, 3)
    assert train.classes == ["cat", "dog", "fox"]
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert dataset_info(cfg).num_classes == 3
    assert {Path(f).parent.parent.name for f in image_files(val).files} == {"val"}
    assert official_split(cfg).samples == val.samples  # the official split is the validation split
    # the same tree as an ImageNet root
    train, val, info = build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path), image_size=16,
                                                 validation="official"))
    assert train[3][0].shape == (3, 16, 16) and len(val) == 6


@pytest.mark.parametrize("dataset", ["folder", "imagenet"])
def test_image_folder_split_validates_on_train_and_keeps_val_for_the_test(tmp_path, dataset):
    make_image_folder(tmp_path / "train", per_class=5)
    make_image_folder(tmp_path / "val", per_class=2)
    cfg = DataConfig(dataset=dataset, root=str(tmp_path), image_size=16, val_fraction=0.4)  # validation: split
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (9, 6, 3)
    # the files the torch and the DALI loaders read (image_files): train/ only for both; val/ is the test split
    train_files, val_files = image_files(train), image_files(val)
    test = official_split(cfg)
    test_files = image_files(test)
    assert {Path(f).parent.parent.name for f in train_files.files + val_files.files} == {"train"}
    assert {Path(f).parent.parent.name for f in test_files.files} == {"val"} and len(test_files.files) == 6
    assert not set(train_files.files) & set(val_files.files) and len(set(train_files.files + val_files.files)) == 15
    assert sorted(val_files.labels) == [0, 0, 1, 1, 2, 2] and sorted(test_files.labels) == [0, 0, 1, 1, 2, 2]
    assert not val_files.transform.random_crop and not test_files.transform.random_crop
    assert test[0][0].shape == (3, 16, 16) and test.classes == train.classes
    # seeded by data.split_seed
    again = image_files(build_datasets(cfg)[1]).files
    other = image_files(build_datasets(cfg.model_copy(update={"split_seed": 5}))[1]).files
    assert again == val_files.files and other != val_files.files


def test_image_folder_split_by_val_fraction(tmp_path):
    make_image_folder(tmp_path, per_class=5)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), image_size=16, val_fraction=0.4)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes) == (9, 6, 3)
    assert sorted(set(train.indices) | set(val.indices)) == list(range(15))
    assert sorted(val[i][1] for i in range(len(val))) == [0, 0, 1, 1, 2, 2]
    assert official_split(cfg) is None  # no val/: no official split to test on, none to validate on
    with pytest.raises(ConfigError, match=r"data.validation: official .* has no train/ and val/ folders; set "
                                          r"data.validation: split"):
        check_data(cfg.model_copy(update={"validation": "official"}))


def test_official_is_refused_for_datasets_without_an_official_split():
    for dataset in ("digits", "fake"):
        with pytest.raises(ValueError, match=rf"dataset .{dataset}. has no official held-out split.*"
                                             r"set it to split"):
            DataConfig(dataset=dataset, validation="official")
    with pytest.raises(ValueError, match="validation"):
        DataConfig(dataset="cifar10", root="x", validation="test")


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
    with pytest.raises(ConfigError, match=r"held-out folder .*val does not exist"):
        check_data(DataConfig(dataset="imagenet", root=str(tmp_path / "inet")))
    with pytest.raises(ConfigError, match=r"validation folder .*val does not exist"):
        check_data(DataConfig(dataset="imagenet", root=str(tmp_path / "inet"), validation="official"))
    make_image_folder(tmp_path / "inet" / "val", classes=("a", "c"))
    with pytest.raises(ConfigError, match=r"same class folders; they differ in \['b', 'c'\]"):
        check_data(DataConfig(dataset="imagenet", root=str(tmp_path / "inet")))


# --------------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_pickle_tree(tmp_path):
    written = write_cifar(tmp_path, "cifar10", per_batch=3)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), augment=False, validation="official")
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes, info.image_size) == (15, 3, 10, 32)
    assert train.classes[:2] == ["c0", "c1"]
    assert [train[i][1] for i in range(4)] == [0, 1, 2, 3] and val[0][1] == 5
    assert torch.equal(official_split(cfg).images, val.images)  # official: the test batch is the validation
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


def _rows(ds) -> list[bytes]:
    """Each image of an in-memory split as bytes (its content, whatever its index)."""
    return [bytes(ds.images[i].numpy().tobytes()) for i in range(len(ds))]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_split_validates_on_training_batches_and_keeps_the_test_batch_unseen(tmp_path, name):
    per_batch = 40 if name == "cifar10" else 200  # every class twice at least
    written = write_cifar(tmp_path, name, per_batch=per_batch)
    test_key = "test_batch" if name == "cifar10" else "test"
    cfg = DataConfig(dataset=name, root=str(tmp_path), augment=False, val_fraction=0.25)  # validation: split
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    n_train = sum(len(v) for k, v in written.items() if k != test_key)
    assert len(train) + len(val) == n_train and info.num_classes == (10 if name == "cifar10" else 100)
    test_rows = {bytes(r) for r in written[test_key]}
    train_rows, val_rows = _rows(train), _rows(val)
    assert not set(val_rows) & test_rows and not set(train_rows) & test_rows  # the test batch stays out
    assert not set(train_rows) & set(val_rows) and len(set(train_rows) | set(val_rows)) == n_train
    test = official_split(cfg)
    assert set(_rows(test)) == test_rows and len(test) == per_batch and test[0][0].shape == (3, 32, 32)
    # stratified: a quarter of every class (CIFAR-10: 20 per class; CIFAR-100: 2 per class, rounded up to 1)
    counts = torch.bincount(val.targets, minlength=info.num_classes)
    per_class = torch.bincount(torch.cat([train.targets, val.targets]), minlength=info.num_classes)
    assert counts.tolist() == [max(1, round(int(c) * 0.25)) if c >= 2 else 0 for c in per_class]
    # seeded by data.split_seed; train_size cuts the training part only
    assert _rows(build_datasets(cfg)[1]) == val_rows
    assert _rows(build_datasets(cfg.model_copy(update={"split_seed": 1}))[1]) != val_rows
    small_train, small_val, _ = build_datasets(cfg.model_copy(update={"train_size": 20}))
    assert len(small_train) == 20 and _rows(small_val) == val_rows and set(_rows(small_train)) <= set(train_rows)


def test_cifar100_pickle_tree(tmp_path):
    write_cifar(tmp_path, "cifar100", per_batch=4)
    cfg = DataConfig(dataset="cifar100", root=str(tmp_path), validation="official")
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


# --------------------------------------------------------------------------------------------------- Fashion-MNIST

IDX_STEMS = {"train-images": "train-images-idx3-ubyte", "train-labels": "train-labels-idx1-ubyte",
             "test-images": "t10k-images-idx3-ubyte", "test-labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of ``array``: magic 0x0000 08 <ndim>, one big-endian int32 per dimension, data."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> dict[str, np.ndarray]:
    """Fashion-MNIST-shaped IDX files: training image i is filled with i, test image i with n_train + i (mod 256);
    labels cycle 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, first in (("train", n_train, 0), ("test", n_test, n_train)):
        arrays[f"{split}-images"] = np.broadcast_to(((first + np.arange(n)) % 256).astype(np.uint8)[:, None, None],
                                                    (n, 28, 28)).copy()
        arrays[f"{split}-labels"] = (np.arange(n) % 10).astype(np.uint8)
    for key, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{IDX_STEMS[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / IDX_STEMS[key]).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_plain_and_gzipped(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, arrays["train-images"])
    assert np.array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), arrays["test-labels"])


def test_read_idx_refuses_malformed_files(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    cases = {
        "magic": (b"\x01\x02" + good[2:], "bad magic number"),
        "type": (good[:2] + b"\x0d" + good[3:], "type code 0x0d"),
        "short": (good[:-5], "the file holds 2,347"),
        "long": (good + b"\x00", "the file holds 2,353"),
        "header": (good[:9], "truncated IDX header"),
        "empty": (b"", "empty"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxError, match=message):
            read_idx(tmp_path / name)
    (tmp_path / "notgz.gz").write_bytes(good)
    with pytest.raises(IdxError, match="cannot read"):
        read_idx(tmp_path / "notgz.gz")


def test_fashion_mnist_written_files_split_and_subset(tmp_path):
    arrays = write_fashion(tmp_path / "fm", n_train=200, n_test=30, gz=False)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), val_fraction=0.25, augment=False,
                     train_size=50)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.num_classes, info.image_size, info.in_channels) == (50, 50, 10, 28, 3)
    x, y = val[0]
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[2])  # grey replicated
    assert torch.allclose(x, (val.images[0].float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0])

    # every image is filled with its index in the files (test images with 200..229): what each split holds
    def indices(ds):
        return set(ds.images[:, 0, 0, 0].tolist())

    train_ids, val_ids = indices(train), indices(val)
    assert len(train_ids) == 50 and len(val_ids) == 50 and not train_ids & val_ids
    assert max(train_ids | val_ids) < 200 and arrays["test-images"][0, 0, 0] == 200  # no test image
    assert (torch.bincount(train.targets, minlength=10) == 5).all()  # stratified subset
    assert (torch.bincount(val.targets, minlength=10) == 5).all()  # stratified split
    # the subset is drawn from the training split only: all of the split's 150 minus the validation 50
    assert all(i % 10 == int(t) for i, t in zip(sorted(train_ids), train.targets.tolist(), strict=True))
    # seeded: same config, same split; another split_seed, another split
    assert indices(build_datasets(cfg)[1]) == val_ids
    assert indices(build_datasets(cfg.model_copy(update={"split_seed": 1}))[1]) != val_ids
    # the official split is the t10k images (retrain's test split); with validation: official it is the validation
    test = official_split(cfg)
    assert indices(test) == set(range(200, 230)) and test[0][0].shape == (3, 28, 28)
    official = cfg.model_copy(update={"validation": "official", "train_size": None})
    check_data(official)
    train, val, _ = build_datasets(official)
    assert indices(val) == set(range(200, 230)) and indices(train) == set(range(200))


def test_fashion_mnist_torchvision_layout_and_resize(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=True)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), image_size=16, val_fraction=0.5, train_size=0.5)
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val)) == (10, 20) and train[0][0].shape == (3, 16, 16) and info.image_size == 16


def test_check_data_fashion_mnist_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root: .*absent does not exist.*data.download: true"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "absent")))
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"data.root: .*fm .*is missing t10k-labels-idx1-ubyte.*data.download"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm")))
    # images and labels that disagree in count
    labels = np.zeros(39, np.uint8)
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(20, np.uint8)))
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(ConfigError, match=r"data.root: .*train-images-idx3-ubyte.gz holds 40 images but .*39 labels"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm")))
    # a corrupt file, a label out of range, images of the wrong side
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match=r"data.root: .*train-labels-idx1-ubyte.gz: cannot read"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm")))
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(40, 12, np.uint8))))
    with pytest.raises(ConfigError, match=r"label 12.*0..9"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm")))
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(40, np.uint8))))
    (tmp_path / "fm" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((40, 8, 8)))))
    with pytest.raises(ConfigError, match=r"shape \(40, 8, 8\).*\(N, 28, 28\)"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm")))


def test_train_size_refusals(tmp_path):
    write_fashion(tmp_path, n_train=40)
    with pytest.raises(ConfigError, match=r"data.train_size: 100 training images asked for, .* holds 30"):
        check_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path), train_size=100))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="train_size"):
            DataConfig(dataset="digits", train_size=bad)
    with pytest.raises(ValueError, match="fake_train_size"):
        DataConfig(dataset="fake", train_size=10)


def test_stratified_subset_is_exact_and_proportional():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    subset = stratified_subset(labels, 33, seed=3)
    assert len(subset) == 33 and subset == sorted(set(subset))
    assert np.bincount(labels[subset]).tolist() == [23, 7, 3]  # 23.1, 6.6, 3.3 by largest remainder
    assert stratified_subset(labels, 33, seed=3) == subset and stratified_subset(labels, 33, seed=4) != subset
    assert len(stratified_subset(labels, 0.5)) == 50


@needs_fashion_mnist
def test_fashion_mnist_real_files():
    cfg = DataConfig(dataset="fashion_mnist", val_fraction=0.1, augment=False)  # no root: the Debian package
    check_data(cfg)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val)) == (54_000, 6_000)  # from the 60,000 training images; the test set stays out
    assert (torch.bincount(val.targets) == 600).all() and (torch.bincount(train.targets) == 5_400).all()
    assert info == dataset_info(cfg) and info.image_size == 28 and train[0][0].shape == (3, 28, 28)
    xs = torch.stack([train[i][0][0] for i in range(0, 54_000, 27)])
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05  # normalised
    test = read_idx(SYSTEM_FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    assert test.shape == (10_000, 28, 28)
    # no validation image is a test image (the raw files hold no duplicates between these)
    val_raw = {bytes(val.images[i, 0].numpy()) for i in range(0, 6_000, 7)}
    assert not val_raw & {bytes(t) for t in test}
    # the held-out split retrain tests on is exactly the t10k file, in its order
    held_out = official_split(cfg)
    assert len(held_out) == 10_000 and torch.equal(held_out.images[:, 0], torch.from_numpy(test))
    assert held_out.targets.tolist() == read_idx(SYSTEM_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").tolist()
    train_raw = {bytes(train.images[i, 0].numpy()) for i in range(0, 54_000, 11)}
    assert not train_raw & {bytes(t) for t in test}
    # official: validated on the t10k images, trained on all 60,000
    train, val, _ = build_datasets(cfg.model_copy(update={"validation": "official"}))
    assert (len(train), len(val)) == (60_000, 10_000) and torch.equal(val.images, held_out.images)
    small = DataConfig(dataset="fashion_mnist", train_size=5_000, val_fraction=0.05, image_size=16)
    train, val, info = build_datasets(small)
    assert (len(train), len(val), train[0][0].shape) == (5_000, 3_000, (3, 16, 16))


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
