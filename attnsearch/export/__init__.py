"""A study's models: the final weights of its trials as MLflow models (logged by the driver), as folders
(``attnsearch export``), and back into PyTorch (``load_model``).

>>> from attnsearch.export import load_model
>>> model = load_model("exported/eca-k5-s123-default-a1b2c3d4")       # an export folder
>>> model = load_model("0123abcd...", tracking_uri="sqlite:///mlflow.db")   # a trial's child run id
>>> model = load_model("models:/quickstart/1", tracking_uri="sqlite:///mlflow.db")

``load_model`` rebuilds the architecture from the model's build spec (``ModelSpec``: backbone, classes, width,
image size, attention dict) and loads the state dict with ``torch.load(..., weights_only=True)``; no pickled code
runs. (``attnsearch/__init__.py`` imports nothing, so this is ``attnsearch.export.load_model``, not
``attnsearch.load_model``.)

One module per job: ``_spec`` (the build spec, the weights file), ``_checkpoint`` (a trial's final weights from
its Ray checkpoint: the contract), ``_mlflow`` (logging a study's models, reading one back), ``_folder`` (an
export folder: weights, spec, model card, ``torch.export``/TorchScript forms), ``_study_models`` (a study's
models chosen and exported: ``export_study``; one read back: ``load_model``).
"""

from ._checkpoint import TrialWeights, final_weights, trial_dir
from ._folder import (
    CARD_FILE,
    FORMATS,
    PT2_FILE,
    TORCHSCRIPT_FILE,
    ExportedModel,
    export_model,
    folder_name,
)
from ._mlflow import (
    ModelsLogged,
    download_model,
    log_model,
    log_study_models,
    logged_model_of,
    model_name,
    registered_name,
    resolve_logged_model,
    tracking_context,
    trial_params,
)
from ._spec import (
    PRUNED_SPEC_FORMAT,
    SPEC_FILE,
    SPEC_FORMAT,
    WEIGHTS_FILE,
    ModelSpec,
    read_weights,
    rebuild,
    spec_for_trial,
    write_weights,
)
from ._study_models import export_study, load_model, load_spec_and_weights, trained_model

__all__ = [
    "CARD_FILE",
    "PRUNED_SPEC_FORMAT",
    "SPEC_FORMAT",
    "FORMATS",
    "PT2_FILE",
    "SPEC_FILE",
    "TORCHSCRIPT_FILE",
    "WEIGHTS_FILE",
    "ExportedModel",
    "ModelSpec",
    "ModelsLogged",
    "TrialWeights",
    "download_model",
    "export_model",
    "export_study",
    "final_weights",
    "folder_name",
    "load_model",
    "load_spec_and_weights",
    "log_model",
    "log_study_models",
    "logged_model_of",
    "model_name",
    "read_weights",
    "rebuild",
    "registered_name",
    "resolve_logged_model",
    "spec_for_trial",
    "trained_model",
    "tracking_context",
    "trial_dir",
    "trial_params",
    "write_weights",
]
