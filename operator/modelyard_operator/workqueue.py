"""A work queue of object keys: deduplicated, delayed, one reconcile in flight per key.

Watch events only enqueue; worker threads reconcile. A reconcile returns when it wants to run
again (progress, deadlines, the slow resync), so no per-object timer or finalizer is needed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Reconcile = Callable[[Hashable], "float | None"]
MAX_ERROR_DELAY = 300.0


class WorkQueue:
    def __init__(self, reconcile: Reconcile, workers: int = 4, name: str = "reconcile") -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._name = name
        self._due: dict[Hashable, float] = {}
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
            if key in self._in_flight and delay <= 0:
                self._dirty.add(key)
                return
            due = time.monotonic() + max(delay, 0.0)
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._counter += 1
            heapq.heappush(self._heap, (due, self._counter, key))
            self._cond.notify()

    def forget(self, key: Hashable) -> None:
        with self._cond:
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
            return len(self._due)

    def _next(self) -> Hashable | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due:  # superseded or forgotten
                        heapq.heappop(self._heap)
                        continue
                    if key in self._in_flight:  # will be re-added when the current run ends
                        heapq.heappop(self._heap)
                        self._due.pop(key)
                        self._dirty.add(key)
                        continue
                    break
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._in_flight.add(key)
                    return key
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
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
