"""Argo CD health checks of both kinds (deploy/argocd/health/*.lua) under Lua 5.1, as Argo CD
runs them: `obj` is the object, the script returns {status, message}. Statuses come from the
operator's own models and, where no live children are needed, from its real status planners."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pytest
import yaml
from lupa import lua51

from modelyard_operator.api.crd import KINDS, crd
from modelyard_operator.api.deployment import (
    ModelDeployment,
    ModelDeploymentStatus,
    ModelState,
    ModelStatus,
    ServedModel,
)
from modelyard_operator.api.meta import Condition
from modelyard_operator.api.training import ModelTraining, ModelTrainingStatus, TrainingPhase
from modelyard_operator.status.conditions import set_condition
from modelyard_operator.status.deployment import Observed, plan_deployment, resolve_model
from modelyard_operator.status.training import Observed as TrainingObserved
from modelyard_operator.status.training import plan_training
from tests.conftest import ROOT, load_sample, with_changes

ARGOCD = ROOT / "deploy" / "argocd"
HEALTH = ARGOCD / "health"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
# Only Lua's base functions: a script that needs more would fail here before it fails in Argo.
BASE_FUNCTIONS = ["ipairs", "pairs", "type", "tostring", "tonumber", "next", "error", "select"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

_RUNNER = """
return function(source, obj, names)
  local chunk = assert(loadstring(source, "=health.lua"))
  local env = {obj = obj}
  for _, name in ipairs(names) do env[name] = _G[name] end
  setfenv(chunk, env)
  return chunk()
end
"""


class HealthCheck:
    """One health.lua in a fresh Lua 5.1 runtime."""

    def __init__(self, kind: str) -> None:
        self.source = (HEALTH / f"{kind}.lua").read_text()
        self.lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        assert self.lua.execute("return _VERSION") == "Lua 5.1"
        self._run = self.lua.execute(_RUNNER)

    def __call__(self, obj: dict[str, Any]) -> tuple[str, str]:
        table = self.lua.table_from(obj, recursive=True)
        names = self.lua.table_from(BASE_FUNCTIONS)
        result = self._run(self.source, table, names)
        health = dict(result.items())
        assert health["status"] in ARGO_STATUSES, health
        return str(health["status"]), str(health.get("message") or "")


@pytest.fixture(scope="module")
def training_health() -> HealthCheck:
    return HealthCheck("ModelTraining")


@pytest.fixture(scope="module")
def deployment_health() -> HealthCheck:
    return HealthCheck("ModelDeployment")


def conditions(*items: tuple[str, bool, str, str], generation: int = 1) -> list[Condition]:
    found: list[Condition] = []
    for type_, value, reason, message in items:
        found = set_condition(found, type_, value, reason, message, NOW, generation)
    return found


def as_object(kind: str, status: Any | None, generation: int = 1) -> dict[str, Any]:
    """The object as Argo CD sees it: the status exactly as the operator writes it."""
    obj: dict[str, Any] = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "m", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status.model_dump(by_alias=True, exclude_none=True)
    return obj


# ------------------------------------------------------------------------ ModelTraining


def training_status(phase: str, *items: tuple[str, bool, str, str], **fields: Any) -> Any:
    return ModelTrainingStatus.model_validate(
        {"observedGeneration": 1, "phase": phase, **fields}
    ).model_copy(update={"conditions": conditions(*items)})


SUCCEEDED = training_status(
    "Succeeded",
    ("Succeeded", True, "RunSucceeded", "trained pvc://models/ml/m/u/g1/model.onnx"),
    ("Failed", False, "RunSucceeded", ""),
)
TRAINING_CASES: dict[str, tuple[Any, str, str]] = {
    "Pending": (training_status("Pending"), "Progressing", "Pending"),
    "Running": (
        training_status(
            "Running",
            ("Running", True, "WorkersRunning", "2/2 workers running"),
            progress={"summary": "12/100 (12%)", "eta": "3m20s"},
        ),
        "Progressing",
        "Running: 12/100 (12%), ETA 3m20s",
    ),
    "Exporting": (training_status("Exporting"), "Progressing", "Exporting"),
    "Succeeded": (SUCCEEDED, "Healthy", "trained pvc://models/ml/m/u/g1/model.onnx"),
    "Failed": (
        training_status(
            "Failed",
            ("Failed", True, "LossDiverged", "permanent failure: loss is nan at epoch 3"),
            ("Succeeded", False, "RunFailed", ""),
        ),
        "Degraded",
        "permanent failure: loss is nan at epoch 3",
    ),
    "Suspended": (
        training_status("Suspended", ("Suspended", True, "Suspended", "runPolicy.suspend is true")),
        "Suspended",
        "runPolicy.suspend is true",
    ),
}


def test_every_training_phase_has_a_case() -> None:
    assert set(TRAINING_CASES) == set(get_args(TrainingPhase))


@pytest.mark.parametrize("phase", sorted(TRAINING_CASES))
def test_training_health_by_phase(training_health: HealthCheck, phase: str) -> None:
    status, health, words = TRAINING_CASES[phase]
    found, message = training_health(as_object("ModelTraining", status))
    assert found == health
    assert words in message


def test_a_training_without_status_is_progressing(training_health: HealthCheck) -> None:
    assert training_health(as_object("ModelTraining", None)) == (
        "Progressing",
        "Waiting for the operator",
    )


@pytest.mark.parametrize("phase", sorted(TRAINING_CASES))
def test_a_newer_training_generation_is_progressing(
    training_health: HealthCheck, phase: str
) -> None:
    """An edited spec is a new run: whatever the old one did, the new one has not started."""
    status = TRAINING_CASES[phase][0]
    found, message = training_health(as_object("ModelTraining", status, generation=2))
    assert (found, message) == ("Progressing", "Waiting for the operator to act on generation 2")


def test_unschedulable_workers_degrade_a_training(training_health: HealthCheck) -> None:
    status = training_status(
        "Pending", ("Unschedulable", True, "Unschedulable", "0/3 nodes have nvidia.com/gpu")
    )
    assert training_health(as_object("ModelTraining", status)) == (
        "Degraded",
        "0/3 nodes have nvidia.com/gpu",
    )


def test_a_worker_that_cannot_start_degrades_a_training(training_health: HealthCheck) -> None:
    message = "rank 1 (pod digits-a1-w-0-x7k2p): ImagePullBackOff: Back-off pulling image"
    status = training_status("Pending", ("WorkersBlocked", True, "ImagePullBackOff", message))
    assert training_health(as_object("ModelTraining", status)) == ("Degraded", message)


def test_a_restarting_training_says_so(training_health: HealthCheck) -> None:
    status = training_status(
        "Pending", ("Restarting", True, "AttemptFailed", "attempt 1 failed on rank 1: OOMKilled")
    )
    found, message = training_health(as_object("ModelTraining", status))
    assert found == "Progressing"
    assert "restarting: attempt 1 failed on rank 1: OOMKilled" in message


def test_the_planners_first_status_is_progressing(training_health: HealthCheck) -> None:
    document = with_changes(
        load_sample("iris.yaml"),
        {"metadata.namespace": "ml", "metadata.uid": "u", "metadata.generation": 1},
    )
    plan = plan_training(
        ModelTraining.model_validate(document),
        TrainingObserved(jobs=[], pods=[], progress=None, now=NOW),
    )
    obj = {**document, "status": plan.status.model_dump(by_alias=True, exclude_none=True)}
    assert training_health(obj)[0] == "Progressing"


# ---------------------------------------------------------------------- ModelDeployment

A = ServedModel(uri="pvc://models/a/model.onnx", sha256="a" * 64)
B = ServedModel(uri="pvc://models/b/model.onnx", sha256="b" * 64)


def deployment_status(
    state: str | None, *items: tuple[str, bool, str, str], **fields: Any
) -> ModelDeploymentStatus:
    status = ModelDeploymentStatus.model_validate({"observedGeneration": 1, **fields})
    model = None if state is None else ModelStatus(**A.model_dump(), state=state)
    return status.model_copy(update={"conditions": conditions(*items), "model": model})


READY = deployment_status(
    "Loaded",
    ("ModelResolved", True, "Resolved", "serving pvc://models/a/model.onnx"),
    ("Available", True, "MinimumReplicasAvailable", ""),
    ("Progressing", True, "NewReplicaSetAvailable", ""),
    ("Ready", True, "ModelLoaded", "serving pvc://models/a/model.onnx on 2 ready replica(s)"),
    lastGoodModel=A.model_dump(by_alias=True, exclude_none=True),
)


@pytest.mark.parametrize(
    ("status", "health", "words"),
    [
        (READY, "Healthy", "on 2 ready replica(s)"),
        (
            deployment_status(
                "Loaded",
                ("Ready", True, "ModelLoaded", "serving pvc://models/a/model.onnx"),
                ("RolledBack", True, "ChecksumMismatch", "rolled back from b to a: sha256"),
                ("ModelResolved", False, "ModelRejected", "b was rolled back"),
            ),
            "Degraded",
            "rolled back from b to a",
        ),
        (
            deployment_status(
                "Loaded", ("Ready", False, "ScaledToZero", "the Deployment has zero replicas")
            ),
            "Suspended",
            "zero replicas",
        ),
        (
            deployment_status(
                "Loading",
                ("Ready", False, "RollingOut", "rolling out pvc://models/a/model.onnx: Loading"),
                ("Progressing", True, "ReplicaSetUpdated", ""),
            ),
            "Progressing",
            "rolling out",
        ),
        (
            deployment_status(
                "Loaded",
                ("Ready", False, "NotAvailable", "1/2 replicas available"),
                ("Progressing", False, "ProgressDeadlineExceeded", "ReplicaSet m-1 timed out"),
            ),
            "Degraded",
            "timed out",
        ),
        (
            deployment_status(
                None, ("Ready", False, "InvalidSpec", "spec.replicas: set replicas or autoscaling")
            ),
            "Degraded",
            "set replicas or autoscaling",
        ),
    ],
    ids=["ready", "rolled-back", "scaled-to-zero", "rolling-out", "deadline", "invalid-spec"],
)
def test_deployment_health_from_conditions(
    deployment_health: HealthCheck, status: ModelDeploymentStatus, health: str, words: str
) -> None:
    found, message = deployment_health(as_object("ModelDeployment", status))
    assert found == health
    assert words in message


STATE_HEALTH = {
    "Pending": "Progressing",
    "Loading": "Progressing",
    "Loaded": "Progressing",
    "FailedToLoad": "Degraded",
}


def test_every_model_state_has_a_case() -> None:
    assert set(STATE_HEALTH) == set(get_args(ModelState))


@pytest.mark.parametrize("state", sorted(STATE_HEALTH))
def test_a_rollout_that_is_not_ready_by_model_state(
    deployment_health: HealthCheck, state: str
) -> None:
    reason = "FailedToLoad" if state == "FailedToLoad" else "RollingOut"
    status = deployment_status(state, ("Ready", False, reason, f"model is {state}"))
    assert deployment_health(as_object("ModelDeployment", status))[0] == STATE_HEALTH[state]


def test_a_newer_deployment_generation_is_progressing(deployment_health: HealthCheck) -> None:
    found, message = deployment_health(as_object("ModelDeployment", READY, generation=4))
    assert (found, message) == ("Progressing", "Waiting for the operator to act on generation 4")


def test_a_deployment_without_status_is_progressing(deployment_health: HealthCheck) -> None:
    assert deployment_health(as_object("ModelDeployment", None))[0] == "Progressing"


def _model_deployment(model: dict[str, Any]) -> ModelDeployment:
    document = with_changes(
        load_sample("pinned-model-deployment.yaml"),
        {
            "metadata.name": "m",
            "metadata.namespace": "ml",
            "metadata.uid": "uid-m",
            "metadata.generation": 1,
            "spec.model": model,
        },
    )
    return ModelDeployment.model_validate(document)


def _training(phase: str, accuracy: float | None) -> ModelTrainingStatus:
    result = None
    if accuracy is not None:
        result = {
            "generation": 1,
            "artifactUri": "pvc://models/ml/digits/u/g1",
            "modelUri": "pvc://models/ml/digits/u/g1/model.onnx",
            "sha256": "d" * 64,
            "metrics": {"test_accuracy": accuracy},
        }
    return ModelTrainingStatus.model_validate({"phase": phase, "result": result})


GATED = {"fromTraining": "digits", "gate": {"metric": "test_accuracy", "minimum": 0.9}}


@pytest.mark.parametrize(
    ("model", "found", "training", "claim", "health", "words"),
    [
        (GATED, False, None, True, "Degraded", "does not exist"),
        (GATED, True, _training("Running", None), True, "Progressing", "Running"),
        (GATED, True, _training("Succeeded", 0.5), True, "Degraded", "below"),
        ({"uri": A.uri, "sha256": A.sha256}, False, None, False, "Degraded", "does not exist"),
        ({"uri": A.uri, "sha256": A.sha256}, False, None, True, "Progressing", ""),
    ],
    ids=["training-not-found", "training-running", "gate-failed", "claim-not-found", "first-pass"],
)
def test_health_of_the_planners_statuses(
    deployment_health: HealthCheck,
    model: dict[str, Any],
    found: bool,
    training: ModelTrainingStatus | None,
    claim: bool,
    health: str,
    words: str,
) -> None:
    md = _model_deployment(model)
    observed = Observed(
        resolution=resolve_model(md, found, training),
        claim_found=claim,
        deployment=None,
        pods=[],
        url="http://m.ml.svc.cluster.local:8080",
        now=NOW,
    )
    plan = plan_deployment(md, observed)
    obj = md.model_dump(by_alias=True, exclude_none=True)
    obj["status"] = plan.status.model_dump(by_alias=True, exclude_none=True)
    found_health, message = deployment_health(obj)
    assert found_health == health, message
    assert words in message


# ------------------------------------------------------------------- wiring and schema

# Every status field the scripts read: a rename in the API must fail here, not in Argo CD.
READ_FIELDS = {
    "ModelTraining": [
        "observedGeneration",
        "phase",
        "conditions",
        "progress.summary",
        "progress.eta",
        "result.modelUri",
        "lastFailure.message",
    ],
    "ModelDeployment": ["observedGeneration", "conditions", "model.state", "model.message"],
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_fields_the_scripts_read_exist(kind: Any) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    source = (HEALTH / f"{kind.kind}.lua").read_text()
    for path in READ_FIELDS[kind.kind]:
        node = schema["properties"]["status"]
        for part in path.split("."):
            assert part in node.get("properties", {}), f"status.{path} is not in the CRD"
            node = node["properties"][part]
        assert f"{path.split('.')[-1]}" in source
    conditions = schema["properties"]["status"]["properties"]["conditions"]["items"]
    assert {"type", "status", "reason", "message"} <= set(conditions["properties"])


def test_argocd_kustomization_registers_both_scripts() -> None:
    kustomization = yaml.safe_load((ARGOCD / "kustomization.yaml").read_text())
    generator = kustomization["configMapGenerator"][0]
    assert generator["name"] == "argocd-cm"
    assert generator["options"]["disableNameSuffixHash"] is True
    files = dict(entry.split("=", 1) for entry in generator["files"])
    assert files == {
        f"resource.customizations.health.modelyard.dev_{k.kind}": f"health/{k.kind}.lua"
        for k in KINDS
    }
