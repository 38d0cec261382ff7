"""The Triton Python client, unchanged and at its defaults, against the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import ServerProcess
from .onnx_models import ALL_TYPES


@pytest.fixture(scope="module")
def mlp_server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["mlp"], model_name="mlp")


@pytest.fixture(scope="module")
def types_server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["all_types"], model_name="types")


def test_health_and_metadata(mlp_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(mlp_server.hostport)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"][0]["shape"] == [-1, 10]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-default", "json"])
def test_mlp_infer_matches_onnxruntime(
    mlp_server: ServerProcess, models: dict[str, Path], binary: bool
) -> None:
    client = httpclient.InferenceServerClient(mlp_server.hostport)
    rows = np.random.default_rng(3).standard_normal((5, 10)).astype(np.float32)
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    if binary:
        tensor.set_data_from_numpy(rows)  # the client's default: binary_data=True
        outputs = None  # the client then asks for every output in binary
    else:
        tensor.set_data_from_numpy(rows, binary_data=False)
        outputs = [httpclient.InferRequestedOutput("output", binary_data=False)]
    result = client.infer("mlp", [tensor], outputs=outputs, request_id="r1")
    expected = ort.InferenceSession(str(models["mlp"])).run(None, {"input": rows})[0]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-6, atol=1e-6)
    assert result.get_response()["id"] == "r1"


def _extremes(datatype: str, dtype: np.dtype) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    info_f = np.finfo(dtype)
    return np.array([[info_f.min, info_f.max, 0.5], [-1.25, info_f.tiny, 3.0]], dtype=dtype)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(types_server: ServerProcess, binary: bool) -> None:
    client = httpclient.InferenceServerClient(types_server.hostport)
    inputs, expected = [], {}
    for datatype, (_, dtype) in ALL_TYPES.items():
        values = _extremes(datatype, dtype)
        tensor = httpclient.InferInput(f"in_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
        expected[f"out_{datatype}"] = values
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in expected]
    result = client.infer("types", inputs, outputs=outputs)
    for name, values in expected.items():
        got = result.as_numpy(name)
        assert got is not None and got.dtype == values.dtype, name
        np.testing.assert_array_equal(got, values, err_msg=name)


def test_client_sees_the_error_message(mlp_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(mlp_server.hostport)
    tensor = httpclient.InferInput("input", [1, 9], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 9), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"does not match the model's \[-1, 10\]"):
        client.infer("mlp", [tensor])
