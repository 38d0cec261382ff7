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
RECONCILE_SECONDS = Histogram(
    "modelyard_reconcile_duration_seconds",
    "Time one reconcile takes, API calls included.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
