"""The Drifting condition of a ModelDeployment, from its server pods' drift scores (pure).

Each pod scores its own rolling window of live traffic against the training reference
(population stability index, PSI, per input column and of the predictions; see
modelyard_server.drift). A pod's scores count once its window holds spec.monitoring.drift
.minRows rows; the scores of the counting pods are averaged, weighted by their rows (every pod
sees the same traffic through the Service, so more rows are a better estimate). Drifting is
True when an input column's or the predictions' PSI reaches psiThreshold; the message names
the worst of them. The numbers in the message are rounded to one decimal, so that the
condition (and the status) changes only when the picture does, not with every scrape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from modelyard_operator.api.deployment import DriftMonitoring
from modelyard_operator.api.meta import Condition
from modelyard_operator.status.conditions import Event, set_condition

DRIFTING = "Drifting"
PREDICTIONS = "predictions"
# How many of the worst columns the message names, and how much of each name it keeps.
NAMED = 3
NAME_CHARS = 63


@dataclass(frozen=True)
class PodDrift:
    """What one server pod's /metrics said (or why it said nothing)."""

    pod: str
    window_rows: int = 0
    features: dict[str, float] = field(default_factory=dict)
    prediction: float | None = None
    error: str = ""  # why it could not be read; its scores are then empty


def _averaged(pods: list[PodDrift]) -> dict[str, float]:
    """Row-weighted mean PSI per column over the pods (predictions under PREDICTIONS)."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for pod in pods:
        scores = dict(pod.features)
        if pod.prediction is not None:
            scores[PREDICTIONS] = pod.prediction
        for name, value in scores.items():
            totals[name] = totals.get(name, 0.0) + value * pod.window_rows
            weights[name] = weights.get(name, 0) + pod.window_rows
    return {name: totals[name] / weights[name] for name in totals if weights[name] > 0}


def _named(scores: list[tuple[str, float]]) -> str:
    shown = [f"{name[:NAME_CHARS]} ({value:.1f})" for name, value in scores[:NAMED]]
    more = len(scores) - NAMED
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def drifting(
    drift: DriftMonitoring,
    pods: list[PodDrift],
    conditions: list[Condition],
    now: datetime,
    generation: int,
) -> tuple[list[Condition], Event | None]:
    """The conditions with Drifting set from the pods' scores, and the Event when it changed."""
    counting = [p for p in pods if not p.error and p.window_rows >= drift.min_rows]
    threshold = drift.psi_threshold
    if not counting:
        # Which pods could not be read (and why) is for the log: it changes with every pass,
        # and a condition that does would write the status each time.
        message = (
            f"no server pod has scored {drift.min_rows} rows yet (a model without reference "
            "statistics in its metadata.json is never scored)"
        )
        status, reason = False, "InsufficientData"
    else:
        scores = sorted(_averaged(counting).items(), key=lambda item: (-item[1], item[0]))
        over = [(name, value) for name, value in scores if value >= threshold]
        where = f"in {len(counting)} pod(s) with at least {drift.min_rows} rows"
        if over:
            status = True
            reason = "PredictionDrift" if [n for n, _ in over] == [PREDICTIONS] else "InputDrift"
            message = f"PSI at or over {threshold:g}: {_named(over)}; {where}"
        else:
            status, reason = False, "NoDrift"
            message = f"every PSI is below {threshold:g} {where}"
    was = next((c for c in conditions if c.type == DRIFTING), None)
    conditions = set_condition(conditions, DRIFTING, status, reason, message, now, generation)
    if status and (was is None or was.status != "True" or was.message != message):
        return conditions, Event("Warning", "DriftDetected", message)
    if not status and was is not None and was.status == "True":
        return conditions, Event("Normal", "DriftResolved", message)
    return conditions, None


def without_drifting(conditions: list[Condition]) -> list[Condition]:
    """Drift monitoring is off: no Drifting condition at all."""
    return [c for c in conditions if c.type != DRIFTING]
