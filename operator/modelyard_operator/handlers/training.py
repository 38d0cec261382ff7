"""Reconcile one ModelTraining: observe, plan (pure), then carry the plan out."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pydantic import ValidationError

from modelyard_operator.api.meta import API_VERSION
from modelyard_operator.api.training import ModelTraining, ModelTrainingStatus
from modelyard_operator.builders.common import Manifest, with_spec_hash
from modelyard_operator.builders.training import (
    KIND,
    KIND_LABEL,
    job,
    progress_config_map_name,
    static_children,
)
from modelyard_operator.handlers.common import (
    dumped,
    for_each,
    invalid_spec_status,
    namespace_terminating,
    write_status,
)
from modelyard_operator.kube import ApiError, Kube
from modelyard_operator.settings import Settings
from modelyard_operator.status.training import Observed, Plan, plan_training
from modelyard_trainer.config import format_validation_error
from modelyard_trainer.contracts import PROGRESS_DATA_KEY, ProgressRecord

log = logging.getLogger(__name__)
ACTIVE_PHASES = ("Pending", "Running", "Exporting")


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
        status = invalid_spec_status(body, format_validation_error(error))
        write_status(kube, body, status)
        return None, "Failed"

    selector = {f"modelyard.dev/{KIND_LABEL}": name}
    observed = Observed(
        jobs=kube.list("batch/v1", "Job", namespace, selector),
        pods=kube.list("v1", "Pod", namespace, selector),
        progress=_read_progress(kube, namespace, name),
        now=datetime.now(UTC),
    )
    plan = plan_training(mt, observed)

    try:
        _carry_out(kube, settings, mt, plan)
    except ApiError as error:
        if error.status == 403 and namespace_terminating(kube, namespace):
            return None, None  # its deletion takes this object too
        raise
    # After the children: the attempt it reports exists.
    write_status(kube, body, dumped(plan.status), ModelTrainingStatus)
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)

    again = plan.requeue_after
    if plan.status.phase in ACTIVE_PHASES:
        again = min(again or settings.progress_seconds, settings.progress_seconds)
    return min(again or settings.resync_seconds, settings.resync_seconds), plan.status.phase


def _carry_out(kube: Kube, settings: Settings, mt: ModelTraining, plan: Plan) -> None:
    children = [with_spec_hash(c) for c in static_children(mt, settings)]
    if plan.keep_children:
        for_each(kube.apply_if_changed, children)
    else:
        _delete(kube, children)
    for job_name in plan.delete_jobs:
        kube.delete("batch/v1", "Job", mt.metadata.namespace, job_name)
    if plan.create_attempt is not None:
        kube.create(job(mt, plan.create_attempt, settings))


def _read_progress(kube: Kube, namespace: str, name: str) -> ProgressRecord | None:
    config_map = kube.get_managed("v1", "ConfigMap", namespace, progress_config_map_name(name))
    text = ((config_map or {}).get("data") or {}).get(PROGRESS_DATA_KEY)
    if not text:
        return None
    try:
        return ProgressRecord.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        log.warning("ignoring a malformed progress record of %s/%s", namespace, name)
        return None


def _delete(kube: Kube, manifests: list[Manifest]) -> None:
    for manifest in manifests:
        meta = manifest["metadata"]
        kube.delete(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
