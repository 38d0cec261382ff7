"""Storage URIs and the S3 connection block: typed values, and errors that name the field."""

from __future__ import annotations

import re
import sys

import pytest
from pydantic import ValidationError

from modelyard_storage.connection import _USERINFO, S3Connection
from modelyard_storage.uri import LocalUri, PvcUri, S3Uri, UriError, join_uri, parse_uri


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("s3://models/a/b/model.onnx", S3Uri("models", "a/b/model.onnx")),
        ("s3://models", S3Uri("models", "")),
        ("s3://my.bucket-1/", S3Uri("my.bucket-1", "")),
        ("pvc://claim/x/y.csv", PvcUri("claim", "x/y.csv")),
        ("pvc://claim", PvcUri("claim", "")),
        ("file:///data/x.csv", LocalUri("/data/x.csv")),
        ("data/x.csv", LocalUri("data/x.csv")),
    ],
)
def test_uris_parse(uri: str, parsed: object) -> None:
    assert parse_uri(uri) == parsed


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("s3://Bad_Bucket/x", "not a valid s3://<bucket>/<key> URI"),
        ("s3://ab/x", "not a valid s3://"),
        ("s3://bucket/with space", "no spaces"),
        ("pvc://Claim/x", "not a valid pvc://"),
        ("gs://bucket/x", "scheme 'gs'"),
        ("file://relative", "file:///<absolute path>"),
        ("", "empty"),
    ],
)
def test_bad_uris_name_the_field(uri: str, words: str) -> None:
    with pytest.raises(UriError) as caught:
        parse_uri(uri, "spec.model.uri")
    assert str(caught.value).startswith("spec.model.uri: ") and words in str(caught.value)


def test_join_and_str() -> None:
    assert join_uri("s3://models/runs/", "ns", "/name/", "g1") == "s3://models/runs/ns/name/g1"
    assert join_uri("s3://models/runs/", "/a/b") == "s3://models/runs/a/b"
    assert str(S3Uri("models", "runs")) == "s3://models/runs"
    assert str(PvcUri("claim", "")) == "pvc://claim"


def test_connection_round_trips_through_the_environment() -> None:
    connection = S3Connection(
        endpoint_url="http://minio:9000", region="eu-west-3", addressing_style="virtual",
        secret_name="keys", connect_timeout_seconds=4, max_attempts=5,
    )  # fmt: skip
    assert S3Connection.from_env(connection.plain_env()) == connection.model_copy(
        update={"secret_name": None}
    )
    env = connection.pod_env()
    assert all("value" in e or "secretKeyRef" in e["valueFrom"] for e in env)
    assert [e["name"] for e in env if "valueFrom" in e] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MODELYARD_S3_ADDRESSING_STYLE"):
        S3Connection.from_env({"MODELYARD_S3_ADDRESSING_STYLE": "dns"})


def test_the_connection_schema_is_crd_friendly() -> None:
    schema = S3Connection.model_json_schema(by_alias=True)
    for name, field in schema["properties"].items():
        assert field.get("description"), name
    assert set(schema["properties"]) >= {"endpointUrl", "secretName", "addressingStyle"}


def test_the_uri_and_connection_modules_are_cheap() -> None:
    import subprocess

    code = (
        "import sys, modelyard_storage.uri, modelyard_storage.connection, "
        "modelyard_storage.store; "
        "print(sorted(m for m in ('boto3', 'botocore', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "endpoint",
    ["http://AKIAEXAMPLE:hunter2-password@minio:9000", "https://user@s3.example.com/base"],
)
def test_an_endpoint_with_credentials_is_refused_without_echoing_them(endpoint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3Connection(endpoint_url=endpoint)
    (problem,) = caught.value.errors()
    assert problem["loc"] == ("endpoint_url",)
    assert "endpointUrl must not hold credentials" in problem["msg"]
    assert "hunter2" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
    with pytest.raises(ValueError) as from_env:
        S3Connection.from_env({"MODELYARD_S3_ENDPOINT_URL": endpoint})
    assert str(from_env.value).startswith("MODELYARD_S3_ENDPOINT_URL: ")
    assert "hunter2" not in str(from_env.value)


def test_the_userinfo_rule_has_a_cel_twin_with_the_same_expression() -> None:
    # An '@' after the authority (in the path) is no userinfo.
    assert S3Connection(endpoint_url="http://minio:9000/a@b").endpoint_url is not None
    schema = S3Connection.model_json_schema(by_alias=True)
    (rule,) = schema["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".endpointUrl"
    assert "must not hold credentials" in rule["message"]
    # The CEL rule matches the very expression the pydantic validator uses.
    expression = re.search(r"matches\('(.+)'\)", rule["rule"])
    assert expression is not None and expression.group(1) == _USERINFO
    assert rule["rule"].startswith("!has(self.endpointUrl) || !self.endpointUrl.matches(")
