"""What the server and its fetch init container promise to the operator.

The operator reads these without importing onnxruntime: the load-failure record that a
failed start leaves in the termination message, the exit codes, the HTTP routes it points
probes and Services at, and the metric names that dashboards and an HPA may use.

Pure pydantic and stdlib, cheap to import.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

# The fetch init container reads s3:// models with these (one definition, in the storage layer).
from modelyard_storage.connection import (
    ENV_ACCESS_KEY_ID,
    ENV_S3_ADDRESSING_STYLE,
    ENV_S3_ENDPOINT_URL,
    ENV_S3_REGION,
    ENV_SECRET_ACCESS_KEY,
    ENV_SESSION_TOKEN,
)

__all__ = [
    "ENV_ACCESS_KEY_ID",
    "ENV_S3_ADDRESSING_STYLE",
    "ENV_S3_ENDPOINT_URL",
    "ENV_S3_REGION",
    "ENV_SECRET_ACCESS_KEY",
    "ENV_SESSION_TOKEN",
]

# --- exit codes ---------------------------------------------------------------------------

EXIT_OK = 0
"""Normal exit, including a graceful shutdown after SIGTERM."""
EXIT_SERVER_ERROR = 1
"""The HTTP server could not start (e.g. the port is taken) or failed unexpectedly."""
EXIT_CONFIG_ERROR = 2
"""Invalid settings (environment or command line); a LoadFailure InvalidConfig was written."""
EXIT_LOAD_FAILURE = 3
"""The model could not be fetched, verified, loaded or warmed up; a LoadFailure was written."""

# --- termination message ------------------------------------------------------------------

TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a container's termination message."""

MESSAGE_MAX_CHARS = 3500
"""Bound of LoadFailure.message, leaving room for the JSON around it."""

LoadFailureReason = Literal[
    "ModelNotFound",
    "BucketNotFound",
    "AccessDenied",
    "StorageUnreachable",
    "ChecksumMismatch",
    "InvalidModel",
    "WarmupFailed",
    "FetchFailed",
    "ProviderUnavailable",
    "InvalidConfig",
]


class LoadFailure(BaseModel):
    """Why a serving pod could not load its model; JSON in the container's termination message."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    reason: LoadFailureReason = Field(
        default="InvalidModel",
        description=(
            "CamelCase cause: ModelNotFound (no file at the path or no such object), "
            "BucketNotFound (the s3:// bucket does not exist), AccessDenied (the object store "
            "refused the credentials), StorageUnreachable (the object store's endpoint did not "
            "answer), ChecksumMismatch (sha256 "
            "differs from the expected one), InvalidModel (ONNX Runtime rejected the file), "
            "WarmupFailed (the warm-up inference failed), FetchFailed (copying it failed), "
            "ProviderUnavailable (executionProvider cuda without a usable GPU), "
            "InvalidConfig (the server's settings were rejected)."
        ),
    )
    message: str = Field(
        default="",
        max_length=3500,  # MESSAGE_MAX_CHARS
        description="Human-readable detail naming the file and the cause.",
    )

    @classmethod
    def create(cls, reason: LoadFailureReason, message: str) -> LoadFailure:
        """Build a record whose message is cut to fit the field's bound."""
        return cls(reason=reason, message=_shorten(message, MESSAGE_MAX_CHARS))

    def to_termination_message(self) -> str:
        """Compact JSON, always within TERMINATION_MESSAGE_MAX_BYTES."""
        message = self.message
        while True:
            text = LoadFailure(reason=self.reason, message=message).model_dump_json(by_alias=True)
            # Multi-byte characters and JSON escapes can exceed the byte budget; cut further.
            if len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES or not message:
                return text
            message = _shorten(message, len(message) // 2)


def _shorten(message: str, limit: int) -> str:
    return message if len(message) <= limit else message[: max(0, limit - 3)] + "..."


def parse_load_failure(text: str | bytes | None) -> LoadFailure | None:
    """The LoadFailure in a termination message, or None when it holds none. Never raises.

    The operator calls this on whatever the kubelet reports; with
    terminationMessagePolicy FallbackToLogsOnError that may be a log tail, not our JSON.
    """
    if not text:
        return None
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        data = json.loads(text)
        if not isinstance(data, dict):
            return None
        return LoadFailure.model_validate(data)
    except (ValueError, ValidationError, TypeError, RecursionError):
        return None


# --- HTTP routes (Open Inference Protocol v2) ---------------------------------------------

DEFAULT_PORT = 8080
PORT_NAME = "http"
DEFAULT_GRPC_PORT = 8081
GRPC_PORT_NAME = "grpc"

ROUTE_SERVER_METADATA = "/v2"
ROUTE_LIVE = "/v2/health/live"
"""Liveness probe: the process serves HTTP."""
ROUTE_READY = "/v2/health/ready"
"""Readiness probe: the model is loaded, a warm-up inference passed, and no SIGTERM yet."""
ROUTE_METRICS = "/metrics"
"""Prometheus exposition."""


def model_route(name: str, version: str | None = None) -> str:
    """/v2/models/{name}[/versions/{version}] — append /ready or /infer for those routes."""
    base = f"/v2/models/{name}"
    return f"{base}/versions/{version}" if version else base


# --- Prometheus metric names (as exposed) --------------------------------------------------

METRIC_REQUESTS_TOTAL = "modelyard_server_requests_total"
"""Counter of HTTP requests, labels: model, code."""
METRIC_REQUEST_DURATION = "modelyard_server_request_duration_seconds"
"""Histogram of whole-request latency, label: model."""
METRIC_INFERENCE_DURATION = "modelyard_server_inference_duration_seconds"
"""Histogram of ONNX Runtime run time per batch (failed runs included), label: model."""
METRIC_BATCH_SIZE = "modelyard_server_batch_size"
"""Histogram of rows per ONNX Runtime call, label: model."""
METRIC_QUEUE_DEPTH = "modelyard_server_queue_depth"
"""Gauge of inference requests waiting for the model, label: model."""
METRIC_INFLIGHT_REQUESTS = "modelyard_server_inflight_requests"
"""Gauge of inference requests being handled (queued or running): a good HPA signal."""
METRIC_MODEL_LOAD_SECONDS = "modelyard_server_model_load_seconds"
"""Gauge of the time it took to load and warm up the model, label: model."""
METRIC_DYNAMIC_BATCHING = "modelyard_server_dynamic_batching"
"""Gauge, 1 when requests are batched together, 0 when the model's rows were found to depend
on each other (or batching is off), label: model."""
METRIC_MODEL_READY = "modelyard_server_model_ready"
"""Gauge, 1 when the model is ready to serve, label: model."""
METRIC_DRIFT_WINDOW_ROWS = "modelyard_server_drift_window_rows"
"""Gauge of the rows in the drift window, label: model (only with reference statistics)."""
METRIC_DRIFT_FEATURE_PSI = "modelyard_server_drift_feature_psi"
"""Gauge, population stability index of one input column against the training split, labels:
model, feature (at most 256 features); absent while the window is below its minimum rows."""
METRIC_DRIFT_PREDICTION_PSI = "modelyard_server_drift_prediction_psi"
"""Gauge, population stability index of the predictions against those on the training split,
label: model; absent while the window is below its minimum rows."""
