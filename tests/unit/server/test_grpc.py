"""gRPC Open Inference Protocol: tritonclient.grpc, unchanged, against the real server.

The test process never imports the server's own stubs: tritonclient registers the same
`inference.*` messages in protobuf's default pool, and one process cannot hold both.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelyard_server import contracts

from .conftest import ServerProcess
from .onnx_models import ALL_TYPES


@pytest.fixture(scope="module")
def mlp_server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["mlp"], model_name="mlp")


@pytest.fixture(scope="module")
def types_server(start_server, models: dict[str, Path]) -> ServerProcess:
    return start_server(models["all_types"], model_name="types")


@pytest.fixture(scope="module")
def stub(mlp_server: ServerProcess):
    with grpc.insecure_channel(mlp_server.grpc_hostport) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_health_and_metadata(mlp_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(mlp_server.grpc_hostport)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["name"] == "mlp" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "10"]}]
    assert client.get_server_metadata(as_json=True)["name"] == "modelyard-server"
    with pytest.raises(InferenceServerException) as info:
        client.is_model_ready("other")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_mlp_infer_matches_onnxruntime(mlp_server: ServerProcess, models: dict[str, Path]) -> None:
    x = np.random.default_rng(3).standard_normal((5, 10)).astype(np.float32)
    expected = ort.InferenceSession(str(models["mlp"])).run(None, {"input": x})[0]
    client = grpcclient.InferenceServerClient(mlp_server.grpc_hostport)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp", [tensor], request_id="r1")
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    assert result.get_response().id == "r1"
    # Counted with REST's requests, under the HTTP-equivalent code.
    assert mlp_server.metric(contracts.METRIC_REQUESTS_TOTAL + '{code="200",model="mlp"') >= 1


def test_typed_contents(stub, models: dict[str, Path]) -> None:
    x = np.random.default_rng(4).standard_normal((2, 10)).astype(np.float32)
    expected = ort.InferenceSession(str(models["mlp"])).run(None, {"input": x})[0]
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 10])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_every_datatype_round_trips(types_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(types_server.grpc_hostport)
    rng = np.random.default_rng(5)
    inputs, sent = [], {}
    for name, (_, dtype) in ALL_TYPES.items():
        if dtype.kind == "O":
            value = np.array([["a", "βγ", ""], ["x", "y", "z"]], dtype=object)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            value = (rng.standard_normal((2, 3)) * 10).astype(dtype)
        tensor = grpcclient.InferInput(f"in_{name}", [2, 3], name)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
        sent[name] = value
    result = client.infer("types", inputs)
    for name, value in sent.items():
        got = result.as_numpy(f"out_{name}")
        if value.dtype.kind == "O":
            got = np.vectorize(lambda b: b.decode())(got)
        np.testing.assert_array_equal(got, value)


def _code(stub, request) -> grpc.StatusCode:
    try:
        stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _fp32(shape: list[int], raw: bytes | None = None, datatype: str = "FP32", name="input"):
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw if raw is not None else b"\0" * 4 * int(np.prod(shape)))
    return request


def test_malformed_requests_get_invalid_argument(stub) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub, _fp32([1, 10])) == grpc.StatusCode.OK
    assert _code(stub, _fp32([1, 9])) == invalid  # wrong shape
    assert _code(stub, _fp32([1, 10], datatype="FP64")) == invalid  # wrong datatype
    assert _code(stub, _fp32([1, 10], raw=b"\0" * 39)) == invalid  # raw of the wrong size
    assert _code(stub, _fp32([1, 10], name="nope")) == invalid  # unknown input
    assert _code(stub, service_pb2.ModelInferRequest(model_name="mlp")) == invalid  # no input
    two = _fp32([1, 10])
    two.raw_input_contents.append(b"")  # one raw entry too many
    assert _code(stub, two) == invalid
    typed_wrong = service_pb2.ModelInferRequest(model_name="mlp")
    typed_wrong.inputs.add(name="input", datatype="FP32", shape=[1, 10])
    typed_wrong.inputs[0].contents.int_contents.extend([0] * 10)  # FP32 in int_contents
    assert _code(stub, typed_wrong) == invalid
    missing = service_pb2.ModelInferRequest(model_name="mlp")
    missing.inputs.add(name="input", datatype="FP32", shape=[1, 10])  # no data at all
    assert _code(stub, missing) == invalid
    unknown = _fp32([1, 10])
    unknown.model_name = "other"
    assert _code(stub, unknown) == grpc.StatusCode.NOT_FOUND


def test_fuzzed_requests_never_internal(mlp_server: ServerProcess, stub) -> None:
    """Random field values and random bytes: every answer is OK or a client error."""
    rng = np.random.default_rng(7)
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    datatypes = ["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "", "fp32", "X"]
    for _ in range(300):
        request = service_pb2.ModelInferRequest(model_name=str(rng.choice(["mlp", "", "m"])))
        for _ in range(int(rng.integers(0, 3))):
            shape = [int(d) for d in rng.integers(-2, 12, int(rng.integers(0, 4)))]
            request.inputs.add(
                name=str(rng.choice(["input", "x", ""])),
                datatype=str(rng.choice(datatypes)),
                shape=shape,
            )
            if rng.random() < 0.5:
                request.raw_input_contents.append(rng.bytes(int(rng.integers(0, 64))))
            else:
                request.inputs[-1].contents.fp32_contents.extend(
                    rng.standard_normal(int(rng.integers(0, 20))).tolist()
                )
        if rng.random() < 0.3:
            request.outputs.add(name=str(rng.choice(["output", "y"])))
        assert _code(stub, request) in allowed, request
    # Bytes that are no ModelInferRequest at all.
    with grpc.insecure_channel(mlp_server.grpc_hostport) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(50):
            try:
                call(rng.bytes(int(rng.integers(1, 200))), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() in allowed, exc
    assert mlp_server.proc.poll() is None
    assert "Traceback" not in mlp_server.log()


def test_sigterm_drains_grpc_calls_in_flight(start_server, models: dict[str, Path]) -> None:
    server: ServerProcess = start_server(
        models["slow"], max_batch_size=1, shutdown_delay_seconds=0, shutdown_grace_seconds=30
    )
    rows = np.random.default_rng(8).standard_normal((1024, 512)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="model")
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, timeout=30)  # connected and warm
        calls = [stub.ModelInfer.future(request, timeout=60) for _ in range(6)]
        # All of them in the server's handler, queued behind one another (one row batch at a
        # time): a call the transport holds but the handler has not taken yet is cancelled
        # when gRPC stops accepting, which is gRPC's own behaviour, not a drain.
        deadline = time.monotonic() + 10
        while server.metric(contracts.METRIC_INFLIGHT_REQUESTS) < len(calls):
            assert time.monotonic() < deadline, "calls never got in flight"
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        assert not all(call.done() for call in calls), "the test kept no call in flight"
        for call in calls:
            out = np.frombuffer(call.result().raw_output_contents[0], dtype="<f4")
            np.testing.assert_array_equal(out.reshape(rows.shape), rows)
    assert server.proc.wait(timeout=30) == 0, server.log()


def test_concurrent_grpc_calls_are_batched(start_server, models: dict[str, Path]) -> None:
    server: ServerProcess = start_server(models["mlp"], max_batch_size=64, max_batch_delay_ms=5)
    x = np.random.default_rng(9).standard_normal((1, 10)).astype(np.float32)
    expected = ort.InferenceSession(str(models["mlp"])).run(None, {"input": x})[0]
    request = service_pb2.ModelInferRequest(model_name="model")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 10])
    request.raw_input_contents.append(x.tobytes())
    runs_before = server.metric(contracts.METRIC_BATCH_SIZE + "_count")
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(5):
            calls = [stub.ModelInfer.future(request, timeout=30) for _ in range(64)]
            for call in calls:
                out = np.frombuffer(call.result().raw_output_contents[0], dtype="<f4")
                np.testing.assert_allclose(out.reshape(1, 10), expected, rtol=1e-5, atol=1e-6)
    runs = server.metric(contracts.METRIC_BATCH_SIZE + "_count") - runs_before
    assert runs < 320, f"320 concurrent gRPC calls took {runs} ONNX Runtime runs"
