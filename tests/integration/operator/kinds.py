"""Small helpers to drive custom resources and pods through the real API in operator tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from modelyard_operator.api.meta import GROUP, VERSION
from tests.integration.support import KWOK_MANUAL, KWOK_STAGE_LABEL, wait_until

MODELS_CLAIM = "modelyard-models"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Objects:
    """Typed shortcuts over one namespace of the real API server."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.api = api

    # custom resources --------------------------------------------------------------------
    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "metadata": {**body["metadata"], "namespace": self.namespace}}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body
        )
        return created

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        return found

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, {"spec": spec}
        )

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, plural, name, {"status": status}
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def wait_for(
        self, plural: str, name: str, test: Any, timeout: float = 60, what: str = ""
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            obj = self.get(plural, name)
            return obj if test(obj) else None

        try:
            return wait_until(probe, timeout=timeout, what=what or f"{plural}/{name}")
        except TimeoutError as timeout_error:
            # Say where the object stood, so that a timeout in CI can be read from the log.
            status = self.get(plural, name).get("status") or {}
            raise TimeoutError(f"{timeout_error}; its status: {status}") from None

    # storage -----------------------------------------------------------------------------
    def models_claim(self) -> None:
        """A claim that binds at once (a pre-bound hostPath volume), so pods can schedule."""
        pv_name = f"{self.namespace}-models"
        self.core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "labels": {"modelyard.dev/test": "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{pv_name}"},
                    "persistentVolumeReclaimPolicy": "Delete",
                    "claimRef": {"namespace": self.namespace, "name": MODELS_CLAIM},
                },
            }
        )
        self.core.create_namespaced_persistent_volume_claim(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": MODELS_CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )

    def restrict_pod_security(self) -> None:
        labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
        self.core.patch_namespace(self.namespace, {"metadata": {"labels": labels}})

    # jobs and pods -----------------------------------------------------------------------
    def jobs(self, selector: str) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.namespace, label_selector=selector).items)

    def pods(self, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def set_pod(
        self,
        pod: Any,
        phase: str,
        *,
        exit_code: int | None = None,
        message: str = "",
        reason: str = "",
        conditions: list[dict[str, Any]] | None = None,
    ) -> None:
        """Drive a pod's status as a kubelet would report it."""
        container = pod.spec.containers[0].name
        stamp = now()
        if phase == "Running":
            state: dict[str, Any] = {"running": {"startedAt": stamp}}
        elif phase == "Pending":
            state = {"waiting": {"reason": "ContainerCreating"}}
        else:
            state = {
                "terminated": {
                    "exitCode": exit_code or 0,
                    "reason": reason or ("Completed" if phase == "Succeeded" else "Error"),
                    "message": message,
                    "startedAt": stamp,
                    "finishedAt": stamp,
                }
            }
        ready = "True" if phase == "Running" else "False"
        status = {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
                *(conditions or []),
            ],
            "containerStatuses": [
                {
                    "name": container,
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "image": pod.spec.containers[0].image,
                    "imageID": "",
                    "state": state,
                }
            ],
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {"status": status})


MANUAL_POD_LABELS = {KWOK_STAGE_LABEL: KWOK_MANUAL}
