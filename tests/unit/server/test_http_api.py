"""The Open Inference Protocol routes of a real server process, spoken over HTTP."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from .conftest import ServerProcess


@pytest.fixture(scope="module")
def server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["mlp"], model_name="iris", model_version="3")


@pytest.fixture(scope="module")
def session(models: dict[str, Path]) -> ort.InferenceSession:
    return ort.InferenceSession(str(models["mlp"]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def infer_json(rows: np.ndarray, **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        ],
        **extra,
    }


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "modelyard-server"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready_with_and_without_version(client: httpx.Client) -> None:
    for path in ("/v2/models/iris", "/v2/models/iris/versions/3"):
        meta = client.get(path).json()
        assert meta["name"] == "iris" and meta["versions"] == ["3"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 10]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.get(path + "/ready").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/other", 404),
        ("GET", "/v2/models/iris/versions/4", 404),
        ("POST", "/v2/models/other/infer", 404),
        ("POST", "/v2/models/iris/versions/9/infer", 404),
        ("GET", "/v2/models/iris/infer", 405),
        ("POST", "/v2/models/iris", 405),
        ("GET", "/v2/nothing", 404),
        ("GET", "/v2/models/iris/versions", 404),
        ("DELETE", "/v2/health/ready", 405),
    ],
)
def test_errors_are_json_with_the_right_status(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    response = client.request(method, path, content=b"{}")
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_json_infer_matches_onnxruntime(
    client: httpx.Client, session: ort.InferenceSession
) -> None:
    rows = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    response = client.post("/v2/models/iris/infer", json=infer_json(rows, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7" and body["model_name"] == "iris" and body["model_version"] == "3"
    (out,) = body["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    expected = session.run(None, {"input": rows})[0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 10), expected, rtol=1e-6, atol=1e-6)


def test_flat_and_nested_data_agree(client: httpx.Client) -> None:
    rows = np.arange(20, dtype=np.float32).reshape(2, 10) / 10
    nested = client.post("/v2/models/iris/infer", json=infer_json(rows)).json()
    flat_request = infer_json(rows)
    flat_request["inputs"][0]["data"] = rows.ravel().tolist()  # type: ignore[index]
    flat = client.post("/v2/models/iris/versions/3/infer", json=flat_request).json()
    assert nested["outputs"] == flat["outputs"]


def test_binary_request_and_response(client: httpx.Client, session: ort.InferenceSession) -> None:
    rows = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, 10],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/iris/infer",
        content=header + rows.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:json_length])
    (out,) = document["outputs"]
    assert out["parameters"]["binary_data_size"] == 4 * 10 * 4
    result = np.frombuffer(response.content[json_length:], dtype="<f4").reshape(4, 10)
    np.testing.assert_allclose(result, session.run(None, {"input": rows})[0], rtol=1e-6, atol=1e-6)


def test_binary_data_output_parameter_applies_to_all_outputs(client: httpx.Client) -> None:
    rows = np.zeros((1, 10), dtype=np.float32)
    response = client.post(
        "/v2/models/iris/infer", json=infer_json(rows, parameters={"binary_data_output": True})
    )
    assert response.headers["content-type"] == "application/octet-stream"
    json_length = int(response.headers["inference-header-content-length"])
    assert len(response.content) == json_length + 40


def test_gzip_request_body(client: httpx.Client) -> None:
    rows = np.ones((1, 10), dtype=np.float32)
    body = gzip.compress(json.dumps(infer_json(rows)).encode())
    response = client.post(
        "/v2/models/iris/infer", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("request_body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (
            b'{"inputs":[{"name":"x","shape":[1,10],"datatype":"FP32","data":[0]}]}',
            "unknown input 'x'",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,9],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0]}]}',
            "does not match the model's [-1, 10]",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0]}]}',
            "rank",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"INT64","data":[0,0,0,0,0,0,0,0,0,0]}]}',
            "datatype INT64 does not match",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,NaN]}]}',
            "malformed JSON",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,1e400]}]}',
            "malformed JSON: number is infinity",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,1e39]}]}',
            "out of range for FP32",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,"a"]}]}',
            "must be numbers",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[2,10],"datatype":"FP32","data":[[0,0,0,0,0,0,0,0,0,0],[1]]}]}',
            "rectangular",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0]}]}',
            "needs 10 values",
        ),
        (
            b'{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0]}],"outputs":[{"name":"nope"}]}',
            "unknown output 'nope'",
        ),
    ],
)
def test_bad_input_is_400_naming_the_cause(
    client: httpx.Client, request_body: bytes, needle: str
) -> None:
    response = client.post("/v2/models/iris/infer", content=request_body)
    assert response.status_code == 400
    assert needle in response.json()["error"]


def test_binary_non_finite_and_size_errors(client: httpx.Client) -> None:
    rows = np.zeros((1, 10), dtype=np.float32)
    rows[0, 3] = np.inf

    def send(blob: bytes, declared: int) -> httpx.Response:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 10],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": declared},
                    }
                ]
            }
        ).encode()
        return client.post(
            "/v2/models/iris/infer",
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    assert "NaN or infinity" in send(rows.tobytes(), 40).json()["error"]
    assert "does not match shape" in send(b"\0" * 36, 36).json()["error"]
    assert "runs past the end" in send(b"\0" * 36, 40).json()["error"]
    assert "no input claims" in send(b"\0" * 44, 40).json()["error"]


def test_metrics_expose_the_contract_names(server: ServerProcess, client: httpx.Client) -> None:
    from modelyard_server import contracts

    text = client.get("/metrics").text
    for name in (
        contracts.METRIC_REQUESTS_TOTAL,
        contracts.METRIC_REQUEST_DURATION + "_bucket",
        contracts.METRIC_INFERENCE_DURATION + "_bucket",
        contracts.METRIC_BATCH_SIZE + "_bucket",
        contracts.METRIC_QUEUE_DEPTH,
        contracts.METRIC_INFLIGHT_REQUESTS,
        contracts.METRIC_MODEL_LOAD_SECONDS,
        contracts.METRIC_MODEL_READY,
    ):
        assert name in text, name
    assert 'modelyard_server_requests_total{code="400",model="iris"}' in text
    assert server.metric(contracts.METRIC_MODEL_READY) == 1.0
    assert server.metric(contracts.METRIC_MODEL_LOAD_SECONDS) > 0


def test_unknown_model_names_share_one_metric_label(client: httpx.Client) -> None:
    for name in ("a1", "b2", "c3"):
        client.post(f"/v2/models/{name}/infer", content=b"{}")
    text = client.get("/metrics").text
    assert 'model="_unknown"' in text and 'model="a1"' not in text


def test_bytes_elements_round_trip() -> None:
    from modelyard_server.protocol import RequestedOutput, encode_infer_response

    body, length = encode_infer_response(
        "m", "1", None, [(RequestedOutput("s", True), np.array(["ab", "c"], dtype=object))]
    )
    assert length is not None
    assert body[length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
