"""What a ModelDeployment should serve now, and how it is doing.

Pure: the handler reads the ModelTraining it promotes from, the claim that holds the model, the
server Deployment and its pods; `resolve_model` and `plan_deployment` turn that into the model
to roll out (or roll back to), the status and the Events. The handler renders and applies.

The decisions, in order:
1. Resolve the candidate: `model.uri`, or the latest result of `model.fromTraining` that passes
   the gate. A bad reference (unknown training, failed gate, missing claim) is the
   ModelResolved condition, and the current model keeps serving.
2. Roll out the candidate unless it is what we serve, or it was rolled back under this spec.
3. Watch the rollout's pods: a load failure, a crash loop, an OOM kill, an image that cannot be
   pulled, or the Deployment's progress deadline fail it; a failed rollout goes back to the last
   model that served well, and the failed one is remembered so that it is not tried again until
   the spec changes (no flip-flop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelyard_operator.api.deployment import (
    ModelDeployment,
    ModelDeploymentStatus,
    ModelState,
    ModelStatus,
    RejectedModel,
    ServedModel,
)
from modelyard_operator.api.training import ModelTrainingStatus, TrainingResultStatus
from modelyard_operator.builders.deployment import FETCH_CONTAINER, SERVER_CONTAINER
from modelyard_operator.names import (
    MODEL_SHA256_ANNOTATION,
    MODEL_URI_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
)
from modelyard_operator.ownership import Manifest
from modelyard_operator.status.conditions import (
    CHILD_REJECTED,
    Event,
    children_applied,
    condition_is,
    object_condition,
    parse_time,
    rfc3339,
    set_condition,
)
from modelyard_operator.status.drift import PodDrift, drifting, without_drifting
from modelyard_operator.status.training import inside_run, run_location
from modelyard_server.contracts import parse_load_failure
from modelyard_storage.uri import PVC_URI_PATTERN, S3_URI_PATTERN, PvcUri, is_s3, parse_uri

RESOLVED = "Resolved"
# Waiting reasons of a container that will not get better by waiting.
IMAGE_ERRORS = ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError")


@dataclass(frozen=True)
class Resolution:
    """The model the spec asks for now, or why there is none."""

    model: ServedModel | None
    reason: str = RESOLVED
    message: str = ""


@dataclass(frozen=True)
class Observed:
    """What the handler read from the API server for one ModelDeployment."""

    resolution: Resolution
    claim_found: bool
    deployment: Manifest | None
    pods: list[Manifest]
    url: str
    now: datetime
    # Why children could not be applied (ForeignObject, refusals): Ready says it.
    rejected: tuple[str, ...] = ()
    # The ready server pods' drift scores; None when they were not read this pass (drift
    # monitoring off, or not due yet): Drifting then stays as it is.
    drift: list[PodDrift] | None = None


@dataclass
class Plan:
    status: ModelDeploymentStatus
    # The model the Deployment's pods must run; None while there is nothing to serve.
    target: ServedModel | None = None
    events: list[Event] = field(default_factory=list)
    # True while a rollout is unsettled: read it again soon rather than at the slow resync.
    unsettled: bool = False


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


# ------------------------------------------------------------------------ model resolution


def same_model(a: ServedModel | None, b: ServedModel | None) -> bool:
    """The same file with the same checksum; where it came from does not matter."""
    return a is not None and b is not None and (a.uri, a.sha256) == (b.uri, b.sha256)


def served(model: ServedModel) -> ServedModel:
    """Only the identity fields, from any of the richer status models."""
    return ServedModel(
        uri=model.uri,
        sha256=model.sha256,
        training=model.training,
        training_generation=model.training_generation,
    )


def resolve_model(
    md: ModelDeployment,
    training_found: bool,
    training: ModelTrainingStatus | None,
    origin: tuple[str, str] | None = None,
) -> Resolution:
    """The candidate model: the fixed URI, or the gated result of the named training.
    `origin`: the training's output URI and uid; a result outside that training's own run
    location is refused (the training refuses one already: this holds against a status
    written by someone else)."""
    source = md.spec.model
    if source.uri is not None:
        return Resolution(
            ServedModel(uri=source.uri, sha256=source.sha256),
            message=f"serving {source.uri} from model.uri",
        )
    name = source.from_training or ""
    if not training_found or training is None:
        return Resolution(
            None,
            "TrainingNotFound",
            f"ModelTraining {name!r} (model.fromTraining) does not exist in namespace "
            f"{md.metadata.namespace}",
        )
    result = training.result
    if result is None:
        return Resolution(None, "TrainingNotSucceeded", _no_result_message(name, training))
    if origin is not None:
        location = run_location(
            origin[0], md.metadata.namespace, name, origin[1], result.generation
        )
        if not inside_run(result.artifact_uri, result.model_file, location):
            return Resolution(
                None,
                "ResultRejected",
                f"ModelTraining {name!r} generation {result.generation} reports "
                f"{result.model_uri[:512]!r}, outside its own output location {location}/",
            )
    if not _servable(result.model_uri):
        return Resolution(
            None,
            "InvalidUri",
            f"ModelTraining {name!r} produced {result.model_uri}: only pvc://<claim>/<path> "
            "and s3://<bucket>/<key> URIs can be served",
        )
    if is_s3(result.model_uri) and md.spec.s3 is None:
        return Resolution(
            None,
            "S3NotConfigured",
            f"ModelTraining {name!r} produced {result.model_uri}: set spec.s3 (endpoint and "
            "Secret with the access keys) to serve models from object storage",
        )
    gate_failure = _gate_failure(md, name, result)
    if gate_failure is not None:
        return Resolution(None, "GateFailed", gate_failure)
    model = ServedModel(
        uri=result.model_uri,
        sha256=result.sha256,
        training=name,
        training_generation=result.generation,
    )
    return Resolution(model, message=_promotion_message(md, name, result))


def _servable(uri: str) -> bool:
    """A file in a claim or a bucket: a URI with a path below the claim or bucket."""
    if is_s3(uri):
        return re.fullmatch(S3_URI_PATTERN, uri) is not None and "/" in uri.removeprefix("s3://")
    return re.fullmatch(PVC_URI_PATTERN, uri) is not None and "/" in uri.removeprefix("pvc://")


def _no_result_message(name: str, training: ModelTrainingStatus) -> str:
    failed = next((c for c in training.conditions if c.type == "Failed"), None)
    if training.phase == "Failed" and failed is not None and failed.message:
        return f"ModelTraining {name!r} failed without a result: {failed.message}"
    return f"ModelTraining {name!r} has no successful result yet (phase {training.phase})"


def _gate_failure(md: ModelDeployment, name: str, result: TrainingResultStatus) -> str | None:
    gate = md.spec.model.gate
    if gate is None:
        return None
    where = f"ModelTraining {name!r} generation {result.generation}"
    value = result.metrics.get(gate.metric)
    if value is None:
        known = ", ".join(sorted(result.metrics)) or "none"
        return f"{where}: gate metric {gate.metric} is not in its result (metrics: {known})"
    if gate.minimum is not None and value < gate.minimum:
        return f"{where}: {gate.metric} {value:.4g} is below model.gate.minimum {gate.minimum:g}"
    if gate.maximum is not None and value > gate.maximum:
        return f"{where}: {gate.metric} {value:.4g} is above model.gate.maximum {gate.maximum:g}"
    return None


def _promotion_message(md: ModelDeployment, name: str, result: TrainingResultStatus) -> str:
    text = f"ModelTraining {name!r} generation {result.generation}: {result.model_uri}"
    gate = md.spec.model.gate
    if gate is not None:
        text += f" ({gate.metric} {result.metrics[gate.metric]:.4g} passes the gate)"
    return text


# ------------------------------------------------------------------------ pods and rollout


def _annotations(obj: Manifest | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _template_annotations(deployment: Manifest | None) -> dict[str, str]:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return _annotations(template)


def runs_model(annotations: dict[str, str], model: ServedModel) -> bool:
    return annotations.get(MODEL_URI_ANNOTATION) == model.uri and annotations.get(
        MODEL_SHA256_ANNOTATION
    ) == (model.sha256 or None)


def _alive(pods: list[Manifest]) -> list[Manifest]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _container_statuses(pod: Manifest) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def pod_failure(pod: Manifest) -> Failure | None:
    """Why this pod cannot serve its model, when waiting will not help."""
    name = pod["metadata"]["name"]
    for container in _container_statuses(pod):
        cname = str(container.get("name"))
        if cname not in (FETCH_CONTAINER, SERVER_CONTAINER):
            continue  # a user's sidecar is not the model's fault
        found = _terminated_failure(pod, cname, container) or _waiting_failure(
            name, cname, container
        )
        if found is not None:
            return found
    return None


def _served_during(pod: Manifest, terminated: dict[str, Any]) -> bool:
    """The pod is ready now, or was at some time during the run that `terminated` ended: it
    loaded its model, so whatever ended that run (a client that made it run out of memory) is
    no failure to load. Ready=False that last changed after the run started went False from
    True during the run; one that changed before (or when) it started never was True since."""
    ready = object_condition(pod, "Ready") or {}
    if ready.get("status") == "True":
        return True
    since = parse_time(ready.get("lastTransitionTime"))
    started = parse_time(terminated.get("startedAt"))
    return since is not None and started is not None and since > started


def _terminated_failure(pod: Manifest, name: str, container: dict[str, Any]) -> Failure | None:
    pod_name = pod["metadata"]["name"]
    for key in ("state", "lastState"):
        terminated = (container.get(key) or {}).get("terminated")
        if not terminated or terminated.get("exitCode", 0) == 0 or _served_during(pod, terminated):
            continue
        report = parse_load_failure(terminated.get("message"))
        if report is not None:
            return Failure(report.reason, f"pod {pod_name}, container {name}: {report.message}")
        if terminated.get("reason") == "OOMKilled":
            return Failure(
                "OOMKilled",
                f"pod {pod_name}, container {name} ran out of memory (OOMKilled): raise "
                "spec.resources.limits.memory",
            )
    return None


def _waiting_failure(pod: str, name: str, container: dict[str, Any]) -> Failure | None:
    waiting = (container.get("state") or {}).get("waiting")
    if not waiting:
        return None
    reason = str(waiting.get("reason") or "")
    detail = str(waiting.get("message") or "")
    if reason == "CrashLoopBackOff":
        terminated = (container.get("lastState") or {}).get("terminated") or {}
        code = terminated.get("exitCode")
        exit_text = f" (last exit code {code})" if code is not None else ""
        return Failure("CrashLoopBackOff", f"pod {pod}, container {name} keeps crashing{exit_text}")
    if reason in IMAGE_ERRORS or reason in CONFIG_ERRORS:
        text = f"pod {pod}, container {name}: {reason}"
        return Failure(reason, f"{text}: {detail}" if detail else text)
    return None


def _is_ready(pod: Manifest) -> bool:
    condition = object_condition(pod, "Ready")
    return condition is not None and condition.get("status") == "True"


def _is_started(pod: Manifest) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" or any(
        "running" in (c.get("state") or {}) for c in _container_statuses(pod)
    )


def _unschedulable(pods: list[Manifest]) -> str | None:
    for pod in pods:
        scheduled = object_condition(pod, "PodScheduled") or {}
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            detail = scheduled.get("message", "")
            return f"pod {pod['metadata']['name']} is unschedulable: {detail}"
    return None


def template_runs(deployment: Manifest | None, model: ServedModel) -> bool:
    return deployment is not None and runs_model(_template_annotations(deployment), model)


def rollout_pods(deployment: Manifest | None, pods: list[Manifest]) -> list[Manifest]:
    """The live pods of the Deployment's current pod template."""
    wanted = _template_annotations(deployment).get(TEMPLATE_HASH_ANNOTATION)
    if wanted is None:
        return []
    return [p for p in _alive(pods) if _annotations(p).get(TEMPLATE_HASH_ANNOTATION) == wanted]


def model_state(
    model: ServedModel, deployment: Manifest | None, pods: list[Manifest]
) -> tuple[ModelState, str, Failure | None]:
    """Pending, Loading, Loaded or FailedToLoad.

    Only pods of the Deployment's current template, when it runs `model`, can fail the model:
    pods of an earlier template (a rollout that is being replaced) say nothing about it. Any
    ready pod that runs the model, whatever its template, shows that it loads.
    """
    current = rollout_pods(deployment, pods) if template_runs(deployment, model) else []
    for pod in current:
        failure = pod_failure(pod)
        if failure is not None:
            return "FailedToLoad", f"{failure.reason}: {failure.message}", failure
    serving = [p for p in _alive(pods) if runs_model(_annotations(p), model)]
    ready = sum(_is_ready(p) for p in serving)
    if ready:
        return "Loaded", f"{ready} server pod(s) ready", None
    if any(_is_started(p) for p in current):
        return "Loading", f"loading and warming up on {len(current)} pod(s)", None
    if not current:
        return "Pending", "no server pod runs this model yet", None
    return "Pending", _unschedulable(current) or f"{len(current)} pod(s) starting", None


def _current(deployment: Manifest) -> bool:
    """The Deployment controller has seen its latest spec: its status speaks for it."""
    meta, status = deployment["metadata"], deployment.get("status") or {}
    return int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)


def deadline_failure(deployment: Manifest | None, model: ServedModel) -> Failure | None:
    """The Deployment gave up on the rollout of `model` (progressDeadlineSeconds)."""
    if deployment is None or not template_runs(deployment, model) or not _current(deployment):
        return None
    progressing = object_condition(deployment, "Progressing") or {}
    if progressing.get("reason") != "ProgressDeadlineExceeded":
        return None
    return Failure(
        "ProgressDeadlineExceeded",
        f"the rollout did not progress within spec.rollout.progressDeadlineSeconds: "
        f"{progressing.get('message', '')}".rstrip(": "),
    )


def rollout_done(deployment: Manifest | None, model: ServedModel) -> bool:
    """Every replica runs the template of `model`: no pod of an earlier template is left."""
    if deployment is None or not template_runs(deployment, model) or not _current(deployment):
        return False
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    updated = int(status.get("updatedReplicas") or 0)
    return updated >= int(spec.get("replicas", 1)) and int(status.get("replicas") or 0) == updated


def _rolled_out_before(deployment: Manifest | None) -> bool:
    """The Deployment finished this rollout once: unready pods now are a loss, not a start."""
    progressing = object_condition(deployment, "Progressing") if deployment else None
    return (progressing or {}).get("reason") == "NewReplicaSetAvailable"


def rollout_complete(deployment: Manifest | None, model: ServedModel) -> bool:
    """Done, and every replica is available (as `kubectl rollout status` says)."""
    if not rollout_done(deployment, model):
        return False
    status = (deployment or {}).get("status") or {}
    return int(status.get("availableReplicas") or 0) >= int(status.get("updatedReplicas") or 0)


# ------------------------------------------------------------------------ the plan


class _Pass:
    """One reconcile's worth of decisions, accumulated into a Plan."""

    def __init__(self, md: ModelDeployment, observed: Observed) -> None:
        self.md = md
        self.observed = observed
        self.generation = md.metadata.generation
        self.plan = Plan(status=md.status.model_copy(deep=True))

    @property
    def status(self) -> ModelDeploymentStatus:
        return self.plan.status

    def condition(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.observed.now,
            self.generation,
        )

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))


def plan_deployment(md: ModelDeployment, observed: Observed) -> Plan:
    """The model to serve, the status and the Events of a ModelDeployment."""
    run = _Pass(md, observed)
    status = run.status
    status.observed_generation = run.generation
    rejected = status.rejected_model
    if rejected is not None and rejected.generation != run.generation:
        status.rejected_model = None  # the spec changed: the user may have fixed the cause

    candidate = _resolve(run)
    current = served(status.model) if status.model is not None else None
    target = current
    if candidate is not None and not same_model(candidate, current):
        target = candidate
        status.model = ModelStatus(**candidate.model_dump(), state="Pending")
        run.condition("RolledBack", False, "RollingOut", f"rolling out {candidate.uri}")
        run.event("Normal", "RollingOut", f"Rolling out {candidate.uri}")
    if target is None:
        _nothing_to_serve(run)
        return run.plan

    target = _follow_rollout(run, target)
    run.plan.target = target
    status.url = observed.url
    _deployment_status(run, target)
    _children_status(run)
    _drift_status(run)
    return run.plan


def _drift_status(run: _Pass) -> None:
    drift = run.md.spec.monitoring.drift
    if not drift.enabled:
        run.status.conditions = without_drifting(run.status.conditions)
        return
    if run.observed.drift is None:
        return
    run.status.conditions, event = drifting(
        drift, run.observed.drift, run.status.conditions, run.observed.now, run.generation
    )
    if event is not None:
        run.plan.events.append(event)


def _children_status(run: _Pass) -> None:
    """The children were applied (a target exists): ChildrenApplied, and Ready when not."""
    rejected, status = run.observed.rejected, run.status
    status.conditions, event = children_applied(
        status.conditions, rejected, run.observed.now, run.generation
    )
    if event is not None:
        run.plan.events.append(event)
    if rejected:
        run.condition("Ready", False, CHILD_REJECTED, "; ".join(rejected))


def _resolve(run: _Pass) -> ServedModel | None:
    """The candidate, with the ModelResolved condition saying why there is none."""
    resolution, status = run.observed.resolution, run.status
    model, reason, message = resolution.model, resolution.reason, resolution.message
    # Only pvc:// models live in a claim; an s3:// model's problems show in the fetcher's report.
    source = parse_uri(model.uri, "model.uri") if model is not None else None
    if model is not None and isinstance(source, PvcUri) and not run.observed.claim_found:
        message = (
            f"PersistentVolumeClaim {source.claim!r} of {model.uri}"
            f" does not exist in namespace {run.md.metadata.namespace}"
        )
        model, reason = None, "ClaimNotFound"
    rejected = status.rejected_model
    if model is not None and rejected is not None and same_model(model, rejected):
        model, reason = None, "ModelRejected"
        message = (
            f"{rejected.uri} was rolled back ({rejected.reason}: {rejected.message}); it is not "
            "tried again until the spec changes or a new model is produced"
        )
    was = next((c for c in status.conditions if c.type == "ModelResolved"), None)
    if model is None and (was is None or was.reason != reason):
        # Waiting for a training that is still running is normal; the rest needs a person.
        run.event("Normal" if reason == "TrainingNotSucceeded" else "Warning", reason, message)
    run.condition("ModelResolved", model is not None, reason, message)
    return model


def _nothing_to_serve(run: _Pass) -> None:
    resolved = next(c for c in run.status.conditions if c.type == "ModelResolved")
    run.condition("Ready", False, resolved.reason, resolved.message)
    run.condition("Available", False, "NoModel", "no model to serve yet")
    run.condition("Progressing", False, "NoModel", "no model to serve yet")


def _follow_rollout(run: _Pass, target: ServedModel) -> ServedModel:
    """The model the pods must run: `target`, or the last good one when `target` failed."""
    observed, status = run.observed, run.status
    state, message, failure = model_state(target, observed.deployment, observed.pods)
    failure = failure or deadline_failure(observed.deployment, target)
    if failure is not None and state != "FailedToLoad":
        state, message = "FailedToLoad", f"{failure.reason}: {failure.message}"
    previous = status.model.state if status.model is not None else None
    status.model = ModelStatus(**served(target).model_dump(), state=state, message=message)
    if failure is None:
        return target

    last_good = status.last_good_model
    if (
        run.md.spec.rollout.auto_rollback
        and last_good is not None
        and not same_model(last_good, target)
    ):
        return _roll_back(run, target, last_good, failure)
    if previous != "FailedToLoad":
        why = "" if run.md.spec.rollout.auto_rollback else " (spec.rollout.autoRollback is off)"
        if last_good is None or same_model(last_good, target):
            why = " (no earlier model served well: nothing to roll back to)"
        run.event("Warning", "FailedToLoad", f"{target.uri}: {message}{why}")
    return target


def _roll_back(
    run: _Pass, failed: ServedModel, last_good: ServedModel, failure: Failure
) -> ServedModel:
    status, now = run.status, run.observed.now
    status.rejected_model = RejectedModel(
        **served(failed).model_dump(),
        reason=failure.reason,
        message=failure.message[:1024],
        generation=run.generation,
        rejected_at=rfc3339(now),
    )
    message = (
        f"rolled back from {failed.uri} to {last_good.uri}: {failure.reason}: {failure.message}"
    )
    run.condition("RolledBack", True, failure.reason, message)
    run.condition(
        "ModelResolved",
        False,
        "ModelRejected",
        f"{failed.uri} was rolled back ({failure.reason}); it is not tried again until the "
        "spec changes or a new model is produced",
    )
    run.event("Warning", "RolledBack", message)
    state, state_message, _ = model_state(last_good, run.observed.deployment, run.observed.pods)
    status.model = ModelStatus(**served(last_good).model_dump(), state=state, message=state_message)
    return last_good


def _deployment_status(run: _Pass, target: ServedModel) -> None:
    status, deployment = run.status, run.observed.deployment
    live = (deployment or {}).get("status") or {}
    status.replicas = int(live.get("replicas") or 0)
    status.ready_replicas = int(live.get("readyReplicas") or 0)
    status.updated_replicas = (
        int(live.get("updatedReplicas") or 0) if template_runs(deployment, target) else 0
    )
    for type_ in ("Available", "Progressing"):
        found = object_condition(deployment, type_) if deployment is not None else None
        if found is None:
            run.condition(
                type_, False, "DeploymentPending", "the server Deployment is being created"
            )
        else:
            run.condition(
                type_,
                found.get("status") == "True",
                str(found.get("reason") or type_),
                str(found.get("message") or ""),
            )

    model = status.model
    assert model is not None
    complete = rollout_complete(deployment, target)
    wanted = int(((deployment or {}).get("spec") or {}).get("replicas", 1))
    if complete and wanted == 0:
        run.condition("Ready", False, "ScaledToZero", "the Deployment has zero replicas")
        return
    ready = model.state == "Loaded" and complete and condition_is(status.conditions, "Available")
    if ready:
        previous_good = run.md.status.last_good_model
        status.last_good_model = served(target)
        message = f"serving {target.uri} on {status.ready_replicas} ready replica(s)"
        was_ready = condition_is(run.md.status.conditions, "Ready")
        if not was_ready or not same_model(previous_good, target):
            run.event("Normal", "Ready", f"Serving {target.uri}")
        run.condition("Ready", True, "ModelLoaded", message)
        return
    run.plan.unsettled = True
    if model.state == "FailedToLoad":
        reason, message = "FailedToLoad", model.message
    elif not rollout_done(deployment, target) or not _rolled_out_before(deployment):
        reason, message = "RollingOut", f"rolling out {target.uri}: {model.state}: {model.message}"
    else:
        available = int(live.get("availableReplicas") or 0)
        reason = "NotAvailable"
        message = f"{available}/{status.updated_replicas} replicas available: {model.message}"
    run.condition("Ready", False, reason, message)
