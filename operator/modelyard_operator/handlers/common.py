"""Shared by both kinds: status written only when something changed; children applied side
by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from modelyard_operator.api.meta import Condition
from modelyard_operator.builders.common import Manifest
from modelyard_operator.kube import ApiError, Kube
from modelyard_operator.status.conditions import set_condition

T = TypeVar("T")
# Threads that apply one reconcile's children at once: a new ModelTraining has six static
# children, each a read and a write; one after the other they made its first reconcile the
# slowest of all (seconds on a loaded API server). Shared by every worker, so the calls in
# flight stay bounded (workers x 2 kinds + this).
_appliers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="apply")


def for_each(action: Callable[[T], object], items: Iterable[T]) -> None:
    """`action` on every item, side by side; re-raises the first failure once all are done."""
    futures = [_appliers.submit(action, item) for item in items]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise errors[0]


def dumped(model: BaseModel) -> dict[str, Any]:
    """A status (or a part of one) as it is written: field aliases, no nulls."""
    return model.model_dump(by_alias=True, exclude_none=True)


def normalized_status(body: Manifest, model: type[BaseModel]) -> dict[str, Any]:
    """The live status as our own model would write it, so that equal means unchanged."""
    try:
        return dumped(model.model_validate(body.get("status") or {}))
    except ValueError:
        return {}


def write_status(
    kube: Kube, body: Manifest, status: dict[str, Any], model: type[BaseModel] | None = None
) -> bool:
    """Replace the status unless it is already what we would write; False when unchanged."""
    live = normalized_status(body, model) if model else (body.get("status") or {})
    if live == status:
        return False
    try:
        kube.replace_status(body, status)
    except ApiError as error:
        if error.status in (409, 422):  # the object moved on; the next pass sees the new one
            return False
        raise
    return True


def namespace_terminating(kube: Kube, namespace: str) -> bool:
    """A namespace being deleted refuses new objects (403) while it deletes ours."""
    try:
        found = kube.request("GET", f"/api/v1/namespaces/{namespace}")
    except ApiError as error:
        return error.status == 404
    return bool(found["metadata"].get("deletionTimestamp"))


def invalid_spec_status(body: Manifest, message: str) -> dict[str, Any]:
    """A spec that the API server accepted but our models refuse (e.g. an older CRD)."""
    live = body.get("status") or {}
    conditions = [Condition.model_validate(c) for c in live.get("conditions") or []]
    generation = int(body["metadata"].get("generation", 1))
    conditions = set_condition(
        conditions, "Failed", True, "InvalidSpec", message, datetime.now(UTC), generation
    )
    return {
        **live,
        "observedGeneration": generation,
        "phase": "Failed",
        "conditions": [dumped(c) for c in conditions],
    }
