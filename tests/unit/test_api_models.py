"""The API models accept the samples and reject bad specs with an error that names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelyard_operator.api import ModelDeployment, ModelTraining
from modelyard_trainer.config import format_validation_error
from tests.conftest import SAMPLES, load_sample, with_changes

TRAINING = load_sample("digits.yaml")
DEPLOYMENT = load_sample("digits-deployment.yaml")

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
    ({"spec.training.optimizer.nesterov": True}, "nesterov"),
    ({"spec.model.architecture": "transformer"}, "spec.model.architecture"),
    ({"spec.model.dropout": 1.5}, "spec.model.dropout"),
    ({"spec.model.architecture": "custom"}, "entrypoint"),
    ({"spec.data.source.builtin": "mnist"}, "spec.data.source.builtin"),
    ({"spec.data.source.uri": "pvc://data/x.csv"}, "exactly one of builtin, synthetic or uri"),
    ({"spec.data.source": {}}, "exactly one of builtin, synthetic or uri"),
    ({"spec.data.split": {"validation": 0.5, "test": 0.45}}, "validation + test"),
    ({"spec.export.parityTolerance": 0}, "spec.export.parityTolerance"),
    ({"spec.export.opset": 7}, "spec.export.opset"),
    ({"spec.output.uri": "http://bucket/models"}, "spec.output.uri"),
    ({"spec.runPolicy.backoffLimit": -1}, "spec.runPolicy.backoffLimit"),
    (
        {"spec.scheduling.tolerations": [{"operator": "Sometimes"}]},
        "spec.scheduling.tolerations.0.operator",
    ),
    ({"spec.shmSize": "lots"}, "spec.shmSize"),
    ({"spec.epochs": 10}, "spec.epochs"),  # a typo at the wrong level is an error, not ignored
    ({"spec.scheduling.queueName": "gpu", "spec.runPolicy.suspend": True}, "queueName"),
]

BAD_DEPLOYMENTS: list[tuple[dict[str, Any], str]] = [
    ({"spec.model.uri": "pvc://models/m.onnx"}, "exactly one of model.uri and model.fromTraining"),
    ({"spec.model": {}}, "exactly one of model.uri and model.fromTraining"),
    ({"spec.model": {"uri": "s4://x/y"}}, "spec.model.uri"),
    ({"spec.model": {"uri": "pvc://m/model.onnx", "sha256": "abc"}}, "spec.model.sha256"),
    ({"spec.model.sha256": "a" * 64}, "model.sha256 is only allowed with model.uri"),
    ({"spec.model.gate": {"metric": "test_accuracy"}}, "gate needs minimum or maximum"),
    ({"spec.model.gate": {"minimum": 0.9, "maximum": 0.5}}, "gate.minimum must not exceed"),
    ({"spec.model.fromTraining": "Digits_Run"}, "spec.model.fromTraining"),
    ({"spec.autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
    ({"spec.autoscaling.targetCpuUtilization": 150}, "spec.autoscaling.targetCpuUtilization"),
    ({"spec.replicas": 2}, "set replicas or autoscaling, not both"),
    ({"spec.server.maxBatchSize": 0}, "spec.server.maxBatchSize"),
    ({"spec.server.executionProvider": "tpu"}, "spec.server.executionProvider"),
    ({"spec.rollout.maxSurge": "lots"}, "spec.rollout.maxSurge"),
    ({"spec.monitoring.serviceMonitor": "maybe"}, "spec.monitoring.serviceMonitor"),
    ({"spec": ...}, "spec"),
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
