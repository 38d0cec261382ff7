"""The ASGI application: Open Inference Protocol v2 routes, health, and /metrics.

Hand-written rather than built on a web framework: routing is a handful of fixed paths, and
per-request overhead is what limits an inference server on small models.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelyard_server.batcher import Batcher
from modelyard_server.config import ServerSettings
from modelyard_server.errors import RequestError, bad_request, not_found, unavailable
from modelyard_server.metrics import ServerMetrics
from modelyard_server.model import LoadedModel
from modelyard_server.protocol import InferRequest, encode_infer_response, parse_infer_request

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON = b"application/json"
UNKNOWN_MODEL_LABEL = "_unknown"
# Bodies up to this size parse on the event loop (well under a millisecond); larger ones in
# the parse thread, so that a big JSON body never holds up health probes for long.
INLINE_PARSE_BYTES = 64 * 1024
CLOSE = (b"connection", b"close")


def server_version() -> str:
    try:
        return metadata.version("modelyard")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class ServingState:
    """What the routes need to know about the model's life."""

    model: LoadedModel | None = None
    batcher: Batcher | None = None
    shutting_down: bool = False

    @property
    def ready(self) -> bool:
        return self.model is not None and self.batcher is not None and not self.shutting_down


class _ClientGone(Exception):
    pass


class Admission:
    """Bounds on request bodies held at once: bytes (read, parsed, queued or run) and uploads.

    Checked before a body is read, from its declared Content-Length, so that a request the
    server cannot afford costs nothing but its headers.
    """

    def __init__(self, max_bytes: int, max_uploads: int) -> None:
        self.max_bytes = max_bytes
        self.max_uploads = max_uploads
        self.bytes = 0
        self.uploads = 0

    def take(self, size: int) -> None:
        if self.bytes + size > self.max_bytes:
            # Answered before the body is used; the connection closes after the answer.
            raise RequestError(
                503,
                f"too many request bytes in flight ({self.bytes} of {self.max_bytes}, "
                "maxInflightBytes); retry later",
                headers=((b"retry-after", b"1"), CLOSE),
            )
        self.bytes += size

    def give(self, size: int) -> None:
        self.bytes -= size


@dataclass(slots=True)
class Reservation:
    """The bytes that one request holds in its Admission; released when it is answered."""

    admission: Admission
    size: int = 0

    def grow(self, size: int) -> None:
        self.admission.take(size)
        self.size += size

    def release(self) -> None:
        self.admission.give(self.size)
        self.size = 0


def _json_body(document: Any) -> bytes:
    return orjson.dumps(document)


class InferenceApp:
    def __init__(self, settings: ServerSettings, state: ServingState, metrics: ServerMetrics):
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.name = settings.model_name
        self.version = settings.model_version
        self._server_metadata = _json_body(
            {
                "name": "modelyard-server",
                "version": server_version(),
                "extensions": ["binary_tensor_data"],
            }
        )
        self._model_metadata: bytes | None = None
        self.admission = Admission(settings.max_inflight_bytes, settings.max_concurrent_uploads)
        self._body_limit = min(settings.max_request_bytes, settings.max_inflight_bytes)
        self.max_rows = settings.max_batch_size if settings.max_batch_size > 1 else None
        # One thread: large bodies parse one at a time, which bounds the memory that parsing
        # takes (a JSON body of floats needs many times its size while it becomes tensors).
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse")

    def close(self) -> None:
        self._parser.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        # Set by the infer route: the model label its request is counted under.
        infer_model: list[str] = []
        try:
            status, headers, body = await self._route(scope, receive, infer_model)
        except _ClientGone:
            return
        except RequestError as exc:
            status, headers, body = (
                exc.status,
                list(exc.headers),
                _json_body({"error": exc.message}),
            )
            headers.append((b"content-type", JSON))
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            status, headers = 500, [(b"content-type", JSON)]
            body = _json_body({"error": "internal server error"})
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if infer_model:
            self.metrics.count(infer_model[0], status)
            self.metrics.request_seconds.observe(time.perf_counter() - started)

    # --- routing ------------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, infer_model: list[str]) -> Response:
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.rstrip("/").split("/") if path != "/" else [""]
        if parts[:3] == ["", "v2", "models"] and len(parts) >= 4:
            return await self._model_route(parts[3:], method, scope, receive, infer_model)
        if path == "/metrics":
            _allow(method, "GET")
            return 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], self._metrics()
        if path in ("/v2", "/v2/"):
            _allow(method, "GET")
            return 200, [(b"content-type", JSON)], self._server_metadata
        if path == "/v2/health/live":
            _allow(method, "GET")
            return 200, [(b"content-type", JSON)], b'{"live":true}'
        if path == "/v2/health/ready":
            _allow(method, "GET")
            return self._readiness()
        raise not_found(f"no route {path}")

    async def _model_route(
        self, rest: list[str], method: str, scope: Scope, receive: Receive, infer_model: list[str]
    ) -> Response:
        name, rest = rest[0], rest[1:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise not_found("no route: a version is missing after /versions")
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else None
        if len(rest) > 1 or (rest and action not in ("ready", "infer")):
            raise not_found(f"no route {scope['path']}")
        known = name == self.name and version in (None, self.version)
        if action == "infer":
            # Unknown names share one label: clients must not be able to mint series.
            infer_model.append(self.name if known else UNKNOWN_MODEL_LABEL)
            _allow(method, "POST")
            if not known:
                raise _unknown_model(name, version, self.name, self.version)
            return await self._infer(scope, receive)
        _allow(method, "GET")
        if not known:
            raise _unknown_model(name, version, self.name, self.version)
        if action == "ready":
            return self._readiness()
        return 200, [(b"content-type", JSON)], self._metadata()

    # --- handlers -----------------------------------------------------------------------

    def _readiness(self) -> Response:
        if self.state.ready:
            return 200, [(b"content-type", JSON)], b'{"ready":true}'
        why = "shutting down" if self.state.shutting_down else "the model is loading"
        return 503, [(b"content-type", JSON)], _json_body({"ready": False, "error": why})

    def _metadata(self) -> bytes:
        model = self.state.model
        if model is None:
            raise unavailable(f"model {self.name!r} is still loading")
        if self._model_metadata is None:
            self._model_metadata = _json_body(
                {
                    "name": self.name,
                    "versions": [self.version],
                    "platform": "onnxruntime_onnx",
                    "inputs": [s.metadata() for s in model.signature.inputs],
                    "outputs": [s.metadata() for s in model.signature.outputs],
                }
            )
        return self._model_metadata

    def _metrics(self) -> bytes:
        return generate_latest(self.metrics.registry)

    async def _infer(self, scope: Scope, receive: Receive) -> Response:
        model, batcher = self.state.model, self.state.batcher
        if model is None or batcher is None:
            raise unavailable(f"model {self.name!r} is not ready yet")
        settings = self.settings
        inflight = self.metrics.inflight
        inflight.inc()
        reservation = Reservation(self.admission)
        try:
            header_length, encoding, length = _infer_headers(scope)
            body = await self._receive_body(receive, length, reservation)
            if encoding is not None:
                body = _decompress(body, encoding, self._body_limit)
                reservation.grow(len(body))
            inline = len(body) <= INLINE_PARSE_BYTES
            parse = functools.partial(
                parse_infer_request,
                body,
                header_length,
                model.signature,
                allow_non_finite=settings.allow_non_finite_inputs,
                max_rows=self.max_rows,
            )
            del body  # the JSON text is garbage once parsed; binary tensors keep it alive
            request = await self.parse_request(batcher, parse, inline)
            del parse
            outputs = await batcher.submit(request.inputs, request.rows, request.batch_key)
            by_name = dict(zip(model.signature.output_names, outputs, strict=True))
            body, json_length = encode_infer_response(
                self.name,
                self.version,
                request.id,
                [(o, by_name[o.name]) for o in request.outputs],
            )
        finally:
            reservation.release()
            inflight.dec()
        if json_length is None:
            return 200, [(b"content-type", JSON)], body
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
        ]
        return 200, headers, body

    async def parse_request(
        self, batcher: Batcher, parse: Callable[[], InferRequest], inline: bool
    ) -> InferRequest:
        """Run `parse` on the event loop when `inline` (small requests), else in the parse
        thread, which bounds the memory that parsing takes. Shared by REST and gRPC."""
        if inline:
            return parse()
        # The batcher waits for requests being parsed, never for ones still uploading.
        batcher.arriving()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._parser, parse)
        finally:
            batcher.arrived()

    def _too_large(self) -> RequestError:
        # Close the connection: the client may still be sending a body we will not read.
        if self.settings.max_request_bytes <= self.admission.max_bytes:
            limit, setting = self.settings.max_request_bytes, "maxRequestBytes"
        else:
            limit, setting = self.admission.max_bytes, "maxInflightBytes"
        return RequestError(
            413, f"request body exceeds the limit of {limit} bytes ({setting})", headers=(CLOSE,)
        )

    async def _receive_body(
        self, receive: Receive, length: int | None, reservation: Reservation
    ) -> bytes | bytearray:
        """The whole body, admitted before it is read.

        The HTTP protocol (serve.py) closes a connection whose body takes longer than
        bodyTimeoutSeconds; a receive() waiting for it then reports the client gone.
        """
        limit = self._body_limit
        if length is not None:
            if length > limit:
                raise self._too_large()
            try:
                reservation.grow(length)
            except RequestError:
                # Read and drop the body first, so that a client that sends its whole body
                # before it reads the answer (most do) sees the 503 instead of a reset.
                await _discard(receive)
                raise
        admission = self.admission
        if admission.uploads >= admission.max_uploads:
            raise RequestError(
                503,
                f"too many request bodies being received ({admission.max_uploads}, "
                "maxConcurrentUploads); retry later",
                headers=((b"retry-after", b"1"), CLOSE),
            )
        admission.uploads += 1
        try:
            if length is not None:
                return await _read_exact(receive, length)
            return await self._read_streamed(receive, limit, reservation)
        finally:
            admission.uploads -= 1

    async def _read_streamed(self, receive: Receive, limit: int, reservation: Reservation) -> bytes:
        # No Content-Length (chunked): every chunk is admitted as it comes.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise self._too_large()
                reservation.grow(len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise RequestError(
            405, f"method {method} is not allowed here; use {allowed}",
            headers=((b"allow", allowed.encode()),),
        )  # fmt: skip


def _unknown_model(
    name: str, version: str | None, served: str, served_version: str
) -> RequestError:
    if name == served:
        return not_found(f"model {name!r} has no version {version!r} (serving {served_version!r})")
    return not_found(f"unknown model {name!r}")


def _infer_headers(scope: Scope) -> tuple[int | None, str | None, int | None]:
    """Inference-Header-Content-Length, Content-Encoding and Content-Length."""
    header_length: int | None = None
    encoding: str | None = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"inference-header-content-length":
            try:
                header_length = int(value)
            except ValueError:
                raise bad_request("Inference-Header-Content-Length must be an integer") from None
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise bad_request("Content-Length must be an integer") from None
        elif name == b"content-encoding":
            token = value.decode("latin-1").strip().lower()
            if token not in ("gzip", "deflate", "identity"):
                raise bad_request(f"unsupported Content-Encoding {token!r}")
            encoding = None if token == "identity" else token
    return header_length, encoding, length


async def _discard(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        if not message.get("more_body", False):
            return


async def _read_exact(receive: Receive, length: int) -> bytes | bytearray:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone()
    chunk = message.get("body", b"")
    if not message.get("more_body", False):
        # The usual case: the whole body in one message, kept as it is.
        if len(chunk) != length:
            raise bad_request(f"the body has {len(chunk)} bytes, its Content-Length says {length}")
        return chunk
    # Several messages: one buffer of the declared size, filled in place, not a list of
    # chunks joined at the end, which would hold the body twice.
    body = bytearray(length)
    size = 0
    with memoryview(body) as view:
        while True:
            end = size + len(chunk)
            if end > length:  # the HTTP parser enforces Content-Length; never trust it blindly
                raise bad_request("the body is longer than its Content-Length")
            view[size:end] = chunk
            size = end
            if not message.get("more_body", False):
                break
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
    if size != length:
        raise bad_request(f"the body has {size} bytes, its Content-Length says {length}")
    return body


def _decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    # wbits: 16+ for gzip framing, plain zlib framing for deflate (what clients send).
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise RequestError(
            413,
            f"decompressed request body exceeds the limit of {limit} bytes",
            headers=(CLOSE,),
        )
    if not decoder.eof:
        raise bad_request(f"the {encoding} body is truncated (its end-of-stream is missing)")
    if decoder.unused_data:
        raise bad_request(f"{len(decoder.unused_data)} bytes follow the end of the {encoding} body")
    return out
