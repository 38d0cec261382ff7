"""How pods reach an S3-compatible store: the `s3` block of both CRDs, and its environment.

The CRDs embed `S3Connection` (one definition for ModelTraining and ModelDeployment), so it
follows the CRD-friendly rules: Optional is the only union, every field is described and
defaulted. Credentials never appear here: the block names a Secret, and the pods get its keys
as environment variables from `secretKeyRef` (AWS_ACCESS_KEY_ID, ... the names every S3
client reads). Endpoint, region and addressing style travel as plain variables, named here.

Pure pydantic and stdlib: the operator imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

ENV_S3_ENDPOINT_URL = "MODELYARD_S3_ENDPOINT_URL"
ENV_S3_REGION = "MODELYARD_S3_REGION"
ENV_S3_ADDRESSING_STYLE = "MODELYARD_S3_ADDRESSING_STYLE"
ENV_S3_CONNECT_TIMEOUT = "MODELYARD_S3_CONNECT_TIMEOUT_SECONDS"
ENV_S3_MAX_ATTEMPTS = "MODELYARD_S3_MAX_ATTEMPTS"
# The standard names, so that boto3 (and any other S3 client in a user's image) finds them.
ENV_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "AWS_SESSION_TOKEN"

CREDENTIAL_ENV = (ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY, ENV_SESSION_TOKEN)

AddressingStyle = Literal["path", "virtual", "auto"]

_SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
_DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


# An endpoint with userinfo (http://user:password@host) would put credentials into the spec,
# where everyone who may read the object sees them. The same regular expression serves the
# pydantic validator and its CEL twin.
_USERINFO = r"^https?://[^/]*@"
_NO_USERINFO_MESSAGE = (
    "endpointUrl must not hold credentials (user:password@); put the access keys in the "
    "Secret named by secretName"
)


class S3Connection(BaseModel):
    """An S3-compatible object store and the Secret that holds its access keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # A refused value may hold a password (endpointUrl): errors name the field only.
        hide_input_in_errors=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.endpointUrl) || !self.endpointUrl.matches('{_USERINFO}')",
                    "message": _NO_USERINFO_MESSAGE,
                    "fieldPath": ".endpointUrl",
                }
            ]
        },
    )

    endpoint_url: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description=(
            "S3 API endpoint, e.g. http://minio.storage.svc:9000 or https://s3.example.com, "
            "without user:password@ (the keys belong in the Secret). Empty: AWS S3 in the region."
        ),
    )
    region: str = Field(
        default="us-east-1",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        description="Region used to sign requests; most S3-compatible servers accept any.",
    )
    addressing_style: AddressingStyle = Field(
        default="path",
        description=(
            "path: http://endpoint/bucket/key (what most S3-compatible servers expect); "
            "virtual: http://bucket.endpoint/key; auto: let the client choose."
        ),
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=_DNS_SUBDOMAIN_PATTERN,
        description=(
            "Secret in the same namespace with the access keys. Empty: the pods use the "
            "default credential chain (e.g. a role of the node or of the ServiceAccount)."
        ),
    )
    access_key_id_key: str = Field(
        default=ENV_ACCESS_KEY_ID,
        min_length=1,
        max_length=253,
        pattern=_SECRET_KEY_PATTERN,
        description="Key of the access key id in the Secret.",
    )
    secret_access_key_key: str = Field(
        default=ENV_SECRET_ACCESS_KEY,
        min_length=1,
        max_length=253,
        pattern=_SECRET_KEY_PATTERN,
        description="Key of the secret access key in the Secret.",
    )
    session_token_key: str | None = Field(
        default=None,
        max_length=253,
        pattern=_SECRET_KEY_PATTERN,
        description="Key of a session token in the Secret, for temporary credentials.",
    )
    connect_timeout_seconds: int = Field(
        default=10,
        ge=1,
        le=300,
        description="How long one connection attempt to the endpoint may take.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Attempts per request (first try and retries) on transient errors.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _no_userinfo(cls, value: str | None) -> str | None:
        if value is not None and re.match(_USERINFO, value):
            raise ValueError(_NO_USERINFO_MESSAGE)
        return value

    def plain_env(self) -> dict[str, str]:
        """Everything but the credentials, as environment variables."""
        env = {
            ENV_S3_REGION: self.region,
            ENV_S3_ADDRESSING_STYLE: self.addressing_style,
            ENV_S3_CONNECT_TIMEOUT: str(self.connect_timeout_seconds),
            ENV_S3_MAX_ATTEMPTS: str(self.max_attempts),
        }
        if self.endpoint_url:
            env[ENV_S3_ENDPOINT_URL] = self.endpoint_url
        return env

    def pod_env(self) -> list[dict[str, Any]]:
        """Container `env` entries: plain values, and credentials only as secretKeyRef."""
        env: list[dict[str, Any]] = [
            {"name": name, "value": value} for name, value in sorted(self.plain_env().items())
        ]
        if self.secret_name is None:
            return env
        keys = [
            (ENV_ACCESS_KEY_ID, self.access_key_id_key),
            (ENV_SECRET_ACCESS_KEY, self.secret_access_key_key),
        ]
        if self.session_token_key:
            keys.append((ENV_SESSION_TOKEN, self.session_token_key))
        for name, key in keys:
            ref = {"secretKeyRef": {"name": self.secret_name, "key": key}}
            env.append({"name": name, "valueFrom": ref})
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Connection:
        """The connection that `plain_env` described; ValueError naming the bad variable."""
        by_env = {
            ENV_S3_ENDPOINT_URL: "endpoint_url",
            ENV_S3_REGION: "region",
            ENV_S3_ADDRESSING_STYLE: "addressing_style",
            ENV_S3_CONNECT_TIMEOUT: "connect_timeout_seconds",
            ENV_S3_MAX_ATTEMPTS: "max_attempts",
        }
        values = {field: environ[var] for var, field in by_env.items() if environ.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            field_to_env = {field: var for var, field in by_env.items()}
            problems = [
                f"{field_to_env.get(str(e['loc'][0]), str(e['loc'][0]))}: {e['msg']}"
                for e in error.errors()
                if e["loc"]
            ]
            raise ValueError("; ".join(problems) or str(error)) from None
