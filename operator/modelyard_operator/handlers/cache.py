"""An in-memory cache of what the reconcilers read, so that a reconcile asks the API server
for nothing it has seen already.

Children and their pods: one list and one watch per kind (and per watched namespace), with the
label selector `app.kubernetes.io/managed-by=modelyard-operator` applied by the API server, so
unrelated Deployments, Jobs and pods in a watched namespace never reach the operator (kopf
filters labels on the client side: its watches received, parsed and dropped every such
object). The custom resources themselves: kopf watches them already, and every event it
delivers is put into a store here (`observed_custom_resource`), so a reconcile starts from
memory too.

What a reconcile writes is put into the cache at once (`observed_write`), so the next pass does
not see the object as it was before its own write and write again. Reads fall back to the API
when a kind's cache is not synced (not listed yet, or not permitted by an older Role), and a
named read that misses asks the API server too: an object of that name without our label
(someone else's) must still stop us from taking it over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from modelyard_operator.kube import ApiError, Kube, resource_path
from modelyard_operator.metrics import CACHED_OBJECTS
from modelyard_operator.names import FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL
from modelyard_operator.ownership import Manifest

log = logging.getLogger(__name__)

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
CACHED_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Pod"),
)
# Watched by kopf, put into their stores from its events.
CUSTOM_RESOURCE_KINDS = ("ModelDeployment", "ModelTraining")
# Kinds whose managedFields a reconcile reads (who owns a Deployment's replicas); the field is
# dropped from every other cached object: it is a good part of each object's size.
KEEP_MANAGED_FIELDS = {"Deployment"}
# Kinds whose pod template spec is dropped: a Job's is never re-applied (a Deployment's is
# compared with what we want, to correct someone else's edit).
TEMPLATED_KINDS = {"Job"}

EVENT_BACKLOG = 10_000
# (kind, "ADDED" | "MODIFIED" | "DELETED", object)
Listener = Callable[[str, str, Manifest], None]


def _version(obj: Manifest) -> int | None:
    try:
        return int(obj["metadata"].get("resourceVersion") or "")
    except ValueError:
        return None


def _slim(kind: str, obj: Manifest) -> Manifest:
    """What the reconcilers read of a cached object, to keep the cache small: managedFields
    (but ours on Deployments: who owns `replicas`), the pod spec of Job templates (the
    planners read the template's annotations, never its spec) and the spec of pods (the
    planners read their metadata and status) are dropped. A server Deployment is ~28 KiB in
    memory with all, ~5 KiB without managedFields and its template's spec; that spec is kept,
    since drift of what we applied is corrected (see kube.drifted)."""
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        meta = dict(meta)
        fields = meta.pop("managedFields")
        if kind in KEEP_MANAGED_FIELDS:
            meta["managedFields"] = [f for f in fields if f.get("manager") == FIELD_MANAGER]
        obj = {**obj, "metadata": meta}
    spec = obj.get("spec") or {}
    template = spec.get("template") if kind in TEMPLATED_KINDS else None
    if isinstance(template, dict) and "spec" in template:
        template = {k: v for k, v in template.items() if k != "spec"}
        obj = {**obj, "spec": {**spec, "template": template}}
    if kind == "Pod":
        obj = {k: v for k, v in obj.items() if k != "spec"}
    return obj


class Store:
    """The cached objects of one kind, with an index by label value for list reads."""

    def __init__(self, kind: str, scopes: Iterable[str | None], index_labels: Iterable[str]):
        self.kind = kind
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], Manifest] = {}
        self._index_labels = tuple(index_labels)
        self._index: dict[tuple[str, str, str], set[str]] = {}
        self._unsynced = set(scopes)
        self.synced = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def get(self, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def matching(self, namespace: str, labels: dict[str, str]) -> list[Manifest]:
        with self._lock:
            indexed = next(((k, v) for k, v in labels.items() if k in self._index_labels), None)
            if indexed is not None:
                names = self._index.get((namespace, *indexed), set())
                candidates = [self._objects[(namespace, n)] for n in sorted(names)]
            else:
                candidates = [o for (ns, _), o in self._objects.items() if ns == namespace]
        return [
            o
            for o in candidates
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def put(self, obj: Manifest) -> str | None:
        """Keep `obj` unless an equal or newer version is kept; the event type, or None."""
        obj = _slim(self.kind, obj)
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        with self._lock:
            old = self._objects.get(key)
            if old is not None:
                new_version, old_version = _version(obj), _version(old)
                if (
                    new_version is not None
                    and old_version is not None
                    and new_version <= old_version
                ):
                    return None
            self._unindex(key, old)
            self._objects[key] = obj
            self._index_object(key, obj)
        return "ADDED" if old is None else "MODIFIED"

    def remove(self, namespace: str, name: str) -> Manifest | None:
        key = (namespace, name)
        with self._lock:
            old = self._objects.pop(key, None)
            self._unindex(key, old)
        return old

    def replace(self, scope: str | None, items: list[Manifest]) -> list[tuple[str, Manifest]]:
        """The objects of a fresh list for one scope (a namespace, or None for all); returns
        what changed as (event type, object)."""
        changes: list[tuple[str, Manifest]] = []
        listed = {(i["metadata"].get("namespace") or "", i["metadata"]["name"]) for i in items}
        with self._lock:
            gone = [
                key
                for key in self._objects
                if (scope is None or key[0] == scope) and key not in listed
            ]
        for key in gone:
            old = self.remove(*key)
            if old is not None:
                changes.append(("DELETED", old))
        for item in items:
            event = self.put(item)
            if event is not None:
                changes.append((event, item))
        with self._lock:
            self._unsynced.discard(scope)
            if not self._unsynced:
                self.synced.set()
        return changes

    def _index_object(self, key: tuple[str, str], obj: Manifest) -> None:
        labels = obj["metadata"].get("labels") or {}
        for label in self._index_labels:
            if label in labels:
                self._index.setdefault((key[0], label, labels[label]), set()).add(key[1])

    def _unindex(self, key: tuple[str, str], obj: Manifest | None) -> None:
        if obj is None:
            return
        labels = obj["metadata"].get("labels") or {}
        for label in self._index_labels:
            if label in labels:
                names = self._index.get((key[0], label, labels[label]))
                if names is not None:
                    names.discard(key[1])
                    if not names:
                        del self._index[(key[0], label, labels[label])]


class Informer:
    """List, then watch from the listed version, for one kind in one scope; relist when the
    watch's version has expired (410) or after any error, with a growing pause."""

    def __init__(
        self,
        kube: Kube,
        api_version: str,
        store: Store,
        scope: str | None,
        listener: Listener,
        watch_timeout: int,
    ) -> None:
        self.kube = kube
        self.store = store
        self.scope = scope
        self.path = resource_path(api_version, store.kind, scope)
        self.listener = listener
        self.watch_timeout = watch_timeout
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{store.kind}-{scope or 'all'}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _notify(self, event: str, obj: Manifest) -> None:
        try:
            self.listener(self.store.kind, event, obj)
        except Exception:
            log.exception("listener failed on %s %s", event, self.store.kind)

    def _run(self) -> None:
        pause = 1.0
        warned = False
        while not self._stopping.is_set():
            try:
                items, version = self.kube.list_from_cache(self.path, MANAGED_SELECTOR)
                for event, obj in self.store.replace(self.scope, items):
                    self._notify(event, obj)
                pause = 1.0
                while not self._stopping.is_set():
                    version = self._watch(version)
            except _Expired:
                continue  # relist at once: the usual end of a long watch
            except ApiError as error:
                if error.status == 403 and not warned:
                    log.warning(
                        "may not list/watch %s (%s): reading them from the API server",
                        self.store.kind,
                        error,
                    )
                    warned = True
                pause = 60.0 if error.status == 403 else min(pause * 2, 30.0)
                log.debug("informer %s: %s; relisting in %.0fs", self.store.kind, error, pause)
            except Exception as error:  # connection drops, API server restarts
                log.info(
                    "watch of %s ended (%s); relisting in %.0fs", self.store.kind, error, pause
                )
                pause = min(pause * 2, 30.0)
            self._stopping.wait(pause)

    def _watch(self, version: str) -> str:
        for event in self.kube.watch(self.path, MANAGED_SELECTOR, version, self.watch_timeout):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj))
            version = str(obj["metadata"].get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            meta = obj["metadata"]
            if kind == "DELETED":
                self.store.remove(meta.get("namespace") or "", meta["name"])
                self._notify("DELETED", obj)
            elif (changed := self.store.put(obj)) is not None:
                self._notify(changed, obj)
            if self._stopping.is_set():
                break
        return version


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class CachedKube(Kube):
    """The operator's client: reads of cached kinds come from the informers' stores, and
    Events are posted by a thread of their own, so that a reconcile does not wait for them
    (an Event is a report, never an input; one lost to a crash is no loss of state)."""

    def __init__(self, kube: Kube, listener: Listener, index_labels: Iterable[str]) -> None:
        super().__init__(kube._connect, kube._token)
        self._listener = listener
        self._index_labels = tuple(index_labels)
        self.stores: dict[str, Store] = {}
        for kind in CUSTOM_RESOURCE_KINDS:
            store = Store(kind, (), ())
            store.synced.set()  # a miss asks the API server: a new or deleted object
            self.stores[kind] = store
        self._informers: list[Informer] = []
        self._events: queue.Queue[tuple[Manifest, str, str, str]] = queue.Queue(EVENT_BACKLOG)
        self._event_thread: threading.Thread | None = None

    def post_event(self, obj: Manifest, type_: str, reason: str, message: str) -> None:
        if self._event_thread is None:
            super().post_event(obj, type_, reason, message)
            return
        try:
            self._events.put_nowait((obj, type_, reason, message))
        except queue.Full:
            log.warning("event backlog full: dropping %s for %s", reason, obj["metadata"]["name"])

    def start_events(self) -> None:
        self._event_thread = threading.Thread(target=self._send_events, name="events", daemon=True)
        self._event_thread.start()

    def _send_events(self) -> None:
        while True:
            obj, type_, reason, message = self._events.get()
            try:
                super().post_event(obj, type_, reason, message)
            except Exception:  # the thread must outlive any one Event
                log.exception("could not post event %s", reason)

    def start_informers(self, namespaces: Iterable[str], watch_timeout: int) -> None:
        scopes: list[str | None] = list(namespaces) or [None]
        for api_version, kind in CACHED_KINDS:
            store = Store(kind, scopes, self._index_labels)
            self.stores[kind] = store
            CACHED_OBJECTS.labels(kind).set_function(store.__len__)
            for scope in scopes:
                informer = Informer(self, api_version, store, scope, self._listener, watch_timeout)
                self._informers.append(informer)
                informer.start()

    def wait_synced(self, timeout: float) -> list[str]:
        """Wait for every kind's first list; the kinds still not synced."""
        deadline = time.monotonic() + timeout
        for store in self.stores.values():
            store.synced.wait(max(deadline - time.monotonic(), 0.0))
        return [kind for kind, store in self.stores.items() if not store.synced.is_set()]

    def stop_informers(self) -> None:
        for informer in self._informers:
            informer.stop()

    def _store(self, kind: str) -> Store | None:
        store = self.stores.get(kind)
        return store if store is not None and store.synced.is_set() else None

    def get(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        from_cache: bool = False,
    ) -> Manifest | None:
        """From memory; a miss asks the API server. For a watched child kind the API server's
        own watch cache answers (one of that name without our label: someone else's): it is as
        recent as our watch, and cheaper than a read from etcd."""
        store = self._store(kind)
        if store is not None and namespace:
            found = store.get(namespace, name)
            if found is not None:
                return found
        child = store is not None and kind not in CUSTOM_RESOURCE_KINDS
        return super().get(api_version, kind, namespace, name, from_cache=from_cache or child)

    def get_managed(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> Manifest | None:
        """Only an object that carries our label: a cache miss is final (no API call)."""
        store = self._store(kind)
        if store is None:
            return super().get(api_version, kind, namespace, name)
        return store.get(namespace, name)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str],
        from_cache: bool = True,
    ) -> list[Manifest]:
        store = self._store(kind)
        if store is None or not namespace or not labels:
            return super().list(api_version, kind, namespace, labels, from_cache=from_cache)
        return store.matching(namespace, labels)

    def observed_custom_resource(self, event: str | None, obj: Manifest) -> None:
        """An event of kopf's watch on our custom resources."""
        store = self.stores[str(obj["kind"])]
        meta = obj["metadata"]
        if event == "DELETED":
            store.remove(meta.get("namespace") or "", meta["name"])
        else:
            store.put(obj)

    def observed_write(self, obj: Manifest) -> None:
        kind = str(obj.get("kind"))
        store = self.stores.get(kind)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        ours = labels.get(MANAGED_BY_LABEL) == MANAGED_BY
        if store is not None and (ours or kind in CUSTOM_RESOURCE_KINDS):
            store.put(obj)

    def observed_delete(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> None:
        store = self.stores.get(kind)
        if store is not None and namespace:
            store.remove(namespace, name)
