"""Dynamic batching: concurrent requests share one ONNX Runtime call.

One asyncio task takes requests from a bounded queue, concatenates the rows of compatible
requests (same trailing shapes) up to `max_batch_size`, runs the batch in a worker thread
(ONNX Runtime releases the GIL, so the event loop keeps reading requests meanwhile), and
hands each request exactly its own slice of every output.

Waiting policy: a batch waits (at most `max_batch_delay_ms` after its first request was
queued) only while more requests are already being received. A lone client therefore
never pays the delay, and under load requests pile up naturally while the previous batch
runs, so batches fill without any waiting at all.

A batch of one request, with nothing else queued, whose size is known to run in under
INLINE_RUN_S runs on the event loop itself: handing it to the worker thread and back costs
tens of microseconds, a large share of a small model's latency, and no other request is
waiting for the loop. Requests that arrive meanwhile are read right after it and form the
next batch, so under load batching goes on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modelyard_server.errors import RequestError, bad_request, unavailable
from modelyard_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# Sees every batch that ran with its outputs (drift monitoring); must be cheap.
Observer = Callable[[dict[str, np.ndarray], list[np.ndarray]], None]

# Longest run that may hold the event loop: about what parsing a body inline costs
# (app.INLINE_PARSE_BYTES), so that health probes never wait noticeably longer.
INLINE_RUN_S = 0.001


@dataclass(slots=True)
class _Job:
    inputs: dict[str, np.ndarray]
    rows: int
    key: Hashable | None
    future: asyncio.Future[list[np.ndarray]]
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        run: Runner,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_size: int,
        metrics: ServerMetrics,
        observe: Observer | None = None,
    ) -> None:
        self._run = run
        self._observe = observe
        self._max_rows = max_batch_size
        self._max_delay = max_batch_delay_s
        self._max_queue = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._wake = asyncio.Event()
        # One worker: batches run one after another; more would only split the CPU.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task[None] | None = None
        # Rows and run time of the latest batch of one request (None before the first): a
        # request of at most as many rows is expected to take at most as long.
        self._lone_run: tuple[int, float] | None = None
        self._run_s = 0.0  # of the latest run, set by _timed_run

    # --- request side -----------------------------------------------------------------

    def arriving(self) -> None:
        """A request has started to arrive; a forming batch may wait for it."""
        self._arriving += 1

    def arrived(self) -> None:
        """The request announced by arriving() was queued or given up."""
        self._arriving -= 1
        if self._queue:
            self._wake.set()

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, key: Hashable | None
    ) -> asyncio.Future[list[np.ndarray]]:
        """Queue a validated request; its future gets the request's own output rows."""
        if len(self._queue) >= self._max_queue:
            raise unavailable(f"the queue is full ({self._max_queue} requests waiting)")
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(inputs, rows, key, future))
        self._queued_rows += rows
        self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        return future

    # --- batch side ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(unavailable("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._max_rows > 1 and self._max_delay > 0:
                await self._gather()
            batch = self._take()
            try:
                await self._execute(batch)
            except Exception:  # keep serving: a batch's failure is its requests' failure
                log.exception("batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RequestError(500, "internal error"))

    async def _gather(self) -> None:
        # Requests whose bytes arrived with this one get parsed and queued first.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].queued_at + self._max_delay
        while self._arriving > 0 and self._queued_rows < self._max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            timer = loop.call_later(remaining, self._wake.set)
            await self._wake.wait()
            timer.cancel()

    def _take(self) -> list[_Job]:
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        rows = first.rows
        if first.key is not None:
            while queue and queue[0].key == first.key and rows + queue[0].rows <= self._max_rows:
                job = queue.popleft()
                batch.append(job)
                rows += job.rows
        self._queued_rows -= rows
        self._metrics.queue_depth.set(len(queue))
        return batch

    def _timed_run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Timed where it runs: the hand-off to the worker thread is no part of the model's
        # time (on a busy machine it can exceed a small model's run many times over).
        started = time.perf_counter()
        try:
            return self._run(feed)
        finally:
            self._run_s = time.perf_counter() - started

    def _cheap(self, rows: int) -> bool:
        """Whether a lone request of `rows` rows is known to run in under INLINE_RUN_S."""
        last = self._lone_run
        return last is not None and rows <= last[0] and last[1] < INLINE_RUN_S

    async def _execute(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(job.rows for job in batch)
        if len(batch) == 1:
            feed = batch[0].inputs
        else:
            feed = {
                name: np.concatenate([job.inputs[name] for job in batch])
                for name in batch[0].inputs
            }
        lone = len(batch) == 1
        try:
            if lone and not self._queue and self._cheap(rows):
                outputs = self._timed_run(feed)
            else:
                outputs = await loop.run_in_executor(self._executor, self._timed_run, feed)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One request's values (not its shape: that was checked) broke the batch. Halve
            # it until the culprit runs alone: the others are answered in a few runs, not in
            # one run each.
            half = len(batch) // 2
            await self._execute(batch[:half])
            await self._execute(batch[half:])
            return
        finally:
            # Every ONNX Runtime call, failed ones too: the count is the model's work.
            self._metrics.inference_seconds.observe(self._run_s)
            if lone:
                self._lone_run = (rows, self._run_s)
        self._metrics.batch_size.observe(rows)
        if len(batch) > 1 and any(o.ndim == 0 or o.shape[0] != rows for o in outputs):
            for job in batch:
                await self._execute([job])
            return
        # After the run, not inside it: its cost is no part of the model's time.
        if self._observe is not None:
            try:
                self._observe(feed, outputs)
            except Exception:  # monitoring must never fail a request that has its answer
                log.exception("drift monitoring failed on a batch of %d rows", rows)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for job in batch:
            end = start + job.rows
            if not job.future.done():  # a client that went away cancels its future
                job.future.set_result([o[start:end] for o in outputs])
            start = end


def _fail(job: _Job, exc: Exception) -> None:
    # ONNX Runtime's text names kernels and internal files: it is for the log, not the client.
    log.info("inference failed on one request: %.500s", exc)
    if not job.future.done():
        job.future.set_exception(
            bad_request(
                "inference failed on this input: the model rejected its values "
                "(e.g. an index out of range)"
            )
        )
