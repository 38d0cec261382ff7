"""Contracts: paths, termination messages that parse and fit, metadata round trips."""

from __future__ import annotations

import pytest

from modelyard_trainer.contracts import (
    PERMANENT_EXIT_CODES,
    TERMINATION_MESSAGE_LIMIT,
    ArtifactMetadata,
    EvaluationMetrics,
    ExitCode,
    TensorBrief,
    TrainingFailure,
    TrainingResult,
    artifact_relpath,
    parse_termination_message,
    run_identity_from_env,
)


def test_artifact_relpath_is_one_directory_per_run() -> None:
    assert artifact_relpath("ml", "iris", "0a1b-2c", 3) == "ml/iris/0a1b-2c/g3"
    with pytest.raises(ValueError):
        artifact_relpath("ml", "../etc", "u", 1)
    with pytest.raises(ValueError):
        artifact_relpath("ml", "iris", "u", 0)


def test_exit_codes() -> None:
    assert ExitCode.SUCCESS == 0
    assert set(PERMANENT_EXIT_CODES) == {64, 65, 66}


def test_run_identity_from_env() -> None:
    local = run_identity_from_env({}, "iris")
    assert (local.namespace, local.name, local.uid, local.generation) == (
        "local",
        "iris",
        "local",
        1,
    )
    env = {
        "MODELYARD_RUN_NAMESPACE": "ml",
        "MODELYARD_RUN_NAME": "wine",
        "MODELYARD_RUN_UID": "abc",
        "MODELYARD_RUN_GENERATION": "4",
        "MODELYARD_ATTEMPT": "2",
    }
    identity = run_identity_from_env(env, "ignored")
    assert identity.relpath == "ml/wine/abc/g4"
    assert identity.attempt == 2


def test_result_round_trips_and_fits() -> None:
    result = TrainingResult(
        artifact_uri="pvc://models/ml/iris/abc/g1",
        model_file="model.onnx",
        sha256="0" * 64,
        size_bytes=1234,
        metrics=EvaluationMetrics(test_accuracy=0.97, test_loss=0.1, f1_macro=0.96).headline(),
        inputs=[TensorBrief(name="input", datatype="FP32", shape=[-1, 4])],
    )
    text = result.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert "artifactUri" in text
    assert parse_termination_message(text) == result


def test_huge_result_sheds_metrics_but_keeps_the_uri() -> None:
    metrics = {f"metric_{i:04d}_with_a_long_name": float(i) for i in range(400)}
    result = TrainingResult(artifact_uri="pvc://m/x", sha256="f" * 64, metrics=metrics)
    text = result.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = parse_termination_message(text)
    assert isinstance(parsed, TrainingResult)
    assert parsed.artifact_uri == "pvc://m/x" and parsed.sha256 == "f" * 64


@pytest.mark.parametrize("message", ["x" * 10_000, 'é"\\\n' * 5_000, "\u2603" * 3000])
def test_failure_message_is_truncated_to_fit(message: str) -> None:
    failure = TrainingFailure(exit_code=65, reason="LossDiverged", message=message, rank=1)
    text = failure.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = parse_termination_message(text)
    assert isinstance(parsed, TrainingFailure)
    assert parsed.reason == "LossDiverged" and parsed.rank == 1
    assert parsed.message.endswith("...")


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "not json",
        "[]",
        "{}",
        '{"kind": "result", "sizeBytes": -1}',
        '{"kind": 3}',
        "[" * 100_000,
        '{"kind": "failure", "reason": "Nope"}',
        "\x00\xff",
    ],
)
def test_parse_never_raises_on_garbage(garbage: str | None) -> None:
    assert parse_termination_message(garbage) is None


def test_metadata_round_trip() -> None:
    metadata = ArtifactMetadata(
        files={"model.onnx": {"sha256": "a" * 64, "sizeBytes": 10}},
        class_labels=["a", "b"],
        metrics=EvaluationMetrics(test_accuracy=1.0, confusion_matrix=[[1, 0], [0, 1]]),
    )
    text = metadata.to_json()
    again = ArtifactMetadata.model_validate_json(text)
    assert again == metadata
    assert again.served.size_bytes == 10
