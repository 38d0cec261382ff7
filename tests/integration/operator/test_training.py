"""ModelTraining against the real API server, with the operator running as a process.

kwok stands in for the kubelet; the pods carry the label that turns kwok's stages off, so these
tests drive pod phases, exit codes and termination messages themselves, as a kubelet reports
them. Everything else (Job controller, garbage collector, scheduler, admission) is real.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from modelyard_trainer.contracts import ProgressRecord, TrainingFailure, TrainingResult
from tests.conftest import load_sample
from tests.integration.operator.conftest import OPERATOR_USER, OperatorProcess
from tests.integration.operator.kinds import MANUAL_POD_LABELS, Objects, now
from tests.integration.support import AuditLog, wait_until

PLURAL = "modeltrainings"


def training(name: str = "digits", workers: int = 2, **spec: Any) -> dict[str, Any]:
    document = load_sample("digits.yaml")
    document["metadata"] = {"name": name}
    document["spec"].update({"workers": workers, "pod": {"labels": MANUAL_POD_LABELS}}, **spec)
    return document


def phase_is(*phases: str) -> Any:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def attempt_pods(objects: Objects, name: str, attempt: int, count: int) -> list[Any]:
    selector = f"modelyard.dev/training={name},modelyard.dev/attempt={attempt}"
    return wait_until(
        lambda: p if len(p := objects.pods(selector)) == count else None,
        timeout=60,
        what=f"{count} pods of attempt {attempt}",
    )


def rank_of(pod: Any) -> int:
    """Rank 0 is index 0 of the Job <name>-a<attempt>; with a pvc:// output and several
    workers, ranks 1..N-1 are indexes 0..N-2 of the Job <name>-a<attempt>-w."""
    index = int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])
    peer = pod.metadata.labels["batch.kubernetes.io/job-name"].endswith("-w")
    return index + 1 if peer else index


def by_rank(pods: list[Any]) -> list[Any]:
    return sorted(pods, key=rank_of)


def wait_scheduled(objects: Objects, pod: Any) -> None:
    """Rank 0 is bound to a node once the models claim is bound, a moment after the test made
    it; until then the real scheduler reports it Unschedulable (and would overwrite a status
    that a test wrote, which WorkersBlocked then reports)."""
    wait_until(
        lambda: (
            objects.core.read_namespaced_pod(pod.metadata.name, objects.namespace).spec.node_name
        ),
        timeout=60,
        what=f"{pod.metadata.name} scheduled",
    )


def run_all(objects: Objects, pods: list[Any]) -> None:
    """As a kubelet would: only a pod bound to a node runs."""
    for pod in pods:
        wait_scheduled(objects, pod)
        objects.set_pod(pod, "Running")


def run_uri(objects: Objects, mt: dict[str, Any], generation: int = 1) -> str:
    """Where the run's artifacts must be: its result is refused anywhere else."""
    uid = mt["metadata"]["uid"]
    return (
        f"pvc://modelyard-models/{objects.namespace}/{mt['metadata']['name']}/{uid}/g{generation}"
    )


def succeed(objects: Objects, pods: list[Any], uri: str, accuracy: float = 0.97) -> None:
    result = TrainingResult(
        artifact_uri=uri, sha256="ab" * 32, size_bytes=4242, metrics={"test_accuracy": accuracy}
    )
    for pod in pods:
        message = result.to_termination_message() if rank_of(pod) == 0 else ""
        objects.set_pod(pod, "Succeeded", exit_code=0, message=message)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_children_and_environment_in_the_cluster(objects: Objects, workers: int) -> None:
    mt = objects.create(PLURAL, training(workers=workers))
    pods = attempt_pods(objects, "digits", 1, workers)
    ns = objects.namespace
    jobs = objects.jobs("modelyard.dev/training=digits,modelyard.dev/attempt=1")
    assert sorted(j.metadata.name for j in jobs) == ["digits-a1", "digits-a1-w"][: min(workers, 2)]
    assert sum(j.spec.completions for j in jobs) == workers
    for job in jobs:
        assert job.spec.completions == job.spec.parallelism
        assert job.spec.completion_mode == "Indexed"
        assert job.metadata.owner_references[0].uid == mt["metadata"]["uid"]
    service = objects.core.read_namespaced_service("digits", ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
    objects.core.read_namespaced_config_map("digits-config", ns)
    objects.core.read_namespaced_config_map("digits-progress", ns)
    rbac = client.RbacAuthorizationV1Api(objects.api)
    assert rbac.read_namespaced_role("digits-trainer", ns).rules[0].resource_names == [
        "digits-progress"
    ]
    client.NetworkingV1Api(objects.api).read_namespaced_network_policy("digits", ns)
    assert sorted(rank_of(p) for p in pods) == list(range(workers))
    for pod in pods:  # admitted under Pod Security "restricted", with one rank each
        assert pod.spec.subdomain == "digits"
        env = {e.name: e for e in pod.spec.containers[0].env}
        assert env["PET_MASTER_ADDR"].value == "digits-a1-0.digits"
        assert env["PET_NNODES"].value == str(workers)
        # Only rank 0 mounts the (ReadWriteOnce) output claim.
        claims = [v.persistent_volume_claim for v in pod.spec.volumes if v.persistent_volume_claim]
        expected = ["modelyard-models"] if rank_of(pod) == 0 else []
        assert [c.claim_name for c in claims] == expected
    rank0 = next(p for p in pods if rank_of(p) == 0)
    assert rank0.spec.hostname == "digits-a1-0"  # the rendezvous address above resolves to it


def test_required_spread_puts_each_worker_on_its_own_node(objects: Objects) -> None:
    """The real scheduler places the gang: three workers on the three nodes of the cluster."""
    spec = training(workers=3, scheduling={"spreadWorkers": "required"})
    spec["spec"]["training"]["batchSize"] = 96
    objects.create(PLURAL, spec)
    pods = attempt_pods(objects, "digits", 1, 3)

    def nodes() -> list[str] | None:
        names = [p.spec.node_name for p in objects.pods("modelyard.dev/attempt=1")]
        return names if len(names) == 3 and all(names) else None

    placed = wait_until(nodes, timeout=30, what="3 scheduled workers")
    assert len(set(placed)) == 3, placed
    for pod in pods:
        (constraint,) = pod.spec.topology_spread_constraints
        assert constraint.when_unsatisfiable == "DoNotSchedule"
        assert constraint.label_selector.match_labels == {
            "modelyard.dev/training": "digits",
            "modelyard.dev/attempt": "1",
        }


def test_a_gang_that_loses_one_of_its_jobs_restarts_whole(objects: Objects) -> None:
    """Deleting the peers' Job ends the attempt: rank 0's Job goes too, and attempt 2 starts
    once every pod of attempt 1 is gone."""
    objects.create(PLURAL, training(workers=2))
    run_all(objects, attempt_pods(objects, "digits", 1, 2))
    objects.wait_for(PLURAL, "digits", phase_is("Running"))
    objects.batch.delete_namespaced_job(
        "digits-a1-w", objects.namespace, propagation_policy="Background"
    )
    second = attempt_pods(objects, "digits", 2, 2)
    assert sorted(rank_of(p) for p in second) == [0, 1]
    assert objects.jobs("modelyard.dev/attempt=1") == []


def test_a_failed_worker_starts_a_new_attempt_with_a_new_rendezvous_id(objects: Objects) -> None:
    objects.create(PLURAL, training())
    first = attempt_pods(objects, "digits", 1, 2)
    run_all(objects, first)
    objects.wait_for(PLURAL, "digits", phase_is("Running"))
    failure = TrainingFailure(exit_code=1, reason="PeerLost", message="rank 1 is gone", rank=0)
    objects.set_pod(first[1], "Failed", exit_code=137, reason="OOMKilled")
    objects.set_pod(first[0], "Failed", exit_code=1, message=failure.to_termination_message())
    second = attempt_pods(objects, "digits", 2, 2)
    ids = {
        e.value for p in first + second for e in p.spec.containers[0].env if e.name == "PET_RDZV_ID"
    }
    assert len(ids) == 2
    mt = objects.wait_for(PLURAL, "digits", lambda o: o["status"].get("attempt") == 2)
    assert mt["status"]["failedAttempts"] == 1
    assert mt["status"]["lastFailure"]["attempt"] == 1
    assert condition(mt, "Restarting")["status"] == "True"
    assert objects.jobs("modelyard.dev/attempt=1") == []  # the old gang is gone


def test_an_exhausted_backoff_fails_with_its_reason(objects: Objects) -> None:
    objects.create(PLURAL, training(workers=1, runPolicy={"backoffLimit": 1}))
    for attempt in (1, 2):
        (pod,) = attempt_pods(objects, "digits", attempt, 1)
        objects.set_pod(pod, "Failed", exit_code=1, reason="Error", message="boom")
    mt = objects.wait_for(PLURAL, "digits", phase_is("Failed"))
    failed = condition(mt, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert mt["status"]["failedAttempts"] == 2
    assert objects.jobs("modelyard.dev/attempt=3") == []


def test_a_permanent_exit_code_fails_without_retry(objects: Objects) -> None:
    objects.create(PLURAL, training(workers=1))
    (pod,) = attempt_pods(objects, "digits", 1, 1)
    failure = TrainingFailure(exit_code=66, reason="ParityCheckFailed", message="max diff 0.3")
    objects.set_pod(pod, "Failed", exit_code=66, message=failure.to_termination_message())
    mt = objects.wait_for(PLURAL, "digits", phase_is("Failed"))
    assert condition(mt, "Failed")["reason"] == "ParityCheckFailed"
    assert mt["status"]["failedAttempts"] == 0
    assert mt["status"]["lastFailure"]["permanent"] is True
    assert objects.jobs("modelyard.dev/attempt=2") == []


def test_an_eviction_does_not_use_up_a_retry(objects: Objects) -> None:
    objects.create(PLURAL, training(workers=2, runPolicy={"backoffLimit": 0}))
    rank0, rank1 = by_rank(attempt_pods(objects, "digits", 1, 2))
    run_all(objects, [rank0, rank1])
    # The eviction API marks the pod; the Job's podFailurePolicy ignores it, and its peer then
    # loses the gang, which ends the attempt.
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    objects.set_pod(rank1, "Failed", exit_code=143, conditions=[disruption])
    lost = TrainingFailure(exit_code=1, reason="PeerLost", message="rank 1 is gone", rank=0)
    objects.set_pod(rank0, "Failed", exit_code=1, message=lost.to_termination_message())
    attempt_pods(objects, "digits", 2, 2)
    mt = objects.get(PLURAL, "digits")
    assert mt["status"]["failedAttempts"] == 0
    assert mt["status"]["phase"] != "Failed"


def test_progress_and_result_reach_status(objects: Objects) -> None:
    mt = objects.create(PLURAL, training(workers=2))
    pods = attempt_pods(objects, "digits", 1, 2)
    run_all(objects, pods)
    record = ProgressRecord(
        generation=1,
        attempt=1,
        stage="Training",
        epoch=6,
        epochs=30,
        percent=20.0,
        loss=0.5,
        eta_seconds=125.0,
        samples_per_second=900.0,
    )
    objects.core.patch_namespaced_config_map(
        "digits-progress", objects.namespace, {"data": {"progress.json": record.to_json()}}
    )
    status = objects.wait_for(PLURAL, "digits", lambda o: o["status"]["progress"].get("epoch") == 6)
    assert status["status"]["progress"]["eta"] == "2m05s"
    uri = f"pvc://modelyard-models/{objects.namespace}/digits/{mt['metadata']['uid']}/g1"
    succeed(objects, pods, uri)
    done = objects.wait_for(PLURAL, "digits", phase_is("Succeeded"))
    assert done["status"]["result"]["modelUri"] == uri + "/model.onnx"
    assert done["status"]["result"]["metrics"]["test_accuracy"] == 0.97
    assert condition(done, "Succeeded")["status"] == "True"


def test_a_spec_edit_after_success_is_a_second_run_in_a_second_directory(objects: Objects) -> None:
    mt = objects.create(PLURAL, training(workers=1))
    uid = mt["metadata"]["uid"]
    base = f"pvc://modelyard-models/{objects.namespace}/digits/{uid}"
    succeed(objects, attempt_pods(objects, "digits", 1, 1), f"{base}/g1")
    objects.wait_for(PLURAL, "digits", phase_is("Succeeded"))
    objects.patch_spec(PLURAL, "digits", {"training": {"epochs": 31}})
    (pod,) = attempt_pods(objects, "digits", 2, 1)
    assert {e.name: e.value for e in pod.spec.containers[0].env}["MODELYARD_RUN_GENERATION"] == "2"
    succeed(objects, [pod], f"{base}/g2", accuracy=0.98)
    done = objects.wait_for(
        PLURAL, "digits", lambda o: (o["status"].get("result") or {}).get("generation") == 2
    )
    assert done["status"]["result"]["artifactUri"].endswith("/g2")
    assert done["status"]["observedGeneration"] == 2


def test_suspend_and_resume(objects: Objects) -> None:
    objects.create(PLURAL, training(workers=2))
    run_all(objects, attempt_pods(objects, "digits", 1, 2))
    objects.patch_spec(PLURAL, "digits", {"runPolicy": {"suspend": True}})
    objects.wait_for(PLURAL, "digits", phase_is("Suspended"))
    wait_until(
        lambda: objects.jobs("modelyard.dev/training=digits") == [], timeout=30, what="no Job"
    )
    objects.patch_spec(PLURAL, "digits", {"runPolicy": {"suspend": False}})
    attempt_pods(objects, "digits", 2, 2)
    mt = objects.get(PLURAL, "digits")
    assert mt["status"]["failedAttempts"] == 0
    assert condition(mt, "Suspended")["status"] == "False"


def test_ttl_deletes_the_children_but_not_the_training(objects: Objects) -> None:
    mt = objects.create(PLURAL, training(workers=1, runPolicy={"ttlSecondsAfterFinished": 2}))
    succeed(objects, attempt_pods(objects, "digits", 1, 1), run_uri(objects, mt))
    objects.wait_for(PLURAL, "digits", phase_is("Succeeded"))
    wait_until(
        lambda: (
            not objects.jobs("modelyard.dev/training=digits")
            and not objects.core.list_namespaced_config_map(
                objects.namespace, label_selector="modelyard.dev/training=digits"
            ).items
        ),
        timeout=30,
        what="children deleted",
    )
    assert objects.get(PLURAL, "digits")["status"]["phase"] == "Succeeded"


def test_deleting_the_training_collects_every_child(objects: Objects) -> None:
    objects.create(PLURAL, training(workers=2))
    attempt_pods(objects, "digits", 1, 2)
    objects.delete(PLURAL, "digits")

    def nothing_left() -> bool:
        selector = "modelyard.dev/training=digits"
        ns = objects.namespace
        return not (
            objects.jobs(selector)
            or objects.pods(selector)
            or objects.core.list_namespaced_config_map(ns, label_selector=selector).items
            or objects.core.list_namespaced_service(ns, label_selector=selector).items
        )

    wait_until(nothing_left, timeout=60, what="garbage collection")


def test_an_unchanged_training_causes_no_write(objects: Objects, audit: AuditLog) -> None:
    objects.create(PLURAL, training(workers=1))
    run_all(objects, attempt_pods(objects, "digits", 1, 1))
    objects.wait_for(PLURAL, "digits", phase_is("Running"))
    time.sleep(3)  # let the last reconcile of the setup finish
    audit.barrier()
    since = audit.now()
    time.sleep(12)  # several progress passes (1 s) and two resyncs (5 s)
    audit.barrier()
    writes = audit.writes(OPERATOR_USER, namespace=objects.namespace, since=since)
    assert writes == [], [f"{w.verb} {w.resource}/{w.name}" for w in writes]


def test_a_killed_operator_restarts_without_duplicates_or_lost_status(
    objects: Objects, operator: OperatorProcess
) -> None:
    objects.create(PLURAL, training(workers=2))
    pods = attempt_pods(objects, "digits", 1, 2)
    run_all(objects, pods)
    before = objects.wait_for(PLURAL, "digits", phase_is("Running"))
    operator.kill()
    objects.set_pod(pods[0], "Failed", exit_code=1, message="lost while the operator was down")
    operator.start()
    attempt_pods(objects, "digits", 2, 2)
    after = objects.wait_for(PLURAL, "digits", lambda o: o["status"].get("attempt") == 2)
    assert after["status"]["failedAttempts"] == 1
    assert after["status"]["startTime"] == before["status"]["startTime"]
    jobs = objects.jobs("modelyard.dev/training=digits")
    assert sorted(j.metadata.name for j in jobs) == ["digits-a2", "digits-a2-w"]
    assert (
        len(
            objects.core.list_namespaced_service(
                objects.namespace, label_selector="modelyard.dev/training=digits"
            ).items
        )
        == 1
    )


def test_unschedulable_workers_surface_the_schedulers_message(objects: Objects) -> None:
    spec = training(workers=1, runPolicy={"scheduleTimeoutSeconds": 1})
    spec["spec"]["scheduling"] = {"nodeSelector": {"modelyard.dev/no-such-node": "true"}}
    objects.create(PLURAL, spec)
    mt = objects.wait_for(
        PLURAL,
        "digits",
        lambda o: any(
            c["type"] == "Unschedulable" and c["status"] == "True"
            for c in (o.get("status") or {}).get("conditions", [])
        ),
        timeout=60,
    )
    assert "node" in condition(mt, "Unschedulable")["message"]
    assert mt["status"]["phase"] == "Pending"


def blocked_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions", [])
    found = next((c for c in conditions if c["type"] == "WorkersBlocked"), None)
    return found if found and found["status"] == "True" else None


def test_an_unschedulable_worker_is_a_condition_within_60_seconds(objects: Objects) -> None:
    """The real scheduler finds no node for the selector; the operator says so well before
    runPolicy.scheduleTimeoutSeconds (300 s by default) raises Unschedulable."""
    spec = training(workers=2, scheduling={"nodeSelector": {"modelyard.dev/no-such-node": "true"}})
    objects.create(PLURAL, spec)
    mt = objects.wait_for(PLURAL, "digits", blocked_condition, timeout=60)
    found = blocked_condition(mt)
    assert found is not None and found["reason"] == "Unschedulable"
    assert found["message"].startswith("pod digits-a1-")
    assert "node" in found["message"]  # the scheduler's own words: 0/3 nodes are available...
    assert mt["status"]["phase"] == "Pending"


def wait_in_container(objects: Objects, pod: Any, reason: str, message: str) -> None:
    """What a kubelet reports of a container it cannot start (this cluster's nodes have no
    kubelet: the test writes the status the way one would; e2e tests see a real one)."""
    stamp = now()
    status = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp}],
        "containerStatuses": [
            {
                "name": pod.spec.containers[0].name,
                "ready": False,
                "restartCount": 0,
                "image": pod.spec.containers[0].image,
                "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ],
    }
    objects.core.patch_namespaced_pod_status(
        pod.metadata.name, objects.namespace, {"status": status}
    )


def test_an_image_that_cannot_be_pulled_is_a_condition_and_clears_once_running(
    objects: Objects,
) -> None:
    objects.create(PLURAL, training(workers=2))
    rank0, rank1 = by_rank(attempt_pods(objects, "digits", 1, 2))
    wait_scheduled(objects, rank0)
    objects.set_pod(rank0, "Running")
    started = time.monotonic()
    wait_in_container(objects, rank1, "ImagePullBackOff", 'Back-off pulling image "trainer:typo"')
    mt = objects.wait_for(PLURAL, "digits", blocked_condition, timeout=60)
    assert time.monotonic() - started < 60
    found = blocked_condition(mt)
    assert found is not None and found["reason"] == "ImagePullBackOff"
    assert found["message"].startswith(f"pod {rank1.metadata.name} (rank 1) cannot start")
    assert "trainer:typo" in found["message"]
    objects.set_pod(rank1, "Running")
    cleared = objects.wait_for(PLURAL, "digits", phase_is("Running"), timeout=60)
    assert condition(cleared, "WorkersBlocked")["status"] == "False"


def test_a_volume_that_cannot_be_attached_is_a_condition_from_the_pods_events(
    objects: Objects,
) -> None:
    """A pod stuck in ContainerCreating says nothing in its status: the attach/detach
    controller's Event (posted here as it would post it) names the Multi-Attach."""
    objects.create(PLURAL, training(workers=2))
    rank0, rank1 = by_rank(attempt_pods(objects, "digits", 1, 2))
    wait_scheduled(objects, rank0)
    objects.set_pod(rank1, "Running")
    objects.set_pod(rank0, "Pending")  # scheduled, ContainerCreating
    text = (
        'Multi-Attach error for volume "pvc-0a1b" Volume is already used by pod(s) other-0 '
        "and is attached to another node"
    )
    objects.core.create_namespaced_event(
        objects.namespace,
        {
            "metadata": {"generateName": "digits-a1-0."},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": objects.namespace,
                "name": rank0.metadata.name,
                "uid": rank0.metadata.uid,
            },
            "reason": "FailedAttachVolume",
            "message": text,
            "type": "Warning",
            "source": {"component": "attachdetach-controller"},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        },
    )
    mt = objects.wait_for(PLURAL, "digits", blocked_condition, timeout=60)
    found = blocked_condition(mt)
    assert found is not None and found["reason"] == "FailedAttachVolume"
    assert found["message"].startswith(f"pod {rank0.metadata.name} (rank 0) cannot start")
    assert "Multi-Attach" in found["message"]


def test_the_active_deadline_fails_a_run_and_stops_its_pods(objects: Objects) -> None:
    # The deadline counts from the Job's start, running or not: the pod is not marked as run
    # (on a busy machine the Job controller may delete it before the scheduler binds it).
    objects.create(PLURAL, training(workers=1, runPolicy={"activeDeadlineSeconds": 3}))
    attempt_pods(objects, "digits", 1, 1)
    mt = objects.wait_for(PLURAL, "digits", phase_is("Failed"), timeout=30)
    assert condition(mt, "Failed")["reason"] == "DeadlineExceeded"
    wait_until(
        lambda: objects.jobs("modelyard.dev/training=digits") == [], timeout=30, what="no Job"
    )


def test_transitions_are_events_and_metrics(objects: Objects, operator: OperatorProcess) -> None:
    mt = objects.create(PLURAL, training(workers=1))
    succeed(objects, attempt_pods(objects, "digits", 1, 1), run_uri(objects, mt))
    objects.wait_for(PLURAL, "digits", phase_is("Succeeded"))
    reasons = wait_until(
        lambda: (
            r
            if {"AttemptCreated", "RunSucceeded"}
            <= (
                r := {
                    e.reason
                    for e in objects.core.list_namespaced_event(objects.namespace).items
                    if e.involved_object.kind == "ModelTraining"
                }
            )
            else None
        ),
        timeout=20,
        what="events",
    )
    assert "AttemptCreated" in reasons
    metrics = operator.metrics()
    assert 'modelyard_reconciles_total{kind="ModelTraining",result="ok"}' in metrics
    assert 'modelyard_resources{kind="ModelTraining",phase="Succeeded"}' in metrics
    assert "modelyard_reconcile_duration_seconds_bucket" in metrics
