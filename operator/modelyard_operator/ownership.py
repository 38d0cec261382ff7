"""What a manifest is, and who controls an object: the client's ownership checks and the
planners' choice of their own children read the same controller reference."""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]


def controller_uid(obj: Manifest) -> str | None:
    """The uid of the object's controller (the ownerReference with controller: true)."""
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid"))
    return None


def controlled_by(obj: Manifest, uid: str) -> bool:
    """Whether `uid` controls the object: only such an object is ours to write or delete (a
    label or a name can be copied by anyone; a controller reference to our uid is made by us,
    or by a controller of ours such as the Job controller for its pods)."""
    return bool(uid) and controller_uid(obj) == uid
