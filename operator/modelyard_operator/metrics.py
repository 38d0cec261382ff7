"""Prometheus metrics of the operator."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Hashable

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "modelyard_reconciles_total", "Reconciles by kind and result.", ["kind", "result"]
)
# Fine below 1 s, where a p99 goal sits, and up to a minute, so that no quantile is clipped at
# the top bucket as it was with a 10 s ceiling.
RECONCILE_SECONDS = Histogram(
    "modelyard_reconcile_duration_seconds",
    "Time one reconcile takes, API calls included.",
    ["kind"],
    buckets=(
        0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
        0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60,
    ),
)  # fmt: skip
QUEUE_WAIT_SECONDS = Histogram(
    "modelyard_queue_wait_seconds",
    "Time a key waited in the work queue after it was due, by lane: 'event' (a watch event) "
    "or 'timer' (resync, rollout poll, retry).",
    ["kind", "lane"],
    buckets=(
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
    ),
)  # fmt: skip
API_REQUESTS = Counter(
    "modelyard_api_requests_total",
    "Requests to the API server by method (WATCH: a watch opened), answered or not.",
    ["method"],
)
API_REQUEST_SECONDS = Histogram(
    "modelyard_api_request_duration_seconds",
    "Time from sending a request to the API server until its answer was read, by method "
    "(watches not included).",
    ["method"],
    buckets=(
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30,
    ),
)  # fmt: skip
CACHED_OBJECTS = Gauge(
    "modelyard_cached_objects", "Children held in the operator's watch-fed cache.", ["kind"]
)
RESOURCES = Gauge("modelyard_resources", "Custom resources by kind and phase.", ["kind", "phase"])


class PhaseBook:
    """The phase of every object we reconciled, kept as the RESOURCES gauge."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._phases: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    def record(self, key: Hashable, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = Tally(self._phases.values())
            known = {labels[1] for labels in _label_sets(self.kind)}
            for name in known | set(counts):
                RESOURCES.labels(self.kind, name).set(counts.get(name, 0))


def _label_sets(kind: str) -> list[tuple[str, str]]:
    return [
        (sample.labels["kind"], sample.labels["phase"])
        for metric in RESOURCES.collect()
        for sample in metric.samples
        if sample.labels.get("kind") == kind
    ]


def queue_wait_observer(kind: str) -> Callable[[str, float], None]:
    def observe(lane: str, seconds: float) -> None:
        QUEUE_WAIT_SECONDS.labels(kind, lane).observe(seconds)

    return observe


def measured(
    kind: str, reconcile: Callable[[Hashable], float | None]
) -> Callable[[Hashable], float | None]:
    """Count and time every reconcile of one kind."""

    def wrapper(key: Hashable) -> float | None:
        started = time.perf_counter()
        try:
            result = reconcile(key)
        except Exception:
            RECONCILES.labels(kind, "error").inc()
            raise
        finally:
            RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        RECONCILES.labels(kind, "ok").inc()
        return result

    return wrapper
