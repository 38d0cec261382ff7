"""A lone cheap request runs on the event loop (no thread hand-off); batches use the worker."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from modelyard_server.batcher import INLINE_RUN_S, Batcher
from modelyard_server.metrics import ServerMetrics


def _batcher(run) -> Batcher:
    return Batcher(
        run, max_batch_size=64, max_batch_delay_s=0.002, max_queue_size=64,
        metrics=ServerMetrics("m"),
    )  # fmt: skip


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, 3), dtype=np.float32)}


def test_lone_cheap_request_runs_on_the_loop_and_concurrent_ones_batch() -> None:
    threads: list[tuple[str, int]] = []

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append((threading.current_thread().name, len(feed["x"])))
        return [feed["x"] * 2]

    async def scenario() -> None:
        batcher = _batcher(run)
        batcher.start()
        try:
            for _ in range(3):  # the first one runs in the worker: its time is unknown yet
                out = await batcher.submit(_rows(1), 1, (3,))
                assert out[0].tolist() == [[2.0, 2.0, 2.0]]
            outs = await asyncio.gather(*(batcher.submit(_rows(1), 1, (3,)) for _ in range(8)))
            assert all(o[0].shape == (1, 3) for o in outs)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    main = threading.main_thread().name
    assert threads[0][0] != main
    assert threads[1] == (main, 1) and threads[2] == (main, 1), threads
    # The 8 concurrent requests were queued together: one batch, in the worker.
    assert threads[3:] == [(threads[0][0], 8)], threads


def test_slow_model_never_runs_on_the_loop() -> None:
    threads: list[str] = []

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        time.sleep(INLINE_RUN_S * 2)
        return [feed["x"]]

    async def scenario() -> None:
        batcher = _batcher(run)
        batcher.start()
        try:
            for _ in range(3):
                await batcher.submit(_rows(1), 1, (3,))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert threading.main_thread().name not in threads
