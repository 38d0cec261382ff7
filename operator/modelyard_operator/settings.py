"""Operator settings, read once from the environment (the chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "MODELYARD_"


class SettingsError(ValueError):
    """An operator setting is invalid; the message names the variable."""


class Settings(BaseModel):
    """What the operator needs to know that is not in a custom resource."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer_image: str = Field(
        "modelyard/trainer:0.1.0", description="Default image of training workers."
    )
    server_image: str = Field("modelyard/server:0.1.0", description="Default image of servers.")
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of default images.")
    namespaces: tuple[str, ...] = Field(
        (), description="Namespaces to watch (comma-separated); empty watches the cluster."
    )
    resync_seconds: float = Field(
        30.0, gt=0, description="Slow timer: every object is reconciled at least this often."
    )
    progress_seconds: float = Field(
        10.0, gt=0, description="How often a running training's progress is read into status."
    )
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port of rank 0.")
    cluster_domain: str = Field("cluster.local", description="DNS domain of the cluster.")
    metrics_port: int = Field(8080, ge=1, le=65535, description="Port of /metrics.")
    health_port: int = Field(8081, ge=1, le=65535, description="Port of /healthz (liveness).")
    workers: int = Field(1, ge=1, le=64, description="Reconciles that run at once, per kind.")
    watch_timeout_seconds: int = Field(
        300, ge=10, description="Server-side timeout of each watch, after which it is renewed."
    )
    rollout_poll_seconds: float = Field(
        5.0, gt=0, description="How often a ModelDeployment whose rollout is unsettled is read."
    )
    server_prestop_seconds: int = Field(
        5,
        ge=1,
        le=120,
        description=(
            "preStop sleep of server pods: SIGTERM waits this long, so that every proxy has "
            "stopped routing to a terminating pod before it starts draining."
        ),
    )
    server_startup_seconds: int = Field(
        600,
        ge=10,
        le=86400,
        description="Time a server pod has to load and warm up its model before it is restarted.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = tuple(p for p in raw.split(",") if p) if name == "namespaces" else raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in error.errors()
            )
            raise SettingsError(problems) from None
