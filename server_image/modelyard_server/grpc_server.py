"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`).

Runs in the HTTP server's process and event loop (grpc.aio) and shares its model, batcher,
admission bound (maxInflightBytes) and metrics. A ModelInferRequest is put in the shape of
the REST request (raw contents become the binary extension's data, typed contents its JSON
data) and validated by the same parser, so both protocols accept and refuse the same tensors.
Client mistakes end as INVALID_ARGUMENT / NOT_FOUND, never INTERNAL.

The service is registered with a generic handler: only the messages are generated
(grpc_oip/inference_pb2.py, see server_image/gen_grpc_stubs.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from modelyard_server.app import (
    INLINE_PARSE_BYTES,
    UNKNOWN_MODEL_LABEL,
    InferenceApp,
    Reservation,
    server_version,
)
from modelyard_server.errors import RequestError, bad_request, not_found, unavailable
from modelyard_server.grpc_oip import inference_pb2 as pb
from modelyard_server.protocol import InferRequest, parse_infer_header, tensor_bytes
from modelyard_server.signature import ModelSignature, datatype_of

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The typed-contents field of each datatype (OIP); FP16 and BF16 travel as raw contents only.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def _typed_data(name: str, datatype: str, contents: pb.InferTensorContents) -> list[Any]:
    field = _CONTENTS_FIELD.get(datatype)
    used = [f.name for f, _ in contents.ListFields()]
    if field is None or used not in ([], [field]):
        want = f"contents.{field}" if field else "raw_input_contents"
        raise bad_request(f"input {name!r}: {datatype} data must be in {want} (got {used})")
    values = list(getattr(contents, field))
    if datatype != "BYTES":
        return values
    try:
        return [v.decode() for v in values]
    except UnicodeDecodeError:
        raise bad_request(f"input {name!r}: a BYTES element is not UTF-8") from None


def request_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The REST-shaped document and binary data of a ModelInferRequest."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs "
            "(one per input, or none)"
        )
    inputs: list[dict[str, Any]] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            if tensor.HasField("contents"):
                raise bad_request(
                    f"input {tensor.name!r} has contents and raw_input_contents (one or the other)"
                )
            entry["parameters"] = {"binary_data_size": len(raw[index])}
        else:
            entry["data"] = _typed_data(tensor.name, tensor.datatype, tensor.contents)
        inputs.append(entry)
    document: dict[str, Any] = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [
            {"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
            for o in request.outputs
        ]
    return document, b"".join(raw)


def parse_model_infer(
    request: pb.ModelInferRequest,
    signature: ModelSignature,
    *,
    allow_non_finite: bool,
    max_rows: int | None,
) -> InferRequest:
    """Validate a ModelInferRequest with the REST parser (see the module doc)."""
    document, binary = request_document(request)
    return parse_infer_header(
        document,
        memoryview(binary),
        signature,
        allow_non_finite=allow_non_finite,
        max_rows=max_rows,
    )


class InferenceService:
    """The RPCs; each answers from the shared InferenceApp's state."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app

    def _known(self, name: str, version: str) -> bool:
        return name == self.app.name and version in ("", self.app.version)

    def _unknown(self, name: str, version: str) -> RequestError:
        suffix = f" version {version!r}" if version else ""
        return not_found(
            f"unknown model {name!r}{suffix}; this server serves {self.app.name!r} "
            f"version {self.app.version!r}"
        )

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.app.state.ready)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        if not self._known(request.name, request.version):
            raise self._unknown(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.app.state.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelyard-server", version=server_version())

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        if not self._known(request.name, request.version):
            raise self._unknown(request.name, request.version)
        model = self.app.state.model
        if model is None:
            raise unavailable(f"model {self.app.name!r} is still loading")

        def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype, shape=list(s.shape or ())
                )
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=self.app.name,
            versions=[self.app.version],
            platform="onnxruntime_onnx",
            inputs=tensors(model.signature.inputs),
            outputs=tensors(model.signature.outputs),
        )

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        app = self.app
        started = time.perf_counter()
        known = self._known(request.model_name, request.model_version)
        code = 500
        try:
            if not known:
                raise self._unknown(request.model_name, request.model_version)
            response = await self._infer(request)
            code = 200
            return response
        except RequestError as exc:
            code = exc.status
            raise
        finally:
            # Counted as REST counts: by model and HTTP-equivalent status, so that one error
            # rate covers both protocols.
            app.metrics.count(app.name if known else UNKNOWN_MODEL_LABEL, code)
            app.metrics.request_seconds.observe(time.perf_counter() - started)

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        app = self.app
        model, batcher = app.state.model, app.state.batcher
        if model is None or batcher is None:
            raise unavailable(f"model {app.name!r} is not ready yet")
        inflight = app.metrics.inflight
        inflight.inc()
        reservation = Reservation(app.admission)
        try:
            size = request.ByteSize()
            reservation.grow(size)
            # Large messages are reshaped and parsed in the parse thread, as large REST
            # bodies are: typed contents become Python lists there, not on the event loop.
            parse = functools.partial(
                parse_model_infer,
                request,
                model.signature,
                allow_non_finite=app.settings.allow_non_finite_inputs,
                max_rows=app.max_rows,
            )
            parsed = await app.parse_request(batcher, parse, size <= INLINE_PARSE_BYTES)
            outputs = await batcher.submit(parsed.inputs, parsed.rows, parsed.batch_key)
        finally:
            reservation.release()
            inflight.dec()
        by_name = dict(zip(model.signature.output_names, outputs, strict=True))
        response = pb.ModelInferResponse(
            model_name=app.name, model_version=app.version, id=parsed.id or ""
        )
        for requested in parsed.outputs:
            array: np.ndarray = by_name[requested.name]
            response.outputs.add(
                name=requested.name, datatype=datatype_of(array), shape=list(array.shape)
            )
            response.raw_output_contents.append(tensor_bytes(array))
        return response


Handler = Callable[[Any], Awaitable[Any]]


def _decode(request_type: Any, data: bytes) -> Any:
    # None for bytes that are no such message: grpc would log a traceback and answer INTERNAL
    # for a deserializer's exception; the handler answers INVALID_ARGUMENT instead.
    try:
        return request_type.FromString(data)
    except DecodeError:
        return None


def _unary(method: Handler, request_type: Any) -> grpc.RpcMethodHandler:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if request is None:
                raise bad_request(f"the request is not a valid {request_type.__name__}")
            return await method(request)
        except RequestError as exc:
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=functools.partial(_decode, request_type),
        response_serializer=lambda message: message.SerializeToString(),
    )


def grpc_server(app: InferenceApp) -> grpc.aio.Server:
    """An unstarted grpc.aio server on settings.host:grpc_port, in the running event loop."""
    settings = app.settings
    service = InferenceService(app)
    handlers = {
        "ServerLive": _unary(service.server_live, pb.ServerLiveRequest),
        "ServerReady": _unary(service.server_ready, pb.ServerReadyRequest),
        "ModelReady": _unary(service.model_ready, pb.ModelReadyRequest),
        "ServerMetadata": _unary(service.server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": _unary(service.model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": _unary(service.model_infer, pb.ModelInferRequest),
    }
    limit = min(settings.max_request_bytes, settings.max_inflight_bytes)
    server = grpc.aio.server(
        options=[
            # A larger message is refused (RESOURCE_EXHAUSTED) before it is held whole.
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    return server
