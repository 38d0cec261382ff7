"""Storage URIs and the S3 connection block: typed values, and errors that name the field."""

from __future__ import annotations

import sys

import pytest

from modelyard_storage.connection import S3Connection
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
