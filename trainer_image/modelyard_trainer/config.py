"""The trainer's configuration: what to learn from, which model, how to train and export.

Pure pydantic and stdlib on purpose: the operator embeds these models in the ModelTraining CRD
(and generates its OpenAPI schema from them), so importing this module must stay cheap and must
never pull in torch, numpy or onnxruntime.

Schema rules that keep the models CRD-friendly: Optional[X] is the only union, enums are
Literal[...], every field has a description and a default, constraints go through Field(...),
and cross-field checks are model validators whose messages name the fields involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from pydantic.alias_generators import to_camel

# Keys of a ModelTraining spec that belong to the trainer; everything else in the spec
# (workers, resources, output volume, retries, ...) is the operator's business.
TRAINER_SPEC_KEYS: tuple[str, ...] = ("model", "data", "training", "checkpoint", "export")

ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

Architecture = Literal["mlp", "cnn", "custom"]
Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu"]
BuiltinDataset = Literal["iris", "wine", "breast_cancer", "digits"]
DataFormat = Literal["auto", "csv", "parquet"]
MissingStrategy = Literal["drop", "mean", "median", "most_frequent"]
SyntheticTask = Literal["classification", "regression"]
OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["constant", "step", "cosine"]
LossName = Literal["cross_entropy", "mse"]
EarlyStoppingMetric = Literal["val_loss", "val_accuracy"]

ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class _Model(BaseModel):
    """Base of every config model: camelCase on the wire, snake_case in Python, no extras."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


_CEL_KEYS = ("rule", "message", "fieldPath", "reason")


def _cel_rules(*rules: tuple[str, ...]) -> ConfigDict:
    """The model validator's checks as CEL rules, so that the API server enforces them too.

    Each rule is (rule, message[, fieldPath[, reason]]): fieldPath makes the API server name
    the field, reason picks its error type (FieldValueRequired, FieldValueForbidden, ...).
    """
    entries: list[JsonValue] = [dict(zip(_CEL_KEYS, rule, strict=False)) for rule in rules]
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": entries})


class ModelConfig(_Model):
    """The network to train."""

    model_config = _cel_rules(
        (
            "self.architecture == 'custom' ? has(self.entrypoint) : !has(self.entrypoint)",
            "entrypoint is required when architecture is 'custom', and only allowed then",
        ),
        (
            "self.architecture == 'custom' || !has(self.entrypointArgs) || "
            "self.entrypointArgs.size() == 0",
            "entrypointArgs is only allowed when architecture is 'custom'",
            ".entrypointArgs",
            "FieldValueForbidden",
        ),
        (
            "self.kernelSize % 2 == 1",
            "kernelSize must be odd so that padding keeps the image size",
            ".kernelSize",
        ),
    )

    architecture: Architecture = Field(
        default="mlp",
        description=(
            "Network family: 'mlp' (fully connected), 'cnn' (small convolutional network for "
            "square single-channel images such as the 8x8 digits) or 'custom' (a function "
            "named by entrypoint that returns a torch.nn.Module)."
        ),
    )
    hidden_layers: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64],
        max_length=16,
        description=(
            "Widths of the hidden fully connected layers (MLP; for a CNN, the layers after the "
            "convolutions). Empty means a linear model."
        ),
    )
    activation: Activation = Field(
        default="relu", description="Activation function between layers."
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout probability after each hidden layer."
    )
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of each convolution block (cnn only).",
    )
    kernel_size: int = Field(
        default=3,
        ge=1,
        le=7,
        description="Odd size of the square convolution kernels (cnn only); padding keeps sizes.",
    )
    entrypoint: str | None = Field(
        default=None,
        max_length=256,
        pattern=ENTRYPOINT_PATTERN,
        description=(
            "'package.module:function' returning a torch.nn.Module (custom only). It is called "
            "with in_features, out_features and the entrypointArgs as keyword arguments."
        ),
    )
    entrypoint_args: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra keyword arguments (strings) passed to the custom entrypoint.",
    )

    @model_validator(mode="after")
    def _check_architecture(self) -> ModelConfig:
        if self.architecture == "custom" and self.entrypoint is None:
            raise ValueError("entrypoint is required when architecture is 'custom'")
        if self.architecture != "custom" and self.entrypoint is not None:
            raise ValueError("entrypoint is only allowed when architecture is 'custom'")
        if self.architecture != "custom" and self.entrypoint_args:
            raise ValueError("entrypointArgs is only allowed when architecture is 'custom'")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernelSize must be odd so that padding keeps the image size")
        return self


class SyntheticData(_Model):
    """A seeded synthetic data set (scikit-learn make_classification / make_regression)."""

    model_config = _cel_rules(
        (
            "self.informative <= self.features",
            "informative must not exceed features",
            ".informative",
        ),
        (
            "self.task != 'classification' || self.noise <= 1.0",
            "noise is a fraction of flipped labels for classification: <= 1",
            ".noise",
        ),
        (
            "self.task != 'classification' || self.classes <= self.samples / 2",
            "classes must be at most half of samples",
            ".classes",
        ),
        (
            # CEL has no power operator: 2**informative by lookup, and classes <= 1000 < 2**10.
            "self.task != 'classification' || self.informative >= 10 || "
            "self.classes <= [1, 2, 4, 8, 16, 32, 64, 128, 256, 512][self.informative]",
            "classification needs 2**informative >= classes",
            ".classes",
        ),
    )

    task: SyntheticTask = Field(
        default="classification", description="Kind of target: class labels or real values."
    )
    samples: int = Field(default=1000, ge=10, le=10_000_000, description="Number of rows.")
    features: int = Field(default=20, ge=1, le=10_000, description="Number of feature columns.")
    classes: int = Field(
        default=2, ge=2, le=1000, description="Number of classes (classification only)."
    )
    informative: int = Field(
        default=10, ge=1, le=10_000, description="Number of informative features."
    )
    noise: float = Field(
        default=0.1,
        ge=0.0,
        le=1000.0,
        description=(
            "Noise: fraction of flipped labels for classification (must be at most 1), "
            "standard deviation of the Gaussian noise on the target for regression."
        ),
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the generator.")

    @model_validator(mode="after")
    def _check_shape(self) -> SyntheticData:
        if self.informative > self.features:
            raise ValueError("informative must not exceed features")
        if self.task == "classification":
            if self.noise > 1.0:
                raise ValueError("noise is a fraction of flipped labels for classification: <= 1")
            if self.classes > self.samples // 2:
                raise ValueError("classes must be at most half of samples")
            # make_classification places one cluster per class on the corners of an
            # informative-dimensional hypercube, so it needs 2**informative >= classes.
            if 2**self.informative < self.classes:
                raise ValueError("classification needs 2**informative >= classes")
        return self


class DataSource(_Model):
    """Where the rows come from: exactly one of builtin, synthetic or uri."""

    model_config = _cel_rules(
        (
            "[has(self.builtin), has(self.synthetic), has(self.uri)].filter(x, x).size() == 1",
            "set exactly one of builtin, synthetic or uri",
        ),
    )

    builtin: BuiltinDataset | None = Field(
        default=None,
        description="A scikit-learn data set that ships with the trainer (no download).",
    )
    synthetic: SyntheticData | None = Field(
        default=None, description="A seeded synthetic classification or regression data set."
    )
    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=(
            r"^(file:///[^:]*|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^:]+"
            r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\s]+|[^:]+)$"
        ),
        description=(
            "A CSV or Parquet file: a local path, file:///path, pvc://claim/path (the claim "
            "is mounted by the operator under /mnt/pvc/<claim>) or s3://bucket/key (read "
            "with the connection in the ModelTraining's s3 block)."
        ),
    )
    format: DataFormat = Field(
        default="auto",
        description="File format of uri; 'auto' decides by the file extension.",
    )

    @model_validator(mode="after")
    def _check_exactly_one(self) -> DataSource:
        chosen = [
            name
            for name, value in (
                ("builtin", self.builtin),
                ("synthetic", self.synthetic),
                ("uri", self.uri),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of builtin, synthetic or uri"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self


def _default_source() -> DataSource:
    return DataSource(builtin="iris")


class Preprocessing(_Model):
    """Cleaning and transforms; the fitted transforms become part of the exported model."""

    missing: MissingStrategy = Field(
        default="drop",
        description=(
            "Rows with missing values: 'drop' them, or impute the column's training-set "
            "'mean', 'median' or 'most_frequent' value. The exported model imputes missing "
            "inputs with the fitted value (the training mean when 'drop')."
        ),
    )
    drop_duplicates: bool = Field(default=True, description="Drop duplicate rows before the split.")
    standardize: bool = Field(
        default=True,
        description="Scale numeric features to zero mean and unit variance (fitted on training).",
    )
    one_hot: list[ColumnName] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Columns to one-hot encode as categories even when numeric; non-numeric columns "
            "are one-hot encoded automatically."
        ),
    )


class Split(_Model):
    """The seeded train/validation/test split."""

    model_config = _cel_rules(
        (
            "self.validation + self.test < 0.9",
            "validation + test must be below 0.9 so that training keeps rows",
        ),
    )

    validation: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows held out for validation (early stopping, progress).",
    )
    test: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="Fraction of rows held out for the final evaluation and the parity check.",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed of the split.")
    stratify: bool = Field(
        default=True, description="Keep class proportions in every part (classification only)."
    )

    @model_validator(mode="after")
    def _check_fractions(self) -> Split:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must be below 0.9 so that training keeps rows")
        return self


class DataConfig(_Model):
    """The data set and its preprocessing."""

    model_config = _cel_rules(
        (
            "has(self.source) && has(self.source.uri) ? has(self.target) : !has(self.target)",
            "target is required when source.uri is set, and only allowed then",
        ),
        (
            "!has(self.features) || self.features.size() == 0 || "
            "(has(self.source) && has(self.source.uri))",
            "features is only allowed with source.uri",
            ".features",
            "FieldValueForbidden",
        ),
        (
            "!has(self.target) || !has(self.features) || !(self.target in self.features)",
            "features must not contain the target column",
            ".features",
        ),
    )

    source: DataSource = Field(default_factory=_default_source, description="Where rows come from.")
    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Name of the target column (required with source.uri).",
    )
    features: list[ColumnName] = Field(
        default_factory=list,
        max_length=4096,
        description="Feature columns of a file (source.uri); empty means all but the target.",
    )
    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing, description="Cleaning and transforms."
    )
    split: Split = Field(default_factory=Split, description="Train/validation/test split.")

    @model_validator(mode="after")
    def _check_columns(self) -> DataConfig:
        if self.source.uri is not None and self.target is None:
            raise ValueError("target is required when source.uri is set")
        if self.source.uri is None and self.target is not None:
            raise ValueError("target is only allowed with source.uri")
        if self.source.uri is None and self.features:
            raise ValueError("features is only allowed with source.uri")
        if self.target is not None and self.target in self.features:
            raise ValueError(f"features must not contain the target column {self.target!r}")
        return self


class Optimizer(_Model):
    """The optimizer and its hyper-parameters."""

    model_config = _cel_rules(
        (
            "!self.nesterov || (self.name == 'sgd' && self.momentum > 0.0)",
            "nesterov needs name 'sgd' and momentum > 0",
        ),
        (
            "self.momentum == 0.0 || self.name == 'sgd'",
            "momentum only applies to name 'sgd'",
            ".momentum",
            "FieldValueForbidden",
        ),
    )

    name: OptimizerName = Field(default="sgd", description="Optimizer: sgd, adam or adamw.")
    learning_rate: float = Field(default=0.01, gt=0.0, le=10.0, description="Learning rate.")
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0, description="Momentum (sgd only).")
    nesterov: bool = Field(
        default=False, description="Nesterov momentum (sgd with momentum > 0 only)."
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Weight decay; L2 regularization for sgd/adam, decoupled for adamw.",
    )

    @model_validator(mode="after")
    def _check_momentum(self) -> Optimizer:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0.0):
            raise ValueError("nesterov needs name 'sgd' and momentum > 0")
        if self.momentum > 0.0 and self.name != "sgd":
            raise ValueError("momentum only applies to name 'sgd'")
        return self


class Schedule(_Model):
    """Learning-rate schedule, stepped once per epoch, after an optional linear warmup."""

    name: ScheduleName = Field(
        default="constant",
        description="'constant', 'step' (multiply by gamma every stepSize epochs) or 'cosine'.",
    )
    step_size: int = Field(default=30, ge=1, le=100_000, description="Epochs per step (step).")
    gamma: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Multiplicative factor per step (step)."
    )
    warmup_epochs: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Epochs of linear warmup from a tenth of the learning rate.",
    )


class EarlyStopping(_Model):
    """Stop when a validation metric stops improving."""

    enabled: bool = Field(default=False, description="Whether to stop early.")
    metric: EarlyStoppingMetric = Field(
        default="val_loss",
        description="Validation metric to watch (val_accuracy: classification only).",
    )
    patience: int = Field(
        default=10, ge=1, le=100_000, description="Epochs without improvement before stopping."
    )
    min_delta: float = Field(
        default=0.0, ge=0.0, description="Smallest change that counts as an improvement."
    )


class TrainingConfig(_Model):
    """How to train."""

    model_config = _cel_rules(
        (
            "!has(self.schedule) || self.schedule.warmupEpochs < self.epochs",
            "schedule.warmupEpochs must be less than epochs",
        ),
        (
            "!has(self.earlyStopping) || self.earlyStopping.metric != 'val_accuracy' || "
            "self.loss != 'mse'",
            "earlyStopping.metric 'val_accuracy' needs loss 'cross_entropy'",
            ".earlyStopping.metric",
        ),
    )

    epochs: int = Field(default=20, ge=1, le=100_000, description="Number of epochs.")
    batch_size: int = Field(
        default=64,
        ge=1,
        le=1_000_000,
        description=(
            "Global batch size, divided among all processes, so that a run gives the same "
            "result for any number of workers. Must be divisible by the world size."
        ),
    )
    optimizer: Optimizer = Field(default_factory=Optimizer, description="The optimizer.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    loss: LossName = Field(
        default="cross_entropy",
        description="'cross_entropy' (classification) or 'mse' (regression).",
    )
    gradient_clip_norm: float | None = Field(
        default=None, gt=0.0, description="Clip the global gradient norm to this value."
    )
    mixed_precision: bool = Field(
        default=True, description="Automatic mixed precision (used on CUDA only)."
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="Early stopping on a validation metric."
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seed of initialization and shuffling."
    )
    progress_interval_seconds: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="Least time between two progress reports."
    )
    divergence_threshold: float = Field(
        default=1e6,
        gt=0.0,
        description="A loss above this (or NaN/inf) stops the run as diverged.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainingConfig:
        if self.schedule.warmup_epochs >= self.epochs:
            raise ValueError("schedule.warmupEpochs must be less than epochs")
        if self.early_stopping.metric == "val_accuracy" and self.loss == "mse":
            raise ValueError("earlyStopping.metric 'val_accuracy' needs loss 'cross_entropy'")
        return self


class CheckpointConfig(_Model):
    """Periodic checkpoints, written by rank 0."""

    every_epochs: int = Field(
        default=1, ge=1, le=100_000, description="Write a checkpoint every N epochs."
    )
    keep: int = Field(default=2, ge=1, le=100, description="Number of checkpoints kept.")


class ExportConfig(_Model):
    """ONNX export, verification and optional optimization."""

    opset: int = Field(
        default=18,
        ge=18,
        le=23,
        description="ONNX opset of the export (torch.onnx dynamo exporter: 18 or later).",
    )
    dynamic_batch: bool = Field(default=True, description="Export with a dynamic batch axis.")
    parity_tolerance: float = Field(
        default=1e-4,
        gt=0.0,
        le=1.0,
        description="Largest allowed absolute difference between ONNX Runtime and PyTorch.",
    )
    parity_rows: int = Field(
        default=256, ge=1, le=100_000, description="Held-out rows used for the parity check."
    )
    optimize_graph: bool = Field(
        default=False, description="Also write the ONNX Runtime graph-optimized model."
    )
    quantize_int8: bool = Field(
        default=False, description="Also write a dynamically int8-quantized model.int8.onnx."
    )
    max_int8_accuracy_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description=(
            "The int8 model is served only when its test accuracy is at most this much lower "
            "(for regression: when its RMSE is at most this fraction higher)."
        ),
    )


class TrainerConfig(_Model):
    """Everything the trainer needs; embedded in the ModelTraining spec."""

    # A missing data block means builtin iris (classification), a missing split 0.15 validation.
    model_config = _cel_rules(
        (
            "!has(self.training) || self.training.loss != 'mse' || "
            "(has(self.data) && has(self.data.source) && !has(self.data.source.builtin))",
            "training.loss 'mse' is for regression, but data.source.builtin is a classification "
            "data set",
            ".training.loss",
        ),
        (
            "!has(self.data) || !has(self.data.source) || !has(self.data.source.synthetic) || "
            "self.data.source.synthetic.task == "
            "(has(self.training) && self.training.loss == 'mse' ? 'regression' : 'classification')",
            "training.loss does not fit data.source.synthetic.task: 'mse' is for regression, "
            "'cross_entropy' for classification",
            ".data.source.synthetic.task",
        ),
        (
            "!has(self.training) || !has(self.training.earlyStopping) || "
            "!self.training.earlyStopping.enabled || !has(self.data) || !has(self.data.split) || "
            "self.data.split.validation > 0.0",
            "training.earlyStopping needs data.split.validation > 0",
            ".training.earlyStopping.enabled",
        ),
    )

    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data and preprocessing.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Optimization settings."
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpointing."
    )
    export: ExportConfig = Field(default_factory=ExportConfig, description="ONNX export.")

    @model_validator(mode="after")
    def _check_task(self) -> TrainerConfig:
        task = self.task
        source = self.data.source
        if source.builtin is not None and task != "classification":
            raise ValueError(
                f"training.loss 'mse' is for regression, but data.source.builtin "
                f"{source.builtin!r} is a classification data set"
            )
        if source.synthetic is not None and source.synthetic.task != task:
            raise ValueError(
                f"training.loss {self.training.loss!r} does not fit "
                f"data.source.synthetic.task {source.synthetic.task!r}"
            )
        if self.training.early_stopping.enabled and self.data.split.validation == 0.0:
            raise ValueError("training.earlyStopping needs data.split.validation > 0")
        return self

    @property
    def task(self) -> SyntheticTask:
        """Classification or regression, as the loss says."""
        return "regression" if self.training.loss == "mse" else "classification"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field path."""


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the camelCase field path."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        # Whole-config checks have no location of their own; their message names the fields.
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def trainer_config_from_mapping(document: Any) -> TrainerConfig:
    """Validate a bare TrainerConfig mapping or a whole ModelTraining manifest."""
    if not isinstance(document, dict):
        raise ConfigError(f"(root): expected a mapping, got {type(document).__name__}")
    if "spec" in document and isinstance(document.get("spec"), dict):
        spec = document["spec"]
        section = {key: spec[key] for key in TRAINER_SPEC_KEYS if key in spec}
    else:
        section = document
    try:
        return TrainerConfig.model_validate(section)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def load_trainer_config(path: str | Path) -> TrainerConfig:
    """Read a TrainerConfig from YAML or JSON: a ModelTraining manifest or its training part."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML/JSON: {error}") from None
    if document is None:
        document = {}
    return trainer_config_from_mapping(document)
