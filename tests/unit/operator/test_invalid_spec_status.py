"""The status of a custom resource whose spec our models refuse: one builder for both kinds,
each kind's own condition (and phase), what the status held before kept."""

from __future__ import annotations

from typing import Any

from modelyard_operator.handlers.common import invalid_spec_status

MESSAGE = "spec.replicas: set replicas or autoscaling"


def _body(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "churn", "namespace": "ml", "generation": 4}, "status": status}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


def test_a_training_fails_with_its_phase_and_keeps_its_other_conditions() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Done", "message": ""}
    live = {"attempt": 2, "phase": "Running", "conditions": [ready]}

    status = invalid_spec_status(_body(live), MESSAGE, ("Failed", True), phase="Failed")

    assert status["phase"] == "Failed"
    assert status["attempt"] == 2
    assert status["observedGeneration"] == 4
    failed = _condition(status, "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == (
        "True",
        "InvalidSpec",
        MESSAGE,
    )
    assert failed["observedGeneration"] == 4
    assert _condition(status, "Ready")["reason"] == "Done"


def test_a_deployment_is_not_ready_and_gets_no_phase() -> None:
    live = {"serviceUrl": "http://churn.ml.svc.cluster.local:8080"}

    status = invalid_spec_status(_body(live), MESSAGE, ("Ready", False))

    assert "phase" not in status
    assert status["serviceUrl"] == live["serviceUrl"]
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "InvalidSpec", MESSAGE)


def test_conditions_our_models_cannot_read_are_replaced_for_either_kind() -> None:
    unreadable = {"conditions": [{"type": "Ready", "status": "maybe"}]}

    for condition, phase in ((("Failed", True), "Failed"), (("Ready", False), None)):
        status = invalid_spec_status(_body(unreadable), MESSAGE, condition, phase=phase)

        assert [c["type"] for c in status["conditions"]] == [condition[0]]
        assert status["conditions"][0]["reason"] == "InvalidSpec"
