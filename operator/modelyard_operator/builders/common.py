"""Names, labels, ownership and pod pieces shared by every child."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelyard_operator.api.meta import (
    API_VERSION,
    ObjectMeta,
    PodOverrides,
    ResourceRequirements,
    Scheduling,
)
from modelyard_operator.names import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF,
    SPEC_HASH_ANNOTATION,
)
from modelyard_operator.ownership import Manifest

# sizeLimit of the disk-backed emptyDirs of our pods, so that a pod that fills one is evicted
# instead of filling its node's disk (/dev/shm is memory-backed, sized by spec.shmSize).
# A training worker's /tmp: with an s3:// output the run (model, checkpoints) is staged there.
TRAINER_SCRATCH_SIZE = "8Gi"
# A server pod's model directory, that the fetched model lies in, and its /tmp.
SERVER_MODEL_SIZE = "8Gi"
SERVER_SCRATCH_SIZE = "1Gi"


def labels(kind_label: str, name: str, component: str) -> dict[str, str]:
    """Selector-safe labels of every child; never copied from the custom resource's own.
    `kind_label`: names.TRAINING_LABEL or names.DEPLOYMENT_LABEL."""
    return {
        NAME_LABEL: PART_OF,
        INSTANCE_LABEL: name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        kind_label: name,
    }


def owner_reference(kind: str, meta: ObjectMeta) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child(
    api_version: str,
    kind: str,
    name: str,
    owner: tuple[str, ObjectMeta],
    child_labels: dict[str, str],
    body: dict[str, Any],
) -> Manifest:
    """A complete child manifest, owned by the custom resource."""
    owner_kind, meta = owner
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": child_labels,
            "ownerReferences": [owner_reference(owner_kind, meta)],
        },
        **body,
    }


def spec_hash(obj: Any) -> str:
    """A short hash of what we want (a manifest, a pod template): equal for equal content,
    whatever the order of its keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def with_spec_hash(manifest: Manifest) -> Manifest:
    """Stamp the manifest with a hash of itself: a change of what we want, removals included
    (which a comparison of the fields we set cannot see), changes the annotation, and so is
    applied (see kube.drifted)."""
    metadata = manifest["metadata"]
    annotations = {**metadata.get("annotations", {}), SPEC_HASH_ANNOTATION: spec_hash(manifest)}
    return {**manifest, "metadata": {**metadata, "annotations": annotations}}


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level securityContext that Pod Security 'restricted' admits."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def scheduling_fields(scheduling: Scheduling) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity, priority class and scheduler, when set."""
    fields: dict[str, Any] = {}
    if scheduling.node_selector:
        fields["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        fields["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    if scheduling.affinity:
        fields["affinity"] = scheduling.affinity
    if scheduling.priority_class_name:
        fields["priorityClassName"] = scheduling.priority_class_name
    if scheduling.scheduler_name:
        fields["schedulerName"] = scheduling.scheduler_name
    return fields


def pod_override_fields(pod: PodOverrides, service_account: str | None) -> dict[str, Any]:
    """Pod-spec fields from the user's overrides (image pull secrets, service account)."""
    fields: dict[str, Any] = {}
    if pod.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": n} for n in pod.image_pull_secrets]
    account = pod.service_account_name or service_account
    if account:
        fields["serviceAccountName"] = account
    return fields


def user_env(pod: PodOverrides) -> list[dict[str, Any]]:
    return [e.model_dump(by_alias=True, exclude_none=True) for e in pod.env]


def resources(requirements: ResourceRequirements) -> dict[str, Any]:
    parts = {"requests": requirements.requests, "limits": requirements.limits}
    return {key: dict(value) for key, value in parts.items() if value}
