"""ModelDeployment against the real API server, with the operator running as a process.

kwok stands in for the kubelet. Pods without the manual stage label turn Running and Ready by
themselves; pods with it are driven here, as a kubelet would report them (ready, or an init
container that exited with a LoadFailure in its termination message). The Deployment and
ReplicaSet controllers, the HPA controller, the garbage collector, the scheduler and admission
(Pod Security "restricted") are the real ones.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelyard_operator.builders.deployment import FETCH_CONTAINER, SERVER_CONTAINER
from modelyard_operator.names import MODEL_URI_ANNOTATION
from modelyard_server.contracts import LoadFailure
from tests.conftest import load_sample
from tests.integration.operator.conftest import OPERATOR_USER, OperatorProcess
from tests.integration.operator.kinds import MANUAL_POD_LABELS, MODELS_CLAIM, Objects, now
from tests.integration.support import AuditLog, Cluster, wait_until

PLURAL = "modeldeployments"
MODEL_A = f"pvc://{MODELS_CLAIM}/pinned/a/model.onnx"
MODEL_B = f"pvc://{MODELS_CLAIM}/pinned/b/model.onnx"
MODEL_C = f"pvc://{MODELS_CLAIM}/pinned/c/model.onnx"
SELECTOR = "modelyard.dev/deployment={}"
PINNED_SHA256 = "ab" * 32  # kwok pods fetch nothing: any digest will do


def model_deployment(name: str = "m", uri: str = MODEL_A, **spec: Any) -> dict[str, Any]:
    document = load_sample("pinned-model-deployment.yaml")
    document["metadata"] = {"name": name}
    document["spec"]["model"] = {"uri": uri, "sha256": PINNED_SHA256}
    document["spec"]["replicas"] = 1
    document["spec"].update(spec)
    return document


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return dict(found)
    return {}


def has(type_: str, status: str = "True", reason: str | None = None) -> Any:
    def test(obj: dict[str, Any]) -> bool:
        found = condition(obj, type_)
        return found.get("status") == status and (reason is None or found.get("reason") == reason)

    return test


def model_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("status") or {}).get("model") or {})


def model_uri_of(objects: Objects, name: str) -> str | None:
    try:
        deployment = objects.apps.read_namespaced_deployment(name, objects.namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    annotations = deployment.spec.template.metadata.annotations or {}
    return annotations.get(MODEL_URI_ANNOTATION)


def pods_of_model(objects: Objects, name: str, uri: str, count: int = 1) -> list[Any]:
    def probe() -> list[Any] | None:
        pods = [
            p
            for p in objects.pods(SELECTOR.format(name))
            if (p.metadata.annotations or {}).get(MODEL_URI_ANNOTATION) == uri
            and p.metadata.deletion_timestamp is None
        ]
        return pods if len(pods) >= count else None

    return wait_until(probe, timeout=60, what=f"{count} pod(s) of {uri}")


def drive_pod(
    objects: Objects, pod: Any, *, ready: bool, load_failure: LoadFailure | None = None
) -> None:
    """Report a server pod's status as its kubelet would."""
    stamp = now()
    fetched: dict[str, Any] = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    server: dict[str, Any] = {"running": {"startedAt": stamp}}
    if load_failure is not None:
        fetched = {
            "terminated": {
                "exitCode": 3,
                "reason": "Error",
                "message": load_failure.to_termination_message(),
                "startedAt": stamp,
                "finishedAt": stamp,
            }
        }
        server = {"waiting": {"reason": "PodInitializing"}}
    image = pod.spec.containers[0].image
    status = {
        "phase": "Running" if load_failure is None else "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": stamp},
        ],
        "initContainerStatuses": [
            {
                "name": FETCH_CONTAINER,
                "image": image,
                "imageID": "",
                "ready": load_failure is None,
                "restartCount": 0,
                "state": fetched,
            }
        ],
        "containerStatuses": [
            {
                "name": SERVER_CONTAINER,
                "image": image,
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": load_failure is None,
                "state": server,
            }
        ],
    }
    objects.core.patch_namespaced_pod_status(
        pod.metadata.name, objects.namespace, {"status": status}
    )


def events_of(objects: Objects, name: str) -> list[Any]:
    found = objects.core.list_namespaced_event(
        objects.namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e for e in found.items if e.involved_object.kind == "ModelDeployment"]


def quiet_writes(audit: AuditLog, namespace: str, seconds: float) -> list[Any]:
    """The operator's writes in `namespace` during `seconds` of waiting."""
    audit.barrier()
    since = audit.now()
    time.sleep(seconds)
    audit.barrier()
    return audit.writes(OPERATOR_USER, since=since, namespace=namespace)


# ------------------------------------------------------------------------ children and status


def test_children_have_the_right_fields(objects: Objects, cluster: Cluster) -> None:
    md = objects.create(PLURAL, model_deployment(replicas=2))
    ns, uid = objects.namespace, md["metadata"]["uid"]
    ready = objects.wait_for(PLURAL, "m", has("Ready"), timeout=60, what="md/m Ready")

    deployment = objects.apps.read_namespaced_deployment("m", ns)
    assert deployment.metadata.owner_references[0].uid == uid
    assert deployment.spec.replicas == 2
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0
    pod_spec = deployment.spec.template.spec
    assert pod_spec.init_containers[0].command[:3] == ["python", "-m", "modelyard_server.fetch"]
    server = pod_spec.containers[0]
    assert server.readiness_probe.http_get.path == "/v2/models/m/ready"
    assert server.liveness_probe.http_get.path == "/v2/health/live"
    assert server.lifecycle.pre_stop.sleep.seconds >= 1
    assert pod_spec.termination_grace_period_seconds > 20
    annotations = deployment.spec.template.metadata.annotations
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations[MODEL_URI_ANNOTATION] == MODEL_A

    service = objects.core.read_namespaced_service("m", ns)
    assert {p.name: p.port for p in service.spec.ports} == {
        "http": 8080,
        "grpc": 8081,
        "metrics": 9090,
    }
    pdb = client.PolicyV1Api(objects.api).read_namespaced_pod_disruption_budget("m", ns)
    assert pdb.spec.max_unavailable == 1
    with pytest.raises(ApiException) as missing:
        client.AutoscalingV2Api(objects.api).read_namespaced_horizontal_pod_autoscaler("m", ns)
    assert missing.value.status == 404

    status = ready["status"]
    assert status["model"] == {
        "uri": MODEL_A,
        "sha256": PINNED_SHA256,
        "state": "Loaded",
        "message": status["model"]["message"],
    }
    assert status["url"] == f"http://m.{ns}.svc.cluster.local:8080"
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    assert status["lastGoodModel"] == {"uri": MODEL_A, "sha256": PINNED_SHA256}
    # What users type: kubectl wait and the printer columns work from status alone.
    cluster.kubectl("-n", ns, "wait", "--for=condition=Ready", "md/m", "--timeout=5s")
    table = cluster.kubectl("-n", ns, "get", "md", "m").stdout
    assert re.search(
        r"^m\s+True\s+" + re.escape(MODEL_A) + r"\s+2\s+http://", table.splitlines()[1]
    )


def test_status_follows_the_pods_readiness(objects: Objects) -> None:
    objects.create(PLURAL, model_deployment(pod={"labels": MANUAL_POD_LABELS}))
    [pod] = pods_of_model(objects, "m", MODEL_A)
    md = objects.wait_for(PLURAL, "m", has("Ready", "False", "RollingOut"), what="rolling out")
    assert md["status"]["model"]["state"] in ("Pending", "Loading")

    drive_pod(objects, pod, ready=False)
    objects.wait_for(PLURAL, "m", lambda o: model_of(o).get("state") == "Loading", what="Loading")
    drive_pod(objects, pod, ready=True)
    md = objects.wait_for(PLURAL, "m", has("Ready"), what="Ready")
    assert md["status"]["model"]["state"] == "Loaded"
    assert md["status"]["readyReplicas"] == 1

    drive_pod(objects, pod, ready=False)
    objects.wait_for(PLURAL, "m", has("Ready", "False", "NotAvailable"), what="not Ready again")
    objects.wait_for(PLURAL, "m", has("Available", "False"), what="the Deployment unavailable")


def test_hpa_bounds_and_its_replica_count_survive_reconciles(
    objects: Objects, audit: AuditLog
) -> None:
    spec = {"autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetCpuUtilization": 50}}
    document = model_deployment(**spec)
    del document["spec"]["replicas"]
    objects.create(PLURAL, document)
    ns = objects.namespace
    autoscaling = client.AutoscalingV2Api(objects.api)
    hpa = wait_until(
        lambda: _read(lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("m", ns)),
        what="HPA m",
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 4)
    assert hpa.spec.metrics[0].resource.target.average_utilization == 50
    assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 300

    # The real HPA controller brings the Deployment up to minReplicas.
    wait_until(
        lambda: objects.apps.read_namespaced_deployment("m", ns).spec.replicas == 2,
        timeout=90,
        what="the HPA to scale to minReplicas",
    )
    objects.wait_for(
        PLURAL, "m", lambda o: (o.get("status") or {}).get("readyReplicas") == 2, what="2 ready"
    )
    deployment = objects.apps.read_namespaced_deployment("m", ns)
    for entry in deployment.metadata.managed_fields:
        if entry.manager == "modelyard-operator":
            assert "f:replicas" not in entry.fields_v1.get("f:spec", {})

    # Scale as the HPA would, then make the operator reconcile (an edit of the object).
    objects.apps.patch_namespaced_deployment_scale("m", ns, {"spec": {"replicas": 3}})
    objects.custom.patch_namespaced_custom_object(
        "modelyard.dev", "v1alpha1", ns, PLURAL, "m", {"metadata": {"annotations": {"poke": "1"}}}
    )
    objects.wait_for(
        PLURAL, "m", lambda o: (o.get("status") or {}).get("replicas") == 3, what="3 replicas"
    )
    writes = quiet_writes(audit, ns, 8)
    assert [w for w in writes if w.resource == "deployments"] == []
    assert objects.apps.read_namespaced_deployment("m", ns).spec.replicas == 3


def _read(call: Any) -> Any:
    try:
        return call()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


# ------------------------------------------------------------------------ promotion


def _training(objects: Objects) -> None:
    """A suspended ModelTraining, whose status the test then sets as a finished run's."""
    document = load_sample("digits.yaml")
    document["metadata"] = {"name": "digits"}
    document["spec"]["runPolicy"]["suspend"] = True
    objects.create("modeltrainings", document)
    objects.wait_for(
        "modeltrainings",
        "digits",
        lambda o: (o.get("status") or {}).get("phase") == "Suspended",
        what="training suspended",
    )


def _finish_training(objects: Objects, generation: int, accuracy: float) -> str:
    uid = objects.get("modeltrainings", "digits")["metadata"]["uid"]
    uri = f"pvc://{MODELS_CLAIM}/{objects.namespace}/digits/{uid}/g{generation}"
    model_uri = f"{uri}/model.onnx"
    objects.patch_status(
        "modeltrainings",
        "digits",
        {
            "observedGeneration": 1,
            "phase": "Succeeded",
            "result": {
                "generation": generation,
                "artifactUri": uri,
                "modelFile": "model.onnx",
                "modelUri": model_uri,
                "sha256": f"{generation:02d}" * 32,
                "sizeBytes": 1234,
                "metrics": {"test_accuracy": accuracy},
            },
        },
    )
    return model_uri


def test_promotion_from_a_training_and_a_gate_that_blocks_it(objects: Objects) -> None:
    gate = {"metric": "test_accuracy", "minimum": 0.9}
    document = model_deployment(model={"fromTraining": "digits", "gate": gate})
    objects.create(PLURAL, document)
    md = objects.wait_for(
        PLURAL, "m", has("ModelResolved", "False", "TrainingNotFound"), what="TrainingNotFound"
    )
    assert "'digits'" in condition(md, "ModelResolved")["message"]
    assert model_uri_of(objects, "m") is None  # nothing to serve: no Deployment

    _training(objects)
    objects.wait_for(PLURAL, "m", has("ModelResolved", "False", "TrainingNotSucceeded"))

    first = _finish_training(objects, 2, 0.95)
    md = objects.wait_for(PLURAL, "m", has("Ready"), timeout=60, what="serving generation 2")
    assert md["status"]["model"]["uri"] == first
    assert md["status"]["model"]["sha256"] == "02" * 32
    assert md["status"]["model"]["trainingGeneration"] == 2
    assert model_uri_of(objects, "m") == first

    _finish_training(objects, 3, 0.5)
    md = objects.wait_for(PLURAL, "m", has("ModelResolved", "False", "GateFailed"))
    assert "0.5 is below model.gate.minimum 0.9" in condition(md, "ModelResolved")["message"]
    assert condition(md, "Ready")["status"] == "True"  # generation 2 keeps serving
    assert model_uri_of(objects, "m") == first
    assert any(e.reason == "GateFailed" and e.type == "Warning" for e in events_of(objects, "m"))

    third = _finish_training(objects, 4, 0.97)
    objects.wait_for(PLURAL, "m", lambda o: model_of(o).get("uri") == third and has("Ready")(o))
    assert model_uri_of(objects, "m") == third


# ------------------------------------------------------------------------ rollback


def _serving_a(objects: Objects, **spec: Any) -> Any:
    """A ModelDeployment whose (manually driven) pod serves model A."""
    objects.create(PLURAL, model_deployment(pod={"labels": MANUAL_POD_LABELS}, **spec))
    [pod] = pods_of_model(objects, "m", MODEL_A)
    drive_pod(objects, pod, ready=True)
    objects.wait_for(PLURAL, "m", has("Ready"), what="serving A")
    return pod


def test_a_load_failure_is_rolled_back_and_the_old_pod_serves_throughout(
    objects: Objects,
) -> None:
    old = _serving_a(objects)
    objects.patch_spec(PLURAL, "m", {"model": {"uri": MODEL_B}})
    [new] = pods_of_model(objects, "m", MODEL_B)
    drive_pod(
        objects,
        new,
        ready=False,
        load_failure=LoadFailure.create("ChecksumMismatch", "sha256 of b is 00, expected 11"),
    )
    md = objects.wait_for(PLURAL, "m", has("RolledBack", "True", "ChecksumMismatch"))
    assert "expected 11" in condition(md, "RolledBack")["message"]
    assert md["status"]["rejectedModel"]["uri"] == MODEL_B
    assert md["status"]["model"]["uri"] == MODEL_A
    assert model_uri_of(objects, "m") == MODEL_A
    assert any(e.reason == "RolledBack" for e in events_of(objects, "m"))

    objects.wait_for(PLURAL, "m", has("Ready"), what="Ready on A again")
    wait_until(lambda: not pods_of_model_now(objects, MODEL_B), what="B's pod removed")
    still = objects.core.read_namespaced_pod(old.metadata.name, objects.namespace)
    assert still.metadata.uid == old.metadata.uid  # never replaced, so it served throughout
    # B is not tried again while the spec stays as it is.
    time.sleep(6)
    assert model_uri_of(objects, "m") == MODEL_A


def pods_of_model_now(objects: Objects, uri: str) -> list[Any]:
    return [
        p
        for p in objects.pods(SELECTOR.format("m"))
        if (p.metadata.annotations or {}).get(MODEL_URI_ANNOTATION) == uri
    ]


def test_pods_that_never_become_ready_are_rolled_back_at_the_progress_deadline(
    objects: Objects,
) -> None:
    _serving_a(objects, rollout={"progressDeadlineSeconds": 10})
    started = time.monotonic()
    objects.patch_spec(PLURAL, "m", {"model": {"uri": MODEL_C}})
    pods_of_model(objects, "m", MODEL_C)  # created, never ready
    md = objects.wait_for(
        PLURAL, "m", has("RolledBack", "True", "ProgressDeadlineExceeded"), timeout=90
    )
    assert time.monotonic() - started >= 10
    assert md["status"]["rejectedModel"]["uri"] == MODEL_C
    assert model_uri_of(objects, "m") == MODEL_A


# ------------------------------------------------------------------------ bad references


def test_bad_references_are_conditions_not_crashes(
    objects: Objects, operator: OperatorProcess
) -> None:
    with pytest.raises(ApiException) as invalid:
        objects.create(PLURAL, model_deployment(name="bad-uri", uri="s3://bucket/model.onnx"))
    assert invalid.value.status == 422 and "spec.model.uri" in invalid.value.body

    objects.create(PLURAL, model_deployment(name="no-claim", uri="pvc://missing/model.onnx"))
    md = objects.wait_for(PLURAL, "no-claim", has("ModelResolved", "False", "ClaimNotFound"))
    assert "'missing'" in condition(md, "ModelResolved")["message"]
    assert condition(md, "Ready")["reason"] == "ClaimNotFound"
    assert model_uri_of(objects, "no-claim") is None

    objects.create(PLURAL, model_deployment(name="no-training", model={"fromTraining": "nope"}))
    objects.wait_for(PLURAL, "no-training", has("Ready", "False", "TrainingNotFound"))

    # A Service of the same name that someone else made is not taken over.
    objects.core.create_namespaced_service(
        objects.namespace,
        {"metadata": {"name": "taken"}, "spec": {"ports": [{"port": 80}]}},
    )
    objects.create(PLURAL, model_deployment(name="taken"))
    md = objects.wait_for(PLURAL, "taken", has("Ready", "False", "ChildRejected"))
    assert "Service taken already exists" in condition(md, "Ready")["message"]
    children = condition(md, "ChildrenApplied")  # as a ModelTraining says it
    assert (children["status"], children["reason"]) == ("False", "ChildRejected")
    assert "Service taken already exists" in children["message"]
    service = objects.core.read_namespaced_service("taken", objects.namespace)
    assert not service.metadata.owner_references
    assert operator.healthy()


# ------------------------------------------------------------------------ lifecycle


def test_deletion_garbage_collects_every_child(objects: Objects) -> None:
    document = model_deployment(autoscaling={"minReplicas": 1, "maxReplicas": 3})
    del document["spec"]["replicas"]
    objects.create(PLURAL, document)
    ns = objects.namespace
    autoscaling = client.AutoscalingV2Api(objects.api)
    policy = client.PolicyV1Api(objects.api)
    reads = [
        lambda: objects.apps.read_namespaced_deployment("m", ns),
        lambda: objects.core.read_namespaced_service("m", ns),
        lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("m", ns),
        lambda: policy.read_namespaced_pod_disruption_budget("m", ns),
    ]
    for read in reads:
        wait_until(lambda read=read: _read(read), what="child created")
    objects.delete(PLURAL, "m")
    for read in reads:
        wait_until(lambda read=read: _read(read) is None, timeout=60, what="child collected")
    wait_until(lambda: not objects.pods(SELECTOR.format("m")), timeout=60, what="pods gone")


def test_an_unchanged_object_and_an_operator_restart_write_nothing(
    objects: Objects, operator: OperatorProcess, audit: AuditLog
) -> None:
    objects.create(PLURAL, model_deployment(replicas=2))
    ns = objects.namespace
    objects.wait_for(PLURAL, "m", has("Ready"), what="Ready")
    time.sleep(2)  # let the last status write and its watch event settle
    before = objects.get(PLURAL, "m")["metadata"]["resourceVersion"]
    deployment_before = objects.apps.read_namespaced_deployment("m", ns).metadata.resource_version

    # Several resync periods (5 s in the fixture) of an unchanged world.
    assert quiet_writes(audit, ns, 12) == []

    audit.barrier()
    since = audit.now()
    operator.stop()
    operator.start()
    reconciled = wait_until(
        lambda: _reconciles(operator) or None, timeout=30, what="the new operator to reconcile"
    )
    assert reconciled > 0
    time.sleep(6)  # one more resync
    audit.barrier()
    writes = audit.writes(OPERATOR_USER, since=since, namespace=ns)
    assert writes == [], [(w.verb, w.resource, w.name, w.code) for w in writes]
    assert objects.get(PLURAL, "m")["metadata"]["resourceVersion"] == before
    after = objects.apps.read_namespaced_deployment("m", ns).metadata.resource_version
    assert after == deployment_before


def _reconciles(operator: OperatorProcess) -> float:
    pattern = re.compile(
        r'^modelyard_reconciles_total\{kind="ModelDeployment",result="ok"\} ([0-9.e+]+)$', re.M
    )
    found = pattern.search(operator.metrics())
    return float(found.group(1)) if found else 0.0


def test_switching_to_autoscaling_keeps_the_current_replicas(objects: Objects) -> None:
    objects.create(PLURAL, model_deployment(replicas=3))
    ns = objects.namespace
    objects.wait_for(
        PLURAL, "m", lambda o: (o.get("status") or {}).get("readyReplicas") == 3, what="3 ready"
    )
    objects.patch_spec(
        PLURAL, "m", {"replicas": None, "autoscaling": {"minReplicas": 1, "maxReplicas": 5}}
    )
    autoscaling = client.AutoscalingV2Api(objects.api)
    wait_until(
        lambda: _read(lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("m", ns)),
        what="HPA m",
    )
    time.sleep(3)  # the operator's apply without replicas has landed by now
    # Dropping the field from our apply would have reset the Deployment to one replica; it was
    # handed over first, and the HPA (no metrics here) leaves 3 alone inside its bounds.
    deployment = objects.apps.read_namespaced_deployment("m", ns)
    assert deployment.spec.replicas == 3
    owners = [
        e.manager
        for e in deployment.metadata.managed_fields
        if "f:replicas" in (e.fields_v1 or {}).get("f:spec", {})
    ]
    assert "modelyard-operator" not in owners


def test_a_service_monitor_exists_only_with_its_crd_and_monitoring_on(
    objects: Objects, cluster: Cluster
) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    extensions = client.ApiextensionsV1Api(objects.api)
    ns = objects.namespace
    objects.create(PLURAL, model_deployment())
    objects.wait_for(PLURAL, "m", has("Ready"), what="Ready")

    def monitor() -> Any:
        return _read(
            lambda: objects.custom.get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", ns, "servicemonitors", "m"
            )
        )

    assert monitor() is None
    extensions.create_custom_resource_definition(crd)
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com"
        )
        found = wait_until(monitor, timeout=30, what="ServiceMonitor m")
        assert found["spec"]["endpoints"][0]["port"] == "metrics"
        objects.patch_spec(PLURAL, "m", {"monitoring": {"serviceMonitor": "off"}})
        wait_until(lambda: monitor() is None, timeout=30, what="ServiceMonitor m deleted")
    finally:
        extensions.delete_custom_resource_definition("servicemonitors.monitoring.coreos.com")
    # The CRD is gone while the operator still remembers it: a new ModelDeployment's first
    # ServiceMonitor gets a 404, after which the operator asks again instead of failing every
    # pass until its answer expires (which held a status back for over a minute).
    objects.create(PLURAL, model_deployment(name="m2"))
    objects.wait_for(
        PLURAL,
        "m2",
        lambda o: (o.get("status") or {}).get("observedGeneration") == 1,
        timeout=20,
        what="m2 reconciled",
    )
