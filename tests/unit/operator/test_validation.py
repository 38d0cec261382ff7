"""The InvalidSpec message of a ModelTraining reads like the trainer's own refusal of the same
configuration: the operator and the trainer word a validation error alike."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard_operator.api import ModelTraining
from modelyard_operator.validation import format_validation_error
from modelyard_trainer.config import ConfigError, trainer_config_from_mapping
from tests.conftest import load_sample, with_changes


def test_the_operator_words_a_trainer_section_error_as_the_trainer_does() -> None:
    document = with_changes(
        load_sample("churn-s3.yaml"),
        {"spec.training.epochs": 0, "spec.model.architecture": "custom"},
    )
    with pytest.raises(ValidationError) as caught:
        ModelTraining.model_validate(document)
    with pytest.raises(ConfigError) as refused:
        trainer_config_from_mapping(document)

    operator_message = format_validation_error(caught.value)
    trainer_message = str(refused.value)
    assert "model: entrypoint is required when architecture is 'custom'" in trainer_message
    assert "training.epochs: " in trainer_message
    assert "Value error, " not in operator_message
    # The same problems, the operator's one level deeper (under spec.).
    for problem in trainer_message.split("; "):
        assert f"spec.{problem}" in operator_message
