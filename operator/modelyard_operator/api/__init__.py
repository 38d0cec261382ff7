"""The Modelyard API: pydantic models of the two custom resources, the one source of truth.

`crds/` is generated from these models (`make crds`); the trainer's and the server's own config
models are embedded, so every field is defined once.
"""

from modelyard_operator.api.deployment import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from modelyard_operator.api.meta import API_VERSION, GROUP, VERSION
from modelyard_operator.api.training import ModelTraining, ModelTrainingSpec, ModelTrainingStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelTraining",
    "ModelTrainingSpec",
    "ModelTrainingStatus",
]
