"""Configuration of the inference server.

`ServerConfig` is the tuning that a user writes in a ModelDeployment (`spec.server`); the
operator embeds it in the CRD, so it follows the CRD-friendly rules (no free unions, every
field described, bounded and defaulted). `ServerSettings` adds what only the pod knows
(model path, name, port, expected checksum). The operator passes the tuning to the pod as
environment variables with `ServerConfig.to_env()`, and the server reads them back with
`ServerSettings.from_env()`: one naming scheme, defined here.

Pure pydantic and stdlib: the operator imports this module, so it must stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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

from modelyard_server import contracts

ENV_PREFIX = "MODELYARD_SERVER_"

MIB = 1024 * 1024

# Where the container's memory limit can be read: cgroup v2, then v1.
CGROUP_MEMORY_FILES = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)
# cgroup v1 reports "no limit" as a huge number (the page-rounded int64 maximum).
_NO_LIMIT = 2**60
# A JSON request of floats needs up to ~20 times its size while it is parsed, and the parsed
# tensors stay until the answer; an eighth of the pod's memory for bodies leaves room for that.
INFLIGHT_SHARE_OF_MEMORY = 8
DEFAULT_MAX_INFLIGHT_BYTES = 256 * MIB

GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]
ExecutionProvider = Literal["auto", "cpu", "cuda"]


class SettingsError(ValueError):
    """A setting from the environment or the command line is invalid; the message names it."""


def env_name(field_name: str) -> str:
    """The environment variable that carries a config field, e.g. MODELYARD_SERVER_PORT."""
    return ENV_PREFIX + field_name.upper()


class ServerConfig(BaseModel):
    """Tuning of the inference server: batching, queueing, ONNX Runtime and shutdown."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # The validator below, as a CEL rule, so that the API server enforces it too.
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.shutdownDelaySeconds < self.shutdownGraceSeconds",
                    "message": "shutdownDelaySeconds must be less than shutdownGraceSeconds",
                }
            ]
        },
    )

    max_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description=(
            "Largest number of rows that concurrent requests are coalesced into for one "
            "ONNX Runtime call. 1 turns dynamic batching off. Only models whose first input "
            "dimension is dynamic are batched across requests."
        ),
    )
    max_batch_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description=(
            "Longest time in milliseconds that the first request of a batch waits for "
            "requests that are already arriving to join it. 0 runs whatever is queued at once."
        ),
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        le=65536,
        description=(
            "Most inference requests that may wait for the model at once. Beyond it the "
            "server answers 503 with Retry-After instead of letting latency grow."
        ),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description=(
            "ONNX Runtime threads used inside one operator. 0 lets ONNX Runtime choose "
            "(one per core); set it to the pod's CPU limit to avoid oversubscription."
        ),
    )
    inter_op_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="ONNX Runtime threads running independent operators in parallel. 0 = default.",
    )
    graph_optimization_level: GraphOptimizationLevel = Field(
        default="all",
        description="ONNX Runtime graph optimization level applied when the model loads.",
    )
    execution_provider: ExecutionProvider = Field(
        default="auto",
        description=(
            "ONNX Runtime execution provider: cuda, cpu, or auto (CUDA when the runtime and a "
            "GPU are present, else CPU). cuda fails the start when CUDA is unavailable."
        ),
    )
    max_request_bytes: int = Field(
        default=64 * MIB,
        ge=1024,
        le=2**31 - 1,
        description="Largest accepted request body in bytes; larger bodies get 413.",
    )
    allow_non_finite_inputs: bool = Field(
        default=False,
        description=(
            "Accept NaN and infinity in floating-point inputs (binary tensors only: JSON has "
            "no such numbers). Off, such a request gets 400."
        ),
    )
    shutdown_delay_seconds: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description=(
            "After SIGTERM, how long the server keeps serving new requests with readiness "
            "already failing, so that Endpoints and load balancers stop routing to it first."
        ),
    )
    shutdown_grace_seconds: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description=(
            "After SIGTERM, the whole time the server takes to exit: shutdownDelaySeconds, then "
            "in-flight requests drain until it ends. Keep the pod's "
            "terminationGracePeriodSeconds above it."
        ),
    )

    @model_validator(mode="after")
    def _delay_inside_grace(self) -> ServerConfig:
        if self.shutdown_delay_seconds >= self.shutdown_grace_seconds:
            raise ValueError(
                "shutdownDelaySeconds must be less than shutdownGraceSeconds "
                f"({self.shutdown_delay_seconds} >= {self.shutdown_grace_seconds}): the delay "
                "is part of the grace period"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry this config to the server's container."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            env[env_name(name)] = value if isinstance(value, str) else _env_scalar(value)
        return env


def _env_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def container_memory_limit(files: tuple[str, ...] = CGROUP_MEMORY_FILES) -> int | None:
    """The cgroup's memory limit in bytes, or None when there is none or it cannot be read."""
    for path in files:
        try:
            with open(path) as handle:
                raw = handle.read().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            limit = int(raw)
        except ValueError:
            continue
        return limit if 0 < limit < _NO_LIMIT else None
    return None


def default_max_inflight_bytes(files: tuple[str, ...] = CGROUP_MEMORY_FILES) -> int:
    """An eighth of the container's memory limit, or DEFAULT_MAX_INFLIGHT_BYTES without one."""
    limit = container_memory_limit(files)
    if limit is None:
        return DEFAULT_MAX_INFLIGHT_BYTES
    return max(MIB, limit // INFLIGHT_SHARE_OF_MEMORY)


class ServerSettings(ServerConfig):
    """Everything the server process needs: the CR's tuning plus the pod-local runtime fields."""

    # model_path / model_name / model_version are the natural names; pydantic reserves the
    # "model_" prefix only to warn about clashes, and none of these clash.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", protected_namespaces=()
    )

    model_path: str = Field(
        default="/models/model.onnx",
        min_length=1,
        max_length=4096,
        description="Path of the ONNX model file to serve.",
    )
    model_name: str = Field(
        default="model",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Name under which the model is served (/v2/models/{name}).",
    )
    model_version: str = Field(
        default="1",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Version under which the model is served (/v2/models/{name}/versions/{v}).",
    )
    host: str = Field(
        default="0.0.0.0",
        min_length=1,
        max_length=253,
        description="Address the HTTP server binds to.",
    )
    port: int = Field(
        default=contracts.DEFAULT_PORT, ge=1, le=65535, description="TCP port of the HTTP server."
    )
    grpc_port: int = Field(
        default=contracts.DEFAULT_GRPC_PORT,
        ge=1,
        le=65535,
        description="TCP port of the gRPC server (Open Inference Protocol, GRPCInferenceService).",
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Fa-f]{64}$",
        description="Expected sha256 of the model file; the start fails when it differs.",
    )
    termination_log: str = Field(
        default="/dev/termination-log",
        min_length=1,
        max_length=4096,
        description="File that receives the LoadFailure record when the model cannot be loaded.",
    )

    # Admission control and slow clients. Pod-local: they follow from the pod's memory limit
    # and the network in front of it, not from the model.
    max_inflight_bytes: int = Field(
        default_factory=default_max_inflight_bytes,
        ge=MIB,
        le=2**40,
        description=(
            "Most request-body bytes held at once: declared (Content-Length) or received "
            "bytes of every infer request being read, parsed, queued or run. A request that "
            "would go over it gets 503 with Retry-After before its body is read; a single "
            "body over it gets 413. Default: an eighth of the container's memory limit (cgroup "
            "v2 memory.max or v1 memory.limit_in_bytes), or 256 MiB when there is none."
        ),
    )
    max_concurrent_uploads: int = Field(
        default=128,
        ge=1,
        le=65536,
        description=(
            "Most infer request bodies being received at once; more get 503 with Retry-After."
        ),
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "Longest time a connection may take to send a request's headers (counted from "
            "the connection or the request's first byte); then it gets 408 and is closed."
        ),
    )
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description=(
            "Longest time an infer request may take to send its whole body; then it gets 408 "
            "and the connection is closed. Only fully received requests reach the batcher."
        ),
    )

    # Drift monitoring: set by the operator from the ModelDeployment's spec.monitoring.drift.
    drift_window_rows: int = Field(
        default=10000,
        ge=0,
        le=10_000_000,
        description=(
            "Live rows in the rolling window that is compared with the training reference "
            "(metadata.json beside the model); 0 turns drift monitoring off."
        ),
    )
    drift_min_rows: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description=(
            "Rows the drift window must hold before drift scores are exported: fewer rows "
            "score noise (an unchanged distribution scores about bins/rows on average)."
        ),
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSettings:
        if self.port == self.grpc_port:
            raise ValueError(f"port and grpcPort must differ (both are {self.port})")
        return self

    @model_validator(mode="after")
    def _min_rows_fit_the_window(self) -> ServerSettings:
        # The window holds at least 90% of its rows once full (it drops a tenth at a time).
        if self.drift_window_rows and self.drift_min_rows > self.drift_window_rows * 9 // 10:
            raise ValueError(
                f"driftMinRows ({self.drift_min_rows}) must be at most 90% of driftWindowRows "
                f"({self.drift_window_rows}): the window drops its oldest tenth at a time"
            )
        return self

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, value: str | None) -> str | None:
        return value.lower() if value is not None else None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **cli_overrides: Any
    ) -> ServerSettings:
        """Read MODELYARD_SERVER_<FIELD> variables, then apply command-line overrides.

        Empty variables count as unset (Kubernetes makes empty values easy to produce). An
        unknown MODELYARD_SERVER_* variable is an error, so that a typo is not silently
        ignored. Overrides whose value is None are ignored (argparse's "not given").
        """
        source = os.environ if environ is None else environ
        by_env = {env_name(name): name for name in cls.model_fields}
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for var, raw in source.items():
            if not var.startswith(ENV_PREFIX):
                continue
            if var not in by_env:
                known = ", ".join(sorted(by_env))
                raise SettingsError(f"unknown environment variable {var} (known: {known})")
            if raw == "":
                continue
            values[by_env[var]] = raw
            origin[by_env[var]] = f"environment variable {var}"
        for name, value in cli_overrides.items():
            if name not in cls.model_fields:
                raise SettingsError(f"unknown setting {name!r}")
            if value is None:
                continue
            values[name] = value
            origin[name] = f"option --{name.replace('_', '-')}"
        try:
            # Strings from the environment are coerced by pydantic's lax mode ("8" -> 8).
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                loc = error["loc"]
                field = str(loc[0]) if loc else ""
                if not field:
                    problems.append(str(error["msg"]).removeprefix("Value error, "))
                    continue
                where = origin.get(field, field)
                problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
            raise SettingsError("; ".join(problems)) from None
