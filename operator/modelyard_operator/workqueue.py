"""A work queue of object keys: deduplicated, delayed, one reconcile in flight per key.

Watch events only enqueue; worker threads reconcile. A reconcile returns when it wants to run
again (progress, deadlines, the slow resync), so no per-object timer or finalizer is needed.

Two lanes: a key added without delay (a watch event, or an event that arrived while its key
was being reconciled) waits in a FIFO that workers always serve first; a key added with a
delay (resync, rollout poll, error backoff) waits in a timer heap and is served only when no
event waits. After a burst of creations every converged object's 30 s resync falls due at
once; without the two lanes those resyncs would sit in front of the objects still to create.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Reconcile = Callable[[Hashable], "float | None"]
# (lane: "event" or "timer", seconds the key waited after it was due)
WaitObserver = Callable[[str, float], None]
MAX_ERROR_DELAY = 300.0


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        workers: int = 4,
        name: str = "reconcile",
        on_wait: WaitObserver | None = None,
    ) -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._name = name
        self._on_wait = on_wait
        self._ready: dict[Hashable, float] = {}  # insertion-ordered: the event lane (FIFO)
        self._due: dict[Hashable, float] = {}  # the timer lane
        self._heap: list[tuple[float, int, Hashable]] = []
        self._counter = 0
        self._in_flight: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._errors: dict[Hashable, int] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Reconcile `key` within `delay` seconds (an earlier request wins)."""
        with self._cond:
            if delay <= 0:
                if key in self._in_flight:
                    self._dirty.add(key)
                    return
                if key in self._ready:
                    return
                self._due.pop(key, None)  # its heap entry is now stale
                self._ready[key] = time.monotonic()
                self._cond.notify()
                return
            if key in self._ready:
                return
            due = time.monotonic() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._counter += 1
            heapq.heappush(self._heap, (due, self._counter, key))
            self._cond.notify()

    def forget(self, key: Hashable) -> None:
        with self._cond:
            self._ready.pop(key, None)
            self._due.pop(key, None)
            self._dirty.discard(key)
            self._errors.pop(key, None)

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._due)

    def _next_event(self) -> tuple[Hashable, float] | None:
        while self._ready:
            key = next(iter(self._ready))
            since = self._ready.pop(key)
            if key in self._in_flight:  # will be re-added when the current run ends
                self._dirty.add(key)
                continue
            return key, since
        return None

    def _next_timer(self, now: float) -> tuple[Hashable, float] | None:
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:  # superseded, promoted to the event lane or forgotten
                heapq.heappop(self._heap)
                continue
            if key in self._in_flight:
                heapq.heappop(self._heap)
                self._due.pop(key)
                self._dirty.add(key)
                continue
            if due > now:
                return None
            heapq.heappop(self._heap)
            del self._due[key]
            return key, due
        return None

    def _next(self) -> tuple[Hashable, str, float] | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                found = self._next_event()
                lane = "event"
                if found is None:
                    found, lane = self._next_timer(now), "timer"
                if found is not None:
                    key, since = found
                    self._in_flight.add(key)
                    return key, lane, max(now - since, 0.0)
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)
            return None

    def _work(self) -> None:
        while (picked := self._next()) is not None:
            key, lane, waited = picked
            if self._on_wait is not None:
                self._on_wait(lane, waited)
            again: float | None
            try:
                again = self._reconcile(key)
                self._errors.pop(key, None)
            except Exception:
                failures = self._errors.get(key, 0) + 1
                self._errors[key] = failures
                again = min(2.0**failures, MAX_ERROR_DELAY)
                log.exception(
                    "reconcile of %s failed (%d in a row); again in %.0fs", key, failures, again
                )
            with self._cond:
                self._in_flight.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    again = 0.0
            if again is not None:
                self.add(key, again)
