"""The loaders: torch's DataLoader over any dataset of the package, or a DALI pipeline over an ImageFolder split
(``data.loader``; ``attnsearch.data._dali``)."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, DataConfig
from ._dali import DALI_DATASETS, DaliLoader, check_dali, dali_installed
from ._datasets import image_files


def loader_kind(cfg: DataConfig, device: torch.device | str | None = None) -> str:
    """``"dali"`` or ``"torch"``: what ``data.loader`` means for ``cfg`` on ``device`` (default CPU).

    ``auto`` takes DALI on CUDA for ``imagenet``/``folder`` when it is installed, else torch; ``dali`` is DALI on
    any device (its CPU backend off CUDA) or a ``ConfigError`` naming ``data.loader`` and the fix."""
    device = torch.device(device or "cpu")
    if cfg.loader == "torch":
        return "torch"
    if cfg.loader == "auto":
        return "dali" if device.type == "cuda" and cfg.dataset in DALI_DATASETS and dali_installed() else "torch"
    check_dali(cfg)
    return "dali"


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy/random need it passed on (PyTorch's recipe)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _dali_common(cfg: DataConfig, device: torch.device, channels_last: bool, shard_id: int,
                 num_shards: int) -> dict[str, Any]:
    device_id = None
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    return {
        "device_id": device_id,
        # the trial's CPUs: torch's threads (train.threads = resources.cpu) unless data.num_workers says otherwise
        "num_threads": cfg.num_workers or torch.get_num_threads(),
        "prefetch": cfg.prefetch_factor,
        "channels_last": channels_last,
        "shard_id": shard_id,
        "num_shards": num_shards,
    }


def _dali_refusal(*datasets: Dataset) -> ConfigError:
    names = "/".join(type(d).__name__ for d in datasets)
    return ConfigError(f"data.loader: dali reads ImageFolder splits (data.dataset imagenet or folder) and was "
                       f"given {names}; set data.loader: torch")


def _dali_loaders(cfg: DataConfig, train_ds: Dataset, val_ds: Dataset, seed: int, device: torch.device,
                  channels_last: bool, shard_id: int, num_shards: int) -> tuple[DaliLoader, DaliLoader]:
    train_files, val_files = image_files(train_ds), image_files(val_ds)
    if train_files is None or val_files is None:
        raise _dali_refusal(train_ds, val_ds)
    common = _dali_common(cfg, device, channels_last, shard_id, num_shards)
    train = DaliLoader(train_files, cfg.batch_size, shuffle=True, drop_last=True, seed=seed, **common)
    val = DaliLoader(val_files, cfg.eval_batch_size or cfg.batch_size, shuffle=False, **common)
    return train, val


def _torch_common(cfg: DataConfig, pin_memory: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "num_workers": cfg.num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": cfg.num_workers > 0,
    }
    if cfg.num_workers > 0:
        common["worker_init_fn"] = _seed_worker
        common["prefetch_factor"] = cfg.prefetch_factor
    return common


def build_eval_loader(cfg: DataConfig, dataset: Dataset, pin_memory: bool = False,
                      device: torch.device | str | None = None,
                      channels_last: bool = False) -> DataLoader | DaliLoader:
    """An evaluation loader (in order, ``eval_batch_size``) over ``dataset`` of the kind ``build_loaders`` gives
    its validation loader (``loader_kind``): what ``attnsearch retrain`` reads the official held-out split with.

    Args:
        cfg: the job's data settings.
        dataset: a split of ``build_datasets``' kind (for DALI an ImageFolder split, ``image_files``).
        pin_memory: page-locked batches (torch's DataLoader), for asynchronous copies to CUDA.
        device: where the batches go (DALI decodes there on CUDA); default CPU.
        channels_last: DALI's batches in channels_last memory format.
    """
    device = torch.device(device or "cpu")
    batch_size = cfg.eval_batch_size or cfg.batch_size
    if loader_kind(cfg, device) == "dali":
        files = image_files(dataset)
        if files is not None:
            return DaliLoader(files, batch_size, shuffle=False, **_dali_common(cfg, device, channels_last, 0, 1))
        if cfg.loader == "dali":
            raise _dali_refusal(dataset)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **_torch_common(cfg, pin_memory))


def build_loaders(
    cfg: DataConfig, train_ds: Dataset, val_ds: Dataset, seed: int = 0, pin_memory: bool = False,
    device: torch.device | str | None = None, channels_last: bool = False, shard_id: int = 0, num_shards: int = 1,
) -> tuple[DataLoader | DaliLoader, DataLoader | DaliLoader]:
    """Train loader (seeded shuffle, drop_last when larger than a batch) and val loader (in order).

    Both yield ``(images, targets)`` batches, have a ``len()`` (batches per epoch) and the train loader a
    ``generator`` to seed each epoch's shuffle with. ``data.loader`` picks the kind (``loader_kind``) on ``device``:

    * torch's DataLoader: with ``num_workers`` > 0 the workers persist across epochs and each keeps
      ``prefetch_factor`` batches ready (PyTorch refuses both options without workers). ``pin_memory``:
      page-locked batches, which the trial copies to CUDA asynchronously. One process reads everything
      (``shard_id``/``num_shards`` and ``channels_last`` are the DALI loader's).
    * DALI (``DaliLoader``): batches come out on ``device`` (decoded there on CUDA), in channels_last memory format
      when ``channels_last``; the reader takes shard ``shard_id`` of ``num_shards`` (one per trial unless data
      parallel); ``num_workers`` (default: torch's thread count) DALI CPU threads, ``prefetch_factor`` batches ready.
    """
    device = torch.device(device or "cpu")
    if loader_kind(cfg, device) == "dali":
        try:
            return _dali_loaders(cfg, train_ds, val_ds, seed, device, channels_last, shard_id, num_shards)
        except ConfigError as exc:
            if cfg.loader == "dali":
                raise
            warnings.warn(f"data.loader: auto falls back to torch's DataLoader: {exc}", stacklevel=2)
    common = _torch_common(cfg, pin_memory)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                       drop_last=len(train_ds) > cfg.batch_size, **common)
    val = DataLoader(val_ds, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, **common)
    return train, val
