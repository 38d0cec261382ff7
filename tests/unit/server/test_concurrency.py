"""64 concurrent clients: batching coalesces them, and each gets exactly its own rows back."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelyard_server import contracts

from .conftest import ServerProcess

CLIENTS = 64
REQUESTS_PER_CLIENT = 8


@pytest.fixture(scope="module")
def server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["mlp"], max_batch_size=32, max_batch_delay_ms=5)


def _infer(conn: http.client.HTTPConnection, rows: np.ndarray, binary: bool) -> np.ndarray:
    tensor: dict[str, object] = {"name": "input", "shape": list(rows.shape), "datatype": "FP32"}
    headers = {"Content-Type": "application/json"}
    if binary:
        tensor["parameters"] = {"binary_data_size": rows.nbytes}
        header = json.dumps(
            {"inputs": [tensor], "parameters": {"binary_data_output": True}}
        ).encode()
        body = header + rows.tobytes()
        headers["Inference-Header-Content-Length"] = str(len(header))
    else:
        tensor["data"] = rows.tolist()
        body = json.dumps({"inputs": [tensor]}).encode()
    conn.request("POST", "/v2/models/model/infer", body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    assert response.status == 200, payload
    if binary:
        length = int(response.getheader("Inference-Header-Content-Length") or "0")
        return np.frombuffer(payload[length:], dtype="<f4").reshape(rows.shape[0], 10)
    return np.array(json.loads(payload)["outputs"][0]["data"], dtype=np.float32).reshape(-1, 10)


def test_64_clients_each_get_their_own_rows(server: ServerProcess, models: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(models["mlp"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    # Every client has its own inputs (1 to 4 rows per request) and ONNX Runtime's own answer
    # for them, computed request by request without the server.
    plans = []
    for _ in range(CLIENTS):
        requests = [
            rng.standard_normal((int(rng.integers(1, 5)), 10)).astype(np.float32)
            for _ in range(REQUESTS_PER_CLIENT)
        ]
        plans.append([(r, session.run(None, {"input": r})[0]) for r in requests])
    barrier = threading.Barrier(CLIENTS)
    failures: list[str] = []
    batches_before = server.metric(contracts.METRIC_BATCH_SIZE + "_count")

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            barrier.wait(timeout=30)
            for n, (rows, expected) in enumerate(plans[index]):
                got = _infer(conn, rows, binary=(index + n) % 2 == 0)
                if got.shape != expected.shape or not np.allclose(
                    got, expected, rtol=1e-5, atol=1e-6
                ):
                    failures.append(f"client {index} request {n}: rows do not match")
        except Exception as exc:
            failures.append(f"client {index}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[:5]
    requests = CLIENTS * REQUESTS_PER_CLIENT
    batches = server.metric(contracts.METRIC_BATCH_SIZE + "_count") - batches_before
    # Batching happened: far fewer ONNX Runtime calls than requests.
    assert batches < requests * 0.75, (batches, requests)
    print(f"{requests} requests in {batches:.0f} batches")
