"""NVIDIA DALI input pipeline for the ImageFolder datasets (``imagenet``, ``folder``): ``data.loader: dali``, and
``auto`` on CUDA when DALI is installed (``pip install "attnsearch[dali]"``; DALI is imported only here, inside
functions, so the package works without it).

The pipeline reproduces the torchvision transforms of ``build_datasets`` (``ImageTransform``):

* training (``augment: true``): each file is decoded straight into a random-resized crop
  (``fn.decoders.image_random_crop``: area 0.08-1, aspect ratio 3/4-4/3, 10 attempts, as RandomResizedCrop),
  resized to ``size`` x ``size`` (``fn.resize``, antialiased bilinear), mirrored with probability 0.5 and
  normalised (``fn.crop_mirror_normalize`` with the torchvision mean/std scaled to 0..255);
* evaluation (and training with ``augment: false``): the shorter side is resized to ``resize_side(size)`` and the
  longer one to ``floor(long * resize_side / short)``, as torchvision's Resize computes them, then the crop
  starts at torchvision's CenterCrop offset ``round((extent - size) / 2)`` (halves to even, Python's round),
  all computed per image from the file's header (``fn.peek_image_shape``). Both loaders then see the same
  pixels: on DALI's CPU backend (libjpeg-turbo, as PIL) the decoded images are identical and the resized ones
  differ by the resampling kernels' rounding only (tests/test_dali.py bounds it).

On CUDA the decoding runs on the GPU (``device="mixed"``: nvJPEG, with the hardware JPEG decoder where the GPU
has one) and the batch stays there; without a device (``device_id=None``) the whole pipeline runs on DALI's CPU
backend, which is how the tests run it. Batches are ``(images, targets)`` torch tensors as torch's DataLoader
gives them: float32 ``(N, 3, S, S)`` (channels_last memory format when asked: DALI writes NHWC, the permuted view
is channels_last), int64 ``(N,)``.

Order: each training epoch reads its own permutation of the files, drawn from the loader's ``generator`` (a
``torch.Generator``, as torch's DataLoader has: ``train.fit`` seeds it before every epoch, so an epoch's order and
crops depend on the trial's seed and the epoch only, also after a resume), and the reader is sharded
(``shard_id``/``num_shards``: one shard per trial; data-parallel ranks would each read one): every shard
permutes alike and reads its own contiguous part. DALI's own ``random_shuffle`` is not used: its reader shuffles
the file list once with a fixed seed and then only within a buffer of ``initial_fill`` samples, which on a
class-sorted ImageFolder list leaves each batch drawn from a few classes. The training pipeline is therefore
built anew each epoch (its file order and seed are fixed when it is built); the evaluation pipeline is built once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from ..config import ConfigError, DataConfig
from ._datasets import ImageFiles, ImageTransform, resize_side

DALI_DATASETS = ("imagenet", "folder")
DALI_INSTALL = 'pip install "attnsearch[dali]"'
_READER = "reader"
# nvJPEG's buffers preallocated for ImageNet-sized images (the values of NVIDIA's DALI ResNet-50 example), so the
# first batches do not reallocate them
_GPU_DECODER_HINTS = {"device_memory_padding": 211_025_920, "host_memory_padding": 140_544_512}


def dali_installed() -> bool:
    """Whether ``nvidia.dali`` can be found (nothing is imported)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):  # no `nvidia` namespace at all, or a module without a spec
        return False


def check_dali(cfg: DataConfig) -> None:
    """``ConfigError`` naming ``data.loader`` when it is ``dali`` and DALI cannot serve ``cfg``."""
    if cfg.loader != "dali":
        return
    if cfg.dataset not in DALI_DATASETS:
        raise ConfigError(f"data.loader: dali reads ImageFolder trees (data.dataset imagenet or folder), not "
                          f"{cfg.dataset!r}; set data.loader: torch (or auto)")
    if not dali_installed():
        raise ConfigError(f"data.loader: dali needs NVIDIA DALI, which is not installed here; {DALI_INSTALL} "
                          "(nvidia-dali-cuda130, for PyPI's CUDA 13 torch), or set data.loader: torch")


def import_dali() -> SimpleNamespace:
    """DALI's pieces this module uses; ``ConfigError`` naming ``data.loader`` when DALI does not import."""
    try:
        import nvidia.dali.math as dali_math
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except Exception as exc:  # noqa: BLE001 - ImportError, or an OSError from a CUDA library DALI's wheel expects
        raise ConfigError(f"data.loader: NVIDIA DALI does not import here ({type(exc).__name__}: {exc}); "
                          f"{DALI_INSTALL}, or set data.loader: torch") from None
    return SimpleNamespace(fn=fn, types=types, math=dali_math, Pipeline=Pipeline,
                           DALIGenericIterator=DALIGenericIterator, LastBatchPolicy=LastBatchPolicy)


def _center(dali: SimpleNamespace, extent: Any, size: int) -> Any:
    """``crop_pos`` (0..1) that puts a ``size`` crop of ``extent`` where torchvision's CenterCrop does:
    at ``round((extent - size) / 2)``, halves to even. DALI itself would round halves up."""
    margin = extent - size
    half = margin // 2
    offset = half + (margin % 2) * (half % 2)
    as_float = dali.types.FLOAT
    return dali.fn.cast(offset, dtype=as_float) / dali.fn.cast(dali.math.max(margin, 1), dtype=as_float)


def _graph(dali: SimpleNamespace, files: list[str], labels: list[int], transform: ImageTransform, *, gpu: bool,
           channels_last: bool, shard_id: int, num_shards: int) -> tuple[Any, Any]:
    """The pipeline's operators: read, decode (+ crop), resize, flip, normalise. Call inside ``with pipe``."""
    fn, types = dali.fn, dali.types
    encoded, targets = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                       random_shuffle=False, pad_last_batch=True, name=_READER)
    decoder: dict[str, Any] = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB,
                               "adjust_orientation": False, **(_GPU_DECODER_HINTS if gpu else {})}
    size, crop = transform.size, {}
    if transform.random_crop:
        images = fn.decoders.image_random_crop(encoded, random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                               num_attempts=10, **decoder)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        crop["mirror"] = fn.random.coin_flip(probability=0.5)
    else:
        # PIL does not apply EXIF orientation either; the GPU decoder upsamples chroma as libjpeg-turbo does
        shape = fn.peek_image_shape(encoded, dtype=types.INT64, adjust_orientation=False)
        height, width = shape[0], shape[1]
        short, side = dali.math.min(height, width), resize_side(size)
        new_height, new_width = height * side // short, width * side // short
        if gpu:
            decoder["jpeg_fancy_upsampling"] = True
        images = fn.decoders.image(encoded, **decoder)
        images = fn.resize(images, resize_x=fn.cast(new_width, dtype=types.FLOAT),
                           resize_y=fn.cast(new_height, dtype=types.FLOAT), interp_type=types.INTERP_LINEAR,
                           antialias=True)
        crop.update(crop=(size, size), crop_pos_x=_center(dali, new_width, size),
                    crop_pos_y=_center(dali, new_height, size))
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="HWC" if channels_last else "CHW",
                                      mean=[255 * m for m in transform.mean], std=[255 * s for s in transform.std],
                                      **crop)
    return images, targets.gpu() if gpu else targets


class DaliLoader:
    """``(images, targets)`` batches of an ImageFolder split through a DALI pipeline (the module docstring).

    ``len()`` is the number of batches per epoch of this shard; ``drop_last`` drops a last partial batch when the
    shard holds more than one batch (as ``build_loaders`` does for torch's training loader). ``device_id`` None
    runs on DALI's CPU backend; ``num_threads`` are DALI's CPU threads; ``prefetch`` batches are kept ready.
    """

    def __init__(self, source: ImageFiles, batch_size: int, *, shuffle: bool, drop_last: bool = False,
                 seed: int = 0, device_id: int | None = None, num_threads: int = 1, prefetch: int = 2,
                 channels_last: bool = False, shard_id: int = 0, num_shards: int = 1) -> None:
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
        self.dali = import_dali()
        self.source, self.batch_size, self.shuffle = source, batch_size, shuffle
        self.device_id, self.num_threads, self.prefetch = device_id, max(1, num_threads), max(1, prefetch)
        self.channels_last, self.shard_id, self.num_shards = channels_last, shard_id, num_shards
        n = len(source.files)
        self.shard_size = (shard_id + 1) * n // num_shards - shard_id * n // num_shards  # DALI's sharding
        self.drop_last = drop_last and self.shard_size > batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._iterator: Any = None
        self._finished = False

    def __len__(self) -> int:
        full, rest = divmod(self.shard_size, self.batch_size)
        return full if self.drop_last else full + (rest > 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle or self._iterator is None or not self._finished:
            self._iterator = None  # the previous pipeline goes first, with its threads and buffers
            self._iterator = self._build()
        else:
            self._iterator.reset()  # the evaluation pipeline, read to its end last time: the same files again
        self._finished = False
        for (batch,) in self._iterator:
            images = batch["images"]
            if self.channels_last:
                images = images.permute(0, 3, 1, 2)  # NHWC in memory: shape (N, C, H, W), channels_last strides
            yield images, batch["labels"].view(-1).long()
        self._finished = True

    def _build(self) -> Any:
        """A pipeline for the next epoch, its seed and file order drawn from ``generator``."""
        dali = self.dali
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        files, labels = self.source.files, self.source.labels
        if self.shuffle:
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
            files, labels = [files[i] for i in order], [labels[i] for i in order]
        pipe = dali.Pipeline(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                             seed=seed % 2**31, prefetch_queue_depth=self.prefetch)
        with pipe:
            pipe.set_outputs(*_graph(dali, files, labels, self.source.transform, gpu=self.device_id is not None,
                                     channels_last=self.channels_last, shard_id=self.shard_id,
                                     num_shards=self.num_shards))
        policy = dali.LastBatchPolicy.DROP if self.drop_last else dali.LastBatchPolicy.PARTIAL
        return dali.DALIGenericIterator(pipe, ["images", "labels"], reader_name=_READER, last_batch_policy=policy,
                                        auto_reset=False)
