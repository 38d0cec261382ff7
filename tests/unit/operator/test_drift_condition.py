"""The Drifting condition: a pure function of the server pods' drift scores."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelyard_operator.api.deployment import DriftMonitoring
from modelyard_operator.api.meta import Condition
from modelyard_operator.builders.deployment import server_deployment
from modelyard_operator.status.deployment import plan_deployment
from modelyard_operator.status.drift import PodDrift, drifting

from .test_deployment_status import (
    SETTINGS,
    A,
    after,
    condition,
    live_deployment,
    observe,
    pod,
    reasons,
    resolved,
    serving,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
DRIFT = DriftMonitoring()  # threshold 0.25, minRows 1000


def calm(name: str = "m-1", rows: int = 5000) -> PodDrift:
    return PodDrift(name, rows, {"x0": 0.01, "x1": 0.02, "x2": 0.015}, 0.01)


def shifted(name: str = "m-1", rows: int = 5000) -> PodDrift:
    return PodDrift(name, rows, {"x0": 0.01, "x1": 0.93, "x2": 0.31}, 0.04)


def run(pods: list[PodDrift], conditions: list[Condition] | None = None) -> tuple[Condition, str]:
    updated, event = drifting(DRIFT, pods, conditions or [], NOW, 1)
    found = next(c for c in updated if c.type == "Drifting")
    return found, event.reason if event else ""


def test_shifted_features_make_it_true_naming_the_worst_first() -> None:
    found, event = run([shifted()])
    assert (found.status, found.reason) == ("True", "InputDrift")
    assert found.message == (
        "PSI at or over 0.25: x1 (0.9), x2 (0.3); in 1 pod(s) with at least 1000 rows"
    )
    assert event == "DriftDetected"


def test_back_to_normal_is_false_with_an_event_and_then_quiet() -> None:
    drifted, _ = run([shifted()])
    found, event = run([calm()], [drifted])
    assert (found.status, found.reason, event) == ("False", "NoDrift", "DriftResolved")
    again, event = run([calm()], [found])
    assert again == found and event == ""  # an unchanged picture writes and posts nothing


def test_unchanged_drift_posts_no_second_event() -> None:
    drifted, _ = run([shifted()])
    again, event = run(
        [replace(shifted(), features={"x0": 0.0, "x1": 0.94, "x2": 0.33})], [drifted]
    )
    assert again == drifted and event == ""


def test_too_few_rows_or_unreadable_pods_are_insufficient_data() -> None:
    found, event = run(
        [calm(rows=999), PodDrift("m-2", error="/metrics unreadable (TimeoutError)")]
    )
    assert (found.status, found.reason, event) == ("False", "InsufficientData", "")
    # The same message whoever could or could not be read: no status write per pass.
    assert run([PodDrift("m-2", error="/metrics unreadable (ConnectionRefusedError)")])[0] == found
    assert run([])[0].reason == "InsufficientData"


def test_pods_are_averaged_by_their_rows() -> None:
    # 0.9 on 1000 rows and 0.0 on 8000: 0.1 on the whole, below the threshold.
    quiet = PodDrift("m-2", 8000, {"x1": 0.0}, None)
    loud = PodDrift("m-1", 1000, {"x1": 0.9}, None)
    assert run([loud, quiet])[0].reason == "NoDrift"
    assert run([loud, replace(quiet, window_rows=500)])[0].reason == "InputDrift"


def test_prediction_drift_alone_and_many_features() -> None:
    found, _ = run([PodDrift("m-1", 5000, {"x0": 0.01}, 0.5)])
    assert (found.reason, found.message.split(";")[0]) == (
        "PredictionDrift",
        "PSI at or over 0.25: predictions (0.5)",
    )
    many = PodDrift("m-1", 5000, {f"x{i}": 1.0 + i / 10 for i in range(6)}, 0.0)
    assert run([many])[0].message.startswith(
        "PSI at or over 0.25: x5 (1.5), x4 (1.4), x3 (1.3) and 3 more;"
    )


def test_min_rows_must_fit_the_window() -> None:
    with pytest.raises(ValidationError, match="minRows must be at most 90% of windowRows"):
        DriftMonitoring(window_rows=1000, min_rows=950)
    assert DriftMonitoring(enabled=False, window_rows=1000, min_rows=950).min_rows == 950


def test_the_plan_sets_drifting_only_when_scores_were_read() -> None:
    md, _ = serving(A)
    pods = [pod(md, A, "m-1"), pod(md, A, "m-2")]
    world = observe(live_deployment(md, A), pods, resolved(A), later=60)
    plan = plan_deployment(md, replace(world, drift=[shifted("m-1"), shifted("m-2")]))
    assert condition(plan, "Drifting") == ("True", "InputDrift")
    assert reasons(plan) == ["DriftDetected"]
    assert condition(plan, "Ready") == ("True", "ModelLoaded")  # drift does not stop serving
    md = after(md, plan)
    # Not read this pass: the condition stays as it was, and nothing is written.
    unread = plan_deployment(md, world)
    assert unread.status == md.status and unread.events == []
    # Drift monitoring turned off: no Drifting condition, and the server's window is 0.
    off = after(md, unread, **{"spec.monitoring": {"drift": {"enabled": False}}})
    plan = plan_deployment(off, replace(world, drift=[shifted()]))
    assert "Drifting" not in [c.type for c in plan.status.conditions]
    env = server_deployment(off, A, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELYARD_SERVER_DRIFT_WINDOW_ROWS", "value": "0"} in env


def test_the_server_gets_the_window_of_the_spec() -> None:
    md, _ = serving(A)
    md = after(md, plan_deployment(md, observe(None, [], resolved(A))))
    changed = after(
        md,
        plan_deployment(md, observe(None, [], resolved(A))),
        **{"spec.monitoring": {"drift": {"windowRows": 5000, "minRows": 500}}},
    )
    env = server_deployment(changed, A, SETTINGS)["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "MODELYARD_SERVER_DRIFT_WINDOW_ROWS", "value": "5000"} in env
    assert {"name": "MODELYARD_SERVER_DRIFT_MIN_ROWS", "value": "500"} in env
