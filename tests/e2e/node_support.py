"""What tests need to know about the real node of hack/node.sh, and pod helpers for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.support import CLUSTER_DIR, wait_until

NODE_ENV = CLUSTER_DIR / "node" / "node.env"


@dataclass(frozen=True)
class RealNode:
    name: str
    ip: str
    label: str  # key=value on the node
    taint: str  # key=value:Effect, or "" when the node is not tainted
    pod_cidr: str
    cluster_dns_ip: str
    busybox_image: str

    def pod_placement(self) -> dict[str, Any]:
        """nodeSelector and tolerations that put a pod on this node and nowhere else."""
        key, value = self.label.split("=", 1)
        placement: dict[str, Any] = {"node_selector": {key: value}}
        if self.taint:
            taint_key, rest = self.taint.split("=", 1)
            taint_value, effect = rest.split(":", 1)
            placement["tolerations"] = [
                client.V1Toleration(
                    key=taint_key, operator="Equal", value=taint_value, effect=effect
                )
            ]
        return placement

    def image_with(self, fragment: str, api: client.ApiClient) -> str:
        """The name of an image on the node that contains `fragment`; skips the test if none.

        Images of the project come from `make images` (hack/node-images.sh docker ...).
        """
        node = client.CoreV1Api(api).read_node(self.name)
        for image in node.status.images or []:
            for name in image.names or []:
                if fragment in name and "@sha256:" not in name:
                    return str(name)
        pytest.skip(
            f"no image matching {fragment!r} on node {self.name}: "
            "load it with hack/node-images.sh docker IMAGE"
        )


def read_node_env(path: Path = NODE_ENV) -> RealNode | None:
    if not path.exists():
        return None
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return RealNode(
        name=values["NODE_NAME"],
        ip=values["NODE_IP"],
        label=values["NODE_LABEL"],
        taint=values.get("NODE_TAINT", ""),
        pod_cidr=values["POD_CIDR"],
        cluster_dns_ip=values["CLUSTER_DNS_IP"],
        busybox_image=values["BUSYBOX_IMAGE"],
    )


def busybox_pod(
    node: RealNode,
    name: str,
    script: str,
    *,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
    port: int | None = None,
) -> client.V1Pod:
    """A pod on the real node that runs `script` with busybox's sh."""
    container = client.V1Container(
        name="main",
        image=node.busybox_image,
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
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            containers=[container],
            restart_policy=restart_policy,
            termination_grace_period_seconds=2,
            automount_service_account_token=False,
            **node.pod_placement(),
        ),
    )


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
