"""BYTES (string) inputs, end to end: a model trained by the real trainer on a CSV with a string
column, served over JSON and the binary tensor extension, against ONNX Runtime on the artifact.
"""

from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from tests.unit.trainer.support import run_trainer

from .conftest import ServerProcess

FEATURES = ["size", "age"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bytes")
    rng = np.random.default_rng(0)
    rows = 200
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=rows),
            "age": rng.normal(5, 2, size=rows),
            "color": rng.choice(["red", "green", "blue"], size=rows),
        }
    )
    frame["price"] = 10 + 3 * frame["size"] + frame["color"].map({"red": 2, "green": -1, "blue": 0})
    frame.to_csv(tmp / "houses.csv", index=False)
    config = {
        "model": {"hiddenLayers": [8]},
        "data": {"source": {"uri": str(tmp / "houses.csv"), "format": "csv"}, "target": "price"},
        "training": {"epochs": 2, "batchSize": 32, "loss": "mse"},
    }
    run = run_trainer(tmp, "houses", config, timeout=300)
    assert run.returncode == 0, run.describe()
    metadata = run.metadata()
    assert [(t.name, t.datatype) for t in metadata.inputs] == [
        ("input", "FP32"),
        ("categorical", "BYTES"),
    ]
    return run.run_dir / metadata.model_file


@pytest.fixture(scope="module")
def server(start_server, artifact: Path) -> ServerProcess:
    return start_server(artifact, max_batch_size=8)


NUMBERS = np.array([[0.5, 4.0], [-1.0, 6.5], [2.0, 3.0]], dtype=np.float32)
# A known category, another, one never seen in training, and non-ASCII text.
COLORS = np.array([["red"], ["blue"], ["mauve é"]], dtype=object)


def _post(server: ServerProcess, body: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        length = response.getheader("Inference-Header-Content-Length")
        if length is None:
            return response.status, json.loads(payload), b""
        return response.status, json.loads(payload[: int(length)]), payload[int(length) :]
    finally:
        conn.close()


def _expected(artifact: Path) -> np.ndarray:
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": NUMBERS, "categorical": COLORS})[0]


def test_model_metadata_lists_the_bytes_input(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v2/models/model")
    inputs = json.loads(conn.getresponse().read())["inputs"]
    conn.close()
    assert [(i["name"], i["datatype"]) for i in inputs] == [
        ("input", "FP32"),
        ("categorical", "BYTES"),
    ]


def test_bytes_input_over_json_matches_onnxruntime(server: ServerProcess, artifact: Path) -> None:
    request = {
        "inputs": [
            {"name": "input", "shape": [3, 2], "datatype": "FP32", "data": NUMBERS.tolist()},
            {"name": "categorical", "shape": [3, 1], "datatype": "BYTES", "data": COLORS.tolist()},
        ]
    }
    status, body, _ = _post(server, json.dumps(request).encode(), {})
    assert status == 200, body
    got = np.array(body["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(got, _expected(artifact).ravel(), rtol=1e-5, atol=1e-5)


def test_bytes_input_over_the_binary_extension_matches_onnxruntime(
    server: ServerProcess, artifact: Path
) -> None:
    strings = b"".join(
        struct.pack("<I", len(s.encode())) + s.encode() for s in COLORS.ravel().tolist()
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": NUMBERS.nbytes},
                },
                {
                    "name": "categorical",
                    "shape": [3, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(strings)},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, body, blob = _post(
        server,
        header + NUMBERS.tobytes() + strings,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body
    expected = _expected(artifact)
    got = np.frombuffer(blob, dtype="<f4").reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("categorical", "blob", "needle"),
    [
        ({"data": [["red"], [1], ["blue"]]}, None, "must be strings"),
        ({"data": [["red"], ["blue"]]}, None, "needs 3 values"),
        ({}, struct.pack("<I", 3) + b"red" + struct.pack("<I", 9) + b"x", "runs past its data"),
        ({}, b"\x01\x00", "too small"),
        ({}, b"".join(struct.pack("<I", 1) + b"\xff" for _ in range(3)), "not UTF-8"),
        ({}, b"".join(struct.pack("<I", 1) + b"a" for _ in range(3)) + b"!", "bytes follow"),
    ],
)
def test_bad_bytes_inputs_are_400(
    server: ServerProcess, categorical: dict[str, Any], blob: bytes | None, needle: str
) -> None:
    tensor: dict[str, Any] = {"name": "categorical", "shape": [3, 1], "datatype": "BYTES"}
    numbers = {"name": "input", "shape": [3, 2], "datatype": "FP32", "data": NUMBERS.tolist()}
    if blob is None:
        request = {"inputs": [numbers, {**tensor, **categorical}]}
        status, body, _ = _post(server, json.dumps(request).encode(), {})
    else:
        tensor["parameters"] = {"binary_data_size": len(blob)}
        header = json.dumps({"inputs": [numbers, tensor]}).encode()
        status, body, _ = _post(
            server, header + blob, {"Inference-Header-Content-Length": str(len(header))}
        )
    assert status == 400 and needle in body["error"], body
