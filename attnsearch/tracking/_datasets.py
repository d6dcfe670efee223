"""What each trial trained on, as MLflow dataset inputs of its child run (the runs table's Dataset column).

One input per split: the training split (context ``train``) and the validation split (context ``validation``),
each named after the dataset, with a digest of what decides the split and its images (the ``data`` settings
except how batches are loaded, so equal digests mean the same images split the same way; a trial's own
image side is its param ``data.image_size``) and the source (the data folder, or the code that makes the data).
Plain dicts until they are written, so that the Ray callback that holds them pickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Dataset, DatasetInput, InputTag

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = ["CONTEXT_TAG", "dataset_inputs", "input_entities"]

CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag of a dataset input: what the run used it for
# DataConfig fields that change how batches are loaded or transformed, not which images a split holds.
_LOADING = frozenset({"batch_size", "eval_batch_size", "num_workers", "prefetch_factor", "download", "loader",
                      "augment", "image_size"})
# Where the datasets without a data folder come from (MLflow's "code" source: tags naming it).
_CODE = {"digits": "sklearn.datasets.load_digits (scikit-learn's bundled 8x8 digits)",
         "fake": "attnsearch.data.FakePatterns (synthetic, seeded)"}


def dataset_inputs(data: DataConfig) -> list[dict[str, str]]:
    """The dataset inputs of every trial of a job with these ``data`` settings: ``name``, ``digest``,
    ``source_type``, ``source``, ``profile`` (JSON: the split's settings) and ``context``, one per split."""
    split = {k: v for k, v in data.model_dump(mode="json").items() if k not in _LOADING}
    if data.root:
        root = Path(data.root).expanduser().resolve()
        split["root"] = str(root)
        source_type, source = "local", json.dumps({"uri": root.as_uri()})
    else:
        source_type, source = "code", json.dumps({"tags": {"source": _CODE.get(data.dataset, data.dataset)}})
    name = data.dataset if data.dataset != "folder" else f"folder:{Path(split['root']).name}"
    out = []
    for part, context in (("train", "train"), ("val", "validation")):
        described = {**split, "split": part}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
        out.append({"name": name, "digest": digest, "source_type": source_type, "source": source,
                    "profile": json.dumps(described, sort_keys=True), "context": context})
    return out


def input_entities(datasets: Sequence[Mapping[str, Any]]) -> list[DatasetInput]:
    """``dataset_inputs``' dicts as the entities ``MlflowClient.log_inputs`` takes."""
    return [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], profile=d.get("profile")),
                         tags=[InputTag(CONTEXT_TAG, d["context"])]) for d in datasets]
