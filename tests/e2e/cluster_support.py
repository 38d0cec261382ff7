"""What the e2e tests need to know about the cluster they run on, and pod helpers for it.

The cluster is the one `KUBECONFIG` names (`make test-e2e` starts the kind cluster of
hack/kind/up.sh and names it); nothing here depends on how that cluster was made. What the
tests assume of it: Ready worker nodes that take ordinary pods, a default StorageClass, cluster
DNS, metrics-server, and this machine routing to pod and Service addresses (hack/kind/up.sh
sets the routes for kind). Images come from hack/kind/load-images.sh; a test whose image no
node holds is skipped with that hint.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.support import wait_until

BUSYBOX = "modelyard.local/busybox:"
# Figures and placements the tests measured; printed in the session's summary (conftest.py).
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)


def e2e_kubeconfig() -> Path | None:
    value = os.environ.get("KUBECONFIG", "")
    return Path(value) if value else None


@dataclass(frozen=True)
class Cluster:
    api: client.ApiClient
    workers: tuple[str, ...]  # Ready nodes without a NoSchedule/NoExecute taint, sorted
    cluster_dns_ip: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def pod_cidr(self, node: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.core.read_node(node).spec.pod_cidr)

    def image_with(self, fragment: str) -> str:
        """The name of an image that every worker holds and that contains `fragment`; skips
        the test when none does."""
        held: set[str] | None = None
        for node in self.workers:
            images = self.core.read_node(node).status.images or []
            names = {n for image in images for n in image.names or [] if "@sha256:" not in n}
            held = names if held is None else held & names
        for name in sorted(held or ()):
            if fragment in name:
                return name
        pytest.skip(
            f"no image matching {fragment!r} on every worker ({', '.join(self.workers)}): "
            "load it with hack/kind/load-images.sh (make test-e2e does)"
        )


def read_cluster(api: client.ApiClient) -> Cluster:
    core = client.CoreV1Api(api)
    workers = []
    for node in core.list_node().items:
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        blocked = any(t.effect in ("NoSchedule", "NoExecute") for t in node.spec.taints or [])
        if ready and not blocked:
            workers.append(node.metadata.name)
    dns = core.read_namespaced_service("kube-dns", "kube-system")
    return Cluster(api=api, workers=tuple(sorted(workers)), cluster_dns_ip=dns.spec.cluster_ip)


def busybox_pod(
    cluster: Cluster,
    name: str,
    script: str,
    *,
    node: str | None = None,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
    port: int | None = None,
) -> client.V1Pod:
    """A pod that runs `script` with busybox's sh, on `node` when given, as an unprivileged
    user (it passes the `restricted` Pod Security Standard)."""
    container = client.V1Container(
        name="main",
        image=cluster.image_with(BUSYBOX),
        # Local images cannot be pulled: the node has them or the pod fails at once.
        image_pull_policy="Never",
        command=["/bin/sh", "-c", script],
        env=[
            client.V1EnvVar(
                name="POD_NAME",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")
                ),
            )
        ],
        ports=[client.V1ContainerPort(container_port=port)] if port else None,
        termination_message_policy="FallbackToLogsOnError",
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=65534,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    placement: dict[str, Any] = {}
    if node is not None:
        placement["node_selector"] = {"kubernetes.io/hostname": node}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            containers=[container],
            restart_policy=restart_policy,
            termination_grace_period_seconds=2,
            automount_service_account_token=False,
            **placement,
        ),
    )


# The user and group of Modelyard's pods (operator/modelyard_operator/builders/common.py): the
# files they write on a claim belong to them.
MODELYARD_UID = 1000


def with_claim(pod: client.V1Pod, claim: str, mount_path: str = "/data") -> client.V1Pod:
    """`pod` with the PersistentVolumeClaim `claim` mounted at `mount_path`, running as the
    user and group of Modelyard's pods."""
    pod.spec.security_context = client.V1PodSecurityContext(fs_group=MODELYARD_UID)
    pod.spec.containers[0].security_context.run_as_user = MODELYARD_UID
    pod.spec.containers[0].security_context.run_as_group = MODELYARD_UID
    pod.spec.volumes = [
        client.V1Volume(
            name="claim",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
        )
    ]
    pod.spec.containers[0].volume_mounts = [
        client.V1VolumeMount(name="claim", mount_path=mount_path)
    ]
    return pod


def run_to_completion(cluster: Cluster, namespace: str, pod: client.V1Pod) -> str:
    """Creates `pod`, waits until it ends, asserts it succeeded; returns its log."""
    core = cluster.core
    core.create_namespaced_pod(namespace, pod)
    name = pod.metadata.name
    done = wait_for_phase(core, namespace, name, {"Succeeded", "Failed"}, timeout=180)
    log: str = core.read_namespaced_pod_log(name, namespace)
    assert done.status.phase == "Succeeded", f"pod {name}: {done.status}\n{log[-2000:]}"
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return log


def read_from_claim(cluster: Cluster, namespace: str, claim: str, path: str) -> bytes:
    """The bytes of `path` in `claim`, read by a pod that mounts it (any cluster, any node)."""
    pod = busybox_pod(cluster, f"read-{secrets.token_hex(3)}", f"base64 /data/{path}")
    return base64.b64decode(run_to_completion(cluster, namespace, with_claim(pod, claim)))


def write_to_claim(cluster: Cluster, namespace: str, claim: str, path: str, data: bytes) -> None:
    """Writes `data` to `path` in `claim` from a pod that mounts it."""
    encoded = base64.b64encode(data).decode()
    directory = os.path.dirname(f"/data/{path}")
    script = f"mkdir -p {directory} && echo {encoded} | base64 -d > /data/{path} && sync"
    pod = busybox_pod(cluster, f"write-{secrets.token_hex(3)}", script)
    run_to_completion(cluster, namespace, with_claim(pod, claim))


def wait_for_phase(
    core: client.CoreV1Api, namespace: str, name: str, phases: set[str], timeout: float = 90
) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    try:
        return wait_until(probe, timeout=timeout, interval=0.5, what=f"pod {name} in {phases}")
    except TimeoutError as exc:
        pod = core.read_namespaced_pod(name, namespace)
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        details = "\n".join(f"{e.reason}: {e.message}" for e in events.items)
        raise AssertionError(f"{exc}\nstatus: {pod.status}\nevents:\n{details}") from None
