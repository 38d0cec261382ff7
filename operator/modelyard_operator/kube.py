"""The one place that talks to the Kubernetes API server.

A thin REST client (httpx) on the credentials that the `kubernetes` package loads from a
kubeconfig or from the pod's service account. Children are written with server-side apply
under the field manager "modelyard-operator"; Jobs are created once and never re-applied, so
that the operator owns no field that Kueue or the Job controller may change.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from modelyard_operator.builders.common import FIELD_MANAGER, SPEC_HASH_ANNOTATION, Manifest

log = logging.getLogger(__name__)

PLURALS = {
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "Event": "events",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "Job": "jobs",
    "ModelDeployment": "modeldeployments",
    "ModelTraining": "modeltrainings",
    "NetworkPolicy": "networkpolicies",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Pod": "pods",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ReplicaSet": "replicasets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "ServiceMonitor": "servicemonitors",
    "CustomResourceDefinition": "customresourcedefinitions",
}
CLUSTER_SCOPED = {"CustomResourceDefinition"}


class ApiError(Exception):
    """An answer of the API server other than success."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [prefix]
    if namespace and kind not in CLUSTER_SCOPED:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def manifest_path(manifest: Manifest, subresource: str | None = None) -> str:
    meta = manifest["metadata"]
    return resource_path(
        manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"], subresource
    )


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _tls_context(configuration: Configuration) -> ssl.SSLContext:
    """CA and client certificate in one context: httpx 0.28 ignores `cert=` when `verify` is
    a path, and the API server would then see an anonymous client."""
    if configuration.verify_ssl:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


class Kube:
    """Synchronous API calls; safe to share between threads."""

    def __init__(self, http: httpx.Client, token: Callable[[], str | None]) -> None:
        self.http = http
        self._token = token

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, timeout: float = 30.0) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        configuration = Configuration()
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException:
            kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        http = httpx.Client(
            base_url=configuration.host, verify=_tls_context(configuration), timeout=timeout
        )

        def token() -> str | None:
            # Refreshes a projected service-account token when the loader set a hook. The
            # kubernetes package (>= 30) keeps a kubeconfig or service-account token under
            # "BearerToken"; older ones used "authorization".
            value: str | None = configuration.get_api_key_with_prefix(
                "BearerToken"
            ) or configuration.get_api_key_with_prefix("authorization")
            return value

        return cls(http, token)

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = token
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body)
        response = self.http.request(method, path, params=params, content=content, headers=headers)
        if response.status_code >= 400:
            try:
                status = response.json()
            except ValueError:
                status = {}
            raise ApiError(
                response.status_code,
                str(status.get("reason", response.reason_phrase)),
                str(status.get("message", response.text[:500])),
            )
        return response.json() if response.content else None

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            found: Manifest = self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    def list(
        self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]
    ) -> list[Manifest]:
        path = resource_path(api_version, kind, namespace)
        found = self.request("GET", path, params={"labelSelector": selector(labels)})
        items: list[Manifest] = found.get("items", [])
        return items

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under our field manager, taking over conflicting fields."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        applied: Manifest = self.request(
            "PATCH",
            manifest_path(manifest),
            params=params,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        return applied

    def apply_if_changed(self, manifest: Manifest) -> bool:
        """Apply unless the live object has the same spec hash: no write when nothing changed."""
        meta = manifest["metadata"]
        live = self.get(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        wanted = meta.get("annotations", {}).get(SPEC_HASH_ANNOTATION)
        if live is not None and wanted is not None:
            annotations = live["metadata"].get("annotations") or {}
            if annotations.get(SPEC_HASH_ANNOTATION) == wanted:
                return False
        self.apply(manifest)
        return True

    def create(self, manifest: Manifest) -> bool:
        """Create once; False when it exists already."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            self.request("POST", path, params={"fieldManager": FIELD_MANAGER}, body=manifest)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
    ) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def replace_status(self, obj: Manifest, status: dict[str, Any]) -> Manifest:
        """Write the whole status through the status subresource, as of the object we read."""
        patch = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": obj["metadata"]["resourceVersion"],
            },
            {"op": "add", "path": "/status", "value": status},
        ]
        written: Manifest = self.request(
            "PATCH",
            manifest_path(obj, "status"),
            body=patch,
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/json-patch+json",
        )
        return written

    def post_event(self, obj: Manifest, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a custom resource; losing one is logged, never fatal."""
        meta = obj["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": FIELD_MANAGER,
        }
        try:
            self.request("POST", resource_path("v1", "Event", meta["namespace"]), body=event)
        except (ApiError, httpx.HTTPError) as error:
            log.warning("could not post event %s for %s: %s", reason, meta["name"], error)
