"""Shared by both kinds: status written only when something changed; children applied side
by side, each ownership-checked, a child that cannot be applied reported rather than raised."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from modelyard_operator.api.meta import Condition
from modelyard_operator.kube import UNREAD, ApiError, ForeignObject, Kube
from modelyard_operator.ownership import Manifest
from modelyard_operator.status.conditions import set_condition

T = TypeVar("T")
R = TypeVar("R")
# Answers that retrying the same request cannot change (invalid, forbidden).
REFUSED = (400, 403, 422)
# Threads that apply one reconcile's children at once: a new ModelTraining has six static
# children, each a read and a write; one after the other they made its first reconcile the
# slowest of all (seconds on a loaded API server). Shared by every worker, so the calls in
# flight stay bounded (workers x 2 kinds + this).
_appliers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="apply")


def for_each(action: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`action` on every item, side by side; its results in order, or the first failure
    re-raised once all are done."""
    futures = [_appliers.submit(action, item) for item in items]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise errors[0]
    return [future.result() for future in futures]


def rejection(manifest: Manifest, write: Callable[[], object]) -> str | None:
    """Why the child cannot be written, or None once `write` did its part. Conflicts,
    throttling and outages are raised: the work queue retries them with backoff."""
    try:
        write()
    except ForeignObject as error:
        return str(error)
    except ApiError as error:
        if error.status not in REFUSED:
            raise
        name = f"{manifest['kind']} {manifest['metadata']['name']}"
        return f"the API server refused {name}: {error.message}"
    return None


def apply_children(
    kube: Kube,
    manifests: Iterable[Manifest],
    live: Callable[[Manifest], Manifest | None] = lambda _: UNREAD,
) -> list[str]:
    """Apply every child, side by side (`Kube.apply_owned`); returns why some could not be.
    `live`: the live object of a child when the caller read it already."""

    def apply(manifest: Manifest) -> str | None:
        return rejection(manifest, lambda: kube.apply_owned(manifest, live(manifest)))

    return [found for found in for_each(apply, manifests) if found is not None]


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


def invalid_spec_status(
    body: Manifest, message: str, condition: tuple[str, bool], phase: str | None = None
) -> dict[str, Any]:
    """The status of a custom resource whose spec the API server accepted but our models refuse
    (e.g. an older CRD): `condition` (type, status) set with reason InvalidSpec, and `phase`
    when the kind has one. Conditions that our models cannot read either (written under an
    older CRD too) are replaced rather than raised on, so that the refusal is still said."""
    live = body.get("status") or {}
    try:
        conditions = [Condition.model_validate(c) for c in live.get("conditions") or []]
    except ValidationError:
        conditions = []
    generation = int(body["metadata"].get("generation", 1))
    condition_type, condition_status = condition
    conditions = set_condition(
        conditions,
        condition_type,
        condition_status,
        "InvalidSpec",
        message,
        datetime.now(UTC),
        generation,
    )
    status = {
        **live,
        "observedGeneration": generation,
        "conditions": [dumped(c) for c in conditions],
    }
    if phase is not None:
        status["phase"] = phase
    return status
