"""ModelDeployment: an ONNX model served by autoscaled ONNX Runtime servers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelyard_operator.api.meta import (
    ApiModel,
    Condition,
    ObjectMeta,
    PodOverrides,
    ResourceRequirements,
    Scheduling,
    cel,
    needs_s3,
)
from modelyard_operator.api.training import MAX_NAME_LENGTH as MAX_TRAINING_NAME_LENGTH
from modelyard_server.config import ServerConfig
from modelyard_server.contracts import METRIC_INFLIGHT_REQUESTS
from modelyard_storage.connection import S3Connection
from modelyard_storage.uri import STORAGE_URI_PATTERN, is_s3, parse_uri

# Children share the object's name (Deployment, Service, HPA, PDB); ReplicaSets add 11
# characters and must stay a valid label value.
MAX_NAME_LENGTH = 52
SHA256_PATTERN = r"^[a-f0-9]{64}$"
INT_OR_PERCENT_PATTERN = r"^[0-9]+%?$"
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SHA256_REQUIRED = (
    "model.sha256 is required with model.uri: the server refuses a file that does not match it"
)


def _model_config(*rules: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


class Gate(ApiModel):
    """A test metric that a training result must pass before it is served."""

    model_config = _model_config(
        cel(
            "has(self.minimum) || has(self.maximum)",
            "gate needs minimum or maximum",
        ),
        cel(
            "!has(self.minimum) || !has(self.maximum) || self.minimum <= self.maximum",
            "gate.minimum must not exceed gate.maximum",
        ),
    )

    metric: str = Field(
        "test_accuracy",
        description=(
            "Name of a metric in the training result: test_accuracy, test_loss or f1_macro "
            "(classification); test_loss, rmse, mae or r2 (regression)."
        ),
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
    )
    minimum: float | None = Field(None, description="The metric must be at least this.")
    maximum: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _bounds(self) -> Gate:
        if self.minimum is None and self.maximum is None:
            raise ValueError("gate needs minimum or maximum")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("gate.minimum must not exceed gate.maximum")
        return self


class ModelSource(ApiModel):
    """Which model to serve: a fixed URI, or whatever a ModelTraining last produced."""

    model_config = _model_config(
        cel(
            "has(self.uri) != has(self.fromTraining)",
            "exactly one of model.uri and model.fromTraining must be set",
        ),
        cel("!has(self.sha256) || has(self.uri)", "model.sha256 is only allowed with model.uri"),
        cel(
            "!has(self.uri) || has(self.sha256)",
            SHA256_REQUIRED,
            ".sha256",
            "FieldValueRequired",
        ),
        cel("!has(self.gate) || has(self.fromTraining)", "model.gate needs model.fromTraining"),
    )

    uri: str | None = Field(
        None,
        description=(
            "ONNX model file: pvc://<claim>/<path> or s3://<bucket>/<key> (needs spec.s3); "
            "needs sha256."
        ),
        max_length=1024,
        pattern=STORAGE_URI_PATTERN,
    )
    sha256: str | None = Field(
        None,
        description=(
            "sha256 of the model file (64 lower-case hex digits), required with uri: the file "
            "is checked before it is loaded and a mismatch is never served. fromTraining takes "
            "it from the training's status."
        ),
        max_length=64,
        pattern=SHA256_PATTERN,
    )
    from_training: str | None = Field(
        None,
        description=(
            "Name of a ModelTraining in the same namespace: each of its successful results that "
            "passes the gate is rolled out."
        ),
        max_length=MAX_TRAINING_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
    )
    gate: Gate | None = Field(None, description="Promotion gate for fromTraining results.")

    @field_validator("uri")
    @classmethod
    def _parses(cls, uri: str | None) -> str | None:
        if uri is not None:
            parse_uri(uri, "model.uri")
        return uri

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.uri is None) == (self.from_training is None):
            raise ValueError("exactly one of model.uri and model.fromTraining must be set")
        if self.sha256 is not None and self.uri is None:
            raise ValueError("model.sha256 is only allowed with model.uri")
        if self.uri is not None and self.sha256 is None:
            raise ValueError(SHA256_REQUIRED)
        if self.gate is not None and self.from_training is None:
            raise ValueError("model.gate needs model.fromTraining")
        return self


class CustomMetric(ApiModel):
    """A per-pod metric (for example from a Prometheus Adapter) that the HPA also follows."""

    name: str = Field(
        METRIC_INFLIGHT_REQUESTS,
        description=(
            "Metric name as the custom metrics API serves it; the default is the server's "
            "gauge of requests being handled."
        ),
        max_length=253,
    )
    target_average_value: str = Field(
        "8",
        description="Target average value per pod.",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
    )


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) for the server Deployment."""

    model_config = _model_config(
        cel(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ".minReplicas",
        )
    )

    min_replicas: int = Field(1, description="Fewest replicas.", ge=1, le=1000)
    max_replicas: int = Field(3, description="Most replicas.", ge=1, le=1000)
    target_cpu_utilization: int = Field(
        70, description="Target average CPU use, percent of requests.", ge=1, le=100
    )
    custom_metric: CustomMetric | None = Field(
        None, description="An optional per-pod metric to scale on as well."
    )
    scale_up_stabilization_seconds: int = Field(
        0, description="Window over which scale-up recommendations are smoothed.", ge=0, le=3600
    )
    scale_down_stabilization_seconds: int = Field(
        300, description="Window over which scale-down recommendations are smoothed.", ge=0, le=3600
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class Rollout(ApiModel):
    """How a new model rolls out, and what happens when it goes bad."""

    max_surge: str = Field(
        "25%",
        description="Extra pods during a rollout (count or percent).",
        max_length=8,
        pattern=INT_OR_PERCENT_PATTERN,
    )
    max_unavailable: str = Field(
        "0",
        description="Pods that may be unavailable during a rollout (count or percent).",
        max_length=8,
        pattern=INT_OR_PERCENT_PATTERN,
    )
    progress_deadline_seconds: int = Field(
        600, description="A rollout that has not progressed for this long has failed.", ge=10
    )
    auto_rollback: bool = Field(
        True, description="Roll a failed rollout back to the last model that served well."
    )


class DriftMonitoring(ApiModel):
    """Drift of live inputs and predictions against the training split's reference statistics.

    The server pods score it (population stability index, PSI, per input column and of the
    predictions) when the model's metadata.json holds a reference; the operator reads the
    scores from the pods' /metrics and sets the Drifting condition.
    """

    model_config = _model_config(
        cel(
            "!self.enabled || self.minRows * 10 <= self.windowRows * 9",
            "minRows must be at most 90% of windowRows (the window drops a tenth at a time)",
        )
    )

    enabled: bool = Field(True, description="Score drift in the server pods and set Drifting.")
    psi_threshold: float = Field(
        0.25,
        description=(
            "Drifting is True when an input column's or the predictions' PSI reaches it. "
            "Usual reading: below 0.1 no change, 0.1-0.25 moderate, above 0.25 major."
        ),
        gt=0,
        le=10,
    )
    window_rows: int = Field(
        10000,
        description="Live rows (per pod) in the rolling window compared with the reference.",
        ge=100,
        le=10_000_000,
    )
    min_rows: int = Field(
        1000,
        description=(
            "Rows a pod's window must hold before its scores count: fewer rows score noise "
            "(an unchanged distribution scores about bins/rows)."
        ),
        ge=1,
        le=9_000_000,
    )
    interval_seconds: int = Field(
        60, description="How often the operator reads the scores from the pods.", ge=10, le=3600
    )

    @model_validator(mode="after")
    def _min_rows_fit_the_window(self) -> DriftMonitoring:
        if self.enabled and self.min_rows * 10 > self.window_rows * 9:
            raise ValueError(
                "minRows must be at most 90% of windowRows (the window drops a tenth at a time)"
            )
        return self


class Monitoring(ApiModel):
    """Prometheus integration and drift monitoring."""

    service_monitor: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Create a ServiceMonitor: auto does so when the CRD exists in the cluster.",
    )
    drift: DriftMonitoring = Field(
        default_factory=DriftMonitoring, description="Drift against the training reference."
    )


class ModelDeploymentSpec(ApiModel):
    """What to serve and how."""

    model_config = _model_config(
        cel(
            "!has(self.replicas) || !has(self.autoscaling)",
            "set replicas or autoscaling, not both",
        ),
        cel(
            "!has(self.model.uri) || !self.model.uri.startsWith('s3://') || has(self.s3)",
            needs_s3("model.uri"),
            ".model.uri",
        ),
    )

    model: ModelSource = Field(description="The model to serve.")
    model_name: str | None = Field(
        None,
        description="Name of the model in the inference API; the object's name when empty.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    replicas: int | None = Field(
        None,
        description="Fixed number of server pods (default 1), without autoscaling.",
        ge=0,
        le=1000,
    )
    autoscaling: Autoscaling | None = Field(None, description="Scale the server pods with an HPA.")
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "2Gi"}
        ),
        description="Resources of each server container.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig, description="Server settings.")
    s3: S3Connection | None = Field(
        None,
        description=(
            "The S3-compatible store of s3:// models (model.uri, or what model.fromTraining "
            "produced) and the Secret with its access keys (given to the fetch init container "
            "as env from secretKeyRef)."
        ),
    )
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Where the servers run.")
    rollout: Rollout = Field(default_factory=Rollout, description="Rollout and rollback.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Prometheus.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Server pod overrides.")

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set replicas or autoscaling, not both")
        return self

    @model_validator(mode="after")
    def _s3_needs_connection(self) -> ModelDeploymentSpec:
        if is_s3(self.model.uri) and self.s3 is None:
            raise ValueError(needs_s3("model.uri"))
        return self


ModelState = Literal["Pending", "Loading", "Loaded", "FailedToLoad"]


class ServedModel(ApiModel):
    """A model as the server pods see it."""

    uri: str = Field(description="URI of the model file.")
    sha256: str | None = Field(None, description="Its sha256, when known.")
    training: str | None = Field(None, description="ModelTraining that produced it.")
    training_generation: int | None = Field(None, description="Generation of that training.")


class ModelStatus(ServedModel):
    """The model of the current rollout and how it is doing."""

    state: ModelState = Field("Pending", description="Pending, Loading, Loaded or FailedToLoad.")
    message: str = Field("", description="Why, when the model failed to load.")


class RejectedModel(ServedModel):
    """A model whose rollout failed and was rolled back: not tried again for the same spec."""

    reason: str = Field(
        "", description="CamelCase cause, e.g. ChecksumMismatch or ProgressDeadlineExceeded."
    )
    message: str = Field("", description="What went wrong.")
    generation: int = Field(
        0, description="Spec generation that rejected it; editing the spec lets it be tried again."
    )
    rejected_at: str | None = Field(None, description="When it was rolled back (RFC 3339).")


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(None, description="The spec generation last acted on.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Available, Progressing, ModelResolved, RolledBack, Drifting.",
    )
    model: ModelStatus | None = Field(None, description="The model being served or rolled out.")
    last_good_model: ServedModel | None = Field(
        None, description="The last model that served well: the rollback target."
    )
    rejected_model: RejectedModel | None = Field(
        None, description="The last model that was rolled back, and why."
    )
    url: str | None = Field(None, description="In-cluster URL of the inference API.")
    replicas: int = Field(0, description="Server pods.")
    ready_replicas: int = Field(0, description="Server pods ready to serve.")
    updated_replicas: int = Field(0, description="Server pods running the current template.")


class ModelDeployment(ApiModel):
    """A ModelDeployment object as stored by the API server."""

    model_config = ConfigDict(extra="ignore")

    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
