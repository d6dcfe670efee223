"""The job file: a pydantic v2 schema (unknown keys rejected at every level) and its loader (YAML: ``_yaml``).

``load_job(path, overrides)`` reads a job YAML, applies ``--set dotted.key=value`` overrides, validates it and
resolves relative paths on the driver, because Ray runs every trial in its own working directory:

* ``search.space``, ``data.root``, ``backbone.weights_path``: relative to the current working directory when the
  path exists there, else relative to the job file's directory when it exists there, else relative to the
  current working directory (so a dataset that ``download: true`` will fetch lands where the user runs from).
* ``ray.storage_path`` and a relative SQLite tracking URI (``sqlite:///mlflow.db``): relative to the current
  working directory. URIs with another scheme (``s3://``, ``http://``) are left alone.

Every problem surfaces as one ``ConfigError`` whose message names the file, the key path, what was expected and,
when obvious, the fix (``jobs/x.yaml: train.lr: Input should be greater than 0 (got -1)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._schema_messages import (
    apply_schema_overrides,
    did_you_mean,
    format_validation_error,
    shown_override,
)
from ._yaml import read_yaml, short_repr
from .contract import DEFAULT_OBJECTIVES, EPOCH_METRICS, METRICS, ConfigError, rung_milestones
from .models import BACKBONES
from .uris import has_credentials, resolve_path, resolve_storage, resolve_tracking_uri

DATASETS_WITH_ROOT = ("cifar10", "cifar100", "imagenet", "folder")
# data.validation: official needs an official held-out split; these have none (a folder without val/ is refused
# when its layout is read, attnsearch.data)
DATASETS_WITHOUT_OFFICIAL_SPLIT = ("digits", "fake")
# Image side the models see when data.image_size is null (ImageNet-style folders are cropped to 224).
NATIVE_IMAGE_SIZE = {"digits": 16, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32, "imagenet": 224, "folder": 224,
                     "fake": 32}

DEFAULT_GRACE_PERIOD = 3  # the first rung when scheduler.grace_period is null (README, "Early stopping")
DEFAULT_REDUCTION_FACTOR = 3  # when scheduler.reduction_factor is null
DEFAULT_FIRST_RUNG = (1, 1.5)  # MOASHA's default rung before that one: (epoch, reduction factor); Job.rungs
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# --------------------------------------------------------------------------------------------------- schema


class StrictModel(BaseModel):
    """A schema section: unknown keys are errors (a misspelt key must not be silently ignored)."""

    # NaN/inf survive a JSON round trip (the job travels to trials and into caches as JSON)
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


def _known(value: str, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    if value in valid:
        return value
    raise ValueError(f"unknown {what} {short_repr(value)}{did_you_mean(value, valid)}; valid: {sorted(valid)}")


class BackboneConfig(StrictModel):
    name: str
    num_classes: int | None = Field(None, ge=2)  # null -> the dataset's class count
    width_mult: float = Field(1.0, gt=0)
    pretrained: bool = False
    weights_path: str | None = None

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return _known(value, BACKBONES, "backbone")


class DataConfig(StrictModel):
    dataset: Literal["digits", "fashion_mnist", "cifar10", "cifar100", "imagenet", "folder", "fake"] = "digits"
    root: str | None = None
    image_size: int | None = Field(None, ge=4)  # null -> the dataset's native size (digits 16, CIFAR 32, ...)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)  # null -> batch_size
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int = Field(2, ge=1)  # batches each loader worker keeps ready (used with num_workers > 0)
    download: bool = False
    val_fraction: float = Field(0.2, gt=0, lt=1)
    # a seeded, stratified subset of the training split for cheaper studies: a count (5000) or a fraction (0.1);
    # null: all of it
    train_size: int | float | None = None
    split_seed: int = Field(0, ge=0)  # seed of the validation split and of the train_size subset
    # split: validate on a split of the training images (val_fraction, split_seed); the official held-out split
    # (CIFAR's test batch, <root>/val, Fashion-MNIST's t10k) is the test split `retrain` reports as test_acc.
    # official: validate on the official held-out split, as papers report (attnsearch.data)
    validation: Literal["split", "official"] = "split"
    augment: bool = True
    # auto: NVIDIA DALI on CUDA for imagenet/folder when installed, else torchvision; dali: always DALI (its CPU
    # backend off CUDA); torch: always torchvision (attnsearch.data)
    loader: Literal["auto", "dali", "torch"] = "auto"
    fake_train_size: int = Field(512, ge=1)
    fake_val_size: int = Field(128, ge=1)
    fake_num_classes: int = Field(10, ge=2)

    @field_validator("train_size", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a count of training images or a fraction in (0, 1] (got {value!r})")
        return value

    @field_validator("train_size")
    @classmethod
    def _train_size(cls, value: int | float | None) -> int | float | None:
        if value is None or (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1):
            return value
        raise ValueError(f"must be a count of training images (an integer >= 1) or a fraction in (0, 1] "
                         f"(got {value!r})")

    @field_validator("validation")
    @classmethod
    def _official_split_exists(cls, value: str, info: ValidationInfo) -> str:
        dataset = info.data.get("dataset")
        if value == "official" and dataset in DATASETS_WITHOUT_OFFICIAL_SPLIT:
            raise ValueError(f"dataset {dataset!r} has no official held-out split to validate on; remove "
                             "data.validation (or set it to split: validation from the training images)")
        return value

    @model_validator(mode="after")
    def _root_given(self) -> DataConfig:
        if self.dataset in DATASETS_WITH_ROOT and not self.root:
            raise ValueError(f"root: dataset {self.dataset!r} needs data.root (the folder that holds it)")
        if self.dataset == "fake" and self.train_size is not None:
            raise ValueError("train_size: dataset 'fake' sizes its splits with fake_train_size and fake_val_size; "
                             "remove train_size")
        return self

    @property
    def resolved_image_size(self) -> int:
        """The side of the (square) images a trial trains on: ``image_size``, else the dataset's native size."""
        return self.image_size or NATIVE_IMAGE_SIZE[self.dataset]


def _auto_bool(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"must be auto, true or false (got {short_repr(value)})")


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # epochs at which "step" multiplies the lr by gamma
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: Literal["auto"] | bool = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    device: str = "auto"
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return _auto_bool(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {short_repr(value)})")
        return value

    @model_validator(mode="after")
    def _epochs_consistent(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(f"milestones {bad} must lie strictly between 0 and epochs ({self.epochs})")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones, e.g. milestones: [30, 60]")
        return self


OPTUNA_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")  # SQLAlchemy's, as Optuna's RDBStorage


class SearchConfig(StrictModel):
    space: str | dict[str, Any]  # a search-space YAML file or the space inline
    # random: it beat TPE on the recorded Fashion-MNIST table (README, "Benchmarks"); tpe, nsga2, gp one key away
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "random"
    num_samples: int = Field(20, ge=1)
    max_concurrent: int = Field(2, ge=1)
    objectives: dict[str, Literal["max", "min"]] = Field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    seed: int = Field(0, ge=0)
    # train `attention: none` once at the full budget, first: what every front member is compared with
    baseline: bool = True
    # end the study once its trials have trained this many epochs in total (null: after num_samples trials)
    budget_epochs: int | None = Field(None, ge=1)
    # where the study's Optuna record lives: an RDB URL (sqlite:///..., postgresql://...), or a journal file path;
    # null: optuna.journal in the study's Ray folder (attnsearch.search.optuna_storage_url)
    optuna_storage: str | None = None

    @field_validator("space", mode="before")
    @classmethod
    def _space_form(cls, value: Any) -> Any:
        if isinstance(value, dict) or (isinstance(value, str) and value.strip()):
            return value
        raise ValueError(f"must be a search-space file path or an inline mapping (got {short_repr(value)})")

    @field_validator("optuna_storage")
    @classmethod
    def _optuna_storage(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        scheme = value.split("://", 1)[0].split("+", 1)[0] if "://" in value else None
        if not value or (scheme is not None and scheme not in OPTUNA_RDB_SCHEMES):
            raise ValueError(f"must be an RDB URL Optuna's RDBStorage takes ({', '.join(OPTUNA_RDB_SCHEMES)}: "
                             "e.g. postgresql://user@db/optuna, sqlite:///optuna.db) or a journal file path, or "
                             f"null for a journal file in the study's Ray folder (got {value!r})")
        return value

    @field_validator("objectives")
    @classmethod
    def _metrics(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(f"needs at least one metric, e.g. {{val_acc: max, flops: min}}; metrics: {list(METRICS)}")
        for metric in value:
            _known(metric, METRICS, "metric")
        return value


class SchedulerConfig(StrictModel):
    # auto: moasha when the search has several objectives, asha with one (benchmarks/results/search_quality.md)
    type: Literal["auto", "asha", "moasha", "none"] = "auto"
    # the first rung, in epochs; null: DEFAULT_GRACE_PERIOD, or train.epochs when fewer (Job.grace_period)
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float | None = Field(None, gt=1)  # null: DEFAULT_REDUCTION_FACTOR (Job.reduction_factor)
    # MOASHA's rungs as {epoch: reduction factor}, each keeping the top 1/factor of the trials reaching it, in
    # place of grace_period and reduction_factor's ladder; null: Job.rungs' default
    rungs: dict[int, float] | None = Field(None, min_length=1)
    # what a rung ranks trials by in place of the search's per-epoch objectives (Job.rung_objectives): the
    # epoch's mean training loss (Ru et al. 2021, "Speedy Performance Estimation for Neural Architecture
    # Search"), or the objectives themselves
    rung_metric: Literal["train_loss", "objectives"] = "train_loss"

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        for epoch, factor in (value or {}).items():
            if epoch < 1 or not factor > 1:
                raise ValueError(f"{{{epoch}: {factor}}}: each rung is epoch (>= 1): reduction factor (> 1), "
                                 "e.g. {1: 1.5, 3: 3}")
        return value


class ResourcesConfig(StrictModel):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)  # fractional GPUs share one device between trials

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a fraction of a GPU is allowed only below 1 (Ray's rule); got {value}, use "
                             f"{int(value)} or {int(value) + 1}")
        return value


class ConstraintsConfig(StrictModel):
    max_flops: float | None = Field(None, gt=0)
    max_params: float | None = Field(None, gt=0)
    max_macs: float | None = Field(None, gt=0)


def not_only_dots(value: str) -> str:
    """Refuse a name made only of dots (``.``, ``..``): it becomes a folder (the export folder, the artifact root,
    the study's Ray folder) and would name the folder itself or its parent."""
    if value.strip(".") == "":
        raise ValueError(f"{short_repr(value)} is not a name (made only of dots, it would name a folder's parent); "
                         "use letters or digits")
    return value


class TrackingConfig(StrictModel):
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # null -> the job's name

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, value: str | None) -> str | None:
        return value if value is None else not_only_dots(value)
    log_models: Literal["front", "completed", "none"] = "front"  # trials whose final weights become MLflow models


class RayConfig(StrictModel):
    address: str | None = None
    storage_path: str = Field("ray_results", min_length=1)
    num_cpus: int | None = Field(None, ge=1)

    @field_validator("storage_path")
    @classmethod
    def _storage_path(cls, value: str) -> str:
        if has_credentials(value):  # Ray pickles the storage path into the study's tuner.pkl, on that storage
            raise ValueError(
                "credentials in the URI would be written by Ray into the study's own state (tuner.pkl) on that "
                "storage; drop user:password@ and give the nodes the store's credentials through its environment "
                "(an instance role, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS...)")
        return value

    num_gpus: float | None = Field(None, ge=0)
    max_failures: int = Field(1, ge=0)
    # true: nodes that can serve a trial may still be starting (Ray autoscaler); no up-front resource refusal
    autoscaling: bool = False


class Job(StrictModel):
    name: str
    backbone: BackboneConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    _source: Path | None = PrivateAttr(None)
    _label: str | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"may only contain letters, digits, '_', '.' and '-' (got {short_repr(value)})")
        return not_only_dots(value)

    @model_validator(mode="after")
    def _scheduler_fits(self) -> Job:
        kind = self.scheduler_type
        if kind in ("asha", "moasha"):
            if self.scheduler.grace_period is not None and self.train.epochs < self.scheduler.grace_period:
                raise ValueError(
                    f"train.epochs ({self.train.epochs}) is the scheduler's max_t and must be >= "
                    f"scheduler.grace_period ({self.scheduler.grace_period}); raise train.epochs or lower "
                    "scheduler.grace_period"
                )
            rungs, given = self.scheduler.rungs, self._ladder_given
            problem = None
            if rungs is not None and kind != "moasha":
                problem = f"needs scheduler.type moasha, not {kind!r} (Ray's ASHA takes one reduction factor)"
            elif rungs is not None and given:
                problem = f"replaces scheduler.{' and scheduler.'.join(given)}: give one or the other"
            elif rungs is not None and max(rungs) >= self.train.epochs:
                problem = f"has epoch {max(rungs)}, not below train.epochs ({self.train.epochs}), the full budget"
            if problem:
                raise ValueError(f"scheduler.rungs {rungs} {problem}")
            if not any(m in EPOCH_METRICS for m in self.search.objectives):
                raise ValueError(
                    f"scheduler.type {kind!r} stops trials on a per-epoch metric, but search.objectives "
                    f"{list(self.search.objectives)} has none of {list(EPOCH_METRICS)}; add one or set "
                    f"scheduler.type: none"
                )
        return self

    @property
    def scheduler_type(self) -> str:
        """``scheduler.type`` with ``auto`` resolved: ``moasha`` for several objectives, else ``asha``."""
        if self.scheduler.type != "auto":
            return self.scheduler.type
        return "moasha" if len(self.search.objectives) > 1 else "asha"

    @property
    def max_t(self) -> int:
        """A trial's full budget in epochs (``train.epochs``): the schedulers' ``max_t``, what ``completed`` means."""
        return self.train.epochs

    @property
    def grace_period(self) -> int:
        """The schedulers' first rung in epochs: ``scheduler.grace_period``, else ``DEFAULT_GRACE_PERIOD`` (at most
        ``train.epochs``)."""
        given = self.scheduler.grace_period
        return given if given is not None else min(DEFAULT_GRACE_PERIOD, self.max_t)

    @property
    def reduction_factor(self) -> float:
        """``scheduler.reduction_factor``, else ``DEFAULT_REDUCTION_FACTOR``."""
        given = self.scheduler.reduction_factor
        return float(given) if given is not None else float(DEFAULT_REDUCTION_FACTOR)

    @property
    def _ladder_given(self) -> list[str]:
        return [key for key in ("grace_period", "reduction_factor") if getattr(self.scheduler, key) is not None]

    @property
    def ladder(self) -> dict[float, float]:
        """ASHA's rungs, ``{epoch: reduction factor}``: ``grace_period * reduction_factor**k`` below ``max_t``."""
        return dict.fromkeys(rung_milestones(self.max_t, self.grace_period, self.reduction_factor),
                             self.reduction_factor)

    @property
    def rungs(self) -> dict[float, float]:
        """MOASHA's rungs, ``{epoch: reduction factor}`` below ``train.epochs``: ``scheduler.rungs``; else ``ladder``;
        with neither ``grace_period`` nor ``reduction_factor`` given, ``DEFAULT_FIRST_RUNG`` first."""
        sched = self.scheduler
        if sched.rungs is not None:
            return {float(epoch): float(sched.rungs[epoch]) for epoch in sorted(sched.rungs)}
        out = self.ladder
        first, factor = DEFAULT_FIRST_RUNG
        if not self._ladder_given and first < min(out, default=self.max_t):
            out = {float(first): factor, **out}
        return out

    @property
    def rung_objectives(self) -> dict[str, str]:
        """What ASHA and MOASHA rank a rung's trials by: ``search.objectives``, with its per-epoch objectives
        replaced by ``train_loss`` (min) when ``scheduler.rung_metric`` is ``train_loss``."""
        if self.scheduler.rung_metric == "objectives":
            return dict(self.search.objectives)
        return {("train_loss" if m in EPOCH_METRICS else m): ("min" if m in EPOCH_METRICS else mode)
                for m, mode in self.search.objectives.items()}  # the first per-epoch objective's place

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the job's studies: ``tracking.experiment``, else the job's name."""
        return self.tracking.experiment or self.name

    @property
    def source(self) -> Path | None:
        """The job file this job was loaded from (None when built in code)."""
        return self._source

    @property
    def label(self) -> str:
        """How messages name the job file: the path as the user gave it."""
        return self._label or (str(self._source) if self._source else "<job>")

    def job_dict(self) -> dict[str, Any]:
        """The resolved job as plain YAML/JSON types."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved job as YAML (logged as an artifact of the study)."""
        return yaml.safe_dump(self.job_dict(), sort_keys=False)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Apply ``--set`` overrides to the raw job mapping; a key the job's schema does not have is an error."""
    return apply_schema_overrides(raw, overrides, source, Job)


# --------------------------------------------------------------------------------------------------- loading


def _resolve_paths(job: Job, job_dir: Path | None) -> None:
    if isinstance(job.search.space, str):
        job.search.space = resolve_path(job.search.space, job_dir)
    if job.data.root:
        job.data.root = resolve_path(job.data.root, job_dir)
    if job.backbone.weights_path:
        job.backbone.weights_path = resolve_path(job.backbone.weights_path, job_dir)
    job.ray.storage_path = resolve_storage(job.ray.storage_path)
    try:
        job.tracking.uri = resolve_tracking_uri(job.tracking.uri)
    except ValueError as exc:
        raise ConfigError(f"{job.label}: tracking.uri: {exc}") from None
    storage = job.search.optuna_storage
    if storage and (storage.startswith("sqlite:///") or "://" not in storage):  # local: absolute on the driver
        try:
            job.search.optuna_storage = (resolve_tracking_uri(storage) if "://" in storage
                                         else str(Path(storage).expanduser().resolve()))
        except ValueError as exc:
            raise ConfigError(f"{job.label}: search.optuna_storage: {exc}") from None


def validate_job(raw: Any, source: str = "<job>", job_dir: Path | None = None) -> Job:
    """Validate a raw job mapping (already parsed) and resolve its paths; errors name ``source``."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping with keys {list(Job.model_fields)}, got {type(raw).__name__}"
        )
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, Job)) from None
    job._label = source
    _resolve_paths(job, job_dir)
    return job


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> Job:
    """Read, override, validate and resolve a job file (its search space: ``attnsearch.space.load_space``).

    Args:
        path: the job's YAML file; relative paths in it are relative to its folder.
        overrides: ``KEY=VALUE`` strings (``--set``), a dotted key and a YAML value, applied before validation.

    Raises:
        ConfigError: naming the file, the key and the fix.
    """
    path = Path(path)
    raw = read_yaml(path, "job file")
    source = str(path)
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(raw).__name__}")
        apply_overrides(raw, overrides, source)
        source = f"{path} (with --set {' '.join(shown_override(o, 60) for o in overrides)})"
    job = validate_job(raw, source, path.resolve().parent)
    job._source = path.resolve()
    return job
