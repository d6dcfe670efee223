"""The DALI input pipeline (``data.loader``; attnsearch/data/_dali.py) on DALI's CPU backend, against the torchvision
pipeline, on a small ImageFolder of real JPEGs the tests write. The tests that run DALI skip without it
(``pip install "attnsearch[dali]"``); the choice of loader and its errors are tested everywhere."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from attnsearch.config import ConfigError, DataConfig, validate_job
from attnsearch.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_datasets,
    build_loaders,
    check_data,
    loader_kind,
)
from attnsearch.space import TrialSettings

torch.set_num_threads(1)

# (width, height): ImageNet's common 500x375 and 375x500, odd sides (whose center crops fall on half pixels,
# where torchvision rounds halves to even and DALI's own crop would round them up) and a near-square one.
SIZES = [(500, 375), (320, 480), (640, 427), (333, 251), (375, 500), (257, 263)]
GREY = 5  # the sixth image of every class is a one-channel JPEG: both pipelines must make it RGB


@pytest.fixture
def dali():
    return pytest.importorskip("nvidia.dali")


def write_folder(root: Path, splits=("train", "val"), classes: int = 3) -> Path:
    """Per split, ``classes`` class folders of len(SIZES) JPEGs: smooth class-dependent waves plus blurred noise."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}" if split else root / f"class_{c}"
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(SIZES):
                yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
                waves = np.stack([np.sin((4 + c) * 6.28 * xx + i), np.cos(3 * 6.28 * yy - i),
                                  np.sin(2 * 6.28 * (xx + yy) + c)], -1)
                pixels = np.clip((waves * 0.35 + 0.5) * 255 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))
                (image.convert("L") if i == GREY else image).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("jpegs"))


def folder_cfg(root: Path, **data) -> DataConfig:
    """DALI over ``root``, validated on ``root/val`` when it has one (``data.validation: official``)."""
    official = "official" if (root / "val").is_dir() else "split"
    return DataConfig(**{"dataset": "folder", "root": str(root), "image_size": 32, "batch_size": 4, "loader": "dali",
                         "validation": official, **data})


def read_all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*loader, strict=False)
    return torch.cat(images), torch.cat(targets)


def levels(diff: torch.Tensor) -> torch.Tensor:
    """A difference of normalised images in 0..255 intensity levels, per channel."""
    return diff.abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


# --------------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("size", [32, 64, 224])
def test_validation_batches_equal_torchvisions(dali, tree, size):
    # Both pipelines decode with libjpeg-turbo on the CPU (identical pixels) and resize to the same extents and
    # crop at the same offsets; what is left is the rounding of the two resampling kernels (PIL's antialiased
    # bilinear, DALI's antialiased linear), measured at 1 intensity level at most and 0.2 on average here. The
    # bound below (2 levels, 0.5 on average) fails on any geometric slip: DALI's own center crop, rounding a half
    # pixel up where torchvision rounds to even, puts these images off by 21 levels on average at 32 px and by
    # 1.7 at 224 px.
    cfg = folder_cfg(tree, image_size=size, batch_size=5)
    train_ds, val_ds, _ = build_datasets(cfg)
    expected = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    _, val = build_loaders(cfg, train_ds, val_ds)
    assert len(val) == math.ceil(len(val_ds) / 5) and not isinstance(val, DataLoader)
    for _ in range(2):  # the evaluation pipeline is reused: the second epoch reads the same files again
        images, targets = read_all(val)
        assert images.shape == expected.shape and images.dtype == expected.dtype == torch.float32
        assert targets.dtype == torch.int64 and targets.tolist() == val_ds.targets  # same files, same order
        diff = levels(images - expected)
        assert diff.max() <= 2 and diff.mean() <= 0.5, (diff.max(), diff.mean())


def test_channels_last_output_is_the_same_batch_in_channels_last_memory(dali, tree):
    cfg = folder_cfg(tree)
    train_ds, val_ds, _ = build_datasets(cfg)
    _, plain = build_loaders(cfg, train_ds, val_ds)
    _, nhwc = build_loaders(cfg, train_ds, val_ds, channels_last=True)
    for (a, ya), (b, yb) in zip(plain, nhwc, strict=True):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_a_split_folder_reads_the_subsets_files(dali, tmp_path):
    root = write_folder(tmp_path / "flat", splits=("",))  # one folder, split by val_fraction
    cfg = folder_cfg(root, val_fraction=0.5, batch_size=3)
    train_ds, val_ds, _ = build_datasets(cfg)
    expected = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    _, val = build_loaders(cfg, train_ds, val_ds)
    images, targets = read_all(val)
    assert targets.tolist() == [val_ds[i][1] for i in range(len(val_ds))] and len(targets) == 9
    assert levels(images - expected).max() <= 2


# --------------------------------------------------------------------------------------------------- training


def test_training_batches_shapes_range_and_fresh_crops_each_epoch(dali, tree):
    cfg = folder_cfg(tree, num_workers=2)
    train_ds, val_ds, _ = build_datasets(cfg)
    train, _ = build_loaders(cfg, train_ds, val_ds, seed=3)
    n = len(train_ds)
    assert len(train) == n // 4  # drop_last, as torch's training loader (18 images: 4 batches of 4)
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=False))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=False))

    def epoch(seed: int):
        train.generator.manual_seed(seed)  # what train.fit does before every epoch
        batches = list(train)
        assert len(batches) == len(train)
        for images, targets in batches:
            assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
            assert targets.shape == (4,) and targets.dtype == torch.int64
            assert low - 1e-5 <= images.min() and images.max() <= high + 1e-5
        return read_all(batches)

    first, again, second = epoch(10), epoch(10), epoch(11)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # an epoch is a function of its seed
    assert not torch.equal(first[0], second[0])  # another epoch: other crops, flips and order
    assert first[1].tolist() != second[1].tolist()
    counts = torch.bincount(first[1], minlength=3)
    assert counts.sum() == 16 and (counts <= 6).all()  # a permutation of the 18 files, the last 2 dropped
    # without reseeding, each iteration draws its epoch's seed from the generator (as torch's DataLoader does)
    assert not torch.equal(read_all(train)[0], read_all(train)[0])


def test_shards_split_an_epochs_permutation(dali, tree):
    cfg = folder_cfg(tree, batch_size=3)
    train_ds, val_ds, _ = build_datasets(cfg)
    seen = []
    for shard in range(2):
        train, _ = build_loaders(cfg, train_ds, val_ds, seed=0, shard_id=shard, num_shards=2)
        assert len(train) == 3  # 9 files per shard
        train.generator.manual_seed(7)
        seen.append(read_all(train)[1])
    # the same permutation on both shards, each reading its own half: every class 6 times in all
    assert torch.bincount(torch.cat(seen), minlength=3).tolist() == [6, 6, 6]


def test_fit_trains_with_the_dali_loader(dali, tree, monkeypatch):
    from attnsearch.data import _dali
    from attnsearch.train import fit

    built = []
    original = _dali.DaliLoader._build
    monkeypatch.setattr(_dali.DaliLoader, "_build",
                        lambda self: built.append((self.shuffle, self.source.files)) or original(self))
    job = validate_job({
        "name": "dali",
        "backbone": {"name": "resnet20"},
        "data": {"dataset": "folder", "root": str(tree), "image_size": 32, "batch_size": 6, "loader": "dali"},
        "train": {"epochs": 1, "threads": 1, "lr": 0.05},
        "search": {"space": {"attention": {"type": ["none"]}}},
    })
    reports = []
    plan = TrialSettings(attention=None, train=job.train)
    assert fit(job, plan, lambda m, s: reports.append(m), test=True) == "completed"
    (metrics,) = reports
    assert 0.0 <= metrics["val_acc"] <= 1.0 and math.isfinite(metrics["train_loss"]) and metrics["epoch"] == 1
    assert 0.0 <= metrics["test_acc"] <= 1.0 and math.isfinite(metrics["test_loss"])
    # one training epoch, one evaluation and one test, all through DALI; data.validation: split (the default):
    # training and validation read train/'s files (disjoint), the test reads val/'s, all 18 of them
    (train_files,), evaluated = [f for shuffle, f in built if shuffle], [f for shuffle, f in built if not shuffle]
    val_files, test_files = evaluated
    assert {Path(f).parts[-3] for f in train_files + val_files} == {"train"} and not set(train_files) & set(val_files)
    assert {Path(f).parts[-3] for f in test_files} == {"val"} and len(test_files) == 18
    # official: validated on val/, no test
    built.clear()
    reports.clear()
    official = job.model_copy(update={"data": job.data.model_copy(update={"validation": "official"})})
    assert fit(official, plan, lambda m, s: reports.append(m), test=True) == "completed"
    assert "test_acc" not in reports[0] and [len(f) for shuffle, f in built if not shuffle] == [18]


# --------------------------------------------------------------------------------------------------- the choice


def test_auto_on_cpu_picks_torch(tree):
    cfg = folder_cfg(tree, loader="auto")
    assert loader_kind(cfg, "cpu") == "torch" and loader_kind(cfg) == "torch"
    train_ds, val_ds, _ = build_datasets(cfg)
    assert all(isinstance(loader, DataLoader) for loader in build_loaders(cfg, train_ds, val_ds, device="cpu"))
    assert loader_kind(folder_cfg(tree, loader="torch"), "cuda") == "torch"
    assert loader_kind(DataConfig(dataset="fake", loader="auto"), "cuda") == "torch"  # DALI reads files only


def test_auto_on_cuda_picks_dali_when_installed(dali, tree):
    # the decision only: nothing is built, so no GPU is needed
    assert loader_kind(folder_cfg(tree, loader="auto"), "cuda:0") == "dali"


def hide_dali(monkeypatch) -> None:
    """Make `import nvidia.dali` fail as it does where DALI is not installed."""
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)


def test_dali_without_dali_is_a_config_error_naming_the_key_and_the_fix(tree, monkeypatch):
    hide_dali(monkeypatch)
    cfg = folder_cfg(tree)
    for call in (lambda: check_data(cfg), lambda: loader_kind(cfg, "cuda"),
                 lambda: build_loaders(cfg, *build_datasets(cfg)[:2])):
        with pytest.raises(ConfigError) as err:
            call()
        message = str(err.value)
        assert message.startswith("data.loader: dali needs NVIDIA DALI, which is not installed")
        assert 'pip install "attnsearch[dali]"' in message and "data.loader: torch" in message
    # auto falls back to torch's DataLoader, on CUDA too
    assert loader_kind(folder_cfg(tree, loader="auto"), "cuda") == "torch"


@pytest.mark.parametrize("dataset", ["digits", "fake", "cifar10"])
def test_dali_for_a_dataset_it_cannot_read_is_a_config_error(dataset, tmp_path):
    cfg = DataConfig(dataset=dataset, root=str(tmp_path) if dataset == "cifar10" else None, loader="dali")
    with pytest.raises(ConfigError, match=rf"data.loader: dali reads ImageFolder trees .* not '{dataset}'; set "
                                          r"data.loader: torch"):
        check_data(cfg)


def test_loader_key_is_validated():
    job = {"name": "x", "backbone": {"name": "resnet20"}, "search": {"space": {"attention": {"type": ["none"]}}}}
    assert validate_job(job).data.loader == "auto"
    with pytest.raises(ConfigError, match=r"data.loader: Input should be 'auto', 'dali' or 'torch'"):
        validate_job({**job, "data": {"loader": "nvidia"}})
