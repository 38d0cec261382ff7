"""The work queue with real worker threads: events before due timers, dedup, wait metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from modelyard_operator.workqueue import WorkQueue


class Recorder:
    def __init__(self, block: threading.Event | None = None) -> None:
        self.order: list[Hashable] = []
        self.waits: list[tuple[str, float]] = []
        self.block = block
        self.lock = threading.Lock()

    def reconcile(self, key: Hashable) -> float | None:
        if self.block is not None:
            self.block.wait(5)
        with self.lock:
            self.order.append(key)
        return None

    def on_wait(self, lane: str, seconds: float) -> None:
        with self.lock:
            self.waits.append((lane, seconds))


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met")


def test_events_are_served_before_overdue_timers() -> None:
    gate = threading.Event()
    recorder = Recorder(block=gate)
    queue = WorkQueue(recorder.reconcile, workers=1, on_wait=recorder.on_wait)
    queue.start()
    try:
        queue.add("busy")  # holds the only worker until the gate opens
        wait_for(lambda: len(queue) == 0)
        for index in range(5):
            queue.add(f"resync-{index}", delay=0.01)
        time.sleep(0.05)  # every resync is overdue now
        queue.add("new-a")
        queue.add("new-b")
        gate.set()
        wait_for(lambda: len(recorder.order) == 8)
    finally:
        queue.stop()
    assert recorder.order[:3] == ["busy", "new-a", "new-b"]
    assert sorted(recorder.order[3:]) == [f"resync-{i}" for i in range(5)]
    lanes = [lane for lane, _ in recorder.waits]
    assert lanes.count("event") == 3 and lanes.count("timer") == 5
    timer_waits = [seconds for lane, seconds in recorder.waits if lane == "timer"]
    assert min(timer_waits) >= 0.03  # they waited behind the events


def test_an_event_promotes_a_key_waiting_on_its_timer_and_duplicates_collapse() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder.reconcile, workers=2)
    queue.start()
    try:
        queue.add("a", delay=60)
        queue.add("a")
        queue.add("a")
        wait_for(lambda: recorder.order == ["a"])
        time.sleep(0.1)
        assert len(queue) == 0  # the 60 s timer went with the promotion
    finally:
        queue.stop()
    assert recorder.order == ["a"]


def test_an_event_during_a_reconcile_runs_it_once_more() -> None:
    gate = threading.Event()
    recorder = Recorder(block=gate)
    queue = WorkQueue(recorder.reconcile, workers=2)
    queue.start()
    try:
        queue.add("a")
        wait_for(lambda: len(queue) == 0)
        time.sleep(0.05)
        queue.add("a")  # while "a" is in flight: no second concurrent run
        queue.add("a")
        gate.set()
        wait_for(lambda: len(recorder.order) == 2)
        time.sleep(0.1)
    finally:
        queue.stop()
    assert recorder.order == ["a", "a"]


def test_a_failing_reconcile_is_retried_on_the_timer_lane() -> None:
    calls: list[float] = []

    def reconcile(key: Hashable) -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("transient")
        return None

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    try:
        queue.add("a")
        wait_for(lambda: len(calls) == 2, timeout=10)
    finally:
        queue.stop()
    assert calls[1] - calls[0] >= 1.9  # 2 s after the first failure
