"""The local control plane behaves like a real cluster (it is one, minus kubelets).

Each test proves one piece that the operator's tests rely on: controller-manager,
scheduler and kwok working together, garbage collection, PodSecurity admission,
server-side apply conflicts, service-account tokens, the audit log, and the kwok
stage label that lets a test drive pod phases itself.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.support import (
    KWOK_MANUAL,
    KWOK_NO_COMPLETE,
    KWOK_STAGE_LABEL,
    AuditLog,
    Cluster,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

IMAGE = "registry.invalid/modelyard/never-pulled:1"  # kwok runs no containers


def container(name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, **extra}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container()]}},
        },
    }


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [container()], **spec},
    }


def job(name: str, pod_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": pod_labels or {}},
                "spec": {"restartPolicy": "Never", "containers": [container()]},
            },
        },
    }


def is_ready(p: client.V1Pod) -> bool:
    conditions = (p.status and p.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pods_of(core: client.CoreV1Api, namespace: str, selector: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def test_deployment_gets_replicaset_and_running_ready_pods(
    api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    created = apps.create_namespaced_deployment(namespace, deployment("web", replicas=3))

    def available() -> client.V1Deployment | None:
        d = apps.read_namespaced_deployment("web", namespace)
        return d if d.status and d.status.available_replicas == 3 else None

    wait_until(available, timeout=90, what="3 available replicas")

    replicasets = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    assert len(replicasets) == 1
    rs = replicasets[0]
    assert [(o.kind, o.uid) for o in rs.metadata.owner_references] == [
        ("Deployment", created.metadata.uid)
    ]

    pods = pods_of(core, namespace, "app=web")
    assert len(pods) == 3
    node_names = {n.metadata.name for n in core.list_node().items}
    for p in pods:
        assert [(o.kind, o.uid) for o in p.metadata.owner_references] == [
            ("ReplicaSet", rs.metadata.uid)
        ]
        assert p.status.phase == "Running"
        assert is_ready(p)
        assert p.spec.node_name in node_names  # bound by the scheduler
        assert p.status.pod_ip  # set by kwok


def test_deleting_owner_garbage_collects_replicasets_and_pods(
    api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("gc", replicas=2))
    wait_until(
        lambda: len([p for p in pods_of(core, namespace, "app=gc") if is_ready(p)]) == 2,
        timeout=90,
        what="2 ready pods",
    )

    apps.delete_namespaced_deployment("gc", namespace, propagation_policy="Background")

    # The garbage collector (controller-manager) deletes the orphans; kwok plays the
    # kubelet that confirms the pods' deletion.
    wait_until(
        lambda: (
            not apps.list_namespaced_replica_set(namespace, label_selector="app=gc").items
            and not pods_of(core, namespace, "app=gc")
        ),
        timeout=90,
        what="ReplicaSet and Pods garbage-collected",
    )


def test_garbage_collector_honours_owner_references_between_any_objects(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}}
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}, "data": {}}
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")

    def gone(read: Any, name: str) -> bool:
        try:
            read(name, namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(
        lambda: (
            gone(core.read_namespaced_secret, "child")
            and gone(core.read_namespaced_config_map, "owner")
        ),
        timeout=60,
        what="foreground deletion of owner and child",
    )


RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_pod_security_restricted_rejects_privileged_pod(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )

    privileged = pod("privileged")
    privileged["spec"]["containers"] = [container(securityContext={"privileged": True})]
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, privileged)
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "main" must not set securityContext.privileged=true)' in message

    # The same namespace admits a pod that meets the profile, so the rejection above is
    # the policy at work and not a broken namespace.
    compliant = pod("compliant")
    compliant["spec"]["containers"] = [container(securityContext=RESTRICTED_SECURITY)]
    assert core.create_namespaced_pod(namespace, compliant).metadata.name == "compliant"


def apply_config_map(
    core: client.CoreV1Api, namespace: str, manager: str, data: dict[str, str], force: bool = False
) -> client.V1ConfigMap:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": data}
    return core.patch_namespaced_config_map(
        "shared",
        namespace,
        body,
        field_manager=manager,
        force=force,
        _content_type="application/apply-patch+yaml",
    )


def test_server_side_apply_conflict_between_field_managers(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    apply_config_map(core, namespace, "manager-a", {"owned-by-a": "1", "mode": "a"})

    with pytest.raises(ApiException) as conflict:
        apply_config_map(core, namespace, "manager-b", {"mode": "b"})
    assert conflict.value.status == 409
    body = str(conflict.value.body)
    assert "manager-a" in body and ".data.mode" in body

    forced = apply_config_map(core, namespace, "manager-b", {"mode": "b"}, force=True)
    assert forced.data == {"owned-by-a": "1", "mode": "b"}
    owners = {entry.manager: str(entry.fields_v1) for entry in forced.metadata.managed_fields or []}
    assert "f:mode" in owners["manager-b"]
    assert "f:mode" not in owners["manager-a"] and "f:owned-by-a" in owners["manager-a"]


def test_audit_log_counts_writes_by_user(cluster: Cluster, audit: AuditLog, namespace: str) -> None:
    user = f"audit-probe-{secrets.token_hex(3)}"
    kubeconfig = cluster.user_kubeconfig(user, "system:masters")
    since = audit.now()

    def kubectl(*args: str) -> None:
        cluster.kubectl("-n", namespace, *args, kubeconfig=kubeconfig)

    kubectl("create", "configmap", "probe", "--from-literal=a=1")
    kubectl("patch", "configmap", "probe", "-p", '{"data":{"a":"2"}}')
    kubectl("get", "configmap", "probe")  # a read: not audited by the policy
    kubectl("delete", "configmap", "probe")
    audit.barrier()

    writes = audit.writes(user, since=since)
    assert [(w.verb, w.resource, w.name, w.namespace) for w in writes] == [
        ("create", "configmaps", "probe", namespace),
        ("patch", "configmaps", "probe", namespace),
        ("delete", "configmaps", "probe", namespace),
    ]
    assert all(200 <= w.code < 300 for w in writes)
    assert "system:masters" in writes[0].groups
    # The time window works both ways: the fixture created the namespace (as the admin)
    # before `since`.
    before = audit.writes("kubernetes-admin", until=since, resource="namespaces")
    after = audit.writes("kubernetes-admin", since=since, resource="namespaces")
    assert ("create", namespace) in [(e.verb, e.name) for e in before]
    assert namespace not in [e.name for e in after]


def test_service_account_tokens_are_issued_and_authenticate(
    api: client.ApiClient, namespace: str
) -> None:
    core, auth = client.CoreV1Api(api), client.AuthenticationV1Api(api)
    token = core.create_namespaced_service_account_token(
        "default", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    review = auth.create_token_review({"spec": {"token": token}})
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"


def test_token_controller_fills_a_service_account_token_secret(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "default-token",
                "annotations": {"kubernetes.io/service-account.name": "default"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    # The controller-manager's token controller signs it with the service-account key.
    secret = wait_until(
        lambda: (
            (s := core.read_namespaced_secret("default-token", namespace)).data
            and "token" in s.data
            and s
        ),
        timeout=60,
        what="token controller to fill the Secret",
    )
    assert {"token", "ca.crt", "namespace"} <= set(secret.data)


def test_gpu_request_is_scheduled_on_the_gpu_node(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    gpu_pod = pod("gpu")
    gpu_pod["spec"]["containers"] = [
        container(
            resources={"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
        )
    ]
    core.create_namespaced_pod(namespace, gpu_pod)
    bound = wait_until(
        lambda: (p := core.read_namespaced_pod("gpu", namespace)).spec.node_name and p,
        timeout=60,
        what="GPU pod bound",
    )
    node = core.read_node(bound.spec.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] != "0"


def test_kwok_stage_label_hands_pod_phases_to_the_test(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("manual", {KWOK_STAGE_LABEL: KWOK_MANUAL}))
    core.create_namespaced_pod(namespace, pod("auto"))
    wait_until(lambda: is_ready(core.read_namespaced_pod("auto", namespace)), what="auto Ready")

    manual = wait_until(
        lambda: (p := core.read_namespaced_pod("manual", namespace)).spec.node_name and p,
        what="manual pod bound",
    )
    assert manual.status.phase == "Pending" and not manual.status.pod_ip

    # The test plays the kubelet: the pod fails with exit code 3, and kwok keeps out.
    status = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {"exitCode": 3, "reason": "Error", "message": "bad config"}
                    },
                }
            ],
        }
    }
    core.patch_namespaced_pod_status("manual", namespace, status)
    time.sleep(2)  # kwok reacts within milliseconds when it does: give it ample time
    after = core.read_namespaced_pod("manual", namespace)
    assert after.status.phase == "Failed"
    assert after.status.container_statuses[0].state.terminated.exit_code == 3


def test_kwok_completes_job_pods_unless_labelled_no_complete(
    api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, job("finishes"))
    batch.create_namespaced_job(
        namespace, job("keeps-running", {KWOK_STAGE_LABEL: KWOK_NO_COMPLETE})
    )

    def succeeded(name: str) -> bool:
        return (batch.read_namespaced_job(name, namespace).status.succeeded or 0) == 1

    wait_until(lambda: succeeded("finishes"), timeout=60, what="job 'finishes' succeeded")
    running = wait_until(
        lambda: [
            p
            for p in pods_of(core, namespace, "job-name=keeps-running")
            if p.status.phase == "Running" and is_ready(p)
        ],
        what="job 'keeps-running' pod Running",
    )
    time.sleep(2)
    assert not succeeded("keeps-running")
    assert core.read_namespaced_pod(running[0].metadata.name, namespace).status.phase == "Running"
