"""Batching never costs a lone client the batch delay; concurrent clients still coalesce."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

from modelyard_server import contracts

from .conftest import ServerProcess

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0.5] * 10}]}
).encode()


def _infer(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request("POST", "/v2/models/model/infer", body=BODY)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    return time.perf_counter() - started


def test_lone_request_does_not_wait_for_the_batch_delay(
    start_server, models: dict[str, Path]
) -> None:
    server: ServerProcess = start_server(models["mlp"], max_batch_size=32, max_batch_delay_ms=200)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    _infer(conn)  # warm the connection
    latencies = sorted(_infer(conn) for _ in range(10))
    # The median, not the max: a shared CI machine may stall any single request.
    assert latencies[5] < 0.05, latencies

    # 32 clients at once: their requests share ONNX Runtime calls.
    calls_before = server.metric(contracts.METRIC_BATCH_SIZE + "_count")
    errors: list[BaseException] = []

    def client() -> None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            for _ in range(10):
                _infer(c)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    calls = server.metric(contracts.METRIC_BATCH_SIZE + "_count") - calls_before
    assert calls < 320, f"320 requests took {calls} ONNX Runtime calls: nothing was batched"
