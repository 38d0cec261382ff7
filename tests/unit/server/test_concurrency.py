"""64 concurrent clients: batching coalesces them, and each gets exactly its own rows back."""

from __future__ import annotations

import http.client
import json
import threading
import time
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


def _concurrent_lookups(port: int, indices: list[list[int]]) -> list[tuple[int, dict]]:
    barrier = threading.Barrier(len(indices))
    answers: list[tuple[int, dict]] = [(0, {})] * len(indices)

    def client(i: int) -> None:
        tensor = {
            "name": "idx",
            "shape": [len(indices[i])],
            "datatype": "INT64",
            "data": indices[i],
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait(timeout=30)
        conn.request("POST", "/v2/models/model/infer", body=json.dumps({"inputs": [tensor]}))
        response = conn.getresponse()
        answers[i] = (response.status, json.loads(response.read()))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(indices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_one_requests_bad_values_do_not_fail_its_batch(
    start_server, models: dict[str, Path]
) -> None:
    server: ServerProcess = start_server(models["lookup"], max_batch_size=64)
    batches_before = server.metric(contracts.METRIC_BATCH_SIZE + "_count")
    rows_before = server.metric(contracts.METRIC_BATCH_SIZE + "_sum")
    for bad in range(6):
        indices = [[i % 10, (i + 3) % 10] for i in range(12)]
        indices[bad] = [2, 99]  # 99 is past the table: ONNX Runtime fails on it
        for i, (status, body) in enumerate(_concurrent_lookups(server.port, indices)):
            if i == bad:
                assert status == 400 and "inference failed" in str(body["error"]), body
                # ONNX Runtime's own text (node names, source files) stays in the log.
                assert "Gather" not in body["error"] and ".cc" not in body["error"], body
            else:
                assert status == 200, body
                expected = [float(v) for idx in indices[i] for v in range(idx * 3, idx * 3 + 3)]
                output = next(o for o in body["outputs"] if o["name"] == "output")
                assert output["data"] == expected, (i, body)
    batches = server.metric(contracts.METRIC_BATCH_SIZE + "_count") - batches_before
    rows = server.metric(contracts.METRIC_BATCH_SIZE + "_sum") - rows_before
    assert rows > batches, "no batch ever held more than one request"
    assert "inference failed on one request" in server.log()


def _post_lookup(port: int, idx: list[int]) -> tuple[int, dict]:
    tensor = {"name": "idx", "shape": [len(idx)], "datatype": "INT64", "data": idx}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/model/infer", body=json.dumps({"inputs": [tensor]}))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_one_bad_request_among_16_coalesced_costs_few_extra_runs(
    start_server, models: dict[str, Path]
) -> None:
    server: ServerProcess = start_server(models["lookup"], max_batch_size=256)
    runs_before = server.metric(contracts.METRIC_INFERENCE_DURATION + "_count")
    # A long request runs first; the 16 sent meanwhile queue up behind it and share a batch.
    blocker = threading.Thread(target=_post_lookup, args=(server.port, [1] * 256))
    blocker.start()
    deadline = time.monotonic() + 10
    while server.metric(contracts.METRIC_INFLIGHT_REQUESTS) < 1:
        assert time.monotonic() < deadline, "the long request never got in flight"
        time.sleep(0.002)
    indices = [[i % 10, (i + 3) % 10] for i in range(16)]
    indices[5] = [2, 99]  # past the table: ONNX Runtime fails on it
    answers = _concurrent_lookups(server.port, indices)
    blocker.join(timeout=60)
    for i, (status, body) in enumerate(answers):
        assert status == (400 if i == 5 else 200), (i, body)
    runs = server.metric(contracts.METRIC_INFERENCE_DURATION + "_count") - runs_before
    batches = server.metric(contracts.METRIC_BATCH_SIZE + "_count")
    print(f"{runs:.0f} ONNX Runtime runs, {batches:.0f} of them successful")
    # Halving a failed batch down to its bad request fails at most 1 + log2(16) runs, and
    # the good halves run once each: with the blocker and one batch of 16, 1 + 1 + 2 * 4 = 10.
    # Running each of the 16 alone after the failure took 18, 16 of them successful. How the
    # 16 fall into batches depends on the machine's load, so count failures and successes.
    failed = runs - batches
    assert failed <= 5, (runs, batches)
    assert batches < 16, (runs, batches)
