"""ModelTraining: one DDP training run per spec generation, ending in a verified ONNX model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelyard_operator.api.meta import (
    ApiModel,
    Condition,
    EnvVar,
    ObjectMeta,
    PodOverrides,
    ResourceRequirements,
    Scheduling,
    cel,
    needs_s3,
)
from modelyard_storage.connection import S3Connection
from modelyard_storage.uri import PVC_URI_PATTERN, STORAGE_URI_PATTERN, is_s3, parse_uri
from modelyard_trainer.config import TRAINER_SPEC_KEYS, DataConfig, TrainerConfig, TrainingConfig

# Children are `<name>-progress`, `<name>-a<attempt>[-w]` and pods `<name>-a<attempt>[-w]-<index>`,
# whose host names must fit 63 characters; 40 leaves room for every suffix.
MAX_NAME_LENGTH = 40
MAX_WORKERS = 128
__all__ = ["PVC_URI_PATTERN", "STORAGE_URI_PATTERN"]

# CEL: whether a URI field (that may be absent) names object storage.
_S3_OUTPUT = "has(self.output) && self.output.uri.startsWith('s3://')"
_S3_DATA = (
    "has(self.data) && has(self.data.source) && has(self.data.source.uri) && "
    "self.data.source.uri.startsWith('s3://')"
)
# What a spec without a training block gets, so that the CEL rule below judges the same value.
_DEFAULT_BATCH_SIZE = TrainingConfig.model_fields["batch_size"].default
BATCH_SIZE_MESSAGE = (
    "training.batchSize must be divisible by workers x processesPerWorker (the world size), "
    "so that every process gets the same share of each batch"
)


SCRIPT_MESSAGE = (
    "script replaces the built-in trainer: it cannot be combined with model, data, training, "
    "checkpoint or export"
)


def _trainer_rules() -> list[Any]:
    """TrainerConfig's CEL rules: the spec's own model_config would otherwise replace them."""
    extra = TrainerConfig.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    rules = extra["x-kubernetes-validations"]
    assert isinstance(rules, list)
    return rules


class TrainingScheduling(Scheduling):
    """Scheduling of the worker pods, with an optional Kueue queue."""

    queue_name: str | None = Field(
        None,
        description=(
            "Kueue LocalQueue: the Job is created suspended with label "
            "kueue.x-k8s.io/queue-name, and Kueue decides when it runs."
        ),
        max_length=63,
    )
    spread_workers: Literal["preferred", "required", "none"] = Field(
        "preferred",
        description=(
            "How the workers spread over nodes: a topology spread constraint on "
            "kubernetes.io/hostname over this attempt's own pods, max skew 1, counting only the "
            "nodes that they may run on (node selector, affinity, taints). preferred (default): "
            "one worker per node where the scheduler can, several on a node otherwise; "
            "required: no node holds more than one worker above any other eligible node "
            "(a worker stays Pending rather); none: no constraint."
        ),
    )


class Script(ApiModel):
    """Your own training program, run like the built-in trainer: the same gang of workers, the
    same rendezvous, restarts and exit codes. With processesPerWorker > 1 the trainer's
    torchrun launcher starts the processes (the image needs modelyard_trainer); with one, the
    command runs as the worker with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. The
    output directory is in MODELYARD_OUTPUT_DIR; modelyard_trainer.sdk gives the script
    checkpoints, progress and publish (ONNX + parity + sha256 + the result)."""

    image: str | None = Field(
        None,
        description=(
            "Image with the script (and modelyard_trainer for the SDK); spec.pod.image, then "
            "the operator's trainer image, when empty."
        ),
        max_length=512,
    )
    command: list[str] = Field(
        description=(
            "The program and its fixed arguments, e.g. [python, -m, modelyard_trainer.sdk.example]."
        ),
        min_length=1,
        max_length=64,
    )
    args: list[str] = Field(
        default_factory=list, description="Arguments after the command.", max_length=256
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Environment of the script, after spec.pod.env.",
        max_length=128,
    )


class Output(ApiModel):
    """Where artifacts go: `<uri>/<namespace>/<name>/<uid>/g<generation>/`."""

    uri: str = Field(
        "pvc://modelyard-models",
        description=(
            "Output location: pvc://<claim>[/<path>] (the claim must exist in the namespace; "
            "the operator never owns it; only rank 0 mounts it, in a Job of its own, so it may "
            "be ReadWriteOnce; with scheduling.queueName every worker does) or "
            "s3://<bucket>[/<prefix>] "
            "(needs spec.s3; checkpoints go there too, so a resumed attempt needs no volume)."
        ),
        max_length=1024,
        pattern=STORAGE_URI_PATTERN,
    )

    @field_validator("uri")
    @classmethod
    def _parses(cls, uri: str) -> str:
        parse_uri(uri, "output.uri")
        return uri


class RunPolicy(ApiModel):
    """Retries, deadlines and lifetime of a run."""

    backoff_limit: int = Field(
        3,
        description="Attempts that may fail before the run fails (whole-gang restarts).",
        ge=0,
        le=100,
    )
    active_deadline_seconds: int | None = Field(
        None, description="The run fails when it has been running longer than this.", ge=1
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        description="Delete the children (never the ModelTraining) this long after the run ends.",
        ge=0,
    )
    suspend: bool = Field(
        False, description="Suspend the run: its pods go, its checkpoints stay; false resumes it."
    )
    schedule_timeout_seconds: int = Field(
        300,
        description="Pods still unschedulable after this long raise the Unschedulable condition.",
        ge=1,
    )


class ModelTrainingSpec(TrainerConfig):
    """What to train and how to run it. The trainer's own fields (model, data, training,
    checkpoint, export) come from the trainer's config; the rest is about the cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *_trainer_rules(),
                cel(
                    "!has(self.scheduling) || !has(self.scheduling.queueName) || "
                    "!has(self.runPolicy) || !has(self.runPolicy.suspend) || "
                    "!self.runPolicy.suspend",
                    "runPolicy.suspend cannot be combined with scheduling.queueName: "
                    "Kueue owns suspension of queued runs",
                ),
                cel(f"!({_S3_OUTPUT}) || has(self.s3)", needs_s3("output.uri"), ".output.uri"),
                cel(
                    f"!({_S3_DATA}) || has(self.s3)",
                    needs_s3("data.source.uri"),
                    ".data.source.uri",
                ),
                cel(
                    f"has(self.script) || "
                    f"(has(self.training) ? self.training.batchSize : {_DEFAULT_BATCH_SIZE}) % "
                    "(self.workers * self.processesPerWorker) == 0",
                    BATCH_SIZE_MESSAGE,
                    ".training.batchSize",
                ),
                cel(
                    "!has(self.script) || "
                    + " && ".join(f"!has(self.{key})" for key in TRAINER_SPEC_KEYS),
                    SCRIPT_MESSAGE,
                    ".script",
                ),
            ]
        },
    )

    script: Script | None = Field(
        None,
        description=(
            "Your own training program instead of the built-in trainer (model, data, training, "
            "checkpoint and export then stay unset)."
        ),
    )
    workers: int = Field(
        1, description="Worker pods in the gang (DDP nodes).", ge=1, le=MAX_WORKERS
    )
    processes_per_worker: int = Field(
        1, description="Training processes per worker pod, usually one per GPU.", ge=1, le=16
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(requests={"cpu": "1", "memory": "2Gi"}),
        description="Resources of each worker container; GPUs as limits {nvidia.com/gpu: N}.",
    )
    shm_size: str = Field(
        "1Gi",
        description="Size of the memory-backed /dev/shm of each worker.",
        max_length=32,
        pattern=r"^[0-9]+(Ki|Mi|Gi)?$",
    )
    scheduling: TrainingScheduling = Field(
        default_factory=TrainingScheduling, description="Where the workers may run."
    )
    output: Output = Field(default_factory=Output, description="Where artifacts are written.")
    s3: S3Connection | None = Field(
        None,
        description=(
            "The S3-compatible store that s3:// URIs (data.source.uri, output.uri) refer to, "
            "and the Secret with its access keys (given to the workers as env from secretKeyRef)."
        ),
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries and deadlines.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Worker pod overrides.")

    @model_validator(mode="after")
    def _queue_owns_suspend(self) -> ModelTrainingSpec:
        if self.scheduling.queue_name and self.run_policy.suspend:
            raise ValueError(
                "runPolicy.suspend cannot be combined with scheduling.queueName: "
                "Kueue owns suspension of queued runs"
            )
        return self

    @field_validator("data")
    @classmethod
    def _data_uri_parses(cls, data: DataConfig) -> DataConfig:
        if data.source.uri is not None:
            parse_uri(data.source.uri, "data.source.uri")
        return data

    @model_validator(mode="after")
    def _s3_needs_connection(self) -> ModelTrainingSpec:
        if is_s3(self.output.uri) and self.s3 is None:
            raise ValueError(needs_s3("output.uri"))
        if is_s3(self.data.source.uri) and self.s3 is None:
            raise ValueError(needs_s3("data.source.uri"))
        return self

    @model_validator(mode="after")
    def _batch_divides_among_processes(self) -> ModelTrainingSpec:
        # A script's batches are its own business.
        if self.script is None and self.training.batch_size % (
            self.workers * self.processes_per_worker
        ):
            raise ValueError(BATCH_SIZE_MESSAGE)
        return self

    @model_validator(mode="after")
    def _script_replaces_the_trainer(self) -> ModelTrainingSpec:
        if self.script is not None and self.model_fields_set & set(TRAINER_SPEC_KEYS):
            raise ValueError(SCRIPT_MESSAGE)
        return self


TrainingPhase = Literal["Pending", "Running", "Exporting", "Succeeded", "Failed", "Suspended"]


class WorkerCounts(ApiModel):
    """Worker pods of the current attempt."""

    active: int = Field(0, description="Pods not yet finished.")
    ready: int = Field(0, description="Pods running and ready.")
    succeeded: int = Field(0, description="Pods that exited 0.")
    failed: int = Field(0, description="Pods that failed.")


class Progress(ApiModel):
    """Progress of the current attempt, from rank 0's progress record."""

    stage: str = Field("", description="Preprocessing, Training, Evaluating, Exporting or Done.")
    epoch: int = Field(0, description="Epochs completed.")
    epochs: int = Field(0, description="Epochs planned.")
    percent: float = Field(0.0, description="Share of the run done, 0-100.")
    summary: str = Field("", description="Short text for display, e.g. '12/100 (12%)'.")
    loss: float | None = Field(None, description="Latest training loss.")
    validation: dict[str, float] = Field(
        default_factory=dict, description="Latest validation metrics."
    )
    samples_per_second: float | None = Field(None, description="Training throughput.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left.")
    eta: str = Field("", description="Estimated time left, for display, e.g. 3m20s.")
    updated_at: str | None = Field(None, description="When rank 0 last reported (RFC 3339).")


class TrainingResultStatus(ApiModel):
    """The artifact of a successful run, from rank 0's termination message."""

    generation: int = Field(description="Spec generation that produced this result.")
    artifact_uri: str = Field(description="Directory of the run's artifacts.")
    model_file: str = Field("model.onnx", description="The file to serve, inside artifactUri.")
    model_uri: str = Field(description="The full URI of the model file to serve.")
    sha256: str = Field(description="sha256 of the model file to serve.")
    size_bytes: int = Field(0, description="Size of the model file to serve.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Headline test metrics (test_accuracy, ...)."
    )


class FailureStatus(ApiModel):
    """The last failure of a worker."""

    attempt: int = Field(description="Attempt in which it happened.")
    rank: int | None = Field(None, description="Node rank of the failed worker.")
    exit_code: int | None = Field(None, description="Exit code of the trainer container.")
    reason: str = Field("", description="CamelCase reason.")
    message: str = Field("", description="What happened.")
    permanent: bool = Field(False, description="True when no retry can help.")


class ModelTrainingStatus(ApiModel):
    """Observed state of a ModelTraining."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(None, description="The spec generation last acted on.")
    phase: TrainingPhase = Field("Pending", description="Phase for display.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "Created, Running, Restarting, Succeeded, Failed, Suspended, Unschedulable, "
            "ChildrenApplied, and WorkersBlocked: True while a worker cannot start, with the "
            "scheduler's or kubelet's reason (Unschedulable, ErrImagePull, ImagePullBackOff, "
            "ErrImageNeverPull, InvalidImageName, CreateContainerConfigError, "
            "CreateContainerError, FailedAttachVolume, FailedMount)."
        ),
    )
    attempt: int = Field(
        0, description="Number of the current attempt (1-based) of this generation."
    )
    failed_attempts: int = Field(0, description="Attempts of this generation that failed.")
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="Worker pods.")
    progress: Progress = Field(default_factory=Progress, description="Progress of the run.")
    result: TrainingResultStatus | None = Field(
        None, description="Artifact of the latest successful run."
    )
    last_failure: FailureStatus | None = Field(None, description="The last worker failure.")
    start_time: str | None = Field(None, description="When this generation's run started.")
    completion_time: str | None = Field(None, description="When this generation's run ended.")


class ModelTraining(ApiModel):
    """A ModelTraining object as stored by the API server."""

    model_config = ConfigDict(extra="ignore")

    metadata: ObjectMeta
    spec: ModelTrainingSpec
    status: ModelTrainingStatus = Field(default_factory=ModelTrainingStatus)
