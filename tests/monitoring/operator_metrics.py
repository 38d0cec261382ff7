"""`python -m tests.monitoring.operator_metrics PORT`: the operator's metrics without a cluster.

Runs the operator's own work queues (handlers.watch._queue_for: WorkQueue, the `measured`
wrapper, the PhaseBook and the queue-wait observer) over reconcilers that need no API server,
and serves the default registry on 127.0.0.1:PORT with the same prometheus_client
start_http_server that `python -m modelyard_operator` uses. Only the reconcilers' bodies (and so
the API-request metrics) are not the operator's.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import cast

from prometheus_client import start_http_server

from modelyard_operator.handlers.watch import Reconciler, _queue_for
from modelyard_operator.kube import Kube
from modelyard_operator.settings import Settings

RESYNC_SECONDS = 0.5  # every key is reconciled again this often (the queue's timer lane)


def _reconciler(phases: dict[str, str], failing: set[str]) -> Reconciler:
    def reconcile(
        kube: Kube, settings: Settings, namespace: str, name: str
    ) -> tuple[float | None, str | None]:
        if name in failing:
            failing.discard(name)  # fails once, then the queue's retry succeeds
            raise RuntimeError(f"{namespace}/{name}: a reconcile error for the error panels")
        return RESYNC_SECONDS, phases[name]

    return reconcile


def main(port: int) -> None:
    settings = Settings()
    kube = cast(Kube, None)  # the reconcilers above never call the API server
    queues = [
        _queue_for(
            "ModelTraining",
            _reconciler({"t1": "Running", "t2": "Succeeded", "t3": "Failed"}, {"t1"}),
            kube,
            settings,
        ),
        _queue_for(
            "ModelDeployment", _reconciler({"d1": "Ready", "d2": "Pending"}, {"d2"}), kube, settings
        ),
    ]
    for queue, names in zip(queues, (("t1", "t2", "t3"), ("d1", "d2")), strict=True):
        queue.start()
        for name in names:
            queue.add(("ns", name))
    start_http_server(port, addr="127.0.0.1")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for queue in queues:
        queue.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
