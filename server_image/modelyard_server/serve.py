"""The server's life: listen, load and warm up, serve, and shut down gracefully on SIGTERM.

The HTTP listener starts before the model loads, so that liveness answers while a large
model loads; readiness turns true only after the warm-up inference. On SIGTERM readiness
turns false first, the server keeps serving for `shutdown_delay_seconds` (Endpoints and load
balancers need that long to stop routing here), then stops accepting connections and lets
in-flight requests finish; it exits 0 within `shutdown_grace_seconds` of the signal.
gRPC calls that reached the transport but not yet a handler when gRPC stops accepting are
cancelled by gRPC itself (status CANCELLED); the delay, with readiness off, is what keeps new
calls away before that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Generator

import grpc
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard_server.app import InferenceApp, ServingState
from modelyard_server.batcher import Batcher
from modelyard_server.config import ServerSettings
from modelyard_server.contracts import EXIT_LOAD_FAILURE, EXIT_OK, EXIT_SERVER_ERROR
from modelyard_server.drift import drift_monitor
from modelyard_server.grpc_server import grpc_server
from modelyard_server.metrics import ServerMetrics
from modelyard_server.model import LoadError, load_model
from modelyard_server.termination import report_load_failure

log = logging.getLogger("modelyard_server")


class _UvicornServer(uvicorn.Server):
    # uvicorn would install its own handlers and re-raise SIGTERM after shutdown, which ends
    # the process with 143 instead of 0; our handlers (see Lifecycle) own the signals.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    startup_failed = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn calls sys.exit() when it cannot bind; a SystemExit that leaves a task
        # stops the event loop at once, so turn it into a flag here, inside the task.
        try:
            await super().startup(sockets)
        except SystemExit:
            self.startup_failed = True
            self.should_exit = True


_TIMEOUT_BODY = (
    b'{"error":"the request was not sent in time (headerTimeoutSeconds, bodyTimeoutSeconds)"}'
)
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class _TimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing connections that send a request too slowly.

    uvicorn bounds only the idle time between requests; a client that trickles a request's
    headers or body (or connects and sends nothing) would hold its connection, and a share
    of maxInflightBytes, forever. A timer runs only while a read leaves a request unfinished:
    a request that arrives whole in one read, the usual case, costs no timer at all.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    _timer: asyncio.TimerHandle | None = None
    _reading: str | None = None  # "headers", "body", or None between requests

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading = "headers"
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading is None or self.transport.is_closing():
            self._disarm()
        elif self._timer is None:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = "headers"

    def on_headers_complete(self) -> None:
        # The body's time starts now (the timer is armed after this read if it is not whole).
        self._disarm()
        self._reading = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = None
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = self.header_timeout if self._reading == "headers" else self.body_timeout
        self._timer = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            # Tell a client that is still listening; the app, if it waits for this body,
            # sees the client gone and answers nothing.
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def _protocol(settings: ServerSettings) -> type[HttpToolsProtocol]:
    return type(
        "HttpProtocol",
        (_TimeoutProtocol,),
        {
            "header_timeout": settings.header_timeout_seconds,
            "body_timeout": settings.body_timeout_seconds,
        },
    )


class Lifecycle:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(settings.model_name)
        self.state = ServingState()
        self.app = InferenceApp(settings, self.state, self.metrics)
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            http=_protocol(settings),
            loop="none",
            lifespan="off",
            access_log=False,
            # No client-address rewriting (nothing here uses it) and no "server: uvicorn":
            # both cost time on every request.
            proxy_headers=False,
            server_header=False,
            log_level="warning",
            # Longer than the idle timeout of common proxies, so they close first.
            timeout_keep_alive=75,
            # An upper bound only: _grace_over ends the drain at the exact grace period.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        )
        self.server = _UvicornServer(config)
        self.exit_code = EXIT_OK
        self._terminating = False
        self._grpc: grpc.aio.Server | None = None  # made in run(): grpc.aio needs the loop
        self._grpc_stopped: asyncio.Task[None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # gRPC first: a port it cannot bind ends the start before anything is served.
        try:
            self._grpc = rpc = grpc_server(self.app)  # binds the port
            await rpc.start()
        except RuntimeError as exc:
            log.error("gRPC server could not start on port %d: %s", self.settings.grpc_port, exc)
            self.app.close()
            return EXIT_SERVER_ERROR
        serving = asyncio.create_task(self.server.serve(), name="http")
        loading = asyncio.create_task(self._load(), name="load")
        try:
            await serving
            if self.server.startup_failed:
                log.error("the HTTP server could not start")
                self.exit_code = EXIT_SERVER_ERROR
        finally:
            # Both listeners stop accepting together; uvicorn has drained HTTP by now, gRPC
            # calls in flight get what is left of the grace period.
            if self._grpc_stopped is None:
                await rpc.stop(None)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            if self._grpc_stopped is not None:
                await self._grpc_stopped
            if self.state.batcher is not None:
                await self.state.batcher.stop()
            self.app.close()
        return self.exit_code

    async def _load(self) -> None:
        s = self.settings
        try:
            model = await asyncio.to_thread(load_model, s)
        except LoadError as exc:
            report_load_failure(s.termination_log, exc.reason, exc.message)
            self.exit_code = EXIT_LOAD_FAILURE
            self.server.should_exit = True
            return
        monitor = await asyncio.to_thread(drift_monitor, s, model)
        if monitor is not None:
            self.metrics.registry.register(monitor)
        batcher = Batcher(
            model.run,
            max_batch_size=s.max_batch_size if model.batchable else 1,
            max_batch_delay_s=s.max_batch_delay_ms / 1000,
            max_queue_size=s.max_queue_size,
            metrics=self.metrics,
            observe=monitor.observe if monitor is not None else None,
        )
        batcher.start()
        self.state.model, self.state.batcher = model, batcher
        self.metrics.load_seconds.set(model.load_seconds)
        self.metrics.dynamic_batching.set(1 if model.batchable else 0)
        if self.state.shutting_down:
            return
        self.metrics.ready.set(1)
        log.info(
            "serving model %r version %r from %s (sha256 %s) on %s:%d (gRPC %d); providers %s; "
            "batching %s; loaded and warmed up in %.3f s",
            s.model_name,
            s.model_version,
            s.model_path,
            model.sha256,
            s.host,
            s.port,
            s.grpc_port,
            model.providers,
            f"up to {s.max_batch_size} rows" if model.batchable else "off",
            model.load_seconds,
        )

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._terminating:
            log.warning("second %s: exiting without waiting", sig.name)
            self.server.force_exit = True
            self.server.should_exit = True
            return
        self._terminating = True
        self.state.shutting_down = True
        self.metrics.ready.set(0)
        s = self.settings
        if self.state.model is None:
            # Nothing is served yet: no traffic to drain.
            self.server.should_exit = True
            return
        log.info(
            "%s: readiness off; serving %.1f s more, then draining (grace %.1f s)",
            sig.name,
            s.shutdown_delay_seconds,
            s.shutdown_grace_seconds,
        )
        loop = asyncio.get_running_loop()
        loop.call_later(s.shutdown_delay_seconds, self._stop_accepting)
        loop.call_later(s.shutdown_grace_seconds, self._grace_over)

    def _stop_accepting(self) -> None:
        self.server.should_exit = True
        left = self.settings.shutdown_grace_seconds - self.settings.shutdown_delay_seconds
        if self._grpc is not None:
            self._grpc_stopped = asyncio.get_running_loop().create_task(
                self._grpc.stop(left), name="grpc-stop"
            )

    def _grace_over(self) -> None:
        log.warning("grace period over: exiting with requests still in flight")
        self.server.force_exit = True
        self.server.should_exit = True


def serve(settings: ServerSettings) -> int:
    """Run the server until it is told to stop; returns the process exit code."""
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a bit slower
        return asyncio.run(Lifecycle(settings).run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Lifecycle(settings).run())
