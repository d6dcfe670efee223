"""A trial's final weights from its Ray checkpoint.

The contract (``attnsearch.search``: ``CheckpointConfig(num_to_keep=1)``, ``attnsearch.train.run_trial``): every
epoch a trial trains ends with a checkpoint ``checkpoint.pt`` (``{"model", "optimizer", "scaler", "epoch"}``) in
``<ray.storage_path>/<study id>/trial_<trial id>/checkpoint_<n>/``, and Ray keeps the newest one only. A trial that
completed has trained its last epoch last, so the checkpoint kept is its final one, after ASHA's stops and
``--resume`` alike (a resumed trial goes on from its newest checkpoint and reports newer ones). ``final_weights``
checks that: the epoch it finds must be the trial's budget, or there are no final weights to speak of.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow.fs
import torch

from ..train import CHECKPOINT_FILE
from ..uris import redact_uri

__all__ = ["TrialWeights", "final_weights", "trial_dir"]

TRIAL_DIR_PREFIX = "trial_"  # attnsearch.search names each trial's folder trial_<trial id>
CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders, numbered in the order they were reported


@dataclass
class TrialWeights:
    state: dict[str, torch.Tensor]  # the model's state dict
    epoch: int  # epochs trained when it was saved
    path: str  # the checkpoint file it came from


def trial_dir(experiment_path: str, trial_id: str) -> str:
    """A trial's folder in its study's Ray experiment directory (local path or a storage URI such as s3://)."""
    return f"{str(experiment_path).rstrip('/')}/{TRIAL_DIR_PREFIX}{trial_id}"


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def final_weights(experiment_path: str, trial_id: str, budget: int | None = None) -> TrialWeights:
    """The model weights of the newest checkpoint a trial kept. With ``budget`` (the epochs it trained, MLflow's
    ``attnsearch.budget``), a checkpoint of another epoch is an error: those are not the trial's final weights.

    Raises ``FileNotFoundError`` (no checkpoint: removed, or a trial that never finished an epoch) or
    ``ValueError`` (not the final epoch), each naming the folder."""
    folder = trial_dir(experiment_path, trial_id)
    fs, root = _filesystem(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    kept = sorted((i for i in infos if i.type == pyarrow.fs.FileType.Directory
                   and i.base_name.startswith(CHECKPOINT_PREFIX)), key=lambda i: i.base_name)
    if not kept:
        raise FileNotFoundError(f"trial {trial_id}: no checkpoint in {redact_uri(folder)} (its study's "
                                "ray.storage_path moved or was cleaned?)")
    path = f"{kept[-1].path}/{CHECKPOINT_FILE}"
    with fs.open_input_file(path) as f:
        data = f.read()
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    epoch = int(saved["epoch"])
    if budget is not None and epoch != int(budget):
        raise ValueError(f"trial {trial_id}: the checkpoint kept in {redact_uri(folder)} is of epoch {epoch}, "
                         f"not of its last epoch {budget}: not its final weights")
    return TrialWeights(dict(saved["model"]), epoch, path if "://" in folder else str(path))
