"""s3:// in both CRDs: the API models demand the connection block (naming the field), and the
builders give the pods the endpoint as plain env and the keys only as secretKeyRef."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelyard_operator.api import ModelDeployment, ModelTraining
from modelyard_operator.api.deployment import ServedModel
from modelyard_operator.builders.deployment import server_deployment
from modelyard_operator.builders.training import S3_SCRATCH_OUTPUT, jobs
from modelyard_operator.settings import Settings
from modelyard_operator.validation import format_validation_error
from tests.conftest import load_sample, with_changes

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(
    trainer_image="registry.example/modelyard/trainer:test",
    server_image="registry.example/modelyard/server:test",
)
IDENTITY = {
    "metadata.namespace": "ml",
    "metadata.uid": "0f3c2a9e-1111-2222-3333-444455556666",
    "metadata.generation": 3,
}
S3_MODEL = ServedModel(uri="s3://models/churn/v3/model.onnx", sha256="5" * 64)


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _training(**changes: Any) -> ModelTraining:
    return ModelTraining.model_validate(
        with_changes(load_sample("churn-s3.yaml"), {**IDENTITY, **changes})
    )


def _deployment(**changes: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        with_changes(load_sample("s3-model-deployment.yaml"), {**IDENTITY, **changes})
    )


def _error(model: type[ModelTraining] | type[ModelDeployment], document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    return format_validation_error(caught.value)


def _golden(name: str, manifest: dict[str, Any]) -> None:
    rendered = yaml.dump(manifest, Dumper=_PlainDumper, sort_keys=True)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, "builders changed: review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize(
    ("sample", "changes", "fragment"),
    [
        ("churn-s3.yaml", {"spec.s3": ...}, "spec.s3 (endpoint and Secret) is required"),
        ("churn-s3.yaml", {"spec.s3": ...}, "output.uri is an s3:// URI"),
        (
            "churn-s3.yaml",
            {"spec.s3": ..., "spec.output.uri": "pvc://models"},
            "data.source.uri is an s3:// URI",
        ),
        ("churn-s3.yaml", {"spec.output.uri": "s3://Bad_Bucket/x"}, "spec.output.uri"),
        ("churn-s3.yaml", {"spec.output.uri": "gs://bucket/x"}, "spec.output.uri"),
        ("churn-s3.yaml", {"spec.s3.addressingStyle": "dns"}, "spec.s3.addressingStyle"),
        ("churn-s3.yaml", {"spec.s3.endpointUrl": "minio:9000"}, "spec.s3.endpointUrl"),
        ("churn-s3.yaml", {"spec.s3.secretName": "Not A Name"}, "spec.s3.secretName"),
        ("churn-s3.yaml", {"spec.s3.accessKey": "AKIA..."}, "spec.s3.accessKey"),
        ("s3-model-deployment.yaml", {"spec.s3": ...}, "model.uri is an s3:// URI"),
        ("s3-model-deployment.yaml", {"spec.model.uri": "s3://x"}, "spec.model.uri"),
    ],
)
def test_bad_s3_specs_name_the_field(sample: str, changes: dict[str, Any], fragment: str) -> None:
    document = with_changes(load_sample(sample), changes)
    model = ModelTraining if document["kind"] == "ModelTraining" else ModelDeployment
    assert fragment in _error(model, document)


def test_training_job_on_s3_matches_golden_file() -> None:
    _golden("training-s3.yaml", jobs(_training(), 2, SETTINGS)[0])


def test_deployment_from_s3_matches_golden_file() -> None:
    _golden("deployment-s3.yaml", server_deployment(_deployment(), S3_MODEL, SETTINGS))


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_workers_get_the_endpoint_as_values_and_the_keys_only_from_the_secret() -> None:
    manifest = jobs(_training(), 1, SETTINGS)[0]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = _env(container)
    assert env["MODELYARD_OUTPUT_URI"] == "s3://models/trainings"
    assert env["MODELYARD_S3_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert env["MODELYARD_S3_ADDRESSING_STYLE"] == "path"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "modelyard-s3", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "modelyard-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    # The run is built in scratch space and mirrored to the bucket: no claim is mounted.
    assert container["command"][-1] == S3_SCRATCH_OUTPUT
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert S3_SCRATCH_OUTPUT.startswith("/tmp/")  # the writable emptyDir of every worker


def test_custom_secret_keys_and_session_token() -> None:
    mt = _training(
        **{
            "spec.s3.accessKeyIdKey": "id",
            "spec.s3.secretAccessKeyKey": "secret",
            "spec.s3.sessionTokenKey": "token",
        }
    )
    env = _env(jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0])
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["key"] == "id"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["key"] == "secret"
    assert env["AWS_SESSION_TOKEN"]["secretKeyRef"] == {"name": "modelyard-s3", "key": "token"}


def test_data_on_s3_and_output_on_a_claim_mount_only_the_claim() -> None:
    mt = _training(**{"spec.output.uri": "pvc://models/out"})
    pod = jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["models"]
    assert pod["containers"][0]["command"][-1] == "/mnt/pvc/models/out"


def test_only_the_fetcher_gets_the_keys() -> None:
    manifest = server_deployment(_deployment(), S3_MODEL, SETTINGS)
    pod = manifest["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["command"][fetch["command"].index("--source") + 1] == S3_MODEL.uri
    assert _env(fetch)["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "modelyard-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    server = pod["containers"][0]
    assert not [e for e in server["env"] if e["name"].startswith(("AWS_", "MODELYARD_S3_"))]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [m["name"] for m in fetch["volumeMounts"]] == ["models"]


def test_no_secret_name_uses_the_default_credential_chain() -> None:
    md = _deployment(**{"spec.s3.secretName": ...})
    fetch = server_deployment(md, S3_MODEL, SETTINGS)["spec"]["template"]["spec"]["initContainers"][
        0
    ]
    names = {e["name"] for e in fetch["env"]}
    assert "MODELYARD_S3_ENDPOINT_URL" in names and not names & {"AWS_ACCESS_KEY_ID"}
