"""Schema-driven fuzzing: well over 1,000 malformed requests, no 5xx, and the server still
answers correctly afterwards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ServerProcess

MAX_BYTES = 65536
EXAMPLES = 1300

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
datatypes = st.sampled_from(
    [
        "FP32",
        "FP64",
        "FP16",
        "INT64",
        "INT32",
        "UINT8",
        "BOOL",
        "BYTES",
        "BF16",
        "fp32",
        "",
        "FLOAT",
    ]
)


def valid_request(rows: int = 1) -> dict[str, Any]:
    return {
        "id": "x",
        "inputs": [
            {"name": "input", "shape": [rows, 10], "datatype": "FP32", "data": [0.5] * (10 * rows)}
        ],
        "outputs": [{"name": "output"}],
    }


@st.composite
def mutated_json(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    rows = draw(st.integers(min_value=0, max_value=3))
    request: Any = valid_request(rows)
    tensor = request["inputs"][0]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        choice = draw(st.integers(min_value=0, max_value=11))
        if choice == 0:
            tensor["datatype"] = draw(datatypes)
        elif choice == 1:
            tensor["shape"] = draw(
                st.lists(st.integers(min_value=-3, max_value=2**40), max_size=5) | json_values
            )
        elif choice == 2:
            tensor["data"] = draw(
                st.lists(json_scalars, max_size=25)
                | st.lists(st.lists(st.floats(width=32) | st.integers(), max_size=11), max_size=3)
                | json_values
            )
        elif choice == 3:
            tensor["name"] = draw(st.text(max_size=10) | json_values)
        elif choice == 4:
            if tensor:
                del tensor[draw(st.sampled_from(sorted(tensor)))]
        elif choice == 5:
            request[draw(st.sampled_from(["id", "parameters", "outputs", "inputs", "extra"]))] = (
                draw(json_values)
            )
        elif choice == 6:
            tensor["parameters"] = draw(
                st.fixed_dictionaries({"binary_data_size": st.integers(-5, 100) | json_values})
                | json_values
            )
        elif choice == 7:
            request["inputs"] = [tensor, dict(tensor)]
        elif choice == 8:
            request["outputs"] = draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["output", "nope", ""]) | json_values},
                        optional={
                            "parameters": json_values
                            | st.fixed_dictionaries({"binary_data": json_values})
                            | st.just({"classification": 2})
                        },
                    ),
                    max_size=3,
                )
            )
        elif choice == 9:
            value = draw(st.sampled_from([1e39, -1e39, 1e400, 2**64, -(2**64), True, "1"]))
            tensor["data"] = [value] * (10 * rows)
        elif choice == 10:
            tensor[draw(st.text(min_size=1, max_size=5))] = draw(json_values)
        else:
            request = draw(json_values)  # replaces the whole request: no further mutation
            break
    body = json.dumps(request).encode()
    if draw(st.booleans()) and draw(st.booleans()):
        body = body.replace(
            b"0.5",
            draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"0x1", b".5"])),
            1,
        )
    return "POST", "/v2/models/fuzz/infer", {}, body


@st.composite
def mutated_binary(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    rows = draw(st.integers(min_value=0, max_value=3))
    declared = draw(
        st.sampled_from([rows * 40, rows * 40 + 1, max(0, rows * 40 - 4), 0]) | st.integers(-8, 400)
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [rows, 10],
                    "datatype": draw(st.sampled_from(["FP32", "FP32", "FP64", "INT32", "BOOL"])),
                    "parameters": {"binary_data_size": declared},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": draw(st.booleans())}}],
        }
    ).encode()
    blob = draw(
        st.binary(min_size=0, max_size=200) | st.just(np.full(rows * 10, np.nan, "<f4").tobytes())
    )
    length = draw(
        st.sampled_from([str(len(header))])
        | st.integers(-10, len(header) + 300).map(str)
        | st.text(alphabet="0123456789-+xA_.", min_size=1, max_size=4)
    )
    return (
        "POST",
        "/v2/models/fuzz/infer",
        {"Inference-Header-Content-Length": length},
        header + blob,
    )


@st.composite
def raw_bodies(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    body = draw(
        st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.integers(1, 20000).map(lambda n: b"[" * n + b"]" * n)
        | st.integers(1, 5000).map(lambda n: b'{"inputs":' * n)
        | st.just(b"x" * (MAX_BYTES + 1))
    )
    headers: dict[str, str] = {}
    encoding = draw(st.sampled_from([None, "gzip", "deflate", "br", "identity"]))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body if draw(st.booleans()) else b"\0" * (MAX_BYTES * 4))
    return "POST", "/v2/models/fuzz/infer", headers, body


@st.composite
def odd_routes(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    segment = st.text(alphabet="abcfuz019._-%", min_size=1, max_size=8)
    path = draw(
        st.sampled_from(
            [
                "/v2",
                "/v2/health/live",
                "/v2/health/ready",
                "/metrics",
                "/",
                "/v2/models/fuzz",
                "/v2/models/fuzz/ready",
            ]
        )
        | st.lists(segment, max_size=6).map(lambda parts: "/v2/models/" + "/".join(parts))
        | st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts))
    )
    return method, path, {}, draw(st.binary(max_size=64))


requests = mutated_json() | mutated_binary() | raw_bodies() | odd_routes()


@pytest.fixture(scope="module")
def server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["mlp"], model_name="fuzz", max_request_bytes=MAX_BYTES)


def test_malformed_requests_never_get_5xx(server: ServerProcess, models: dict[str, Path]) -> None:
    statuses: dict[int, int] = {}

    with httpx.Client(base_url=server.url, timeout=10) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests)
        def send(case: tuple[str, str, dict[str, str], bytes]) -> None:
            method, path, headers, body = case
            try:
                response = client.request(method, path, headers=headers, content=body)
            except httpx.RemoteProtocolError:
                # The server closes the connection after refusing an oversized body.
                assert len(body) > MAX_BYTES or "Content-Encoding" in headers
                statuses[-1] = statuses.get(-1, 0) + 1
                return
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error, str) and error, case

        send()

    assert sum(statuses.values()) >= 1000, statuses
    assert statuses.get(400, 0) > 500, statuses
    assert server.proc.poll() is None, server.log()
    # Afterwards the server still answers correctly.
    rows = np.random.default_rng(5).standard_normal((2, 10)).astype(np.float32)
    request = {
        "inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP32", "data": rows.tolist()}]
    }
    response = httpx.post(server.url + "/v2/models/fuzz/infer", json=request, timeout=10)
    assert response.status_code == 200
    got = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
    expected = ort.InferenceSession(str(models["mlp"])).run(None, {"input": rows})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    print("fuzz statuses:", dict(sorted(statuses.items())))
