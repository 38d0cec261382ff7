"""M4 of issue 17: batching must never mix clients of a model whose rows depend on each other."""

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
from .onnx_models import centered, save

CLIENTS = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(centered(), tmp_path_factory.mktemp("centered") / "centered.onnx")


def _post(port: int, rows: np.ndarray) -> tuple[int, np.ndarray | None]:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
    request = {"inputs": [tensor], "outputs": [{"name": "output"}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/model/infer", body=json.dumps(request))
        response = conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            return response.status, None
        data = np.array(body["outputs"][0]["data"], dtype=np.float32)
        return 200, data.reshape(rows.shape)
    finally:
        conn.close()


def test_a_model_that_is_not_row_independent_is_never_batched(start_server, model: Path) -> None:
    server: ServerProcess = start_server(model, max_batch_size=64)
    assert server.metric(contracts.METRIC_DYNAMIC_BATCHING) == 0
    assert "batching off" in server.log() and "differs" in server.log()

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((2, 3)).astype(np.float32) * (i + 1) for i in range(CLIENTS)]
    expected = [session.run(["output"], {"input": x})[0] for x in inputs]
    # A long request first: the others queue up behind it, where a batcher would merge them.
    blocker = threading.Thread(target=_post, args=(server.port, np.ones((64, 3), np.float32)))
    blocker.start()
    deadline = time.monotonic() + 10
    while server.metric(contracts.METRIC_INFLIGHT_REQUESTS) < 1:
        assert time.monotonic() < deadline, "the long request never got in flight"
        time.sleep(0.002)
    answers: list[tuple[int, np.ndarray | None]] = [(0, None)] * CLIENTS
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        answers[i] = _post(server.port, inputs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    blocker.join(timeout=60)
    for i, (status, got) in enumerate(answers):
        assert status == 200 and got is not None, (i, status)
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-5, err_msg=f"client {i}")
    # Every request ran on its own.
    assert server.metric(contracts.METRIC_BATCH_SIZE + "_sum") == 64 + 2 * CLIENTS
    assert server.metric(contracts.METRIC_BATCH_SIZE + "_count") == 1 + CLIENTS


def test_a_row_independent_model_is_batched(start_server, models: dict[str, Path]) -> None:
    server: ServerProcess = start_server(models["mlp"], max_batch_size=8)
    assert server.metric(contracts.METRIC_DYNAMIC_BATCHING) == 1
