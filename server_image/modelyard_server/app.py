"""The ASGI application: Open Inference Protocol v2 routes, health, and /metrics.

Hand-written rather than built on a web framework: routing is a handful of fixed paths, and
per-request overhead is what limits an inference server on small models.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
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
from modelyard_server.protocol import encode_infer_response, parse_infer_request

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON = b"application/json"
UNKNOWN_MODEL_LABEL = "_unknown"


def _version() -> str:
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
                "version": _version(),
                "extensions": ["binary_tensor_data"],
            }
        )
        self._model_metadata: bytes | None = None

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
        inflight = self.metrics.inflight
        inflight.inc()
        try:
            batcher.arriving()
            try:
                header_length, encoding = _infer_headers(scope, self.settings.max_request_bytes)
                body = await _read_body(receive, self.settings.max_request_bytes)
                if encoding is not None:
                    body = _decompress(body, encoding, self.settings.max_request_bytes)
                request = parse_infer_request(
                    body,
                    header_length,
                    model.signature,
                    allow_non_finite=self.settings.allow_non_finite_inputs,
                )
                future = batcher.submit(request.inputs, request.rows, request.batch_key)
            finally:
                batcher.arrived()
            outputs = await future
            by_name = dict(zip(model.signature.output_names, outputs, strict=True))
            body, json_length = encode_infer_response(
                self.name,
                self.version,
                request.id,
                [(o, by_name[o.name]) for o in request.outputs],
            )
        finally:
            inflight.dec()
        if json_length is None:
            return 200, [(b"content-type", JSON)], body
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
        ]
        return 200, headers, body


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


def _too_large(limit: int) -> RequestError:
    # Close the connection: the client may still be sending a body we will not read.
    return RequestError(
        400,
        f"request body exceeds the limit of {limit} bytes (maxRequestBytes)",
        headers=((b"connection", b"close"),),
    )


def _infer_headers(scope: Scope, limit: int) -> tuple[int | None, str | None]:
    header_length: int | None = None
    encoding: str | None = None
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
            if length > limit:
                raise _too_large(limit)
        elif name == b"content-encoding":
            token = value.decode("latin-1").strip().lower()
            if token not in ("gzip", "deflate", "identity"):
                raise bad_request(f"unsupported Content-Encoding {token!r}")
            encoding = None if token == "identity" else token
    return header_length, encoding


async def _read_body(receive: Receive, limit: int) -> bytes:
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
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    # wbits: 16+ for gzip framing, plain zlib framing for deflate (what clients send).
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise _too_large(limit)
    return out
