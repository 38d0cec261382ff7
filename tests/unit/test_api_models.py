"""The API models accept the samples and reject bad specs with an error that names the field."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from modelyard_operator.api import ModelDeployment, ModelTraining
from modelyard_operator.api.deployment import CustomMetric, Gate
from modelyard_server.metrics import ServerMetrics
from modelyard_trainer.config import format_validation_error
from modelyard_trainer.contracts import EvaluationMetrics
from tests.conftest import SAMPLES, load_sample, with_changes

TRAINING = load_sample("digits.yaml")
DEPLOYMENT = load_sample("digits-deployment.yaml")
SHA = "a" * 64
SCRIPT = load_sample("script.yaml")

# (changes to a valid object, a fragment that the error must contain)
BAD_TRAININGS: list[tuple[dict[str, Any], str]] = [
    ({"spec.workers": 0}, "spec.workers"),
    ({"spec.workers": "two"}, "spec.workers"),
    ({"spec.processesPerWorker": -1}, "spec.processesPerWorker"),
    ({"spec.training.epochs": 0}, "spec.training.epochs"),
    ({"spec.training.batchSize": -8}, "spec.training.batchSize"),
    ({"spec.training.optimizer.name": "lbfgs"}, "spec.training.optimizer.name"),
    ({"spec.training.optimizer.learningRate": 0}, "spec.training.optimizer.learningRate"),
    ({"spec.training.optimizer.weightDecay": -0.1}, "spec.training.optimizer.weightDecay"),
    ({"spec.training.loss": "hinge"}, "spec.training.loss"),
    ({"spec.model.architecture": "transformer"}, "spec.model.architecture"),
    ({"spec.model.dropout": 1.5}, "spec.model.dropout"),
    ({"spec.data.source.builtin": "mnist"}, "spec.data.source.builtin"),
    ({"spec.export.parityTolerance": 0}, "spec.export.parityTolerance"),
    ({"spec.export.opset": 7}, "spec.export.opset"),
    ({"spec.output.uri": "http://bucket/models"}, "spec.output.uri"),
    ({"spec.pod.labels": {"modelyard.dev/training": "other"}}, "spec.pod.labels"),
    ({"spec.pod.annotations": {"modelyard.dev/spec-hash": "x"}}, "spec.pod.annotations"),
    ({"spec.runPolicy.backoffLimit": -1}, "spec.runPolicy.backoffLimit"),
    (
        {"spec.scheduling.tolerations": [{"operator": "Sometimes"}]},
        "spec.scheduling.tolerations.0.operator",
    ),
    ({"spec.shmSize": "lots"}, "spec.shmSize"),
    ({"spec.epochs": 10}, "spec.epochs"),  # a typo at the wrong level is an error, not ignored
    ({"spec.script": {"command": []}}, "spec.script.command"),
    ({"spec.script": {"args": ["x"]}}, "spec.script.command"),
    ({"spec.script": {"command": ["python"], "entrypoint": "x"}}, "spec.script.entrypoint"),
]

BAD_DEPLOYMENTS: list[tuple[dict[str, Any], str]] = [
    ({"spec.model": {"uri": "s4://x/y"}}, "spec.model.uri"),
    ({"spec.model": {"uri": "pvc://m/model.onnx", "sha256": "abc"}}, "spec.model.sha256"),
    ({"spec.model.fromTraining": "Digits_Run"}, "spec.model.fromTraining"),
    ({"spec.autoscaling.targetCpuUtilization": 150}, "spec.autoscaling.targetCpuUtilization"),
    ({"spec.server.maxBatchSize": 0}, "spec.server.maxBatchSize"),
    ({"spec.server.executionProvider": "tpu"}, "spec.server.executionProvider"),
    ({"spec.rollout.maxSurge": "lots"}, "spec.rollout.maxSurge"),
    ({"spec.monitoring.serviceMonitor": "maybe"}, "spec.monitoring.serviceMonitor"),
    ({"spec.pod.labels": {"modelyard.dev/deployment": "other"}}, "spec.pod.labels"),
    ({"spec.pod.annotations": {"modelyard.dev/model-sha256": SHA}}, "spec.pod.annotations"),
    ({"spec": ...}, "spec"),
]


class CrossField(NamedTuple):
    """A spec that breaks one cross-field rule: pydantic and the API server (CEL) refuse it."""

    base: dict[str, Any]
    changes: dict[str, Any]
    field: str  # where the API server reports it (the rule's node, or its fieldPath)
    fragment: str  # in pydantic's message and in the CEL rule's


SYNTHETIC = "spec.data.source"
_CSV = {"spec.data.source": {"uri": "pvc://data/x.csv"}, "spec.data.target": "y"}

# One case per CEL rule that twins a pydantic check (tests/unit/test_crds.py holds the map).
CROSS_FIELD: list[CrossField] = [
    CrossField(TRAINING, {"spec.model.architecture": "custom"}, "spec.model", "entrypoint is"),
    CrossField(
        TRAINING,
        {"spec.model.entrypointArgs": {"depth": "3"}},
        "spec.model.entrypointArgs",
        "entrypointArgs is only allowed when architecture is 'custom'",
    ),
    CrossField(
        TRAINING, {"spec.model.kernelSize": 4}, "spec.model.kernelSize", "kernelSize must be odd"
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"features": 5, "informative": 6}}},
        "spec.data.source.synthetic.informative",
        "informative must not exceed features",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"noise": 2}}},
        "spec.data.source.synthetic.noise",
        "noise is a fraction of flipped labels",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"samples": 10, "classes": 6, "informative": 3}}},
        "spec.data.source.synthetic.classes",
        "classes must be at most half of samples",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"informative": 2, "classes": 5}}},
        "spec.data.source.synthetic.classes",
        "classification needs 2**informative >= classes",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"builtin": "iris", "uri": "pvc://data/x.csv"}},
        "spec.data.source",
        "exactly one of builtin, synthetic or uri",
    ),
    CrossField(
        TRAINING,
        {"spec.data.split": {"validation": 0.5, "test": 0.45}},
        "spec.data.split",
        "validation + test must be below 0.9",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"uri": "pvc://data/x.csv"}},
        "spec.data",
        "target is required when source.uri is set",
    ),
    CrossField(TRAINING, {"spec.data.target": "y"}, "spec.data", "target is"),
    CrossField(
        TRAINING,
        {"spec.data.features": ["a", "b"]},
        "spec.data.features",
        "features is only allowed with source.uri",
    ),
    CrossField(
        TRAINING,
        {**_CSV, "spec.data.features": ["x", "y"]},
        "spec.data.features",
        "features must not contain the target column",
    ),
    CrossField(
        TRAINING,
        {"spec.training.optimizer.nesterov": True},
        "spec.training.optimizer",
        "nesterov needs name 'sgd' and momentum > 0",
    ),
    CrossField(
        TRAINING,
        {"spec.training.optimizer.momentum": 0.9},
        "spec.training.optimizer.momentum",
        "momentum only applies to name 'sgd'",
    ),
    CrossField(
        TRAINING,
        {"spec.training.schedule.warmupEpochs": 30},
        "spec.training",
        "schedule.warmupEpochs must be less than epochs",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"task": "regression"}}, "spec.training.loss": "mse"},
        "spec.training.earlyStopping.metric",
        "earlyStopping.metric 'val_accuracy' needs loss 'cross_entropy'",
    ),
    CrossField(
        TRAINING,
        {"spec.training.loss": "mse", "spec.training.earlyStopping.metric": "val_loss"},
        "spec.training.loss",
        "is a classification data set",
    ),
    CrossField(
        TRAINING,
        {SYNTHETIC: {"synthetic": {"task": "regression"}}},
        "spec.data.source.synthetic.task",
        "does not fit data.source.synthetic.task",
    ),
    CrossField(
        TRAINING,
        {"spec.data.split": {"validation": 0.0}},
        "spec.training.earlyStopping.enabled",
        "training.earlyStopping needs data.split.validation > 0",
    ),
    CrossField(
        TRAINING,
        {"spec.scheduling.queueName": "gpu", "spec.runPolicy.suspend": True},
        "spec",
        "runPolicy.suspend cannot be combined with scheduling.queueName",
    ),
    CrossField(
        TRAINING,
        {"spec.output.uri": "s3://models/runs"},
        "spec.output.uri",
        "s3: output.uri is an s3:// URI",
    ),
    CrossField(
        TRAINING,
        {**_CSV, SYNTHETIC: {"uri": "s3://datasets/x.csv"}},
        "spec.data.source.uri",
        "s3: data.source.uri is an s3:// URI",
    ),
    CrossField(
        TRAINING,
        {"spec.training.batchSize": 63},
        "spec.training.batchSize",
        "training.batchSize must be divisible by workers x processesPerWorker",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.server": {"shutdownDelaySeconds": 30}},
        "spec.server",
        "shutdownDelaySeconds must be less than shutdownGraceSeconds",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model.gate": {"metric": "test_accuracy"}},
        "spec.model.gate",
        "gate needs minimum or maximum",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model.gate": {"minimum": 0.9, "maximum": 0.5}},
        "spec.model.gate",
        "gate.minimum must not exceed gate.maximum",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model.uri": "pvc://models/m.onnx", "spec.model.sha256": SHA},
        "spec.model",
        "exactly one of model.uri and model.fromTraining must be set",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model.sha256": SHA},
        "spec.model",
        "model.sha256 is only allowed with model.uri",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model": {"uri": "pvc://models/m.onnx"}},
        "spec.model.sha256",
        "model.sha256 is required with model.uri",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model": {"uri": "pvc://models/m.onnx", "sha256": SHA, "gate": {"minimum": 0.5}}},
        "spec.model",
        "model.gate needs model.fromTraining",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    CrossField(DEPLOYMENT, {"spec.replicas": 2}, "spec", "set replicas or autoscaling, not both"),
    *(
        CrossField(
            SCRIPT,
            {f"spec.{key}": value},
            "spec.script",
            "script replaces the built-in trainer: it cannot be combined with model, data",
        )
        for key, value in [
            ("model", {"hiddenLayers": [8]}),
            ("data", {"source": {"builtin": "iris"}}),
            ("training", {"epochs": 3}),
            ("checkpoint", {"everyEpochs": 2}),
            ("export", {"quantizeInt8": True}),
        ]
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.monitoring": {"drift": {"windowRows": 1000, "minRows": 901}}},
        "spec.monitoring.drift",
        "minRows must be at most 90% of windowRows",
    ),
    CrossField(
        DEPLOYMENT,
        {"spec.model": {"uri": "s3://models/m.onnx", "sha256": SHA}},
        "spec.model.uri",
        "s3: model.uri is an s3:// URI",
    ),
]

# Specs near those rules that both must accept: the CEL rules read absent blocks as their
# defaults, exactly as pydantic fills them in.
GOOD_CROSS_FIELD: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (TRAINING, {"spec.training": ..., "spec.workers": 4}),  # default batch 64 over 4
    (TRAINING, {"spec.training.batchSize": 60, "spec.workers": 3, "spec.processesPerWorker": 2}),
    (TRAINING, {"spec.training.optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}}),
    (
        TRAINING,
        {"spec.model": {"architecture": "custom", "entrypoint": "m:f", "entrypointArgs": {}}},
    ),
    (TRAINING, {"spec.model": {"architecture": "custom", "entrypoint": "m:f", "kernelSize": 5}}),
    (TRAINING, {**_CSV, "spec.data.features": ["a", "b"]}),
    (
        TRAINING,
        {
            SYNTHETIC: {"synthetic": {"task": "regression", "noise": 5}},
            "spec.training.loss": "mse",
            "spec.training.earlyStopping.metric": "val_loss",
        },
    ),
    (TRAINING, {SYNTHETIC: {"synthetic": {"samples": 20, "classes": 10, "informative": 4}}}),
    (TRAINING, {"spec.data": ..., "spec.training.earlyStopping": {"enabled": True}}),
    (TRAINING, {"spec.pod.labels": {"team": "ml", "example.com/modelyard.dev": "x"}}),
    # A script's batches are its own: no batch-size rule for 3 workers x 1 process.
    (SCRIPT, {"spec.workers": 3}),
    (DEPLOYMENT, {"spec.model": {"uri": "pvc://models/m.onnx", "sha256": SHA}}),
]


def _error(model: type[ModelTraining] | type[ModelDeployment], document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    return format_validation_error(caught.value)


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_parses(sample: str) -> None:
    document = load_sample(sample)
    model = ModelTraining if document["kind"] == "ModelTraining" else ModelDeployment
    parsed = model.model_validate(document)
    assert parsed.metadata.name == document["metadata"]["name"]


@pytest.mark.parametrize(("changes", "fragment"), BAD_TRAININGS)
def test_bad_training_names_the_field(changes: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(ModelTraining, with_changes(TRAINING, changes))


@pytest.mark.parametrize(("changes", "fragment"), BAD_DEPLOYMENTS)
def test_bad_deployment_names_the_field(changes: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(ModelDeployment, with_changes(DEPLOYMENT, changes))


@pytest.mark.parametrize("case", CROSS_FIELD, ids=lambda c: c.fragment)
def test_cross_field_rules_name_the_fields(case: CrossField) -> None:
    model = ModelTraining if case.base["kind"] == "ModelTraining" else ModelDeployment
    assert case.fragment in _error(model, with_changes(case.base, case.changes))


@pytest.mark.parametrize(("base", "changes"), GOOD_CROSS_FIELD)
def test_specs_near_the_cross_field_rules_are_valid(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    model = ModelTraining if base["kind"] == "ModelTraining" else ModelDeployment
    model.model_validate(with_changes(base, changes))


def test_defaults_fill_an_almost_empty_training() -> None:
    parsed = ModelTraining.model_validate({"metadata": {"name": "t"}, "spec": {}})
    assert parsed.spec.workers == 1
    assert parsed.spec.run_policy.backoff_limit == 3
    assert parsed.spec.output.uri.startswith("pvc://")
    assert parsed.status.phase == "Pending"


def test_snake_and_camel_case_are_one_field() -> None:
    camel = ModelDeployment.model_validate(DEPLOYMENT)
    dumped = camel.spec.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["model"]["fromTraining"] == "digits"
    assert camel.spec.model.from_training == "digits"


def test_the_custom_metric_default_is_a_metric_the_server_exports() -> None:
    exported = generate_latest(ServerMetrics("m").registry).decode()
    assert f"# TYPE {CustomMetric().name} gauge" in exported


def test_the_gate_names_only_metrics_that_the_trainer_reports() -> None:
    numbers = [n for n, f in EvaluationMetrics.model_fields.items() if f.annotation == float | None]
    reported = EvaluationMetrics(**dict.fromkeys(numbers, 0.5)).headline().keys()
    description = str(Gate.model_fields["metric"].description)
    named = set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", description))
    assert named <= reported, f"{named - reported} are never in a training result"
    assert all(re.search(rf"\b{name}\b", description) for name in reported)
    assert Gate.model_fields["metric"].default in reported
