"""Building blocks shared by both kinds: the base model, conditions, resources, scheduling, pods."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

GROUP = "modelyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# Label and annotation keys that only the operator sets: it finds and trusts its children by them.
RESERVED_KEY_PREFIX = f"{GROUP}/"


def cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """A CEL rule (`x-kubernetes-validations` entry) that the API server evaluates.

    `field_path` makes the API server name that field; `reason` picks its error type
    (FieldValueInvalid by default, FieldValueRequired, FieldValueForbidden, ...).
    """
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def reserved_keys_message(field: str) -> str:
    return f"pod.{field}: keys starting with {RESERVED_KEY_PREFIX} are reserved for the operator"


def _no_reserved_keys(field: str) -> dict[str, Any]:
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, !k.startsWith('{RESERVED_KEY_PREFIX}'))",
        reserved_keys_message(field),
        f".{field}",
        "FieldValueForbidden",
    )


def needs_s3(field: str) -> str:
    """The message of a missing spec.s3 where `field` is an s3:// URI (pydantic and CEL)."""
    return f"s3: {field} is an s3:// URI, so spec.s3 (endpoint and Secret) is required"


class ApiModel(BaseModel):
    """camelCase in YAML, snake_case in Python; unknown fields are errors, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", protected_namespaces=()
    )


class Condition(ApiModel):
    """A condition as the Kubernetes API conventions define it."""

    type: str = Field(description="Condition type, for example Ready or Succeeded.", max_length=64)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        "",
        description="A CamelCase word that says why the condition has this status.",
        max_length=128,
    )
    message: str = Field("", description="A human-readable explanation.", max_length=4096)
    last_transition_time: str | None = Field(
        None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="The spec generation this condition was computed for."
    )


class ResourceRequirements(ApiModel):
    """Compute resources per container, as in a Pod: requests and limits by resource name."""

    requests: dict[str, str] = Field(
        default_factory=dict,
        description="Minimum resources, for example {cpu: '1', memory: 2Gi}.",
        max_length=16,
    )
    limits: dict[str, str] = Field(
        default_factory=dict,
        description="Maximum resources; GPUs go here, for example {nvidia.com/gpu: '1'}.",
        max_length=16,
    )


class Toleration(ApiModel):
    """A Pod toleration, so that pods may run on tainted (for example GPU) nodes."""

    key: str | None = Field(None, description="Taint key; empty matches every key.", max_length=317)
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value, with operator Equal.", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated.", ge=0
    )


class Scheduling(ApiModel):
    """Where pods may run: passed through to the pod template unchanged."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels that pods require.", max_length=32
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints that pods tolerate.", max_length=32
    )
    affinity: dict[str, Any] | None = Field(
        None, description="A Pod affinity (nodeAffinity, podAffinity, podAntiAffinity)."
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the pods.", max_length=253
    )
    scheduler_name: str | None = Field(
        None, description="Scheduler of the pods; the default scheduler when empty.", max_length=253
    )


class EnvVar(ApiModel):
    """An environment variable of the main container."""

    name: str = Field(
        description="Variable name.", max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
    )
    value: str | None = Field(None, description="Literal value.", max_length=32768)
    value_from: dict[str, Any] | None = Field(
        None, description="A source for the value (secretKeyRef, configMapKeyRef, fieldRef, ...)."
    )


class PodOverrides(ApiModel):
    """What users need to run their own code and infrastructure in the pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _no_reserved_keys("labels"),
                _no_reserved_keys("annotations"),
            ]
        }
    )

    image: str | None = Field(
        None,
        description="Container image; the operator's default image when empty.",
        max_length=512,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy; the cluster's default when empty."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of Secrets for pulling the image.", max_length=16
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Extra environment variables.", max_length=128
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra Pod volumes.", max_length=32
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra volume mounts of the main container.",
        max_length=32,
    )
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the pods; the one the operator makes when empty.",
        max_length=253,
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            f"Extra labels on the pods; keys starting with {RESERVED_KEY_PREFIX} are reserved."
        ),
        max_length=32,
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description=(
            f"Extra annotations on the pods; keys starting with {RESERVED_KEY_PREFIX} are reserved."
        ),
        max_length=32,
    )

    @field_validator("labels", "annotations")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if any(key.startswith(RESERVED_KEY_PREFIX) for key in value):
            raise ValueError(reserved_keys_message(str(info.field_name)))
        return value


class ObjectMeta(ApiModel):
    """The part of metadata the operator reads."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Object name.")
    namespace: str = Field("default", description="Object namespace.")
    uid: str = Field("", description="Object UID.")
    generation: int = Field(1, description="Spec generation.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
