"""kopf registrations: every watch event only enqueues the key of the custom resource it
concerns; the work queues run the reconcilers. No handler stores state on the objects, so the
operator adds no finalizer and no annotation, and an unchanged object causes no write.

kopf watches the two custom resources; each of its events also refreshes the object in the
operator's cache. The children and their pods are watched by the informers of
handlers/cache.py, filtered by label on the server: their Deployment and Job events, and the
deletion of any child, enqueue the custom resource named in the child's labels. A training's
pods wake it too (a worker that cannot start shows in no Job status); a server's pods wake no
one: what matters of them shows in their Deployment's status, and a rollout that watches its
pods polls."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from modelyard_operator.api.meta import GROUP, VERSION
from modelyard_operator.handlers.cache import CachedKube
from modelyard_operator.handlers.deployment import TrainingIndex, reconcile_deployment
from modelyard_operator.handlers.training import reconcile_training
from modelyard_operator.kube import Kube
from modelyard_operator.metrics import PhaseBook, measured, queue_wait_observer
from modelyard_operator.names import DEPLOYMENT_LABEL, TRAINING_LABEL
from modelyard_operator.ownership import Manifest
from modelyard_operator.settings import Settings
from modelyard_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

OWNER_LABELS = {
    DEPLOYMENT_LABEL: "deployments",
    TRAINING_LABEL: "trainings",
}
# Child kinds whose every change may change the owner's status; any child's deletion counts too.
STATUS_KINDS = {"Deployment", "Job", "Pod"}
CACHE_SYNC_SECONDS = 60.0

Key = tuple[str, str]
Reconciler = Callable[[Kube, Settings, str, str], tuple[float | None, str | None]]


@dataclass
class Runtime:
    kube: CachedKube
    settings: Settings
    trainings: WorkQueue
    deployments: WorkQueue
    training_index: TrainingIndex


_runtime: Runtime | None = None


def _queue_for(kind: str, reconciler: Reconciler, kube: Kube, settings: Settings) -> WorkQueue:
    phases = PhaseBook(kind)

    def run(key: Any) -> float | None:
        namespace, name = key
        again, phase = reconciler(kube, settings, namespace, name)
        phases.record(key, phase)
        return again

    return WorkQueue(
        measured(kind, run),
        workers=settings.workers,
        name=kind,
        on_wait=queue_wait_observer(kind),
    )


def child_changed(kind: str, event: str, obj: Manifest) -> None:
    """An informer's event: wake the custom resource that the child belongs to."""
    if _runtime is None or (kind not in STATUS_KINDS and event != "DELETED"):
        return
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    # A training's worker pods wake it: one that cannot start (unschedulable, image, volume)
    # must show in status at once, not at the next poll; a server pod wakes no one.
    owners = {TRAINING_LABEL: "trainings"} if kind == "Pod" else OWNER_LABELS
    for label, queue in owners.items():
        owner = labels.get(label)
        if owner:
            work: WorkQueue = getattr(_runtime, queue)
            work.add((meta.get("namespace") or "", owner))


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    own = Settings.from_env()
    settings.posting.enabled = False  # Events come from the reconcilers, on transitions only
    settings.watching.server_timeout = own.watch_timeout_seconds
    settings.watching.client_timeout = own.watch_timeout_seconds + 30
    settings.execution.max_workers = 4
    if own.namespaces:
        # Watching chosen namespaces, the operator holds Roles only: kopf must not try to list
        # namespaces and watch CRDs cluster-wide (refused, retried for about a minute first).
        settings.scanning.disabled = True
    kube = CachedKube(Kube.from_environment(), child_changed, OWNER_LABELS)
    trainings = _queue_for("ModelTraining", reconcile_training, kube, own)
    index = TrainingIndex()
    deployments = _queue_for(
        "ModelDeployment", functools.partial(reconcile_deployment, index=index), kube, own
    )
    _runtime = Runtime(
        kube=kube,
        settings=own,
        trainings=trainings,
        deployments=deployments,
        training_index=index,
    )
    kube.start_informers(own.namespaces, own.watch_timeout_seconds)
    kube.start_events()
    # Reconciles before the first lists would read every child from the API server instead.
    slow = kube.wait_synced(CACHE_SYNC_SECONDS)
    if slow:
        log.warning(
            "caches not synced after %.0fs, reading from the API: %s", CACHE_SYNC_SECONDS, slow
        )
    trainings.start()
    deployments.start()
    log.info("modelyard operator started: %s", own.model_dump())


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    if _runtime is not None:
        _runtime.trainings.stop()
        _runtime.deployments.stop()
        _runtime.kube.stop_informers()
        _runtime.kube.close()


class SeenSpecs:
    """What a reconcile depends on of each custom resource, as its last watch event showed it.

    Every status write of ours comes back as a watch event; reconciling again on it would only
    find nothing to do (it was half of all reconciles while 1,200 objects converged). A change
    of generation (the spec), deletion, uid (deleted and made anew) or labels and annotations
    enqueues; a change of status alone does not: the slow resync still covers a status that
    someone else wrote.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def changed(self, kind: str, namespace: str, name: str, meta: Mapping[str, Any]) -> bool:
        mark = (
            meta.get("uid"),
            meta.get("generation"),
            meta.get("deletionTimestamp"),
            repr(sorted((meta.get("labels") or {}).items())),
            repr(sorted((meta.get("annotations") or {}).items())),
        )
        with self._lock:
            if self._seen.get((kind, namespace, name)) == mark:
                return False
            self._seen[(kind, namespace, name)] = mark
            return True

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._seen.pop((kind, namespace, name), None)


_seen = SeenSpecs()


def _enqueue(
    queue: Callable[[Runtime], WorkQueue],
    kind: str,
    raw_event: Mapping[str, Any],
) -> None:
    if _runtime is None:
        return
    event, obj = raw_event["type"], raw_event["object"]
    _runtime.kube.observed_custom_resource(event, obj)
    meta = obj["metadata"]
    key = (meta.get("namespace") or "", meta["name"])
    if event == "DELETED":
        _seen.forget(kind, *key)
        queue(_runtime).forget(key)
    elif _seen.changed(kind, *key, meta):
        queue(_runtime).add(key)


@kopf.on.event(GROUP, VERSION, "modeltrainings")
def training_changed(event: Mapping[str, Any], **_: Any) -> None:
    _enqueue(lambda r: r.trainings, "ModelTraining", event)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def deployment_changed(event: Mapping[str, Any], **_: Any) -> None:
    _enqueue(lambda r: r.deployments, "ModelDeployment", event)


@kopf.on.event(GROUP, VERSION, "modeltrainings")
def promoted_training_changed(namespace: str | None, name: str, **_: Any) -> None:
    """A training's new result (or its deletion) may change what its ModelDeployments serve."""
    if _runtime is None:
        return
    for deployment in _runtime.training_index.deployments_for(namespace or "", name):
        _runtime.deployments.add((namespace or "", deployment))
