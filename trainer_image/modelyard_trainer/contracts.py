"""What the trainer and the operator agree on: environment, exit codes, progress, result, metadata.

The operator reads every format defined here (the progress ConfigMap, the termination message,
metadata.json) without importing torch, so this module imports only pydantic and the stdlib.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# One definition of each, in the storage package (stdlib only, like this module); named here
# too because the operator reads the trainer's environment contract from this module.
from modelyard_storage.uri import DEFAULT_PVC_MOUNT_ROOT as DEFAULT_PVC_MOUNT_ROOT
from modelyard_storage.uri import ENV_PVC_MOUNT_ROOT as ENV_PVC_MOUNT_ROOT
from modelyard_storage.uri import join_uri as join_uri


class ExitCode(IntEnum):
    """Exit codes of the trainer. The permanent ones say that a retry cannot help."""

    SUCCESS = 0
    # Anything not listed here (1, signals, OOM kills) is transient: the operator may retry.
    CONFIG_INVALID = 64
    LOSS_DIVERGED = 65
    PARITY_FAILED = 66


PERMANENT_EXIT_CODES: tuple[int, ...] = (
    int(ExitCode.CONFIG_INVALID),
    int(ExitCode.LOSS_DIVERGED),
    int(ExitCode.PARITY_FAILED),
)

# --- Environment contract: set by the operator on every worker; all optional locally. ---------

ENV_RUN_NAMESPACE = "MODELYARD_RUN_NAMESPACE"
ENV_RUN_NAME = "MODELYARD_RUN_NAME"
ENV_RUN_UID = "MODELYARD_RUN_UID"
ENV_RUN_GENERATION = "MODELYARD_RUN_GENERATION"
ENV_ATTEMPT = "MODELYARD_ATTEMPT"
# The URI that --output stands for (e.g. pvc://models/prefix); result URIs build on it.
ENV_OUTPUT_URI = "MODELYARD_OUTPUT_URI"
# The local directory of that output, for a spec.script run (the built-in trainer's --output).
ENV_OUTPUT_DIR = "MODELYARD_OUTPUT_DIR"
# Name of the ConfigMap <mt>-progress in MODELYARD_RUN_NAMESPACE; unset means report locally.
ENV_PROGRESS_CONFIGMAP = "MODELYARD_PROGRESS_CONFIGMAP"
ENV_TERMINATION_LOG = "MODELYARD_TERMINATION_LOG"
# Seconds a collective may wait for a peer before the worker gives up (lost peer).
ENV_PEER_TIMEOUT_SECONDS = "MODELYARD_PEER_TIMEOUT_SECONDS"

LOCAL_NAMESPACE = "local"
LOCAL_UID = "local"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DEFAULT_PEER_TIMEOUT_SECONDS = 300

# Data key of the progress ConfigMap that holds one ProgressRecord as JSON.
PROGRESS_DATA_KEY = "progress.json"
# Kubernetes truncates a container's termination message to this many bytes.
TERMINATION_MESSAGE_LIMIT = 4096

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
MODEL_INT8_FILE = "model.int8.onnx"
MODEL_OPTIMIZED_FILE = "model.optimized.onnx"
CHECKPOINT_DIR = "checkpoints"
PROGRESS_JSONL_FILE = "progress.jsonl"
# 2: adds `reference` (drift reference statistics of the training split).
METADATA_FORMAT_VERSION = 2

_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def artifact_relpath(namespace: str, name: str, uid: str, generation: int) -> str:
    """Directory of one run, relative to the output root: '<ns>/<name>/<uid>/g<generation>'.

    Keyed by uid and generation so that no run (and no recreated object of the same name)
    overwrites another, and a rollback target never disappears.
    """
    for label, part in (("namespace", namespace), ("name", name), ("uid", uid)):
        if not _NAME_PART.match(part):
            raise ValueError(f"{label} {part!r} cannot be a path segment")
    if generation < 1:
        raise ValueError(f"generation must be >= 1, got {generation}")
    return f"{namespace}/{name}/{uid}/g{generation}"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        """Compact JSON by alias, without unset optionals."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


class RunIdentity(_Model):
    """Which run this is: the ModelTraining, its spec generation and the attempt."""

    namespace: str = Field(default=LOCAL_NAMESPACE, description="Namespace of the ModelTraining.")
    name: str = Field(default="local", description="Name of the ModelTraining.")
    uid: str = Field(default=LOCAL_UID, description="UID of the ModelTraining.")
    generation: int = Field(default=1, ge=1, description="Spec generation: one run per generation.")
    attempt: int = Field(default=1, ge=1, description="Attempt of this run (1 for the first).")

    @property
    def relpath(self) -> str:
        return artifact_relpath(self.namespace, self.name, self.uid, self.generation)


def run_identity_from_env(environ: Mapping[str, str], default_name: str) -> RunIdentity:
    """Read the run identity from the operator's environment, with local defaults."""

    def number(key: str) -> int:
        raw = environ.get(key, "1") or "1"
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment {key}={raw!r} is not an integer") from None

    return RunIdentity(
        namespace=environ.get(ENV_RUN_NAMESPACE) or LOCAL_NAMESPACE,
        name=environ.get(ENV_RUN_NAME) or default_name,
        uid=environ.get(ENV_RUN_UID) or LOCAL_UID,
        generation=number(ENV_RUN_GENERATION),
        attempt=number(ENV_ATTEMPT),
    )


def termination_log_path(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG


# --- Progress (ConfigMap <mt>-progress, key progress.json) -----------------------------------

Stage = Literal["Preprocessing", "Training", "Evaluating", "Exporting", "Done"]


class ProgressRecord(_Model):
    """Progress of a run, written by rank 0 at most every progressIntervalSeconds."""

    generation: int = Field(default=1, ge=1, description="Spec generation of the run.")
    attempt: int = Field(default=1, ge=1, description="Attempt of the run.")
    stage: Stage = Field(default="Preprocessing", description="What the trainer is doing.")
    epoch: int = Field(default=0, ge=0, description="Epochs completed.")
    epochs: int = Field(default=0, ge=0, description="Epochs planned.")
    step: int = Field(default=0, ge=0, description="Steps completed in the current epoch.")
    steps_per_epoch: int = Field(default=0, ge=0, description="Optimizer steps per epoch.")
    percent: float = Field(default=0.0, ge=0.0, le=100.0, description="Training progress in %.")
    loss: float | None = Field(default=None, description="Recent mean training loss.")
    validation: dict[str, float] = Field(
        default_factory=dict, description="Latest validation metrics (val_loss, val_accuracy)."
    )
    samples_per_second: float | None = Field(
        default=None, ge=0.0, description="Training throughput over all processes."
    )
    eta_seconds: float | None = Field(
        default=None, ge=0.0, description="Estimated seconds until training ends."
    )
    world_size: int = Field(default=1, ge=1, description="Number of training processes.")
    updated_at: str = Field(default="", description="RFC 3339 time of this record.")

    # JSON has no NaN or Infinity (a diverging loss gives both): such a number is unknown,
    # so it is null, and a validation metric without a value is left out. Applied on reading
    # too, so that a record that a pod wrote with NaN tokens still parses.
    @field_validator("loss", "samples_per_second", "eta_seconds", mode="before")
    @classmethod
    def _finite_or_none(cls, value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    @field_validator("validation", mode="before")
    @classmethod
    def _finite_metrics(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {
            name: metric
            for name, metric in value.items()
            if not (metric is None or (isinstance(metric, float) and not math.isfinite(metric)))
        }


# --- Termination message ---------------------------------------------------------------------

FailureReason = Literal[
    "InvalidConfig",
    "LossDiverged",
    "ParityCheckFailed",
    "PeerLost",
    "StorageFailed",
    "NotPublished",
    "Error",
]

REASON_BY_EXIT_CODE: dict[int, FailureReason] = {
    int(ExitCode.CONFIG_INVALID): "InvalidConfig",
    int(ExitCode.LOSS_DIVERGED): "LossDiverged",
    int(ExitCode.PARITY_FAILED): "ParityCheckFailed",
}


class TensorBrief(_Model):
    """One model input in brief: enough for a client to build a request."""

    name: str = Field(default="input", max_length=64, description="Input tensor name.")
    datatype: str = Field(default="FP32", max_length=16, description="Open Inference datatype.")
    shape: list[int] = Field(
        default_factory=list, max_length=8, description="Shape; -1 is dynamic."
    )


class TrainingResult(_Model):
    """Termination message of rank 0 on success; the full record is metadata.json."""

    kind: Literal["result"] = Field(default="result", description="Discriminator.")
    artifact_uri: str = Field(default="", description="URI of the run's artifact directory.")
    model_file: str = Field(
        default=MODEL_FILE,
        max_length=255,
        # A plain file name: the operator joins it to artifact_uri, so it must not climb.
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description="The file to serve, in that dir.",
    )
    sha256: str = Field(default="", description="sha256 of the served file (hex).")
    size_bytes: int = Field(default=0, ge=0, description="Size of the served file.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Headline test metrics of the served file: test_accuracy, test_loss, f1_macro "
            "or rmse, mae, r2."
        ),
    )
    generation: int = Field(default=1, ge=1, description="Spec generation of the run.")
    inputs: list[TensorBrief] = Field(
        default_factory=list, max_length=8, description="Model inputs in brief."
    )

    def to_termination_message(self) -> str:
        """Compact JSON that always fits TERMINATION_MESSAGE_LIMIT bytes."""
        text = self.to_json()
        if _fits(text):
            return text
        # Shed what metadata.json also holds, least important first; the URI and sha256 stay.
        slim = self.model_copy(update={"inputs": []})
        metrics = dict(self.metrics)
        while not _fits(text := slim.model_copy(update={"metrics": metrics}).to_json()):
            if not metrics:
                raise ValueError("artifact URI is too long for a termination message")
            metrics.popitem()
        return text


class TrainingFailure(_Model):
    """Termination message of a worker that failed."""

    kind: Literal["failure"] = Field(default="failure", description="Discriminator.")
    exit_code: int = Field(default=1, description="Exit code of the trainer.")
    reason: FailureReason = Field(default="Error", description="CamelCase reason.")
    message: str = Field(default="", description="What went wrong, for humans.")
    rank: int = Field(default=0, ge=0, description="Global rank of the failing process.")

    def to_termination_message(self) -> str:
        """Compact JSON that always fits TERMINATION_MESSAGE_LIMIT bytes (message truncated)."""
        text = self.to_json()
        if _fits(text):
            return text
        overhead = len(self.model_copy(update={"message": ""}).to_json().encode())
        # JSON escaping can grow a character to 6 bytes; shrink until it fits.
        budget = TERMINATION_MESSAGE_LIMIT - overhead - 3
        message = self.message
        while True:
            message = _truncate_utf8(message, budget) + "..."
            text = self.model_copy(update={"message": message}).to_json()
            if _fits(text):
                return text
            budget = budget * 3 // 4


def _fits(text: str) -> bool:
    return len(text.encode("utf-8")) <= TERMINATION_MESSAGE_LIMIT


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def parse_termination_message(text: str | None) -> TrainingResult | TrainingFailure | None:
    """Parse a termination message; None for anything that is not one of ours (never raises)."""
    if not text:
        return None
    try:
        document = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    try:
        kind = document.get("kind")
        if kind == "result":
            return TrainingResult.model_validate(document)
        if kind == "failure":
            return TrainingFailure.model_validate(document)
    except ValidationError:
        return None
    return None


# --- metadata.json ---------------------------------------------------------------------------

Task = Literal["classification", "regression"]


class FileDigest(_Model):
    sha256: str = Field(default="", description="sha256 of the file (hex).")
    size_bytes: int = Field(default=0, ge=0, description="Size in bytes.")


class TensorSpec(_Model):
    """A model input or output, in Open Inference Protocol terms."""

    name: str = Field(default="input", description="Tensor name in the ONNX graph.")
    datatype: str = Field(default="FP32", description="FP32, INT64, BYTES, ...")
    shape: list[int] = Field(default_factory=list, description="Shape; -1 is dynamic.")
    features: list[str] = Field(
        default_factory=list, description="Column names along the last axis (inputs)."
    )

    def brief(self) -> TensorBrief:
        return TensorBrief(name=self.name, datatype=self.datatype, shape=self.shape)


class EvaluationMetrics(_Model):
    """Metrics on the held-out test set."""

    rows: int = Field(default=0, ge=0, description="Test rows evaluated.")
    test_loss: float | None = Field(default=None, description="Mean loss on the test set.")
    test_accuracy: float | None = Field(default=None, description="Accuracy (classification).")
    f1_macro: float | None = Field(default=None, description="Macro F1 (classification).")
    confusion_matrix: list[list[int]] | None = Field(
        default=None, description="Rows: true class, columns: predicted class."
    )
    rmse: float | None = Field(default=None, description="Root mean squared error (regression).")
    mae: float | None = Field(default=None, description="Mean absolute error (regression).")
    r2: float | None = Field(default=None, description="Coefficient of determination.")

    def headline(self) -> dict[str, float]:
        """The few numbers that go into status and the termination message."""
        keys = ("test_accuracy", "test_loss", "f1_macro", "rmse", "mae", "r2")
        return {key: float(value) for key in keys if (value := getattr(self, key)) is not None}


class ParityReport(_Model):
    rows: int = Field(default=0, ge=0, description="Held-out rows compared.")
    max_abs_diff: float = Field(default=0.0, ge=0.0, description="Largest |ONNX - PyTorch|.")
    tolerance: float = Field(default=0.0, description="Allowed maximum.")
    passed: bool = Field(default=False, description="Whether max_abs_diff <= tolerance.")


class VariantReport(_Model):
    """A derived model file (graph-optimized or int8) compared to model.onnx."""

    file: str = Field(default="", description="File name in the artifact directory.")
    size_bytes: int = Field(default=0, ge=0, description="Its size.")
    size_ratio: float = Field(default=1.0, ge=0.0, description="Its size / model.onnx's size.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Its headline test metrics."
    )
    metric_change: dict[str, float] = Field(
        default_factory=dict, description="Its metrics minus model.onnx's metrics."
    )
    max_abs_diff: float = Field(default=0.0, ge=0.0, description="Largest |it - model.onnx|.")
    served: bool = Field(default=False, description="Whether this file is the one to serve.")
    note: str = Field(default="", description="Why it is (not) served.")


class ExportReport(_Model):
    exporter: str = Field(default="", description="Which exporter produced model.onnx.")
    parity: ParityReport = Field(default_factory=ParityReport, description="The parity check.")
    optimized: VariantReport | None = Field(default=None, description="Graph optimization.")
    int8: VariantReport | None = Field(default=None, description="Dynamic int8 quantization.")


class TrainingSummary(_Model):
    epochs_run: int = Field(default=0, ge=0, description="Epochs actually trained.")
    best_epoch: int | None = Field(default=None, description="Epoch of the best validation.")
    stopped_early: bool = Field(default=False, description="Whether early stopping ended it.")
    resumed_from_epoch: int | None = Field(default=None, description="Checkpoint resumed from.")
    world_size: int = Field(default=1, ge=1, description="Processes that trained.")
    backend: str = Field(default="", description="Process-group backend (gloo, nccl).")
    device: str = Field(default="cpu", description="Device type used.")
    train_rows: int = Field(default=0, ge=0, description="Training rows.")
    validation_rows: int = Field(default=0, ge=0, description="Validation rows.")
    duration_seconds: float = Field(default=0.0, ge=0.0, description="Wall time of training.")
    cpu_seconds: float = Field(
        default=0.0, ge=0.0, description="CPU time of rank 0's process during training."
    )
    samples_per_second: float = Field(default=0.0, ge=0.0, description="Mean throughput.")
    final_validation: dict[str, float] = Field(
        default_factory=dict, description="Validation metrics after the last epoch."
    )


# Bounds of the drift reference: a model with more input columns gets reference statistics for
# its first MAX_REFERENCE_FEATURES ones (in input order). They bound metadata.json (about 400
# bytes per feature) and the server's drift series (one gauge per feature and pod).
MAX_REFERENCE_FEATURES = 256
REFERENCE_BINS = 10
MAX_REFERENCE_CATEGORIES = 10
# Predicted classes take one bin each: up to the trainer's 1000 classes.
MAX_HISTOGRAM_BINS = 1001


class Histogram(_Model):
    """A distribution in bins: quantile bins of numbers, or the most frequent categories.

    Numbers: bin i holds edges[i-1] <= x < edges[i] (the first and last bins are open), so
    there are len(edges) + 1 bins. Categories: bin i holds categories[i], and one last bin
    holds every other value. Missing values (NaN, "") are in no bin: missing_rate counts them.
    """

    edges: list[float] = Field(
        default_factory=list,
        max_length=MAX_HISTOGRAM_BINS - 1,
        description="Ascending inner edges (numbers).",
    )
    categories: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_CATEGORIES,
        description="Most frequent categories (categorical features).",
    )
    proportions: list[float] = Field(
        default_factory=list,
        max_length=MAX_HISTOGRAM_BINS,
        description="Share of the present values in each bin (they sum to 1, or 0 with none).",
    )
    missing_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of missing.")

    @model_validator(mode="after")
    def _bins_match(self) -> Histogram:
        bins = len(self.categories) + 1 if self.categories else len(self.edges) + 1
        if self.edges and self.categories:
            raise ValueError("a histogram has edges or categories, not both")
        if len(self.proportions) != bins:
            raise ValueError(f"{len(self.proportions)} proportions for {bins} bins")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must ascend strictly")
        return self


class FeatureReference(Histogram):
    """Reference distribution of one input column."""

    # Inputs have at most REFERENCE_BINS bins: the server counts them in small integers.
    edges: list[float] = Field(
        default_factory=list,
        max_length=REFERENCE_BINS - 1,
        description="Ascending inner edges (numbers).",
    )

    name: str = Field(default="", max_length=256, description="Column name.")
    tensor: str = Field(default="input", max_length=64, description="Model input that holds it.")
    column: int = Field(default=0, ge=0, description="Its index along that input's last axis.")


class OutputReference(Histogram):
    """Reference distribution of the model's predictions on the training split.

    Classification: the output class_index, binned by class (edges halfway between class
    indices), with the class priors of the training labels beside. Regression: the output
    prediction, in quantile bins of the training predictions, with the targets' shares beside.
    """

    output: str = Field(default="class_index", max_length=64, description="Model output.")
    target_proportions: list[float] = Field(
        default_factory=list,
        max_length=MAX_HISTOGRAM_BINS,
        description="Share of the training labels (class priors) or targets in the same bins.",
    )


class DriftReference(_Model):
    """Statistics of the training split that the server compares live traffic with."""

    rows: int = Field(default=0, ge=0, description="Training rows they were computed on.")
    features_total: int = Field(
        default=0,
        ge=0,
        description=f"Input columns of the model; the first {MAX_REFERENCE_FEATURES} are here.",
    )
    features: list[FeatureReference] = Field(
        default_factory=list, max_length=MAX_REFERENCE_FEATURES, description="Per input column."
    )
    prediction: OutputReference | None = Field(default=None, description="Of the predictions.")


class ArtifactMetadata(_Model):
    """metadata.json: written last, so that its presence marks the run's artifacts final."""

    format_version: int = Field(default=METADATA_FORMAT_VERSION, description="Schema version.")
    model_file: str = Field(default=MODEL_FILE, description="The file to serve.")
    files: dict[str, FileDigest] = Field(
        default_factory=dict, description="Model files by name with their digests."
    )
    inputs: list[TensorSpec] = Field(default_factory=list, description="Model inputs.")
    outputs: list[TensorSpec] = Field(default_factory=list, description="Model outputs.")
    class_labels: list[str] = Field(
        default_factory=list, description="Class names by index (classification)."
    )
    task: Task = Field(default="classification", description="Classification or regression.")
    metrics: EvaluationMetrics = Field(
        default_factory=EvaluationMetrics, description="Test metrics of model.onnx's network."
    )
    opset: int = Field(default=18, description="ONNX opset of the default domain.")
    export: ExportReport = Field(default_factory=ExportReport, description="Export checks.")
    training: TrainingSummary = Field(default_factory=TrainingSummary, description="The run.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The TrainerConfig that produced it, by alias."
    )
    run: RunIdentity = Field(default_factory=RunIdentity, description="Which run produced it.")
    created_at: str = Field(default="", description="RFC 3339 time of writing.")
    library_versions: dict[str, str] = Field(
        default_factory=dict, description="torch, onnx, onnxruntime, ... versions."
    )
    reference: DriftReference | None = Field(
        default=None, description="Training-split statistics for drift monitoring."
    )

    @property
    def served(self) -> FileDigest:
        return self.files[self.model_file]
