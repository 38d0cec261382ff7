"""The CRDs in a real API server: samples are accepted, bad objects are rejected by the API
server itself (schema and CEL) with the field named, kubectl shows and explains them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kubernetes import client

from modelyard_operator.api.meta import GROUP, VERSION
from tests.conftest import SAMPLES, load_sample, with_changes
from tests.integration.support import Cluster
from tests.unit.test_api_models import (
    BAD_DEPLOYMENTS,
    BAD_TRAININGS,
    CROSS_FIELD,
    DEPLOYMENT,
    GOOD_CROSS_FIELD,
    TRAINING,
    CrossField,
)

PLURALS = {"ModelTraining": "modeltrainings", "ModelDeployment": "modeldeployments"}
TOO_LONG_NAME = ({"metadata.name": "a" * 41}, "at most 40 characters")
BAD_OBJECTS: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    *[(TRAINING, changes, fragment) for changes, fragment in [*BAD_TRAININGS, TOO_LONG_NAME]],
    *[(DEPLOYMENT, changes, fragment) for changes, fragment in BAD_DEPLOYMENTS],
]


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any], dry_run: bool) -> Any:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURALS[body["kind"]],
        body,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_is_accepted(api: client.ApiClient, namespace: str, sample: str) -> None:
    body = load_sample(sample)
    _create(api, namespace, body, dry_run=True)
    created = _create(api, namespace, body, dry_run=False)
    assert created["metadata"]["uid"]


@pytest.mark.parametrize(("base", "changes", "fragment"), BAD_OBJECTS)
def test_the_api_server_rejects_bad_objects_naming_the_field(
    api: client.ApiClient,
    namespace: str,
    base: dict[str, Any],
    changes: dict[str, Any],
    fragment: str,
) -> None:
    with pytest.raises(client.ApiException) as rejected:
        _create(api, namespace, with_changes(base, changes), dry_run=True)
    assert rejected.value.status in (400, 422)
    # The API server writes list indexes as [0] where pydantic writes .0.
    assert re.sub(r"\.(\d+)\.", r"[\1].", fragment) in str(rejected.value.body)


@pytest.mark.parametrize("case", CROSS_FIELD, ids=lambda c: c.fragment)
def test_the_api_server_refuses_each_cross_field_rule_at_its_field(
    api: client.ApiClient, namespace: str, case: CrossField
) -> None:
    """The CEL twin of each pydantic cross-field check, enforced by the API server itself."""
    with pytest.raises(client.ApiException) as rejected:
        _create(api, namespace, with_changes(case.base, case.changes), dry_run=True)
    assert rejected.value.status == 422
    causes = json.loads(rejected.value.body)["details"]["causes"]
    assert any(
        c.get("field") == case.field and case.fragment in c.get("message", "") for c in causes
    ), causes


@pytest.mark.parametrize(("base", "changes"), GOOD_CROSS_FIELD)
def test_the_api_server_accepts_specs_near_the_cross_field_rules(
    api: client.ApiClient, namespace: str, base: dict[str, Any], changes: dict[str, Any]
) -> None:
    _create(api, namespace, with_changes(base, changes), dry_run=True)


def test_kubectl_shows_printer_columns_and_explains_fields(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "digits.yaml"))
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "digits-deployment.yaml"))
    header = cluster.kubectl("get", "mt", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "ETA", "ACCURACY", "AGE"]
    header = cluster.kubectl("get", "md", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "MODEL", "REPLICAS", "URL", "AGE"]
    assert "digits" in cluster.kubectl("get", "modelyard", "-n", namespace).stdout
    explained = cluster.kubectl("explain", "modeltraining.spec.training").stdout
    assert "batchSize" in explained and "GLOBAL" in explained.upper()


def test_the_status_subresource_ignores_status_in_a_spec_update(
    api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    _create(api, namespace, load_sample("iris.yaml"), dry_run=False)
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeltrainings",
        "iris",
        {"spec": {"training": {"epochs": 61}}, "status": {"phase": "Succeeded"}},
    )
    stored = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeltrainings", "iris"
    )
    assert stored["spec"]["training"]["epochs"] == 61
    assert "status" not in stored or stored["status"].get("phase") != "Succeeded"
