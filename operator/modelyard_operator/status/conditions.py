"""Conditions as the Kubernetes API conventions define them, and the kube object pieces
that status functions read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from modelyard_operator.api.meta import Condition


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event that a reconcile posts about its custom resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> list[Condition]:
    """The list with one condition set; its transition time moves only when status changes."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or old.status != value
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:4096],
        last_transition_time=rfc3339(now) if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


# Both kinds: False while a child cannot be applied (its name is taken by an object that is not
# ours, or the API server refuses it); set True again once it can; absent until it happens.
CHILDREN_APPLIED = "ChildrenApplied"
CHILD_REJECTED = "ChildRejected"


def children_applied(
    conditions: list[Condition], rejected: Sequence[str], now: datetime, generation: int
) -> tuple[list[Condition], Event | None]:
    """The ChildrenApplied condition after a pass that applied every child but `rejected`
    (why each could not be), and the Event to post when that is news."""
    was = next((c for c in conditions if c.type == CHILDREN_APPLIED), None)
    if rejected:
        message = "; ".join(rejected)
        news = was is None or was.status != "False" or was.message != message[:4096]
        conditions = set_condition(
            conditions, CHILDREN_APPLIED, False, CHILD_REJECTED, message, now, generation
        )
        return conditions, Event("Warning", CHILD_REJECTED, message) if news else None
    if was is None or was.status == "True":
        return conditions, None
    message = "every child is applied"
    conditions = set_condition(
        conditions, CHILDREN_APPLIED, True, "Applied", message, now, generation
    )
    return conditions, Event("Normal", "ChildrenApplied", message)


def condition_is(conditions: list[Condition], type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in conditions)


def object_condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """A condition of a plain Kubernetes object (Job, Pod, Deployment), or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def object_condition_true(obj: dict[str, Any], type_: str) -> bool:
    condition = object_condition(obj, type_)
    return condition is not None and condition.get("status") == "True"


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return dict(status)
    return None


def humanize_seconds(seconds: float) -> str:
    """3h05m, 4m20s, 9s: short enough for a printer column."""
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
