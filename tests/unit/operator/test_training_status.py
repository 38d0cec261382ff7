"""The training planner on plain Job and Pod objects: attempts, failures, results, progress."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelyard_operator.api import ModelTraining
from modelyard_operator.handlers.common import dumped
from modelyard_operator.status.training import (
    Observed,
    Plan,
    creating_too_long,
    parse_progress,
    plan_training,
)
from modelyard_trainer.contracts import ProgressRecord, TrainingFailure, TrainingResult
from tests.conftest import load_sample, with_changes

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
UID = "0f3c2a9e-1111-2222-3333-444455556666"


def training(status: dict[str, Any] | None = None, **changes: Any) -> ModelTraining:
    document = with_changes(
        load_sample("digits.yaml"), {"metadata.uid": UID, "metadata.generation": 1, **changes}
    )
    if status is not None:
        document["status"] = status
    return ModelTraining.model_validate(document)


def job(
    attempt: int,
    condition: str | None = None,
    generation: int = 1,
    reason: str = "",
    peers: bool = False,
) -> dict[str, Any]:
    """Rank 0's Job of an attempt, or (`peers`) the Job of its ranks 1..N-1."""
    conditions = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    return {
        "metadata": {
            "name": f"digits-a{attempt}-w" if peers else f"digits-a{attempt}",
            "uid": job_uid(attempt, peers),
            "ownerReferences": [{"kind": "ModelTraining", "uid": UID, "controller": True}],
            "labels": {
                "modelyard.dev/attempt": str(attempt),
                "modelyard.dev/generation": str(generation),
            },
        },
        "status": {"conditions": conditions},
    }


def gang(
    attempt: int, condition: str | None = None, generation: int = 1, reason: str = ""
) -> list[dict[str, Any]]:
    """Both Jobs of a 2-worker attempt (the sample's output is a claim), in one state."""
    return [job(attempt, condition, generation, reason, peers) for peers in (False, True)]


def job_uid(attempt: int, peers: bool = False) -> str:
    return f"job-uid-{attempt}-w" if peers else f"job-uid-{attempt}"


def pod(
    attempt: int,
    rank: int,
    phase: str = "Running",
    ready: bool = True,
    terminated: dict[str, Any] | None = None,
    disrupted: bool = False,
    unschedulable_since: datetime | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """A pod of the attempt's Job (`owner`: the uid of another controller)."""
    owner = owner or job_uid(attempt, peers=rank > 0)
    job_name = f"digits-a{attempt}-w" if rank > 0 else f"digits-a{attempt}"
    index = rank - 1 if rank > 0 else 0
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True"})
    if unschedulable_since:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes have enough nvidia.com/gpu",
            }
        )
    created = (unschedulable_since or NOW - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    container: dict[str, Any] = {"name": "trainer", "state": {}}
    if terminated is not None:
        container["state"] = {"terminated": terminated}
    return {
        "metadata": {
            "name": f"digits-a{attempt}-{rank}-x",
            "creationTimestamp": created,
            "ownerReferences": [
                {"kind": "Job", "name": job_name, "uid": owner, "controller": True}
            ],
            "labels": {"modelyard.dev/attempt": str(attempt)},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": [container]},
    }


def plan(
    mt: ModelTraining,
    jobs: list[Any],
    pods: list[Any],
    progress: ProgressRecord | None = None,
    now: datetime = NOW,
) -> Plan:
    return plan_training(mt, Observed(jobs=jobs, pods=pods, progress=progress, now=now))


def running_status(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "phase": "Running",
        "attempt": attempt,
        "startTime": "2026-11-29T11:00:00Z",
        **extra,
    }


def condition(p: Plan, type_: str) -> str:
    return next(c.status for c in p.status.conditions if c.type == type_)


def test_a_new_training_creates_its_first_attempt() -> None:
    p = plan(training(), [], [])
    assert p.create_attempt == 1
    assert p.status.attempt == 1
    assert p.status.phase == "Pending"
    assert p.status.observed_generation == 1
    assert condition(p, "Created") == "True"


def test_the_same_observation_plans_the_same_status() -> None:
    first = plan(training(), [], [])
    settled = training(first.status.model_dump(by_alias=True, exclude_none=True))
    second = plan(settled, gang(1), [])
    assert second.create_attempt is None
    assert second.status.conditions == first.status.conditions
    assert second.events == []


def test_all_workers_running_is_running() -> None:
    p = plan(training(running_status(phase="Pending")), gang(1), [pod(1, 0), pod(1, 1)])
    assert p.status.phase == "Running"
    assert p.status.workers.active == 2
    assert condition(p, "Running") == "True"


def test_a_rank_that_finished_before_rank_zero_keeps_the_run_running() -> None:
    # Rank 0 exports after the others have exited: the status must not go back to Pending.
    done = {"exitCode": 0, "reason": "Completed"}
    pods = [pod(1, 0), pod(1, 1, phase="Succeeded", ready=False, terminated=done)]
    p = plan(training(running_status(phase="Exporting")), gang(1), pods)
    assert p.status.phase in ("Running", "Exporting")
    assert condition(p, "Running") == "True"


def test_a_failed_worker_restarts_the_gang_once_its_pods_are_gone() -> None:
    failure = TrainingFailure(exit_code=1, reason="PeerLost", message="rank 1 vanished", rank=0)
    pods = [
        pod(
            1, 0, "Failed", terminated={"exitCode": 1, "message": failure.to_termination_message()}
        ),
        pod(1, 1, "Running"),
    ]
    failed = plan(training(running_status()), gang(1, "Failed"), pods)
    assert failed.delete_jobs == ["digits-a1", "digits-a1-w"]
    assert failed.create_attempt is None  # rank 1 still runs: no overlap of attempts
    assert failed.status.failed_attempts == 1
    assert failed.status.last_failure is not None
    assert failed.status.last_failure.reason == "PeerLost"
    assert condition(failed, "Restarting") == "True"
    after = training(failed.status.model_dump(by_alias=True, exclude_none=True))
    gone = plan(after, [], [])
    assert gone.create_attempt == 2
    assert gone.status.failed_attempts == 1  # not counted twice


def test_a_failed_peer_restarts_the_whole_gang_and_is_named_by_its_rank() -> None:
    """Rank 1 is index 0 of the peers' Job: its failure is rank 1's, and rank 0's Job, still
    running, goes too."""
    pods = [pod(1, 0), pod(1, 1, "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})]
    jobs = [job(1), job(1, "Failed", peers=True)]
    failed = plan(training(running_status()), jobs, pods)
    assert failed.delete_jobs == ["digits-a1", "digits-a1-w"]
    assert failed.status.last_failure is not None
    assert (failed.status.last_failure.rank, failed.status.last_failure.reason) == (1, "OOMKilled")
    assert condition(failed, "Restarting") == "True"


def test_the_run_succeeds_only_when_both_jobs_are_complete() -> None:
    done = {"exitCode": 0, "message": ""}
    rank0 = succeeded_rank(1, RUN_DIR)
    p = plan(training(running_status()), [job(1, "Complete"), job(1, peers=True)], [rank0])
    assert p.status.phase != "Succeeded"
    both = plan(
        training(running_status()),
        gang(1, "Complete"),
        [rank0, pod(1, 1, "Succeeded", terminated=done)],
    )
    assert both.status.phase == "Succeeded"


def test_the_first_peer_is_not_rank_zero() -> None:
    """Index 0 of the peers' Job carries the same completion-index annotation as rank 0: its
    termination message is no result."""
    peer = succeeded_rank(1, RUN_DIR)
    peer["metadata"]["ownerReferences"][0]["uid"] = job_uid(1, peers=True)
    rank0 = pod(1, 0, "Succeeded", terminated={"exitCode": 0})
    p = plan(training(running_status()), gang(1, "Complete"), [rank0, peer])
    assert p.status.phase == "Failed"
    assert p.status.result is None


def test_a_gang_whose_job_is_gone_ends_and_the_next_attempt_waits_for_its_pods() -> None:
    pods = [pod(1, 0), pod(1, 1)]
    broken = plan(training(running_status()), [job(1)], pods)  # the peers' Job was deleted
    assert broken.delete_jobs == ["digits-a1"]
    assert broken.create_attempt is None
    assert broken.status.phase == "Pending"
    after = training(broken.status.model_dump(by_alias=True, exclude_none=True))
    assert plan(after, [], pods).create_attempt is None  # its pods still run
    assert plan(after, [], []).create_attempt == 2


def test_a_gang_whose_job_is_being_deleted_ends_too() -> None:
    jobs = gang(1)
    jobs[1]["metadata"]["deletionTimestamp"] = "2026-11-29T11:59:00Z"
    p = plan(training(running_status()), jobs, [pod(1, 0), pod(1, 1)])
    assert p.delete_jobs == ["digits-a1"]  # the other one goes already
    assert p.create_attempt is None


def test_one_worker_has_one_job() -> None:
    rank0 = succeeded_rank(1, RUN_DIR)
    p = plan(training(running_status(), **{"spec.workers": 1}), [job(1, "Complete")], [rank0])
    assert p.status.phase == "Succeeded"


def test_a_failure_is_counted_once_however_often_it_is_seen() -> None:
    pods = [pod(1, 0, "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})]
    first = plan(training(running_status()), gang(1, "Failed"), pods)
    again = plan(
        training(first.status.model_dump(by_alias=True, exclude_none=True)),
        gang(1, "Failed"),
        pods,
    )
    assert first.status.failed_attempts == again.status.failed_attempts == 1
    assert again.events == []


def test_exhausted_backoff_fails_the_run() -> None:
    status = running_status(attempt=4, failedAttempts=3)
    pods = [pod(4, 0, "Failed", terminated={"exitCode": 1, "reason": "Error"})]
    p = plan(training(status), gang(4, "Failed"), pods)
    assert p.status.phase == "Failed"
    assert condition(p, "Failed") == "True"
    assert (
        next(c.reason for c in p.status.conditions if c.type == "Failed") == "BackoffLimitExceeded"
    )


def test_a_permanent_exit_code_fails_at_once() -> None:
    failure = TrainingFailure(exit_code=65, reason="LossDiverged", message="loss is nan", rank=0)
    pods = [
        pod(
            1, 0, "Failed", terminated={"exitCode": 65, "message": failure.to_termination_message()}
        )
    ]
    p = plan(training(running_status()), gang(1, "Failed", reason="PodFailurePolicy"), pods)
    assert p.status.phase == "Failed"
    assert p.status.failed_attempts == 0
    assert p.status.last_failure is not None and p.status.last_failure.permanent
    assert next(c.reason for c in p.status.conditions if c.type == "Failed") == "LossDiverged"


def test_an_eviction_does_not_use_up_a_retry() -> None:
    pods = [
        pod(1, 0, "Failed", terminated={"exitCode": 143}, disrupted=True),
        pod(1, 1, "Failed", terminated={"exitCode": 1}),
    ]
    p = plan(
        training(running_status(), **{"spec.runPolicy.backoffLimit": 0}), gang(1, "Failed"), pods
    )
    assert p.status.phase == "Pending"
    assert p.status.failed_attempts == 0
    assert p.delete_jobs == ["digits-a1", "digits-a1-w"]


def test_success_takes_the_result_from_rank_zero() -> None:
    result = TrainingResult(
        artifact_uri=f"pvc://modelyard-models/default/digits/{UID}/g1",
        sha256="ab" * 32,
        size_bytes=1234,
        metrics={"test_accuracy": 0.97},
    )
    pods = [
        pod(
            1,
            0,
            "Succeeded",
            terminated={"exitCode": 0, "message": result.to_termination_message()},
        ),
        pod(1, 1, "Succeeded", terminated={"exitCode": 0}),
    ]
    p = plan(training(running_status()), gang(1, "Complete"), pods)
    assert p.status.phase == "Succeeded"
    assert p.status.result is not None
    assert p.status.result.model_uri.endswith("/g1/model.onnx")
    assert p.status.result.metrics["test_accuracy"] == 0.97
    assert p.status.result.generation == 1
    assert condition(p, "Succeeded") == "True"


def test_success_without_a_result_is_a_failure() -> None:
    pods = [pod(1, 0, "Succeeded", terminated={"exitCode": 0, "message": "hello"})]
    p = plan(training(running_status()), gang(1, "Complete"), pods)
    assert p.status.phase == "Failed"


def test_progress_reaches_status_with_an_eta() -> None:
    record = ProgressRecord(
        generation=1,
        attempt=1,
        stage="Training",
        epoch=12,
        epochs=30,
        percent=40.0,
        loss=0.31,
        eta_seconds=200.0,
    )
    p = plan(training(running_status()), gang(1), [pod(1, 0), pod(1, 1)], progress=record)
    assert p.status.progress.summary == "12/30 (40%)"
    assert p.status.progress.eta == "3m20s"
    stale = record.model_copy(update={"attempt": 0 + 1, "generation": 7})
    q = plan(training(running_status()), gang(1), [pod(1, 0), pod(1, 1)], progress=stale)
    assert q.status.progress.summary == ""


def test_suspend_removes_the_pods_and_resume_continues() -> None:
    suspended = plan(
        training(running_status(), **{"spec.runPolicy.suspend": True}), gang(1), [pod(1, 0)]
    )
    assert suspended.delete_jobs == ["digits-a1", "digits-a1-w"]
    assert suspended.status.phase == "Suspended"
    resumed_mt = training(suspended.status.model_dump(by_alias=True, exclude_none=True))
    resumed = plan(resumed_mt, [], [])
    assert resumed.create_attempt == 2
    assert resumed.status.failed_attempts == 0
    assert condition(resumed, "Suspended") == "False"


def test_a_new_generation_ends_the_old_attempt_and_starts_a_new_run() -> None:
    finished = running_status(
        phase="Succeeded",
        result={
            "generation": 1,
            "artifactUri": "pvc://m/a",
            "modelUri": "pvc://m/a/model.onnx",
            "sha256": "x",
        },
    )
    p = plan(training(finished, **{"metadata.generation": 2}), gang(1, "Complete"), [])
    assert p.status.observed_generation == 2
    assert p.status.phase == "Pending"
    assert p.delete_jobs == ["digits-a1", "digits-a1-w"]
    assert p.status.result is not None and p.status.result.generation == 1  # kept until replaced
    assert any(e.reason == "NewRun" for e in p.events)


def test_the_deadline_fails_a_running_attempt() -> None:
    mt = training(running_status(), **{"spec.runPolicy.activeDeadlineSeconds": 600})
    p = plan(mt, gang(1), [pod(1, 0), pod(1, 1)])  # started an hour ago
    assert p.status.phase == "Failed"
    assert p.delete_jobs == ["digits-a1", "digits-a1-w"]


def test_ttl_deletes_the_children_after_the_end() -> None:
    done = running_status(phase="Succeeded", completionTime="2026-11-29T11:30:00Z")
    mt = training(done, **{"spec.runPolicy.ttlSecondsAfterFinished": 600})
    p = plan(mt, gang(1, "Complete"), [])
    assert p.keep_children is False
    assert p.delete_jobs == ["digits-a1", "digits-a1-w"]
    early = plan(mt, gang(1, "Complete"), [], now=datetime(2026, 11, 29, 11, 35, tzinfo=UTC))
    assert early.keep_children is True
    assert early.requeue_after == 300


def test_unschedulable_workers_raise_a_condition_with_the_schedulers_message() -> None:
    since = NOW - timedelta(minutes=10)
    p = plan(
        training(running_status(phase="Pending")),
        gang(1),
        [pod(1, 0, "Pending", ready=False, unschedulable_since=since)],
    )
    assert condition(p, "Unschedulable") == "True"
    message = next(c.message for c in p.status.conditions if c.type == "Unschedulable")
    assert "nvidia.com/gpu" in message


# ------------------------------------------------------------------------ trust


RUN_DIR = f"pvc://modelyard-models/default/digits/{UID}/g1"


def succeeded_rank(attempt: int, artifact_uri: str, owner: str | None = None, **result: Any) -> Any:
    message = TrainingResult(artifact_uri=artifact_uri, sha256="ab" * 32, **result)
    terminated = {"exitCode": 0, "message": message.to_termination_message()}
    return pod(attempt, 0, "Succeeded", terminated=terminated, owner=owner)


def test_a_look_alike_pod_not_owned_by_the_job_is_ignored() -> None:
    forged = succeeded_rank(
        1, "s3://attacker-bucket/model", owner="someone-else", metrics={"test_accuracy": 1.0}
    )
    real = succeeded_rank(1, RUN_DIR, metrics={"test_accuracy": 0.9})
    p = plan(training(running_status()), gang(1, "Complete"), [forged, real])
    assert p.status.phase == "Succeeded"
    assert p.status.result is not None
    assert p.status.result.artifact_uri == RUN_DIR
    assert p.status.result.metrics == {"test_accuracy": 0.9}
    assert p.status.workers.succeeded == 1  # the look-alike is not counted either


def test_only_a_look_alike_rank_zero_is_no_result() -> None:
    forged = succeeded_rank(1, RUN_DIR, owner="someone-else")
    p = plan(training(running_status()), gang(1, "Complete"), [forged])
    assert p.status.phase == "Failed"
    assert p.status.result is None


def test_a_job_that_is_not_ours_is_neither_followed_nor_deleted() -> None:
    foreign = job(1, "Complete")
    foreign["metadata"]["ownerReferences"] = []
    p = plan(training(), [foreign], [])
    assert p.delete_jobs == []
    assert p.create_attempt == 1  # our own attempt 1 is still to be made


@pytest.mark.parametrize(
    ("artifact_uri", "model_file"),
    [
        ("s3://attacker-bucket/model", "model.onnx"),
        ("pvc://modelyard-models/default/digits/other-uid/g1", "model.onnx"),
        (f"pvc://modelyard-models/default/digits/{UID}/g2", "model.onnx"),  # another run
        (f"pvc://modelyard-models/default/digits/{UID}/g1x", "model.onnx"),
        (f"pvc://modelyard-models/default/digits/{UID}/g1/..", "model.onnx"),
    ],
)
def test_a_result_outside_the_runs_output_location_is_refused(
    artifact_uri: str, model_file: str
) -> None:
    rank0 = succeeded_rank(1, artifact_uri, model_file=model_file)
    p = plan(training(running_status()), gang(1, "Complete"), [rank0])
    assert p.status.phase == "Failed"
    assert p.status.result is None
    failed = next(c for c in p.status.conditions if c.type == "Failed")
    assert failed.reason == "ResultRejected"
    assert RUN_DIR in failed.message


@pytest.mark.parametrize("model_file", ["../../other-uid/g1/model.onnx", "./model.onnx"])
def test_a_result_whose_model_file_is_not_a_plain_name_is_no_result(model_file: str) -> None:
    # The contract refuses such a name, so a forged message is built without its validation.
    forged = TrainingResult.model_construct(
        artifact_uri=RUN_DIR, sha256="ab" * 32, model_file=model_file, metrics={}
    )
    terminated = {"exitCode": 0, "message": forged.to_termination_message()}
    rank0 = pod(1, 0, "Succeeded", terminated=terminated)
    p = plan(training(running_status()), gang(1, "Complete"), [rank0])
    assert p.status.phase == "Failed"
    assert p.status.result is None
    failed = next(c for c in p.status.conditions if c.type == "Failed")
    assert failed.reason == "NoResult"


def test_a_script_that_exits_0_without_a_result_is_told_to_publish() -> None:
    script = training(
        running_status(),
        **{f"spec.{key}": ... for key in ("model", "data", "training", "checkpoint", "export")},
        **{"spec.script": {"command": ["python", "train.py"]}},
    )
    rank0 = pod(1, 0, "Succeeded", terminated={"exitCode": 0, "message": ""})
    p = plan(script, gang(1, "Complete"), [rank0])
    failed = next(c for c in p.status.conditions if c.type == "Failed")
    assert failed.reason == "NoResult"
    assert "the script must publish its model" in failed.message


def test_a_result_in_a_subdirectory_of_the_run_is_taken() -> None:
    rank0 = succeeded_rank(1, RUN_DIR + "/variants", model_file="model.int8.onnx")
    p = plan(training(running_status()), gang(1, "Complete"), [rank0])
    assert p.status.result is not None
    assert p.status.result.model_uri == RUN_DIR + "/variants/model.int8.onnx"


def test_a_rejected_child_holds_the_attempt_back_until_it_is_resolved() -> None:
    message = "NetworkPolicy digits already exists and does not belong to this ModelTraining"
    observed = Observed(jobs=[], pods=[], progress=None, now=NOW, rejected=(message,))
    blocked = plan_training(training(), observed)
    assert blocked.create_attempt is None
    assert blocked.status.attempt == 0
    children = next(c for c in blocked.status.conditions if c.type == "ChildrenApplied")
    assert (children.status, children.reason, children.message) == (
        "False",
        "ChildRejected",
        message,
    )
    assert [e.reason for e in blocked.events] == ["ChildRejected"]
    settled = training(blocked.status.model_dump(by_alias=True, exclude_none=True))
    again = plan_training(settled, observed)
    assert again.events == []  # no news, no second Event
    resolved = plan(settled, [], [])
    assert resolved.create_attempt == 1
    assert condition(resolved, "ChildrenApplied") == "True"


def test_a_pod_of_a_deleted_job_of_ours_still_holds_the_next_attempt_back() -> None:
    leftover = pod(1, 0, "Running")  # its Job digits-a1 is gone already
    p = plan(training(running_status(phase="Pending")), [], [leftover])
    assert p.create_attempt is None
    peer = pod(1, 1, "Running")  # of digits-a1-w
    assert plan(training(running_status(phase="Pending")), [], [peer]).create_attempt is None
    look_alike = pod(1, 0, "Running")
    look_alike["metadata"]["ownerReferences"] = []
    p = plan(training(running_status(phase="Pending")), [], [look_alike])
    assert p.create_attempt == 2


# ------------------------------------------------------------------------ progress records


@pytest.mark.parametrize(
    "text",
    [
        '{"stage": "Training", "epoch": 3, "epochs": 30, "percent": 10, "loss": NaN}',
        '{"stage": "Training", "epoch": 3, "epochs": 30, "percent": 10, "loss": Infinity}',
        '{"stage": "Training", "epoch": 3, "epochs": 30, "percent": 10, "loss": 1e999}',
        '{"stage": "Training", "epoch": 3, "epochs": 30, "percent": 10, "etaSeconds": Infinity,'
        ' "samplesPerSecond": Infinity,'
        ' "validation": {"val_loss": -Infinity, "val_accuracy": 0.5}}',
    ],
)
def test_non_finite_progress_numbers_become_unknown_and_status_stays_writable(text: str) -> None:
    record = parse_progress(text)
    assert record is not None and record.epoch == 3
    p = plan(training(running_status()), gang(1), [pod(1, 0), pod(1, 1)], record)
    assert p.status.progress.epoch == 3
    assert p.status.progress.loss is None
    assert p.status.progress.validation in ({}, {"val_accuracy": 0.5})
    json.dumps(dumped(p.status), allow_nan=False)  # what the API server would get


@pytest.mark.parametrize(
    "text",
    [None, "", "not json", "[1, 2]", '"text"', '{"epoch": -1}', '{"stage": "Lost"}', "[" * 100_000],
)
def test_a_malformed_progress_record_is_ignored(text: str | None) -> None:
    assert parse_progress(text) is None


def test_stages_after_training_keep_the_last_loss_and_success_keeps_the_epochs_run() -> None:
    training_record = ProgressRecord(
        stage="Training", epoch=20, epochs=30, percent=66.7, loss=0.12, validation={"val_loss": 1}
    )
    pods = [pod(1, 0), pod(1, 1)]
    first = plan(training(running_status()), gang(1), pods, training_record)
    settled = training(first.status.model_dump(by_alias=True, exclude_none=True))
    # Stopped early after 20 of 30 epochs: the trainer's later records carry no loss.
    exporting = ProgressRecord(stage="Exporting", epoch=20, epochs=30, percent=100.0)
    second = plan(settled, gang(1), pods, exporting)
    assert second.status.progress.stage == "Exporting"
    assert second.status.progress.loss == 0.12
    assert second.status.progress.validation == {"val_loss": 1.0}
    exported = training(second.status.model_dump(by_alias=True, exclude_none=True))
    done = plan(exported, gang(1, "Complete"), [succeeded_rank(1, RUN_DIR)])
    assert done.status.phase == "Succeeded"
    assert (done.status.progress.epoch, done.status.progress.epochs) == (20, 30)
    assert done.status.progress.summary == "20/30 (100%)"
    assert done.status.progress.loss == 0.12


# ------------------------------------------------------------------------ workers that cannot start


def waiting_pod(rank: int, reason: str, message: str = "", scheduled_ago: float = 30.0) -> Any:
    """A scheduled pod of attempt 1 whose trainer container waits, as the kubelet reports it."""
    p = pod(1, rank, "Pending", ready=False)
    scheduled_at = (NOW - timedelta(seconds=scheduled_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    p["status"]["conditions"].append(
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at}
    )
    p["metadata"]["uid"] = f"pod-uid-{rank}"
    p["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": reason, "message": message}
    }
    return p


def blocked(p: Plan) -> Any:
    return next((c for c in p.status.conditions if c.type == "WorkersBlocked"), None)


@pytest.mark.parametrize(
    "reason",
    [
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    ],
)
def test_a_container_that_cannot_be_created_blocks_the_workers(reason: str) -> None:
    pods = [pod(1, 0), waiting_pod(1, reason, 'Back-off pulling image "registry/trainer:typo"')]
    p = plan(training(running_status(phase="Pending")), gang(1), pods)
    condition_ = blocked(p)
    assert condition_ is not None
    assert (condition_.status, condition_.reason) == ("True", reason)
    assert condition_.message.startswith(f"pod digits-a1-1-x (rank 1) cannot start: {reason}: ")
    assert "registry/trainer:typo" in condition_.message
    assert p.status.phase == "Pending"


def test_an_unschedulable_worker_blocks_at_once_with_the_schedulers_message() -> None:
    """No timeout: the scheduler's verdict is news at once (Unschedulable itself still waits
    for runPolicy.scheduleTimeoutSeconds)."""
    since = NOW - timedelta(seconds=2)
    pods = [pod(1, 0, "Pending", ready=False, unschedulable_since=since), pod(1, 1)]
    p = plan(training(running_status(phase="Pending")), gang(1), pods)
    condition_ = blocked(p)
    assert condition_ is not None
    assert (condition_.status, condition_.reason) == ("True", "Unschedulable")
    assert "digits-a1-0-x (rank 0)" in condition_.message
    assert "0/3 nodes have enough nvidia.com/gpu" in condition_.message
    assert not any(c.type == "Unschedulable" for c in p.status.conditions)


def volume_event(reason: str, message: str, at: str = "2026-11-29T11:59:50Z") -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": at, "type": "Warning"}


def test_a_volume_that_cannot_be_attached_blocks_the_workers_from_its_events() -> None:
    stuck = waiting_pod(0, "ContainerCreating")
    multi_attach = (
        'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) digits-a1-1-x'
    )
    events = {
        "pod-uid-0": [
            volume_event("Scheduled", "assigned to node-b", "2026-11-29T11:59:30Z"),
            volume_event("FailedMount", "timed out", "2026-11-29T11:59:40Z"),
            volume_event("FailedAttachVolume", multi_attach),
        ]
    }
    observed = Observed(jobs=gang(1), pods=[stuck, pod(1, 1)], progress=None, now=NOW)
    p = plan_training(
        training(running_status(phase="Pending")), replace(observed, pod_events=events)
    )
    condition_ = blocked(p)
    assert condition_ is not None
    assert (condition_.status, condition_.reason) == ("True", "FailedAttachVolume")
    assert "digits-a1-0-x (rank 0)" in condition_.message and "Multi-Attach" in condition_.message
    without_events = plan(training(running_status(phase="Pending")), gang(1), [stuck, pod(1, 1)])
    assert blocked(without_events) is None  # creating, and nothing said why yet


def test_only_pods_scheduled_a_while_ago_and_still_creating_have_their_events_read() -> None:
    slow = waiting_pod(0, "ContainerCreating", scheduled_ago=30)
    fresh = waiting_pod(1, "ContainerCreating", scheduled_ago=1)
    pulling_failed = waiting_pod(1, "ErrImagePull", scheduled_ago=30)
    unscheduled = pod(1, 1, "Pending", ready=False, unschedulable_since=NOW)
    picked = creating_too_long([slow, fresh, pulling_failed, unscheduled, pod(1, 0)], NOW)
    assert picked == [slow]


def test_workers_that_start_clear_the_condition_and_a_run_that_ends_too() -> None:
    pods = [pod(1, 0), waiting_pod(1, "ImagePullBackOff")]
    first = plan(training(running_status(phase="Pending")), gang(1), pods)
    settled = training(first.status.model_dump(by_alias=True, exclude_none=True))
    started = plan(settled, gang(1), [pod(1, 0), pod(1, 1)])
    condition_ = blocked(started)
    assert condition_ is not None
    assert (condition_.status, condition_.reason) == ("False", "WorkersStarted")
    deadline = plan(
        training(
            first.status.model_dump(by_alias=True, exclude_none=True),
            **{"spec.runPolicy.activeDeadlineSeconds": 60},
        ),
        gang(1),
        pods,
    )
    assert deadline.status.phase == "Failed"
    ended = blocked(deadline)
    assert ended is not None and ended.status == "False"
