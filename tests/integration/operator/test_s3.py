"""s3:// specs against the real API server and the operator: the API server accepts them only
with the connection block (rejecting the rest with the field's path), the children get the
keys as secretKeyRef and never their values, and a fetcher's storage failure becomes a clear
model state and condition."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from modelyard_operator.builders.deployment import FETCH_CONTAINER
from modelyard_server.contracts import LoadFailure
from tests.conftest import load_sample
from tests.integration.operator.kinds import MANUAL_POD_LABELS, Objects
from tests.integration.operator.test_deployment import (
    condition,
    drive_pod,
    has,
    model_of,
    pods_of_model,
)
from tests.integration.support import wait_until

S3_MODEL = "s3://models/churn/v3/model.onnx"
S3_MODEL_SHA256 = "cd" * 32  # kwok pods fetch nothing: any digest will do
SECRET = "modelyard-s3"


def _secret(objects: Objects) -> dict[str, str]:
    values = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    objects.core.create_namespaced_secret(
        objects.namespace,
        {"metadata": {"name": SECRET}, "type": "Opaque", "stringData": values},
    )
    return values


def _without_values(text: str, values: dict[str, str]) -> None:
    for value in values.values():
        assert value not in text


def _s3_deployment(**spec: Any) -> dict[str, Any]:
    document = load_sample("s3-model-deployment.yaml")
    document["metadata"] = {"name": "s3m"}
    document["spec"].update(
        {"model": {"uri": S3_MODEL, "sha256": S3_MODEL_SHA256}, "replicas": 1, **spec}
    )
    return document


def test_s3_model_deployment_fetches_with_secret_refs_and_reports_denied_keys(
    objects: Objects,
) -> None:
    values = _secret(objects)
    objects.create("modeldeployments", _s3_deployment(pod={"labels": MANUAL_POD_LABELS}))

    def deployment() -> Any:
        try:
            return objects.apps.read_namespaced_deployment("s3m", objects.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    found = wait_until(deployment, timeout=60, what="Deployment s3m")
    body = objects.api.sanitize_for_serialization(found)
    _without_values(json.dumps(body), values)
    pod_spec = body["spec"]["template"]["spec"]
    [fetch] = pod_spec["initContainers"]
    assert fetch["name"] == FETCH_CONTAINER
    assert S3_MODEL in fetch["command"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fetch["env"] if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": SECRET, "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": SECRET, "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert not [v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v]
    server_env = pod_spec["containers"][0]["env"]
    assert not [e for e in server_env if e["name"].startswith("AWS_")]

    # The fetcher is refused by the store: the model's state and Ready say so, with no key.
    [pod] = pods_of_model(objects, "s3m", S3_MODEL)
    message = (
        f"cannot download {S3_MODEL}: access denied at http://minio.storage.svc:9000 "
        "(SignatureDoesNotMatch); check the access keys in the Secret named by s3.secretName"
    )
    drive_pod(objects, pod, ready=False, load_failure=LoadFailure.create("AccessDenied", message))
    md = objects.wait_for(
        "modeldeployments",
        "s3m",
        lambda o: model_of(o).get("state") == "FailedToLoad",
        what="FailedToLoad",
    )
    assert model_of(md)["message"].startswith("AccessDenied: ")
    assert "s3.secretName" in model_of(md)["message"]
    md = objects.wait_for("modeldeployments", "s3m", has("Ready", "False", "FailedToLoad"))
    assert "AccessDenied" in condition(md, "Ready")["message"]
    _without_values(json.dumps(md), values)


def test_s3_training_job_gets_secret_refs_and_no_volume(objects: Objects) -> None:
    values = _secret(objects)
    document = load_sample("churn-s3.yaml")
    objects.create("modeltrainings", document)

    def job() -> Any:
        jobs = objects.batch.list_namespaced_job(objects.namespace).items
        return jobs[0] if jobs else None

    found = wait_until(job, timeout=60, what="the training's Job")
    body = objects.api.sanitize_for_serialization(found)
    _without_values(json.dumps(body), values)
    pod_spec = body["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod_spec["containers"][0]["env"]}
    assert env["MODELYARD_OUTPUT_URI"]["value"] == "s3://models/trainings"
    assert env["MODELYARD_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": name}
    assert not [v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v]
    _without_values(json.dumps(objects.get("modeltrainings", "churn")), values)


@pytest.mark.parametrize(
    ("plural", "document", "path", "words"),
    [
        (
            "modeldeployments",
            {**_s3_deployment(), "spec": {"model": {"uri": S3_MODEL, "sha256": S3_MODEL_SHA256}}},
            "spec.model.uri",
            "spec.s3 (endpoint and Secret) is required",
        ),
        (
            "modeltrainings",
            {**load_sample("churn-s3.yaml"), "spec": {"output": {"uri": "s3://models/runs"}}},
            "spec.output.uri",
            "output.uri is an s3:// URI",
        ),
        (
            "modeltrainings",
            {
                **load_sample("churn-s3.yaml"),
                "spec": {
                    "data": {"source": {"uri": "s3://datasets/x.csv"}, "target": "y"},
                },
            },
            "spec.data.source.uri",
            "data.source.uri is an s3:// URI",
        ),
        (
            "modeldeployments",
            {
                **_s3_deployment(),
                "spec": {"model": {"uri": "s3://Bad_Bucket/m.onnx", "sha256": S3_MODEL_SHA256}},
            },
            "spec.model.uri",
            "should match",
        ),
        (
            "modeldeployments",
            {
                **_s3_deployment(),
                "spec": {
                    "model": {"uri": S3_MODEL, "sha256": S3_MODEL_SHA256},
                    "s3": {"addressingStyle": "dns"},
                },
            },
            "spec.s3.addressingStyle",
            "Unsupported value",
        ),
    ],
)
def test_bad_s3_specs_are_rejected_naming_the_field(
    objects: Objects, plural: str, document: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(ApiException) as caught:
        objects.create(plural, document)
    assert caught.value.status == 422
    body = caught.value.body if isinstance(caught.value.body, str) else str(caught.value.body)
    assert path in body and words in body, body
