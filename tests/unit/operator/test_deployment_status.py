"""The ModelDeployment planner on plain dicts of Deployments and Pods, as the API returns them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelyard_operator.api import ModelDeployment
from modelyard_operator.api.deployment import ServedModel
from modelyard_operator.api.training import ModelTrainingStatus
from modelyard_operator.builders.deployment import server_deployment
from modelyard_operator.settings import Settings
from modelyard_operator.status.deployment import (
    Observed,
    Plan,
    Resolution,
    model_state,
    plan_deployment,
    pod_failure,
    resolve_model,
)
from modelyard_server.contracts import LoadFailure
from tests.conftest import load_sample, with_changes

SETTINGS = Settings()
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
URL = "http://m.ml.svc.cluster.local:8080"
A = ServedModel(uri="pvc://models/a/model.onnx", sha256="a" * 64)
B = ServedModel(uri="pvc://models/b/model.onnx", sha256="b" * 64)
C = ServedModel(uri="pvc://models/c/model.onnx", sha256="c" * 64)


def deployment_of(model: ServedModel = A, generation: int = 1, **changes: Any) -> ModelDeployment:
    document = with_changes(
        load_sample("pinned-model-deployment.yaml"),
        {
            "metadata.name": "m",
            "metadata.namespace": "ml",
            "metadata.uid": "uid-m",
            "metadata.generation": generation,
            "spec.replicas": 2,
            "spec.model": {"uri": model.uri, "sha256": model.sha256},
            **changes,
        },
    )
    return ModelDeployment.model_validate(document)


def from_training(**changes: Any) -> ModelDeployment:
    return deployment_of(
        **{
            "spec.model": {
                "fromTraining": "digits",
                "gate": {"metric": "test_accuracy", "minimum": 0.9},
            },
            **changes,
        }
    )


def after(md: ModelDeployment, plan: Plan, **spec_changes: Any) -> ModelDeployment:
    """The object as the next pass reads it: the plan's status written, maybe a spec edit."""
    document = md.model_dump(by_alias=True, exclude_none=True)
    document["status"] = plan.status.model_dump(by_alias=True, exclude_none=True)
    if spec_changes:
        document["metadata"]["generation"] += 1
        document = with_changes(document, spec_changes)
    return ModelDeployment.model_validate(document)


def live_deployment(
    md: ModelDeployment,
    model: ServedModel,
    *,
    ready: int | None = None,
    updated: int | None = None,
    total: int | None = None,
    current: bool = True,
    progressing: tuple[str, str] = ("True", "NewReplicaSetAvailable"),
) -> dict[str, Any]:
    manifest = server_deployment(md, model, SETTINGS)
    manifest["metadata"]["generation"] = 5
    wanted = manifest["spec"].setdefault("replicas", 1)
    ready = wanted if ready is None else ready
    updated = wanted if updated is None else updated
    manifest["status"] = {
        "observedGeneration": 5 if current else 4,
        "replicas": total if total is not None else updated,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [
            {"type": "Available", "status": "True" if ready else "False", "reason": "X"},
            {"type": "Progressing", "status": progressing[0], "reason": progressing[1]},
        ],
    }
    return manifest


def pod(
    md: ModelDeployment,
    model: ServedModel,
    name: str,
    *,
    ready: bool = True,
    init: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    template = server_deployment(md, model, SETTINGS)["spec"]["template"]
    running = {"running": {"startedAt": "2025-03-01T11:59:00Z"}}
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
        },
        "status": {
            "phase": phase,
            "conditions": conditions or [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": [
                {"name": "fetch", **(init or {"state": {"terminated": {"exitCode": 0}}})}
            ],
            "containerStatuses": [{"name": "server", **(server or {"state": running})}],
        },
    }


def load_failure(reason: Any, message: str) -> dict[str, Any]:
    text = LoadFailure.create(reason, message).to_termination_message()
    return {"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": text}}}


def observe(
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    resolution: Resolution,
    *,
    claim_found: bool = True,
    later: float = 0,
) -> Observed:
    return Observed(
        resolution=resolution,
        claim_found=claim_found,
        deployment=deployment,
        pods=pods,
        url=URL,
        now=NOW + timedelta(seconds=later),
    )


def resolved(model: ServedModel) -> Resolution:
    return Resolution(model, message=f"serving {model.uri}")


def condition(plan: Plan, type_: str) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def serving(model: ServedModel = A) -> tuple[ModelDeployment, Plan]:
    """A ModelDeployment that has rolled `model` out and is Ready."""
    md = deployment_of(model)
    first = plan_deployment(md, observe(None, [], resolved(model)))
    md = after(md, first)
    pods = [pod(md, model, "m-1"), pod(md, model, "m-2")]
    plan = plan_deployment(md, observe(live_deployment(md, model), pods, resolved(model)))
    return after(md, plan), plan


# ------------------------------------------------------------------------ resolution


def training(result: dict[str, Any] | None = None, **status: Any) -> ModelTrainingStatus:
    if result is not None:
        status["result"] = {
            "generation": 3,
            "artifactUri": "pvc://models/ml/digits/u/g3",
            "modelUri": "pvc://models/ml/digits/u/g3/model.onnx",
            "sha256": "d" * 64,
            **result,
        }
    return ModelTrainingStatus.model_validate(status)


def test_a_uri_resolves_to_itself() -> None:
    assert resolve_model(deployment_of(B), False, None).model == B


def test_a_passing_training_result_is_promoted_with_its_generation() -> None:
    found = resolve_model(
        from_training(), True, training({"metrics": {"test_accuracy": 0.97}}, phase="Succeeded")
    )
    assert found.model == ServedModel(
        uri="pvc://models/ml/digits/u/g3/model.onnx",
        sha256="d" * 64,
        training="digits",
        training_generation=3,
    )
    assert "0.97 passes the gate" in found.message


@pytest.mark.parametrize(
    ("found", "status", "reason", "words"),
    [
        (False, None, "TrainingNotFound", "does not exist"),
        (True, training(phase="Running"), "TrainingNotSucceeded", "phase Running"),
        (
            True,
            training(
                phase="Failed",
                conditions=[
                    {"type": "Failed", "status": "True", "reason": "X", "message": "loss diverged"}
                ],
            ),
            "TrainingNotSucceeded",
            "loss diverged",
        ),
        (True, training({"metrics": {"test_accuracy": 0.5}}), "GateFailed", "below"),
        (True, training({"metrics": {"test_rmse": 0.5}}), "GateFailed", "not in its result"),
        (
            True,
            training({"modelUri": "s3://bucket/model.onnx", "metrics": {"test_accuracy": 1}}),
            "S3NotConfigured",
            "set spec.s3",
        ),
        (
            True,
            training({"modelUri": "gs://bucket/model.onnx", "metrics": {"test_accuracy": 1}}),
            "InvalidUri",
            "gs://bucket",
        ),
        (
            True,
            training({"modelUri": "pvc://claim-only", "metrics": {"test_accuracy": 1}}),
            "InvalidUri",
            "pvc://<claim>/<path>",
        ),
    ],
)
def test_bad_references_say_why(
    found: bool, status: ModelTrainingStatus | None, reason: str, words: str
) -> None:
    resolution = resolve_model(from_training(), found, status)
    assert resolution.model is None
    assert resolution.reason == reason
    assert words in resolution.message


def test_a_gate_maximum_bounds_error_metrics() -> None:
    md = from_training(
        **{"spec.model": {"fromTraining": "t", "gate": {"metric": "test_rmse", "maximum": 0.2}}}
    )
    assert resolve_model(md, True, training({"metrics": {"test_rmse": 0.1}})).model is not None
    failed = resolve_model(md, True, training({"metrics": {"test_rmse": 0.3}}))
    assert failed.reason == "GateFailed" and "above model.gate.maximum 0.2" in failed.message


# ------------------------------------------------------------------------ first rollout


def test_a_new_deployment_rolls_out_its_model() -> None:
    md = deployment_of(A)
    plan = plan_deployment(md, observe(None, [], resolved(A)))
    assert plan.target == A
    assert plan.status.model is not None and plan.status.model.state == "Pending"
    assert condition(plan, "Ready") == ("False", "RollingOut")
    assert condition(plan, "ModelResolved") == ("True", "Resolved")
    assert reasons(plan) == ["RollingOut"]
    assert plan.unsettled
    assert plan.status.url == URL


def test_status_follows_the_pods_readiness() -> None:
    md = deployment_of(A)
    md = after(md, plan_deployment(md, observe(None, [], resolved(A))))
    starting = [pod(md, A, "m-1", ready=False), pod(md, A, "m-2", ready=False)]
    rolling = live_deployment(md, A, ready=0, progressing=("True", "ReplicaSetUpdated"))
    plan = plan_deployment(md, observe(rolling, starting, resolved(A)))
    assert plan.status.model is not None and plan.status.model.state == "Loading"
    assert condition(plan, "Ready") == ("False", "RollingOut")

    md, plan = serving(A)
    assert plan.status.model is not None and plan.status.model.state == "Loaded"
    assert condition(plan, "Ready") == ("True", "ModelLoaded")
    assert condition(plan, "Available") == ("True", "X")
    assert plan.status.last_good_model == A
    assert (plan.status.replicas, plan.status.ready_replicas) == (2, 2)
    assert reasons(plan) == ["Ready"]
    assert not plan.unsettled


def test_pods_that_stop_being_ready_make_it_unavailable() -> None:
    md, _ = serving(A)
    unready = [pod(md, A, "m-1", ready=False), pod(md, A, "m-2")]
    plan = plan_deployment(md, observe(live_deployment(md, A, ready=1), unready, resolved(A)))
    assert condition(plan, "Ready") == ("False", "NotAvailable")
    assert "1/2 replicas available" in next(
        c.message for c in plan.status.conditions if c.type == "Ready"
    )
    assert plan.status.last_good_model == A
    assert plan.unsettled


def test_an_unchanged_world_plans_the_same_status_and_no_events() -> None:
    md, _ = serving(A)
    pods = [pod(md, A, "m-1"), pod(md, A, "m-2")]
    again = plan_deployment(md, observe(live_deployment(md, A), pods, resolved(A), later=60))
    assert again.status == md.status  # so the handler writes nothing
    assert again.events == []
    assert again.target == A


def test_unschedulable_pods_are_pending_with_the_schedulers_message() -> None:
    md = deployment_of(A)
    stuck = pod(
        md,
        A,
        "m-1",
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    del stuck["status"]["initContainerStatuses"], stuck["status"]["containerStatuses"]
    state, message, failure = model_state(A, live_deployment(md, A, ready=0), [stuck])
    assert state == "Pending" and failure is None
    assert "Insufficient nvidia.com/gpu" in message


# ------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("init", "server", "reason", "words"),
    [
        (
            load_failure("ChecksumMismatch", "sha256 of x is 1, expected 2"),
            None,
            "ChecksumMismatch",
            "expected 2",
        ),
        (
            None,
            load_failure("InvalidModel", "not an ONNX file"),
            "InvalidModel",
            "not an ONNX file",
        ),
        (
            None,
            {
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            },
            "CrashLoopBackOff",
            "last exit code 1",
        ),
        (
            None,
            {
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            },
            "OOMKilled",
            "limits.memory",
        ),
        (
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}},
            None,
            "ImagePullBackOff",
            "no such image",
        ),
    ],
)
def test_pod_failures_name_the_cause(
    init: dict[str, Any] | None, server: dict[str, Any] | None, reason: str, words: str
) -> None:
    md = deployment_of(A)
    failure = pod_failure(pod(md, A, "m-1", ready=False, init=init, server=server))
    assert failure is not None
    assert failure.reason == reason
    assert words in failure.message and "pod m-1" in failure.message


def test_a_log_tail_in_the_termination_message_is_not_a_load_failure() -> None:
    md = deployment_of(A)
    crashed = {"state": {"terminated": {"exitCode": 1, "message": "Traceback (most recent..."}}}
    assert pod_failure(pod(md, A, "m-1", server=crashed)) is None


def test_a_first_rollout_that_fails_has_nothing_to_roll_back_to() -> None:
    md = deployment_of(A)
    md = after(md, plan_deployment(md, observe(None, [], resolved(A))))
    broken = pod(md, A, "m-1", ready=False, init=load_failure("ModelNotFound", "no model file"))
    deployment = live_deployment(md, A, ready=0)
    plan = plan_deployment(md, observe(deployment, [broken], resolved(A)))
    assert plan.target == A
    assert plan.status.model is not None and plan.status.model.state == "FailedToLoad"
    assert condition(plan, "Ready") == ("False", "FailedToLoad")
    assert reasons(plan) == ["FailedToLoad"]
    assert "nothing to roll back to" in plan.events[0].message
    # The failure is reported once, not on every pass.
    again = plan_deployment(after(md, plan), observe(deployment, [broken], resolved(A)))
    assert again.events == []


def _rolling_to_b() -> tuple[ModelDeployment, list[dict[str, Any]]]:
    """Serving A, then the spec asks for B: the operator applied B's template."""
    md, _ = serving(A)
    md_b = after(
        md,
        plan_deployment(md, observe(None, [], resolved(A))),
        **{"spec.model": {"uri": B.uri, "sha256": B.sha256}},
    )
    pods_a = [pod(md, A, "m-1"), pod(md, A, "m-2")]
    plan = plan_deployment(md_b, observe(live_deployment(md, A), pods_a, resolved(B)))
    assert plan.target == B and reasons(plan) == ["RollingOut"]
    return after(md_b, plan), pods_a


def test_a_load_failure_rolls_back_to_the_last_good_model() -> None:
    md, pods_a = _rolling_to_b()
    broken = pod(md, B, "m-3", ready=False, init=load_failure("ChecksumMismatch", "sha256 differs"))
    rolling = live_deployment(md, B, ready=2, updated=1, total=3)
    plan = plan_deployment(md, observe(rolling, [*pods_a, broken], resolved(B)))
    assert plan.target == A
    assert condition(plan, "RolledBack") == ("True", "ChecksumMismatch")
    assert condition(plan, "ModelResolved") == ("False", "ModelRejected")
    rejected = plan.status.rejected_model
    assert rejected is not None and (rejected.uri, rejected.reason) == (B.uri, "ChecksumMismatch")
    assert plan.status.model is not None
    assert (plan.status.model.uri, plan.status.model.state) == (A.uri, "Loaded")
    assert reasons(plan) == ["RolledBack"]
    assert "sha256 differs" in plan.events[0].message

    # Next passes: B is not tried again, A serves, nothing more is said.
    md = after(md, plan)
    back = live_deployment(md, A)
    settled = plan_deployment(md, observe(back, pods_a, resolved(B), later=10))
    assert settled.target == A
    assert reasons(settled) == ["Ready"]  # serving A again, once the rollback has rolled out
    assert condition(settled, "Ready") == ("True", "ModelLoaded")
    again = plan_deployment(after(md, settled), observe(back, pods_a, resolved(B), later=20))
    assert again.status == after(md, settled).status and again.events == []


def test_a_missed_progress_deadline_rolls_back() -> None:
    md, pods_a = _rolling_to_b()
    never_ready = pod(md, B, "m-3", ready=False)
    stuck = live_deployment(
        md, B, ready=2, updated=1, total=3, progressing=("False", "ProgressDeadlineExceeded")
    )
    plan = plan_deployment(md, observe(stuck, [*pods_a, never_ready], resolved(B)))
    assert plan.target == A
    assert condition(plan, "RolledBack") == ("True", "ProgressDeadlineExceeded")


def test_a_stale_deployment_status_is_not_a_missed_deadline() -> None:
    md, pods_a = _rolling_to_b()
    stale = live_deployment(
        md, B, current=False, progressing=("False", "ProgressDeadlineExceeded"), ready=2, updated=0
    )
    plan = plan_deployment(md, observe(stale, pods_a, resolved(B)))
    assert plan.target == B


def test_failing_pods_of_an_earlier_template_do_not_fail_the_rollout() -> None:
    md, pods_a = _rolling_to_b()
    earlier = server_deployment(md, B, Settings(server_prestop_seconds=9))
    old = pod(md, B, "m-old", ready=False, init=load_failure("InvalidModel", "old image"))
    old["metadata"]["annotations"] = earlier["spec"]["template"]["metadata"]["annotations"]
    rolling = live_deployment(md, B, ready=2, updated=0, total=2)
    plan = plan_deployment(md, observe(rolling, [*pods_a, old], resolved(B)))
    assert plan.target == B
    assert plan.status.model is not None and plan.status.model.state == "Pending"


def test_without_auto_rollback_a_failed_rollout_stays() -> None:
    md, pods_a = _rolling_to_b()
    md = after(md, Plan(status=md.status), **{"spec.rollout.autoRollback": False})
    md = after(md, plan_deployment(md, observe(None, pods_a, resolved(B))))
    broken = pod(md, B, "m-3", ready=False, server=load_failure("WarmupFailed", "shape mismatch"))
    plan = plan_deployment(
        md,
        observe(
            live_deployment(md, B, ready=2, updated=1, total=3), [*pods_a, broken], resolved(B)
        ),
    )
    assert plan.target == B
    assert condition(plan, "Ready") == ("False", "FailedToLoad")
    assert "autoRollback is off" in plan.events[0].message


def test_a_spec_edit_lets_a_rejected_model_be_tried_again() -> None:
    md, pods_a = _rolling_to_b()
    broken = pod(md, B, "m-3", ready=False, init=load_failure("ChecksumMismatch", "x"))
    plan = plan_deployment(
        md,
        observe(
            live_deployment(md, B, ready=2, updated=1, total=3), [*pods_a, broken], resolved(B)
        ),
    )
    md = after(md, plan, **{"spec.replicas": 3})
    retried = plan_deployment(md, observe(live_deployment(md, A), pods_a, resolved(B)))
    assert retried.target == B
    assert retried.status.rejected_model is None
    assert condition(retried, "RolledBack") == ("False", "RollingOut")


def test_a_new_training_result_is_rolled_out_even_after_a_rejection() -> None:
    md, pods_a = _rolling_to_b()
    broken = pod(md, B, "m-3", ready=False, init=load_failure("ChecksumMismatch", "x"))
    plan = plan_deployment(
        md,
        observe(
            live_deployment(md, B, ready=2, updated=1, total=3), [*pods_a, broken], resolved(B)
        ),
    )
    md = after(md, plan)
    assert plan_deployment(md, observe(live_deployment(md, A), pods_a, resolved(C))).target == C


# ------------------------------------------------------------------------ bad references


def test_a_failed_gate_keeps_the_current_model_serving() -> None:
    md, _ = serving(A)
    pods = [pod(md, A, "m-1"), pod(md, A, "m-2")]
    gate = Resolution(None, "GateFailed", "test_accuracy 0.5 is below model.gate.minimum 0.9")
    plan = plan_deployment(md, observe(live_deployment(md, A), pods, gate))
    assert plan.target == A
    assert condition(plan, "ModelResolved") == ("False", "GateFailed")
    assert condition(plan, "Ready") == ("True", "ModelLoaded")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "GateFailed")]


def test_nothing_to_serve_creates_nothing_and_says_why() -> None:
    md = from_training()
    missing = Resolution(None, "TrainingNotFound", "ModelTraining 'digits' does not exist")
    plan = plan_deployment(md, observe(None, [], missing))
    assert plan.target is None
    assert condition(plan, "Ready") == ("False", "TrainingNotFound")
    assert plan.status.model is None and plan.status.url is None


def test_a_missing_claim_blocks_the_rollout() -> None:
    plan = plan_deployment(deployment_of(A), observe(None, [], resolved(A), claim_found=False))
    assert plan.target is None
    assert condition(plan, "ModelResolved") == ("False", "ClaimNotFound")
    message = next(c.message for c in plan.status.conditions if c.type == "ModelResolved")
    assert "PersistentVolumeClaim 'models'" in message


def test_transition_times_move_only_on_change() -> None:
    md, plan = serving(A)
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    pods = [pod(md, A, "m-1"), pod(md, A, "m-2")]
    later = plan_deployment(md, observe(live_deployment(md, A), pods, resolved(A), later=3600))
    assert next(c for c in later.status.conditions if c.type == "Ready") == ready


def test_scaled_to_zero_is_settled_but_not_ready() -> None:
    md = deployment_of(A, **{"spec.replicas": 0})
    md = after(md, plan_deployment(md, observe(None, [], resolved(A))))
    plan = plan_deployment(md, observe(live_deployment(md, A), [], resolved(A)))
    assert condition(plan, "Ready") == ("False", "ScaledToZero")
    assert not plan.unsettled


# ------------------------------------------------------------------------ past OOM kills


def _oom_killed(started: str, finished: str) -> dict[str, Any]:
    """A server container that restarted after an OOM kill of the run in [started, finished]."""
    terminated = {
        "exitCode": 137,
        "reason": "OOMKilled",
        "startedAt": started,
        "finishedAt": finished,
    }
    return {
        "state": {"running": {"startedAt": "2025-03-01T11:58:30Z"}},
        "lastState": {"terminated": terminated},
        "restartCount": 1,
    }


def test_a_past_oom_kill_of_a_pod_that_is_ready_again_does_not_roll_back() -> None:
    md, pods_a = _rolling_to_b()
    recovered = pod(
        md, B, "m-3", server=_oom_killed("2025-03-01T11:50:00Z", "2025-03-01T11:58:00Z")
    )
    rolling = live_deployment(md, B, ready=3, updated=1, total=3)
    plan = plan_deployment(md, observe(rolling, [*pods_a, recovered], resolved(B)))
    assert plan.target == B
    assert plan.status.rejected_model is None
    assert plan.status.model is not None and plan.status.model.state == "Loaded"
    assert "RolledBack" not in reasons(plan)


def test_a_pod_reloading_after_an_oom_kill_it_served_through_is_not_failed_to_load() -> None:
    md, _ = serving(A)
    # Ready until the kill at 11:58:00 (the run had started at 11:50), loading again now.
    went_unready = [
        {"type": "Ready", "status": "False", "lastTransitionTime": "2025-03-01T11:58:00Z"}
    ]
    reloading = pod(
        md,
        A,
        "m-1",
        conditions=went_unready,
        server=_oom_killed("2025-03-01T11:50:00Z", "2025-03-01T11:58:00Z"),
    )
    plan = plan_deployment(
        md, observe(live_deployment(md, A), [reloading, pod(md, A, "m-2")], resolved(A))
    )
    assert plan.status.model is not None and plan.status.model.state != "FailedToLoad"
    assert condition(plan, "Ready")[1] != "FailedToLoad"
    assert "FailedToLoad" not in reasons(plan)


def test_a_pod_that_is_oom_killed_before_it_ever_was_ready_still_fails_the_rollout() -> None:
    md, pods_a = _rolling_to_b()
    # Not ready since the pod started (11:49), before the killed run started (11:50).
    never_ready = [
        {"type": "Ready", "status": "False", "lastTransitionTime": "2025-03-01T11:49:00Z"}
    ]
    loading = pod(
        md,
        B,
        "m-3",
        conditions=never_ready,
        server=_oom_killed("2025-03-01T11:50:00Z", "2025-03-01T11:51:00Z"),
    )
    rolling = live_deployment(md, B, ready=2, updated=1, total=3)
    plan = plan_deployment(md, observe(rolling, [*pods_a, loading], resolved(B)))
    assert plan.target == A
    assert condition(plan, "RolledBack") == ("True", "OOMKilled")


def test_a_rejected_child_is_not_ready_and_said_once() -> None:
    md, _ = serving(A)
    message = "Service m already exists and does not belong to this ModelDeployment"
    observed = replace(
        observe(live_deployment(md, A), [pod(md, A, "m-1")], resolved(A)), rejected=(message,)
    )
    plan = plan_deployment(md, observed)
    assert condition(plan, "Ready") == ("False", "ChildRejected")
    assert condition(plan, "ChildrenApplied") == ("False", "ChildRejected")
    assert reasons(plan) == ["ChildRejected"]
    again = plan_deployment(after(md, plan), observed)
    assert "ChildRejected" not in reasons(again)
    resolved_plan = plan_deployment(
        after(md, again), observe(live_deployment(md, A), [pod(md, A, "m-1")], resolved(A))
    )
    assert condition(resolved_plan, "ChildrenApplied") == ("True", "Applied")
    assert condition(resolved_plan, "Ready") == ("True", "ModelLoaded")


@pytest.mark.parametrize(
    ("result", "promoted"),
    [
        ({}, True),  # pvc://models/ml/digits/u/g3, the training's own run
        ({"artifactUri": "s3://attacker-bucket/x", "modelUri": "s3://attacker-bucket/x/m"}, False),
        ({"artifactUri": "pvc://models/ml/digits/other-uid/g3"}, False),
        ({"artifactUri": "pvc://models/ml/digits/u/g2"}, False),  # not its generation's run
        ({"modelFile": "../../g1/model.onnx"}, False),
    ],
)
def test_only_a_result_under_the_trainings_own_run_is_promoted(
    result: dict[str, Any], promoted: bool
) -> None:
    status = training({"metrics": {"test_accuracy": 1.0}, **result}, phase="Succeeded")
    resolution = resolve_model(from_training(), True, status, ("pvc://models", "u"))
    assert (resolution.model is not None) == promoted
    if not promoted:
        assert resolution.reason == "ResultRejected"
        assert "pvc://models/ml/digits/u/g3/" in resolution.message
