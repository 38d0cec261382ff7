"""The operator touches only what it owns, against the real API server with the operator running
as a process: an object that merely has a child's name is never written or deleted, a pod that
merely has a training's labels never gives it a result, and a child that someone else edited is
put back at the next resync (5 s in the fixture)."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelyard_operator.builders.deployment import SERVER_CONTAINER
from modelyard_trainer.contracts import TrainingResult
from tests.integration.operator.kinds import MANUAL_POD_LABELS, MODELS_CLAIM, Objects
from tests.integration.operator.test_deployment import (
    _training,
    drive_pod,
    model_deployment,
    model_uri_of,
    pods_of_model,
)
from tests.integration.operator.test_deployment import condition as md_condition
from tests.integration.operator.test_deployment import has as md_has
from tests.integration.operator.test_training import (
    PLURAL,
    attempt_pods,
    phase_is,
    run_uri,
    succeed,
    training,
)
from tests.integration.support import wait_until

PLURAL_MD = "modeldeployments"


def children_rejected(obj: dict[str, Any]) -> dict[str, Any] | None:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == "ChildrenApplied" and found["status"] == "False":
            return dict(found)
    return None


def _gone(read: Any) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_a_training_leaves_same_named_objects_alone_and_never_deletes_them(
    objects: Objects,
) -> None:
    ns = objects.namespace
    networking = client.NetworkingV1Api(objects.api)
    deny_all = {"podSelector": {}, "policyTypes": ["Ingress"]}
    networking.create_namespaced_network_policy(
        ns, {"metadata": {"name": "digits", "labels": {"team": "net"}}, "spec": deny_all}
    )
    objects.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "digits-config"}, "data": {"owner": "someone else"}}
    )
    policy_before = networking.read_namespaced_network_policy("digits", ns).metadata
    config_before = objects.core.read_namespaced_config_map("digits-config", ns).metadata

    objects.create(PLURAL, training(workers=1))
    mt = objects.wait_for(PLURAL, "digits", children_rejected, what="ChildrenApplied=False")
    rejected = children_rejected(mt)
    assert rejected is not None and rejected["reason"] == "ChildRejected"
    assert "NetworkPolicy digits already exists" in rejected["message"]
    assert "ConfigMap digits-config already exists" in rejected["message"]
    assert objects.jobs("modelyard.dev/training=digits") == []  # no run on someone's config
    assert mt["status"].get("attempt", 0) == 0

    def untouched() -> None:
        policy = networking.read_namespaced_network_policy("digits", ns)
        assert policy.metadata.resource_version == policy_before.resource_version
        assert not policy.metadata.owner_references
        assert policy.spec.pod_selector.match_labels is None
        config = objects.core.read_namespaced_config_map("digits-config", ns)
        assert config.metadata.resource_version == config_before.resource_version
        assert not config.metadata.owner_references
        assert config.data == {"owner": "someone else"}

    untouched()
    objects.delete(PLURAL, "digits")
    # The children that were ours go with the training; the others stay as they were.
    wait_until(
        lambda: (
            _gone(lambda: objects.core.read_namespaced_service("digits", ns))
            and _gone(lambda: objects.core.read_namespaced_config_map("digits-progress", ns))
        ),
        timeout=60,
        what="the training's own children collected",
    )
    untouched()


def test_a_look_alike_pod_does_not_give_a_training_its_result(objects: Objects) -> None:
    mt = objects.create(PLURAL, training(workers=1))
    (real,) = attempt_pods(objects, "digits", 1, 1)
    # The training's labels and rank annotation, sorting before the Job's pod, but not the
    # Job's own selector labels (the Job controller would adopt an orphan that has them).
    labels = {
        k: v
        for k, v in real.metadata.labels.items()
        if not k.startswith("batch.kubernetes.io/") and k not in ("controller-uid", "job-name")
    }
    look_alike = {
        "metadata": {
            "name": "digits-a1-0-0",
            "labels": labels,
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": real.spec.containers[0].image,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }
    assert look_alike["metadata"]["labels"].items() >= MANUAL_POD_LABELS.items()
    forged = objects.core.create_namespaced_pod(objects.namespace, look_alike)
    message = TrainingResult(
        artifact_uri="s3://attacker-bucket/model",
        sha256="ff" * 32,
        metrics={"test_accuracy": 1.0},
    ).to_termination_message()
    objects.set_pod(forged, "Succeeded", exit_code=0, message=message)
    succeed(objects, [real], run_uri(objects, mt), accuracy=0.91)
    done = objects.wait_for(PLURAL, "digits", phase_is("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["result"]["artifactUri"] == run_uri(objects, mt)
    assert done["status"]["result"]["metrics"] == {"test_accuracy": 0.91}
    assert done["status"]["workers"]["succeeded"] == 1


def test_a_widened_trainer_role_is_put_back_within_a_resync(objects: Objects) -> None:
    ns = objects.namespace
    rbac = client.RbacAuthorizationV1Api(objects.api)
    objects.create(PLURAL, training(workers=1))
    ours = wait_until(
        lambda: rbac.list_namespaced_role(ns, label_selector="modelyard.dev/training=digits").items,
        what="the trainer Role",
    )[0]
    wanted = [r.to_dict() for r in ours.rules]
    widened = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]
    rbac.patch_namespaced_role(ours.metadata.name, ns, {"rules": widened})
    assert [r.to_dict() for r in rbac.read_namespaced_role(ours.metadata.name, ns).rules] != wanted

    wait_until(
        lambda: (
            [r.to_dict() for r in rbac.read_namespaced_role(ours.metadata.name, ns).rules] == wanted
        ),
        timeout=20,
        what="the Role's own rules back",
    )


def test_an_edited_server_deployment_is_put_back_within_a_resync(objects: Objects) -> None:
    ns = objects.namespace
    objects.create(PLURAL_MD, model_deployment(pod={"labels": MANUAL_POD_LABELS}))
    [pod] = pods_of_model(objects, "m", model_deployment()["spec"]["model"]["uri"])
    drive_pod(objects, pod, ready=True)
    objects.wait_for(PLURAL_MD, "m", md_has("Ready"), what="Ready")
    image = objects.apps.read_namespaced_deployment("m", ns).spec.template.spec.containers[0].image
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": SERVER_CONTAINER, "image": "evil:1"}]}}
        }
    }
    objects.apps.patch_namespaced_deployment("m", ns, patch)

    def image_now() -> str:
        deployment = objects.apps.read_namespaced_deployment("m", ns)
        return str(deployment.spec.template.spec.containers[0].image)

    wait_until(lambda: image_now() == image, timeout=20, what="the server image back")


def test_a_training_result_outside_its_own_run_is_never_promoted(objects: Objects) -> None:
    _training(objects)  # suspended: its status is set here as a finished run's
    gate = {"metric": "test_accuracy", "minimum": 0.9}
    objects.create(PLURAL_MD, model_deployment(model={"fromTraining": "digits", "gate": gate}))
    elsewhere = f"pvc://{MODELS_CLAIM}/elsewhere"
    forged = {
        "generation": 1,
        "artifactUri": elsewhere,
        "modelFile": "model.onnx",
        "modelUri": f"{elsewhere}/model.onnx",
        "sha256": "ee" * 32,
        "metrics": {"test_accuracy": 1.0},
    }
    objects.patch_status(
        PLURAL, "digits", {"observedGeneration": 1, "phase": "Succeeded", "result": forged}
    )
    md = objects.wait_for(PLURAL_MD, "m", md_has("ModelResolved", "False", "ResultRejected"))
    assert "outside its own output location" in md_condition(md, "ModelResolved")["message"]
    assert model_uri_of(objects, "m") is None  # nothing deployed
