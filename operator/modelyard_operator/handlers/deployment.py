"""Reconcile one ModelDeployment: observe, plan (pure), then carry the plan out."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

from pydantic import ValidationError

from modelyard_operator.api.deployment import ModelDeployment, ModelDeploymentStatus, ServedModel
from modelyard_operator.api.meta import API_VERSION
from modelyard_operator.api.training import ModelTrainingStatus, Output
from modelyard_operator.builders.common import with_spec_hash as stamped
from modelyard_operator.builders.deployment import (
    HTTP_PORT,
    KIND,
    OPTIONAL_KINDS,
    SERVICE_MONITOR_CRD,
    children,
    is_autoscaled,
    service_url,
)
from modelyard_operator.handlers.common import (
    apply_children,
    dumped,
    invalid_spec_status,
    namespace_terminating,
    write_status,
)
from modelyard_operator.kube import UNREAD, ApiError, Kube, manifest_path
from modelyard_operator.names import DEPLOYMENT_LABEL, FIELD_MANAGER
from modelyard_operator.ownership import Manifest
from modelyard_operator.podmetrics import scrape_drift
from modelyard_operator.settings import Settings
from modelyard_operator.status.conditions import condition_is
from modelyard_operator.status.deployment import (
    Observed,
    Plan,
    plan_deployment,
    resolve_model,
)
from modelyard_operator.status.drift import PodDrift
from modelyard_operator.validation import format_validation_error
from modelyard_storage.uri import PvcUri, parse_uri

log = logging.getLogger(__name__)

# Takes `spec.replicas` over from us when an HPA starts scaling a Deployment whose replicas we
# applied: dropping the field from our apply would otherwise reset the Deployment to 1 replica.
HANDOVER_MANAGER = "modelyard-operator-hpa-handover"


class TrainingIndex:
    """Which ModelDeployments promote from which ModelTraining, so that a training's events
    reach them. Filled by every reconcile; kopf lists every object at start, so a restarted
    operator has it complete once the first reconciles ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._training_of: dict[tuple[str, str], str] = {}

    def record(self, namespace: str, deployment: str, training: str | None) -> None:
        with self._lock:
            if training is None:
                self._training_of.pop((namespace, deployment), None)
            else:
                self._training_of[(namespace, deployment)] = training

    def forget(self, namespace: str, deployment: str) -> None:
        self.record(namespace, deployment, None)

    def deployments_for(self, namespace: str, training: str) -> list[str]:
        with self._lock:
            return sorted(
                deployment
                for (ns, deployment), name in self._training_of.items()
                if ns == namespace and name == training
            )


class CrdPresence:
    """Whether a CRD is installed, asked at most once per `ttl` seconds."""

    def __init__(self, name: str, ttl: float) -> None:
        self.name = name
        self.ttl = ttl
        self._lock = threading.Lock()
        self._checked: tuple[float, bool] | None = None
        self._warned = False

    def __call__(self, kube: Kube) -> bool:
        with self._lock:
            if self._checked is not None and time.monotonic() - self._checked[0] < self.ttl:
                return self._checked[1]
        try:
            found = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, self.name)
            present = found is not None
        except ApiError as error:
            if error.status != 403:
                raise
            if not self._warned:  # a namespaced operator holds no ClusterRole: say it once
                log.warning("may not read CRD %s (%s): assuming it is absent", self.name, error)
                self._warned = True
            present = False
        with self._lock:
            self._checked = (time.monotonic(), present)
        return present

    def forget(self) -> None:
        """Ask again next time (the API server no longer serves what we were told it has)."""
        with self._lock:
            self._checked = None


_service_monitors: CrdPresence | None = None


def _service_monitor_crd(kube: Kube, settings: Settings) -> bool:
    global _service_monitors
    if _service_monitors is None:
        _service_monitors = CrdPresence(SERVICE_MONITOR_CRD, settings.resync_seconds)
    return _service_monitors(kube)


def reconcile_deployment(
    kube: Kube,
    settings: Settings,
    namespace: str,
    name: str,
    index: TrainingIndex | None = None,
) -> tuple[float | None, str | None]:
    """One idempotent pass. Returns (seconds until the next pass, state for the metrics)."""
    body = kube.get(API_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        if index is not None:
            index.forget(namespace, name)
        return None, None  # the children go with their ownerReferences
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError as error:
        status = invalid_spec_status(body, format_validation_error(error), ("Ready", False))
        write_status(kube, body, status)
        return None, "InvalidSpec"
    if index is not None:
        index.record(namespace, name, md.spec.model.from_training)

    observed = _observe(kube, settings, md)
    plan = plan_deployment(md, observed)
    if plan.target is not None:
        rejected = _apply_children(kube, settings, md, plan.target, observed.deployment)
        if rejected:
            if namespace_terminating(kube, namespace):
                return None, None  # its deletion takes this object too; nothing to report
            # Planned again knowing it: Ready and ChildrenApplied say why.
            plan = plan_deployment(md, replace(observed, rejected=tuple(rejected)))
    # After the children: a status never reports what is not done yet (RolledBack only once
    # the Deployment serves the old model again).
    write_status(kube, body, dumped(plan.status), ModelDeploymentStatus)
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)

    again = settings.rollout_poll_seconds if plan.unsettled else settings.resync_seconds
    if md.spec.monitoring.drift.enabled and plan.target is not None:
        again = min(again, md.spec.monitoring.drift.interval_seconds)
    return min(again, settings.resync_seconds), _state(plan)


def _observe(kube: Kube, settings: Settings, md: ModelDeployment) -> Observed:
    namespace, name = md.metadata.namespace, md.metadata.name
    training_found, training, origin = _read_training(kube, namespace, md.spec.model.from_training)
    resolution = resolve_model(md, training_found, training, origin)
    pods = kube.list("v1", "Pod", namespace, {DEPLOYMENT_LABEL: name})
    return Observed(
        resolution=resolution,
        claim_found=resolution.model is None
        or _claim_exists(kube, settings, namespace, resolution.model),
        # Ours or none: one of that name without our label stops the apply, not the plan.
        deployment=kube.get_managed("apps/v1", "Deployment", namespace, name),
        pods=pods,
        url=service_url(md, settings),
        now=datetime.now(UTC),
        drift=_read_drift(md, pods),
    )


class DriftMemo:
    """When each ModelDeployment's pods were last asked for their drift scores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}

    def due(self, uid: str, interval: float) -> bool:
        """Whether it is time to ask again; if so, the time is taken as asked now."""
        now = time.monotonic()
        with self._lock:
            asked = self._asked.get(uid)
            if asked is not None and now - asked < interval:
                return False
            self._asked[uid] = now
            return True


_drift_memo = DriftMemo()
# At most this many pods are asked per pass (each in its own thread, for TIMEOUT_SECONDS at
# most): enough for a fair average, and a bounded pass however far the Deployment scales.
DRIFT_PODS = 10


def _read_drift(md: ModelDeployment, pods: list[Manifest]) -> list[PodDrift] | None:
    """The ready server pods' drift scores, once per intervalSeconds; None in between."""
    drift = md.spec.monitoring.drift
    if not drift.enabled or not _drift_memo.due(md.metadata.uid, drift.interval_seconds):
        return None
    ready = sorted(
        (pod["metadata"]["name"], pod["status"]["podIP"])
        for pod in pods
        if (pod.get("status") or {}).get("podIP")
        and not pod["metadata"].get("deletionTimestamp")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod["status"].get("conditions") or []
        )
    )[:DRIFT_PODS]
    if not ready:
        return []
    with ThreadPoolExecutor(max_workers=len(ready)) as pool:
        scores = list(pool.map(lambda pod: scrape_drift(pod[0], pod[1], HTTP_PORT), ready))
    for unread in (s for s in scores if s.error):
        log.info(
            "%s/%s: drift scores of pod %s: %s",
            md.metadata.namespace,
            md.metadata.name,
            unread.pod,
            unread.error,
        )
    return scores


def _read_training(
    kube: Kube, namespace: str, name: str | None
) -> tuple[bool, ModelTrainingStatus | None, tuple[str, str] | None]:
    """Whether it exists, its status, and its output URI and uid (where its results must be)."""
    if name is None:
        return False, None, None
    body = kube.get(API_VERSION, "ModelTraining", namespace, name)
    if body is None:
        return False, None, None
    output = ((body.get("spec") or {}).get("output") or {}).get("uri") or Output().uri
    origin = (str(output), str(body["metadata"]["uid"]))
    try:
        return True, ModelTrainingStatus.model_validate(body.get("status") or {}), origin
    except ValidationError:
        log.warning("ignoring the unreadable status of ModelTraining %s/%s", namespace, name)
        return True, ModelTrainingStatus(), origin


class ClaimMemo:
    """Claims seen to exist, remembered for `ttl` seconds: the operator never owns the PVC
    that holds models and watches none, so a found claim is not asked about on every pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}

    def fresh(self, namespace: str, claim: str, ttl: float) -> bool:
        with self._lock:
            seen = self._seen.get((namespace, claim))
            return seen is not None and time.monotonic() - seen < ttl

    def record(self, namespace: str, claim: str, found: bool) -> None:
        with self._lock:
            if found:
                self._seen[(namespace, claim)] = time.monotonic()
            else:
                self._seen.pop((namespace, claim), None)


_claims = ClaimMemo()


def _claim_exists(kube: Kube, settings: Settings, namespace: str, model: ServedModel) -> bool:
    source = parse_uri(model.uri, "model.uri")
    if not isinstance(source, PvcUri):
        return True  # object storage: no claim to look for
    claim = source.claim
    if _claims.fresh(namespace, claim, settings.resync_seconds):
        return True
    try:
        found = kube.get("v1", "PersistentVolumeClaim", namespace, claim) is not None
    except ApiError as error:
        if error.status != 403:
            raise
        log.warning("may not read PersistentVolumeClaims (%s): assuming %s exists", error, claim)
        return True
    _claims.record(namespace, claim, found)
    return found


def _apply_children(
    kube: Kube,
    settings: Settings,
    md: ModelDeployment,
    model: ServedModel,
    live_deployment: Manifest | None,
) -> list[str]:
    """Apply the children; returns why some could not be (see `apply_children`)."""
    # Asked once per resync period at most, whatever the spec says: it also tells whether a
    # ServiceMonitor can exist at all, so that no pass reads one from a cluster without them.
    crd = _service_monitor_crd(kube, settings)
    monitor = md.spec.monitoring.service_monitor != "off" and crd
    if md.spec.monitoring.service_monitor == "on" and not monitor:
        log.warning(
            "%s/%s: monitoring.serviceMonitor is on but CRD %s is not installed",
            md.metadata.namespace,
            md.metadata.name,
            SERVICE_MONITOR_CRD,
        )
    wanted = [stamped(m) for m in children(md, model, settings, monitor)]
    if is_autoscaled(md) and live_deployment is not None and _owns_replicas(live_deployment):
        _hand_replicas_to_hpa(kube, live_deployment)

    def live(manifest: Manifest) -> Manifest | None:
        # _observe found our Deployment already; a miss there is asked about in the apply.
        known = (
            live_deployment is not None
            and manifest["kind"] == "Deployment"
            and manifest["metadata"]["name"] == md.metadata.name
        )
        return live_deployment if known else UNREAD

    try:
        rejected = apply_children(kube, wanted, live)
    except ApiError as error:
        # 404 without an object: a kind the API server no longer serves (the ServiceMonitor
        # CRD deleted since it was last asked); the retry asks again instead of waiting for
        # the answer to expire while every child event fails the same way.
        if error.status == 404 and monitor and _service_monitors is not None:
            _service_monitors.forget()
        raise
    absent = set() if crd else {"ServiceMonitor"}
    _delete_unwanted(kube, md, {m["kind"] for m in wanted} | absent)
    return rejected


def _owns_replicas(deployment: Manifest) -> bool:
    for entry in deployment["metadata"].get("managedFields") or []:
        if entry.get("manager") != FIELD_MANAGER or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def _hand_replicas_to_hpa(kube: Kube, live: Manifest) -> None:
    """Before our apply drops `replicas`, let another manager hold the current value."""
    meta = live["metadata"]
    patch: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": live["spec"].get("replicas", 1)},
    }
    kube.request(
        "PATCH",
        manifest_path(patch),
        params={"fieldManager": HANDOVER_MANAGER, "force": "true"},
        body=patch,
        content_type="application/apply-patch+yaml",
    )


def _delete_unwanted(kube: Kube, md: ModelDeployment, wanted_kinds: set[str]) -> None:
    """An HPA, PDB or ServiceMonitor that the spec no longer asks for (read first: no write)."""
    meta = md.metadata
    for api_version, kind in OPTIONAL_KINDS:
        if kind in wanted_kinds:
            continue
        kube.delete_owned(api_version, kind, meta.namespace, meta.name, meta.uid)


def _state(plan: Plan) -> str:
    if condition_is(plan.status.conditions, "Ready"):
        return "Ready"
    if plan.status.model is None:
        return "NoModel"
    return plan.status.model.state
