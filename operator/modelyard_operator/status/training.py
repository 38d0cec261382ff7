"""What a ModelTraining should look like now: its status and the next step of its run.

`plan_training` is pure: the handler observes Jobs, Pods and the progress record, calls it, and
carries out the plan (create or delete Jobs, patch status, post Events).

Jobs and pods are found by label, but only those that this ModelTraining's uid controls (its
Jobs) and that its Jobs control (their pods) count: anyone may copy a label, and a look-alike
pod's termination message must not become the result. A result must also lie under the run's
own output location, `<output>/<namespace>/<name>/<uid>/g<generation>/`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from modelyard_operator.api.training import (
    FailureStatus,
    ModelTraining,
    ModelTrainingStatus,
    Progress,
    TrainingResultStatus,
    WorkerCounts,
)
from modelyard_operator.builders.training import (
    CONTAINER,
    attempt_job_names,
    job_name,
    peers_job_name,
)
from modelyard_operator.names import ATTEMPT_LABEL, GENERATION_LABEL
from modelyard_operator.ownership import controlled_by, controller_uid
from modelyard_operator.status.conditions import (
    Event,
    children_applied,
    container_status,
    humanize_seconds,
    object_condition,
    object_condition_true,
    parse_time,
    rfc3339,
    set_condition,
)
from modelyard_storage.uri import join_uri
from modelyard_trainer.contracts import (
    PERMANENT_EXIT_CODES,
    ProgressRecord,
    TrainingFailure,
    TrainingResult,
    artifact_relpath,
    parse_termination_message,
)

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# True while a worker of the current attempt cannot start, with the scheduler's or kubelet's
# reason; False (WORKERS_STARTED) once none is blocked; absent until one ever was.
WORKERS_BLOCKED = "WorkersBlocked"
WORKERS_STARTED = "WorkersStarted"
# Container waiting reasons that no wait will cure (image, configuration): the kubelet retries
# with a back-off; until a person acts the worker never starts.
BLOCKING_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# Event reasons about a scheduled pod whose volumes cannot be attached or mounted (Multi-Attach
# of a ReadWriteOnce claim on a second node, a missing claim or Secret): the pod only shows
# ContainerCreating.
VOLUME_EVENT_REASONS = frozenset({"FailedAttachVolume", "FailedMount"})
# A pod still creating its containers this long after it was scheduled: its Events are read.
# Not sooner: the kubelet retries a mount, and a busy node warns FailedMount for a moment
# ("failed to sync configmap cache") on pods that then start; a Multi-Attach error or a
# missing claim or Secret stays.
VOLUME_CHECK_AFTER_SECONDS = 30.0
# Of the kubelet's or scheduler's own message, so much goes into the condition.
BLOCKED_MESSAGE_LENGTH = 300
ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")
# While pods of an ended attempt are still going away, look again soon.
SHORT_REQUEUE_SECONDS = 2.0

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """What the handler read from the API server for one ModelTraining."""

    jobs: list[Manifest]
    pods: list[Manifest]
    progress: ProgressRecord | None
    now: datetime
    # Why children could not be applied (ForeignObject, refusals): no attempt starts then.
    rejected: tuple[str, ...] = ()
    # Events about pods (by pod uid) that `creating_too_long` picked: volume failures.
    pod_events: dict[str, list[Manifest]] = field(default_factory=dict)


@dataclass
class Plan:
    status: ModelTrainingStatus
    keep_children: bool = True
    create_attempt: int | None = None
    delete_jobs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def parse_progress(text: str | None) -> ProgressRecord | None:
    """The progress record that rank 0 wrote, or None when there is none or it is malformed.

    Never raises: the record comes from a pod. Non-finite numbers (NaN, Infinity, 1e999),
    which Python's JSON reader accepts but no status may hold, are dropped (null: unknown),
    so that one such record cannot fail every status write of the training.
    """
    if not text:
        return None
    try:
        document = json.loads(text, parse_constant=lambda _: None, parse_float=_finite)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    document = {k: v for k, v in document.items() if v is not None}
    if isinstance(document.get("validation"), dict):
        validation = document["validation"].items()
        document["validation"] = {k: v for k, v in validation if v is not None}
    try:
        return ProgressRecord.model_validate(document)
    except ValidationError:
        return None


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _label_int(obj: Manifest, key: str) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("labels") or {}).get(key, "0"))
    except ValueError:
        return 0


def _name(obj: Manifest) -> str:
    return str(obj["metadata"]["name"])


def _deleting(obj: Manifest) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _active(pod: Manifest) -> bool:
    return (pod.get("status") or {}).get("phase", "Pending") in ACTIVE_POD_PHASES


@dataclass(frozen=True)
class _Gang:
    """The Jobs of the current attempt, and the pods that they control."""

    jobs: list[Manifest]
    pods: list[Manifest]
    # The Job of ranks 1..N-1 when rank 0 has one of its own: its index i runs rank i + 1.
    peers_uid: str | None = None

    def rank(self, pod: Manifest) -> int | None:
        value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
        if value is None or not value.isdigit():
            return None
        peer = self.peers_uid is not None and controller_uid(pod) == self.peers_uid
        return int(value) + 1 if peer else int(value)


def _terminated(pod: Manifest) -> dict[str, Any]:
    status = container_status(pod, CONTAINER) or {}
    return dict((status.get("state") or {}).get("terminated") or {})


class _Run:
    """One reconcile's worth of state transitions, accumulated into a Plan."""

    def __init__(self, mt: ModelTraining, observed: Observed) -> None:
        self.mt = mt
        self.observed = observed
        self.now = observed.now
        self.generation = mt.metadata.generation
        self.plan = Plan(status=mt.status.model_copy(deep=True))

    @property
    def status(self) -> ModelTrainingStatus:
        return self.plan.status

    def condition(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, value, reason, message, self.now, self.generation
        )

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def delete(self, job: Manifest) -> None:
        if not _deleting(job) and _name(job) not in self.plan.delete_jobs:
            self.plan.delete_jobs.append(_name(job))

    def requeue(self, seconds: float) -> None:
        current = self.plan.requeue_after
        self.plan.requeue_after = seconds if current is None else min(current, seconds)

    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        self.status.phase = "Succeeded" if succeeded else "Failed"
        self.status.completion_time = rfc3339(self.now)
        self.condition("Succeeded", succeeded, reason if succeeded else "RunFailed", message)
        self.condition("Failed", not succeeded, "RunSucceeded" if succeeded else reason, message)
        self.condition("Running", False, reason, message)
        self.condition("Restarting", False, reason, message)
        self.event("Normal" if succeeded else "Warning", reason, message)


def plan_training(mt: ModelTraining, observed: Observed) -> Plan:
    """The status and next step of a ModelTraining, from what was observed."""
    run = _Run(mt, observed)
    _start_new_run_on_new_generation(run)
    ours = [j for j in observed.jobs if controlled_by(j, mt.metadata.uid)]
    jobs = [j for j in ours if _label_int(j, GENERATION_LABEL) == run.generation]
    for stale in (j for j in ours if j not in jobs):
        run.delete(stale)  # an edit ends the previous generation's attempt
    status = run.status
    status.attempt = max([status.attempt, *(_label_int(j, ATTEMPT_LABEL) for j in jobs)])
    gang = _current_gang(run, jobs)
    status.workers = _count_workers(gang.pods)

    if status.phase in ("Succeeded", "Failed"):
        _after_the_end(run, jobs)
    elif mt.spec.run_policy.suspend:
        _suspend(run, jobs)
    elif all(_deleting(j) for j in gang.jobs):  # none yet, or ended
        _start_next_attempt(run)
    elif any(_deleting(j) for j in gang.jobs) or sorted(map(_name, gang.jobs)) != sorted(
        attempt_job_names(mt, status.attempt)
    ):
        _end_broken_gang(run, gang)
    else:
        _follow_attempt(run, gang)
    ended = status.phase in ("Succeeded", "Failed", "Suspended")
    _check_blocked(run, _Gang([], []) if ended else gang)
    if run.plan.keep_children:
        status.conditions, event = children_applied(
            status.conditions, observed.rejected, run.now, run.generation
        )
        if event is not None:
            run.plan.events.append(event)
    return run.plan


def _current_gang(run: _Run, jobs: list[Manifest]) -> _Gang:
    """The current attempt's Jobs, and their pods: found by the Jobs' uids, not by labels."""
    current = [j for j in jobs if _label_int(j, ATTEMPT_LABEL) == run.status.attempt]
    uids = {j["metadata"].get("uid") for j in current} - {None}
    pods = [p for p in run.observed.pods if controller_uid(p) in uids]
    peers_name = peers_job_name(run.mt.metadata.name, run.status.attempt)
    peers = next((j for j in current if _name(j) == peers_name), None)
    return _Gang(current, pods, peers["metadata"].get("uid") if peers else None)


def _end_broken_gang(run: _Run, gang: _Gang) -> None:
    """One of the attempt's Jobs is gone (deleted by someone, or being deleted): the rest of
    the gang could never finish; it goes, and the next attempt starts once its pods are gone."""
    for job in gang.jobs:
        run.delete(job)
    run.status.phase = "Pending"
    run.requeue(SHORT_REQUEUE_SECONDS)


def _start_new_run_on_new_generation(run: _Run) -> None:
    previous = run.mt.status
    if previous.observed_generation == run.generation:
        return
    if previous.observed_generation is not None:
        run.event("Normal", "NewRun", f"Spec generation {run.generation} starts a new run")
    run.plan.status = ModelTrainingStatus(
        observed_generation=run.generation,
        phase="Pending",
        attempt=previous.attempt,  # attempts are numbered across generations: Job names stay unique
        result=previous.result,
        conditions=previous.conditions,
    )
    for type_ in ("Succeeded", "Failed", "Running", "Restarting", "Suspended"):
        if any(c.type == type_ for c in previous.conditions):
            run.condition(type_, False, "NewRun", f"generation {run.generation} started")


def _count_workers(pods: list[Manifest]) -> WorkerCounts:
    phases = [(p.get("status") or {}).get("phase", "Pending") for p in pods]
    return WorkerCounts(
        active=sum(phase in ACTIVE_POD_PHASES for phase in phases),
        ready=sum(object_condition_true(p, "Ready") for p in pods),
        succeeded=phases.count("Succeeded"),
        failed=phases.count("Failed"),
    )


def _after_the_end(run: _Run, jobs: list[Manifest]) -> None:
    """No pod keeps running after the end; the TTL removes the children."""
    for job in jobs:
        if not object_condition_true(job, "Complete") and not object_condition_true(job, "Failed"):
            run.delete(job)
    ttl = run.mt.spec.run_policy.ttl_seconds_after_finished
    completed = parse_time(run.status.completion_time)
    if ttl is None or completed is None:
        return
    left = (completed - run.now).total_seconds() + ttl
    if left <= 0:
        run.plan.keep_children = False
        for job in jobs:
            run.delete(job)
    else:
        run.requeue(left)


def _suspend(run: _Run, jobs: list[Manifest]) -> None:
    for job in jobs:
        run.delete(job)
    if run.status.phase != "Suspended":
        run.event("Normal", "Suspended", "Run suspended: workers stop, checkpoints stay")
    run.status.phase = "Suspended"
    run.condition("Suspended", True, "Suspended", "runPolicy.suspend is true")
    run.condition("Running", False, "Suspended", "the run is suspended")


def _previous_attempt_still_running(run: _Run) -> bool:
    """A pod of one of our Jobs, even one deleted already (its pods go after it), is active.
    A pod that only claims such a Job is collected by the garbage collector."""
    name = run.mt.metadata.name
    return any(_active(p) and _of_our_job(p, name) for p in run.observed.pods)


def _of_our_job(pod: Manifest, name: str) -> bool:
    peers_suffix = re.escape(peers_job_name("", 0).removeprefix(job_name("", 0)))
    attempt_job = re.compile(re.escape(job_name(name, 0)[:-1]) + f"[0-9]+({peers_suffix})?")
    return any(
        r.get("controller") and r.get("kind") == "Job" and attempt_job.fullmatch(str(r.get("name")))
        for r in pod["metadata"].get("ownerReferences") or []
    )


def _start_next_attempt(run: _Run) -> None:
    status = run.status
    if any(c.type == "Suspended" and c.status == "True" for c in status.conditions):
        run.condition("Suspended", False, "Resumed", "runPolicy.suspend is false")
        run.event("Normal", "Resumed", "Run resumed from its last checkpoint")
    if _previous_attempt_still_running(run):
        # Attempt N+1 never overlaps attempt N: no double-booked GPUs, no stale rank 0.
        status.phase = "Pending"
        run.requeue(SHORT_REQUEUE_SECONDS)
        return
    if _deadline_passed(run):
        return
    if run.observed.rejected:
        return  # no attempt while a child's name is taken or refused: see ChildrenApplied
    status.attempt += 1
    status.phase = "Pending"
    status.start_time = status.start_time or rfc3339(run.now)
    status.progress = Progress()
    run.plan.create_attempt = status.attempt
    run.condition("Created", True, "AttemptCreated", f"attempt {status.attempt} created")
    run.event("Normal", "AttemptCreated", f"Started attempt {status.attempt}")


def _deadline_passed(run: _Run) -> bool:
    deadline = run.mt.spec.run_policy.active_deadline_seconds
    started = parse_time(run.status.start_time)
    if deadline is None or started is None:
        return False
    left = (started - run.now).total_seconds() + deadline
    if left > 0:
        run.requeue(left)
        return False
    run.finish(False, "DeadlineExceeded", f"the run did not end within {deadline}s")
    return True


def _follow_attempt(run: _Run, gang: _Gang) -> None:
    if all(object_condition_true(j, "Complete") for j in gang.jobs):
        _succeed(run, gang)
    elif any(object_condition_true(j, "Failed") for j in gang.jobs):
        _handle_failure(run, gang)
    elif _deadline_passed(run):
        for job in gang.jobs:
            run.delete(job)
    else:
        _running(run, gang)


def _succeed(run: _Run, gang: _Gang) -> None:
    rank0 = next((p for p in gang.pods if gang.rank(p) == 0), None)
    message = _terminated(rank0).get("message") if rank0 else None
    parsed = parse_termination_message(message)
    if not isinstance(parsed, TrainingResult):
        message = "rank 0 ended without a result in its termination message"
        if run.mt.spec.script is not None:
            message += (
                ": the script must publish its model (modelyard_trainer.sdk: run.publish, "
                "under sdk.main)"
            )
        run.finish(False, "NoResult", message)
        return
    outside = _outside_the_run(run, parsed)
    if outside is not None:
        run.finish(False, "ResultRejected", outside)
        return
    run.status.result = TrainingResultStatus(
        generation=run.generation,
        artifact_uri=parsed.artifact_uri,
        model_file=parsed.model_file,
        model_uri=join_uri(parsed.artifact_uri, parsed.model_file),
        sha256=parsed.sha256,
        size_bytes=parsed.size_bytes,
        metrics=parsed.metrics,
    )
    progress = run.status.progress
    # The epochs that rank 0 last said it ran (fewer than planned when it stopped early).
    epoch = progress.epoch or progress.epochs
    run.status.progress = progress.model_copy(
        update={
            "stage": "Done",
            "epoch": epoch,
            "percent": 100.0,
            "eta_seconds": 0.0,
            "eta": "0s",
            "summary": f"{epoch}/{progress.epochs} (100%)",
        }
    )
    accuracy = parsed.metrics.get("test_accuracy")
    summary = f" (test accuracy {accuracy:.4f})" if accuracy is not None else ""
    run.finish(True, "RunSucceeded", f"model at {run.status.result.model_uri}{summary}")


def run_location(output_uri: str, namespace: str, name: str, uid: str, generation: int) -> str:
    """The one directory where a run's artifacts may be."""
    return join_uri(output_uri, artifact_relpath(namespace, name, uid, generation))


def inside_run(artifact_uri: str, model_file: str, location: str) -> bool:
    """Whether the artifacts and the model file lie under the run's location (no `.`, `..` or
    empty segment below it): a forged or confused result is never taken, nor promoted."""
    artifact = artifact_uri.rstrip("/")
    inside = artifact == location or artifact.startswith(location + "/")
    below = f"{artifact.removeprefix(location)}/{model_file}".strip("/").split("/")
    return inside and not any(part in ("", ".", "..") for part in below)


def _outside_the_run(run: _Run, result: TrainingResult) -> str | None:
    """Why the result cannot be this run's, or None."""
    meta = run.mt.metadata
    location = run_location(
        run.mt.spec.output.uri, meta.namespace, meta.name, meta.uid, meta.generation
    )
    if inside_run(result.artifact_uri, result.model_file, location):
        return None
    return (
        f"rank 0 reported artifacts at {result.artifact_uri[:512]!r} (model file "
        f"{result.model_file[:128]!r}), outside this run's output location {location}/: "
        "the result is refused"
    )


def _failure_of(attempt: int, gang: _Gang) -> FailureStatus:
    """The failure that ended an attempt: a worker's own report first, then its exit code."""
    failed = [p for p in gang.pods if (p.get("status") or {}).get("phase") == "Failed"]
    reports = []
    for pod in failed:
        terminated = _terminated(pod)
        parsed = parse_termination_message(terminated.get("message"))
        reports.append((pod, terminated, parsed if isinstance(parsed, TrainingFailure) else None))
    # Prefer a worker that said why (its peers merely lost it), then the earliest to fail.
    reports.sort(key=lambda r: (r[2] is None, str(r[1].get("finishedAt", ""))))
    if not reports:
        job_failed = _job_failed(gang)
        return FailureStatus(
            attempt=attempt,
            reason=str(job_failed.get("reason") or "JobFailed"),
            message=str(job_failed.get("message") or "the attempt's Job failed"),
        )
    pod, terminated, report = reports[0]
    exit_code = terminated.get("exitCode")
    reason: str = str(terminated.get("reason") or "Error")
    message = str(terminated.get("message") or f"worker exited with code {exit_code}")
    if report is not None:
        reason, message, exit_code = report.reason, report.message, report.exit_code
    return FailureStatus(
        attempt=attempt,
        rank=gang.rank(pod),
        exit_code=exit_code,
        reason=reason,
        message=message[:1024],
        permanent=exit_code in PERMANENT_EXIT_CODES,
    )


def _job_failed(gang: _Gang) -> dict[str, Any]:
    """The Failed condition of the attempt's Job that failed (rather the one whose
    podFailurePolicy ended it: that says the failure is permanent)."""
    failed = [object_condition(j, "Failed") or {} for j in gang.jobs]
    failed = [c for c in failed if c.get("status") == "True"]
    failed.sort(key=lambda c: c.get("reason") != "PodFailurePolicy")
    return failed[0] if failed else {}


def _handle_failure(run: _Run, gang: _Gang) -> None:
    status, policy = run.status, run.mt.spec.run_policy
    disrupted = any(object_condition_true(p, "DisruptionTarget") for p in gang.pods)
    failure = status.last_failure
    if failure is None or failure.attempt != status.attempt:  # not yet counted
        failure = _failure_of(status.attempt, gang)
        if _job_failed(gang).get("reason") == "PodFailurePolicy":
            failure.permanent = True
        status.last_failure = failure
        if not disrupted and not failure.permanent:
            status.failed_attempts += 1
        where = f"rank {failure.rank}" if failure.rank is not None else "the gang"
        run.event(
            "Warning",
            "AttemptFailed",
            f"attempt {status.attempt} failed on {where}: {failure.reason}: {failure.message}",
        )
    if failure.permanent:
        run.finish(False, failure.reason, f"permanent failure: {failure.message}")
    elif status.failed_attempts > policy.backoff_limit:
        run.finish(
            False,
            "BackoffLimitExceeded",
            f"{status.failed_attempts} attempts failed (backoffLimit {policy.backoff_limit});"
            f" last: {failure.reason}: {failure.message}",
        )
    else:
        why = "a disruption (not counted)" if disrupted else f"{failure.reason}"
        run.condition(
            "Restarting",
            True,
            "AttemptFailed",
            f"attempt {status.attempt} ended by {why}; restarting the gang from the last"
            " checkpoint",
        )
        run.condition("Running", False, "AttemptFailed", failure.message)
        status.phase = "Pending"
        for job in gang.jobs:
            run.delete(job)
        run.requeue(SHORT_REQUEUE_SECONDS)


def _running(run: _Run, gang: _Gang) -> None:
    status, spec, pods = run.status, run.mt.spec, gang.pods
    _check_schedulable(run, pods)
    phases = [(p.get("status") or {}).get("phase") for p in pods]
    running = phases.count("Running")
    # A rank that finished while rank 0 still exports is done, not pending: the gang started.
    if running + phases.count("Succeeded") < spec.workers or not running:
        status.phase = "Pending"
        return
    if status.phase != "Running" and status.phase != "Exporting":
        run.event(
            "Normal", "Running", f"all {spec.workers} workers of attempt {status.attempt} run"
        )
    status.phase = "Running"
    run.condition("Running", True, "WorkersRunning", f"{running}/{spec.workers} workers running")
    run.condition("Restarting", False, "WorkersRunning", "")
    _take_progress(run)


def _check_schedulable(run: _Run, pods: list[Manifest]) -> None:
    timeout = run.mt.spec.run_policy.schedule_timeout_seconds
    stuck = []
    for pod in pods:
        scheduled = object_condition(pod, "PodScheduled") or {}
        created = parse_time(pod["metadata"].get("creationTimestamp"))
        waited = (run.now - created).total_seconds() if created else 0.0
        if scheduled.get("reason") == "Unschedulable" and waited >= timeout:
            stuck.append(str(scheduled.get("message") or "unschedulable"))
    if stuck:
        run.condition(
            "Unschedulable",
            True,
            "Unschedulable",
            f"{len(stuck)} worker(s) unschedulable for over {timeout}s: {stuck[0]}",
        )
    elif any(c.type == "Unschedulable" for c in run.status.conditions):
        run.condition("Unschedulable", False, "Scheduled", "every worker is scheduled")


def _scheduled_at(pod: Manifest) -> datetime | None:
    scheduled = object_condition(pod, "PodScheduled") or {}
    if scheduled.get("status") != "True":
        return None
    return parse_time(scheduled.get("lastTransitionTime"))


def _container_statuses(pod: Manifest) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def creating_too_long(pods: list[Manifest], now: datetime) -> list[Manifest]:
    """Pods scheduled a while ago whose containers have not started (ContainerCreating, or no
    status yet): only their Events say why, such as a volume that cannot be attached."""
    stuck = []
    for pod in pods:
        scheduled = _scheduled_at(pod)
        if (pod.get("status") or {}).get("phase") != "Pending" or scheduled is None:
            continue
        waiting = [(c.get("state") or {}).get("waiting") for c in _container_statuses(pod)]
        creating = all(w is not None and w.get("reason") == "ContainerCreating" for w in waiting)
        if creating and (now - scheduled).total_seconds() >= VOLUME_CHECK_AFTER_SECONDS:
            stuck.append(pod)
    return stuck


def _event_time(event: Manifest) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or "")


def _why_blocked(pod: Manifest, events: list[Manifest]) -> tuple[str, str] | None:
    """The scheduler's or kubelet's reason and message when the pod cannot start, or None."""
    scheduled = object_condition(pod, "PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return "Unschedulable", str(scheduled.get("message") or "")
    for container in _container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BLOCKING_WAITING_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    volume = [e for e in events if e.get("reason") in VOLUME_EVENT_REASONS]
    if volume and (pod.get("status") or {}).get("phase") == "Pending":
        latest = max(volume, key=_event_time)
        return str(latest["reason"]), str(latest.get("message") or "")
    return None


def _check_blocked(run: _Run, gang: _Gang) -> None:
    """WorkersBlocked names the first worker (by rank) that cannot start, and why."""
    blocked = []
    for pod in sorted(gang.pods, key=lambda p: gang.rank(p) or 0):
        uid = str(pod["metadata"].get("uid") or "")
        why = _why_blocked(pod, run.observed.pod_events.get(uid, []))
        if why is not None:
            blocked.append((pod, *why))
    if blocked:
        pod, reason, detail = blocked[0]
        others = f" ({len(blocked) - 1} more worker(s) blocked)" if len(blocked) > 1 else ""
        message = (
            f"pod {_name(pod)} (rank {gang.rank(pod)}) cannot start: {reason}: "
            f"{detail[:BLOCKED_MESSAGE_LENGTH]}{others}"
        )
        run.condition(WORKERS_BLOCKED, True, reason, message)
    elif any(c.type == WORKERS_BLOCKED for c in run.status.conditions):
        run.condition(WORKERS_BLOCKED, False, WORKERS_STARTED, "no worker is blocked")


def _take_progress(run: _Run) -> None:
    record = run.observed.progress
    if (
        record is None
        or record.generation != run.generation
        or record.attempt != run.status.attempt
    ):
        return
    eta = record.eta_seconds
    # Records after training (Evaluating, Exporting, Done) carry no loss or validation: the
    # last ones reported stay, rather than reading as unknown.
    last = run.status.progress
    run.status.progress = Progress(
        stage=record.stage,
        epoch=record.epoch,
        epochs=record.epochs,
        percent=round(record.percent, 1),
        summary=f"{record.epoch}/{record.epochs} ({record.percent:.0f}%)",
        loss=record.loss if record.loss is not None else last.loss,
        validation=record.validation or last.validation,
        samples_per_second=record.samples_per_second,
        eta_seconds=eta,
        eta=humanize_seconds(eta) if eta is not None else "",
        updated_at=record.updated_at or None,
    )
    if record.stage == "Exporting":
        run.status.phase = "Exporting"
