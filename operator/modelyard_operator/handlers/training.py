"""Reconcile one ModelTraining: observe, plan (pure), then carry the plan out."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from datetime import UTC, datetime

from pydantic import ValidationError

from modelyard_operator.api.meta import API_VERSION
from modelyard_operator.api.training import ModelTraining, ModelTrainingStatus
from modelyard_operator.builders.common import with_spec_hash
from modelyard_operator.builders.training import (
    KIND,
    jobs,
    progress_config_map_name,
    static_children,
)
from modelyard_operator.handlers.common import (
    apply_children,
    dumped,
    invalid_spec_status,
    namespace_terminating,
    rejection,
    write_status,
)
from modelyard_operator.kube import ApiError, Kube
from modelyard_operator.names import TRAINING_LABEL
from modelyard_operator.ownership import Manifest, controlled_by
from modelyard_operator.settings import Settings
from modelyard_operator.status.training import (
    Observed,
    Plan,
    creating_too_long,
    parse_progress,
    plan_training,
)
from modelyard_operator.validation import format_validation_error
from modelyard_trainer.contracts import PROGRESS_DATA_KEY, ProgressRecord

log = logging.getLogger(__name__)
ACTIVE_PHASES = ("Pending", "Running", "Exporting")
# Pods whose Events one pass reads at most (see _pod_events).
EVENT_READS_PER_PASS = 4
# Set when the API server refused to list Events: not asked again until a restart.
_events_refused = False


def reconcile_training(
    kube: Kube, settings: Settings, namespace: str, name: str
) -> tuple[float | None, str | None]:
    """One idempotent pass. Returns (seconds until the next pass, phase)."""
    body = kube.get(API_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None, None
    try:
        mt = ModelTraining.model_validate(body)
    except ValidationError as error:
        status = invalid_spec_status(
            body, format_validation_error(error), ("Failed", True), phase="Failed"
        )
        write_status(kube, body, status)
        return None, "Failed"

    selector = {TRAINING_LABEL: name}
    pods = kube.list("v1", "Pod", namespace, selector)
    now = datetime.now(UTC)
    observed = Observed(
        jobs=kube.list("batch/v1", "Job", namespace, selector),
        pods=pods,
        progress=_read_progress(kube, mt),
        now=now,
        pod_events=_pod_events(kube, namespace, creating_too_long(pods, now)),
    )
    plan = plan_training(mt, observed)
    rejected = _carry_out(kube, settings, mt, plan)
    if rejected:
        if namespace_terminating(kube, namespace):
            return None, None  # its deletion takes this object too
        # Planned again knowing it: no attempt starts, and the condition says why.
        plan = plan_training(mt, replace(observed, rejected=tuple(rejected)))
    # After the children: the attempt it reports exists.
    write_status(kube, body, dumped(plan.status), ModelTrainingStatus)
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)

    again = plan.requeue_after
    if plan.status.phase in ACTIVE_PHASES:
        again = min(again or settings.progress_seconds, settings.progress_seconds)
    return min(again or settings.resync_seconds, settings.resync_seconds), plan.status.phase


def _carry_out(kube: Kube, settings: Settings, mt: ModelTraining, plan: Plan) -> list[str]:
    """Children, then Jobs; returns why children could not be written (the Job of a new
    attempt is created only when every other child is ours and applied)."""
    namespace, uid = mt.metadata.namespace, mt.metadata.uid
    children = [with_spec_hash(c) for c in static_children(mt, settings)]
    rejected: list[str] = []
    if plan.keep_children:
        rejected = apply_children(kube, children)
    else:
        for child in children:
            meta = child["metadata"]
            kube.delete_owned(child["apiVersion"], child["kind"], namespace, meta["name"], uid)
    for name in plan.delete_jobs:  # the planner's Jobs are ours (controlled by our uid)
        kube.delete("batch/v1", "Job", namespace, name)
    if plan.create_attempt is not None and not rejected:
        created: list[str] = []
        for manifest in jobs(mt, plan.create_attempt, settings):
            refused = rejection(manifest, functools.partial(kube.create_owned, manifest))
            if refused:
                # Half a gang would wait for its other half: the attempt is not started.
                for name in created:
                    kube.delete_owned("batch/v1", "Job", namespace, name, uid)
                rejected.append(refused)
                break
            created.append(manifest["metadata"]["name"])
    return rejected


def _pod_events(kube: Kube, namespace: str, pods: list[Manifest]) -> dict[str, list[Manifest]]:
    """The Events of pods that are slow to create their containers, by pod uid: a few pods
    are enough to say why the gang cannot start, and bound the reads of one pass."""
    global _events_refused
    events: dict[str, list[Manifest]] = {}
    for pod in [] if _events_refused else pods[:EVENT_READS_PER_PASS]:
        uid = str(pod["metadata"].get("uid") or "")
        try:
            events[uid] = kube.events_about(namespace, uid)
        except ApiError as error:
            if error.status != 403:
                raise
            # Every other reason (scheduler, image, configuration) is still reported.
            _events_refused = True
            log.warning(
                "may not list Events (%s): a worker that cannot attach or mount a volume is "
                "not reported; grant list on events to the operator",
                error.reason,
            )
            break
    return events


def _read_progress(kube: Kube, mt: ModelTraining) -> ProgressRecord | None:
    """Rank 0's record from our progress ConfigMap (never from one of that name that is not
    ours); a malformed one is logged and ignored."""
    namespace, name = mt.metadata.namespace, mt.metadata.name
    config_map = kube.get_managed("v1", "ConfigMap", namespace, progress_config_map_name(name))
    if config_map is None or not controlled_by(config_map, mt.metadata.uid):
        return None
    text = (config_map.get("data") or {}).get(PROGRESS_DATA_KEY)
    record = parse_progress(text)
    if text and record is None:
        log.warning("ignoring a malformed progress record of %s/%s", namespace, name)
    return record
