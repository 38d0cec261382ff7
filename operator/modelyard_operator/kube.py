"""The one place that talks to the Kubernetes API server.

A thin REST client (httpx) on the credentials that the `kubernetes` package loads from a
kubeconfig or from the pod's service account. Children are written with server-side apply
under the field manager "modelyard-operator"; Jobs are created once and never re-applied, so
that the operator owns no field that Kueue or the Job controller may change.

Every child of both kinds goes through `apply_owned` / `create_owned` / `delete_owned`: an
object of a child's name that its custom resource does not control (someone else's
NetworkPolicy, ConfigMap, ...) is never written or deleted (`ForeignObject`).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from modelyard_operator.metrics import API_REQUEST_SECONDS, API_REQUESTS
from modelyard_operator.names import FIELD_MANAGER
from modelyard_operator.ownership import Manifest, controlled_by, controller_uid

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
# "Not read yet" for an optional argument whose None means "read: absent".
UNREAD: Manifest = {}


class ApiError(Exception):
    """An answer of the API server other than success."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ForeignObject(Exception):
    """A child's name is taken by an object that the child's custom resource does not
    control: it is neither written nor deleted, and the custom resource says so."""

    def __init__(self, manifest: Manifest) -> None:
        owner = next(
            (r.get("kind") for r in manifest["metadata"].get("ownerReferences") or []),
            "custom resource",
        )
        super().__init__(
            f"{manifest['kind']} {manifest['metadata']['name']} already exists and does not "
            f"belong to this {owner}: delete or rename it"
        )


# Lists whose items other managers may add to, merged by the API server per key (None: the
# item as a whole): a desired item must be found among the live ones; others' items stay (a
# server-side apply does not remove them either). Every other list is atomic: compared whole.
ASSOCIATIVE_LISTS: dict[str, str | None] = {
    "ownerReferences": "uid",
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ports": None,
}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
)
_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    **{f"{p}i": Decimal(2) ** (10 * (i + 1)) for i, p in enumerate("KMGTPE")},
}


def _quantity(value: Any) -> Decimal | None:
    """A resource quantity's value ("1Gi" == "1024Mi", "500m" == "0.5"), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    found = _QUANTITY.match(str(value))
    if found is None:
        return None
    number, suffix = found.groups()
    try:
        if suffix and suffix[0] in "eE":
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIXES.get(suffix or "", Decimal(1))
    except InvalidOperation:
        return None


def _same(desired: Any, live: Any, field: str = "") -> bool:
    """Whether `live` has every field that `desired` sets, with the same value. What the API
    server adds (defaults, other managers' fields) is not compared; what it drops when empty
    or false (omitempty) compares equal to absent; quantities compare by value."""
    if isinstance(desired, dict):
        live = live if isinstance(live, dict) else {}
        return all(_same(value, live.get(key), key) for key, value in desired.items())
    if isinstance(desired, list):
        live = live if isinstance(live, list) else []
        if field in ASSOCIATIVE_LISTS:
            key = ASSOCIATIVE_LISTS[field]
            return all(_found(item, live, key) for item in desired)
        return len(desired) == len(live) and all(map(_same, desired, live))
    if live is None:
        return not desired
    if desired == live and type(desired) is type(live):
        return True
    wanted = _quantity(desired)
    return wanted is not None and wanted == _quantity(live)


def _found(item: Any, live: list[Any], key: str | None) -> bool:
    if key is not None and isinstance(item, dict) and key in item:
        matching = [x for x in live if isinstance(x, dict) and x.get(key) == item[key]]
        return bool(matching) and _same(item, matching[0])
    return any(_same(item, candidate) for candidate in live)


def drifted(desired: Manifest, live: Manifest) -> bool:
    """Whether the live object differs from the manifest in a field that the manifest sets:
    a change of ours (new spec; the manifest's spec-hash annotation differs, even when only a
    field was dropped) or someone else's edit of a field we own. An unchanged child compares
    equal, so that a reconcile of an unchanged object writes nothing."""
    return not _same(
        {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")},
        {k: v for k, v in live.items() if k not in ("apiVersion", "kind")},
    )


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
    """Synchronous API calls; safe to share between threads: each thread talks through an HTTP
    client of its own. One shared connection pool made every call queue on the pool's lock
    (held while it checks each kept-alive connection): with 16 threads calling at once, the
    appliers spent a third of their time waiting for it."""

    def __init__(self, connect: Callable[[], httpx.Client], token: Callable[[], str | None]):
        self._connect = connect
        self._token = token
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, timeout: float = 30.0) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        configuration = Configuration()
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException:
            kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        tls = _tls_context(configuration)

        def connect() -> httpx.Client:
            return httpx.Client(base_url=configuration.host, verify=tls, timeout=timeout)

        def token() -> str | None:
            # Refreshes a projected service-account token when the loader set a hook. The
            # kubernetes package (>= 30) keeps a kubeconfig or service-account token under
            # "BearerToken"; older ones used "authorization".
            value: str | None = configuration.get_api_key_with_prefix(
                "BearerToken"
            ) or configuration.get_api_key_with_prefix("authorization")
            return value

        return cls(connect, token)

    @property
    def http(self) -> httpx.Client:
        """This thread's client (made on its first call)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = token
        return headers

    @staticmethod
    def _error(response: httpx.Response) -> ApiError:
        try:
            status = response.json()
        except ValueError:
            status = {}
        return ApiError(
            response.status_code,
            str(status.get("reason", response.reason_phrase)),
            str(status.get("message", response.text[:500])),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = self._headers()
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body)
        API_REQUESTS.labels(method).inc()
        with API_REQUEST_SECONDS.labels(method).time():
            response = self.http.request(
                method, path, params=params, content=content, headers=headers
            )
        if response.status_code >= 400:
            raise self._error(response)
        return response.json() if response.content else None

    def list_from_cache(self, path: str, label_selector: str) -> tuple[list[Manifest], str]:
        """Every object at `path` that matches, and the resourceVersion to watch from.
        resourceVersion=0 lets the API server answer from its watch cache, not etcd."""
        found = self.request(
            "GET", path, params={"labelSelector": label_selector, "resourceVersion": "0"}
        )
        items: list[Manifest] = found.get("items") or []
        return items, str(found["metadata"]["resourceVersion"])

    def watch(
        self, path: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """The watch events after `resource_version`, with bookmarks, until the server ends
        the watch (after about `timeout_seconds`) or the connection drops."""
        params = {
            "watch": "true",
            "labelSelector": label_selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = httpx.Timeout(30.0, read=timeout_seconds + 30.0)
        API_REQUESTS.labels("WATCH").inc()
        with self.http.stream(
            "GET", path, params=params, headers=self._headers(), timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise self._error(response)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def events_about(self, namespace: str, uid: str) -> list[Manifest]:
        """The Events whose involved object has this uid (what the scheduler, the kubelet
        and the attach/detach controller said about one pod)."""
        path = resource_path("v1", "Event", namespace)
        found = self.request("GET", path, params={"fieldSelector": f"involvedObject.uid={uid}"})
        items: list[Manifest] = found.get("items") or []
        return items

    def observed_write(self, obj: Manifest) -> None:
        """Told of every object this client created or applied (see handlers/cache.py)."""

    def observed_delete(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> None:
        """Told of every object this client deleted."""

    def get(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        from_cache: bool = False,
    ) -> Manifest | None:
        """`from_cache`: the API server's watch cache may answer (a little behind etcd)."""
        path = resource_path(api_version, kind, namespace, name)
        try:
            found: Manifest = self.request(
                "GET", path, params={"resourceVersion": "0"} if from_cache else None
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    def get_managed(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> Manifest | None:
        """An object that we may have made; a caching client answers from memory alone."""
        return self.get(api_version, kind, namespace, name)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str],
        from_cache: bool = False,
    ) -> list[Manifest]:
        """`from_cache`: the API server's watch cache may answer (a little behind etcd)."""
        path = resource_path(api_version, kind, namespace)
        params = {"labelSelector": selector(labels)}
        if from_cache:
            params["resourceVersion"] = "0"
        found = self.request("GET", path, params=params)
        items: list[Manifest] = found.get("items", [])
        return items

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under our field manager, taking over conflicting fields (of an
        object that is ours: see `apply_owned`)."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        applied: Manifest = self.request(
            "PATCH",
            manifest_path(manifest),
            params=params,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        self.observed_write(applied)
        return applied

    def apply_owned(self, manifest: Manifest, live: Manifest | None = UNREAD) -> bool:
        """Apply a child when it is missing or differs from the live one (`drifted`); False
        when nothing was written. The manifest's controller ownerReference names its owner;
        an object of that name that the owner does not control raises ForeignObject.
        `live`: the object as the caller read it already (None: absent), else it is read.

        The apply carries a precondition, so that an object that someone made or replaced
        since it was read is not taken over: the uid read (an apply to an object with another
        uid is refused), or, to create, resourceVersion "1", which no existing object has
        (etcd's first revision is the cluster's first write; a create ignores it) and which
        makes the API server answer 409 when an object of that name exists after all."""
        meta = manifest["metadata"]
        if live is UNREAD:
            live = self.get(
                manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
            )
        if live is None:
            precondition = {"resourceVersion": "1"}
        else:
            if not controlled_by(live, controller_uid(manifest) or ""):
                raise ForeignObject(manifest)
            if not drifted(manifest, live):
                return False
            precondition = {"uid": str(live["metadata"]["uid"])}
        self.apply({**manifest, "metadata": {**meta, **precondition}})
        return True

    def create_owned(self, manifest: Manifest) -> bool:
        """Create a child once; False when it exists already (and is ours): ForeignObject
        when an object of its name is not controlled by the manifest's owner."""
        if self.create(manifest):
            return True
        meta = manifest["metadata"]
        live = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if live is not None and not controlled_by(live, controller_uid(manifest) or ""):
            raise ForeignObject(manifest)
        return False

    def create(self, manifest: Manifest) -> bool:
        """Create once; False when it exists already."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            created = self.request(
                "POST", path, params={"fieldManager": FIELD_MANAGER}, body=manifest
            )
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        self.observed_write(created)
        return True

    def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete a child that `owner_uid` controls; anything else of that name stays. The
        uid read is a precondition of the delete, so a replacement made meanwhile stays too."""
        live = self.get_managed(api_version, kind, namespace, name)
        if live is None or not controlled_by(live, owner_uid):
            return False
        try:
            return self.delete(api_version, kind, namespace, name, uid=str(live["metadata"]["uid"]))
        except ApiError as error:
            if error.status == 409:  # not the object we read any more
                return False
            raise

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """`uid`: delete only the object with this uid (a precondition)."""
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
        }
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except ApiError as error:
            if error.status == 404:
                self.observed_delete(api_version, kind, namespace, name)
                return False
            raise
        self.observed_delete(api_version, kind, namespace, name)
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
        self.observed_write(written)
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
