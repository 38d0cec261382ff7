"""The operator's cache: versions only move forward, label index, relist diffs, slim objects,
custom resources fed from kopf's events and from our own status writes."""

from __future__ import annotations

from typing import Any

import httpx

from modelyard_operator.handlers.cache import CachedKube, Store
from modelyard_operator.kube import Kube
from modelyard_operator.names import FIELD_MANAGER

OWNER = "modelyard.dev/modeldeployment"


def obj(name: str, version: int, owner: str = "md-a", ns: str = "ns", **extra: Any) -> Any:
    return {
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": str(version),
            "labels": {OWNER: owner, "app.kubernetes.io/component": "server"},
            **extra,
        },
    }


def test_an_older_version_never_replaces_a_newer_one() -> None:
    store = Store("Deployment", [None], [OWNER])
    assert store.put(obj("a", 5)) == "ADDED"
    assert store.put(obj("a", 4)) is None  # a watch event older than our own write
    assert store.put(obj("a", 5)) is None
    assert store.put(obj("a", 6)) == "MODIFIED"
    found = store.get("ns", "a")
    assert found is not None and found["metadata"]["resourceVersion"] == "6"


def test_lists_by_owner_label_follow_relabels_and_removals() -> None:
    store = Store("Deployment", [None], [OWNER])
    store.put(obj("a", 1, owner="md-a"))
    store.put(obj("b", 2, owner="md-a"))
    store.put(obj("c", 3, owner="md-a", ns="other"))
    assert [o["metadata"]["name"] for o in store.matching("ns", {OWNER: "md-a"})] == ["a", "b"]
    store.put(obj("b", 4, owner="md-b"))
    assert [o["metadata"]["name"] for o in store.matching("ns", {OWNER: "md-a"})] == ["a"]
    assert [o["metadata"]["name"] for o in store.matching("ns", {OWNER: "md-b"})] == ["b"]
    store.remove("ns", "a")
    assert store.matching("ns", {OWNER: "md-a"}) == []
    both = {OWNER: "md-b", "app.kubernetes.io/component": "worker"}
    assert store.matching("ns", both) == []  # every label must match, not only the indexed one


def test_a_relist_reports_what_changed_and_syncs_each_scope() -> None:
    store = Store("Deployment", ["ns", "other"], [OWNER])
    assert store.replace("ns", [obj("a", 1), obj("b", 2)]) == [
        ("ADDED", obj("a", 1)),
        ("ADDED", obj("b", 2)),
    ]
    assert not store.synced.is_set()  # "other" not listed yet
    store.replace("other", [obj("c", 3, ns="other")])
    assert store.synced.is_set()
    changes = store.replace("ns", [obj("b", 7)])  # a deleted while the watch was down
    assert [(event, o["metadata"]["name"]) for event, o in changes] == [
        ("DELETED", "a"),
        ("MODIFIED", "b"),
    ]
    assert store.get("other", "c") is not None  # another scope's objects stay


def test_managed_fields_are_dropped_but_ours_on_deployments() -> None:
    fields = [
        {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {}},
    ]
    deployments = Store("Deployment", [None], [OWNER])
    deployments.put(obj("a", 1, managedFields=fields))
    kept = deployments.get("ns", "a")
    assert kept is not None and kept["metadata"]["managedFields"] == fields[:1]
    pods = Store("Pod", [None], [OWNER])
    pods.put(obj("p", 1, managedFields=fields))
    pod = pods.get("ns", "p")
    assert pod is not None and "managedFields" not in pod["metadata"]


def test_job_templates_keep_their_metadata_only() -> None:
    store = Store("Job", [None], [OWNER])
    body = obj("a", 1)
    body["spec"] = {
        "replicas": 2,
        "template": {"metadata": {"annotations": {"x": "y"}}, "spec": {"containers": []}},
    }
    store.put(body)
    kept = store.get("ns", "a")
    assert kept is not None
    assert kept["spec"] == {"replicas": 2, "template": {"metadata": {"annotations": {"x": "y"}}}}
    assert "spec" in body["spec"]["template"]  # the caller's object is left alone


def test_deployment_templates_keep_their_spec_for_drift_checks() -> None:
    store = Store("Deployment", [None], [OWNER])
    body = obj("a", 1)
    body["spec"] = {"template": {"metadata": {}, "spec": {"containers": [{"name": "c"}]}}}
    store.put(body)
    kept = store.get("ns", "a")
    assert kept is not None and kept["spec"] == body["spec"]


def test_pods_keep_their_metadata_and_status_only() -> None:
    store = Store("Pod", [None], [OWNER])
    body = {
        **obj("p", 1),
        "kind": "Pod",
        "spec": {"containers": []},
        "status": {"phase": "Running"},
    }
    store.put(body)
    assert store.get("ns", "p") == {
        "kind": "Pod",
        "metadata": body["metadata"],
        "status": {"phase": "Running"},
    }


def refused(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"asked the API server: {request.method} {request.url}")


def test_custom_resources_come_from_kopfs_events_and_our_status_writes() -> None:
    http = httpx.Client(base_url="https://api.invalid", transport=httpx.MockTransport(refused))
    kube = CachedKube(Kube(lambda: http, lambda: None), lambda *_: None, [OWNER])
    md = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "3"},
        "spec": {"replicas": 1},
    }
    kube.observed_custom_resource(None, md)  # kopf's first list
    assert kube.get("modelyard.dev/v1alpha1", "ModelDeployment", "ns", "a") == md
    written = {**md, "metadata": {**md["metadata"], "resourceVersion": "4"}, "status": {"x": 1}}
    kube.observed_write(written)  # what replace_status answered
    kube.observed_custom_resource("MODIFIED", md)  # a late event of the older version
    found = kube.get("modelyard.dev/v1alpha1", "ModelDeployment", "ns", "a")
    assert found is not None and found["status"] == {"x": 1}
    kube.observed_custom_resource("DELETED", written)
    assert kube.stores["ModelDeployment"].get("ns", "a") is None
