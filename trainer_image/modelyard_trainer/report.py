"""Progress reporting: throttled, in the ProgressRecord of the contracts, to pluggable sinks.

In a cluster rank 0 patches the ConfigMap <mt>-progress (the only object the trainer may
write); everywhere it also prints a readable line on stderr and appends JSON lines to
progress.jsonl in the run directory.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from .contracts import (
    ENV_PROGRESS_CONFIGMAP,
    ENV_RUN_NAMESPACE,
    PROGRESS_DATA_KEY,
    PROGRESS_JSONL_FILE,
    ProgressRecord,
)

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ProgressSink(Protocol):
    def emit(self, record: ProgressRecord) -> None: ...

    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_progress(record: ProgressRecord) -> str:
    """One readable line, e.g. for kubectl logs."""
    parts = [f"[{record.stage}]"]
    if record.epochs and record.stage != "Preprocessing":
        parts.append(f"epoch {record.epoch}/{record.epochs}")
    if record.steps_per_epoch and record.stage == "Training":
        parts.append(f"step {record.step}/{record.steps_per_epoch}")
    parts.append(f"{record.percent:.1f}%")
    if record.loss is not None:
        parts.append(f"loss {record.loss:.4f}")
    parts += [f"{name} {value:.4f}" for name, value in record.validation.items()]
    if record.samples_per_second is not None:
        parts.append(f"{record.samples_per_second:.0f} samples/s")
    if record.eta_seconds is not None:
        parts.append(f"ETA {_duration(record.eta_seconds)}")
    return " ".join(parts)


class LocalSink:
    """A readable line on a stream and a JSON line per record in a file."""

    def __init__(self, jsonl_path: Path | None, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._file: TextIO | None = None
        if jsonl_path is not None:
            jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def emit(self, record: ProgressRecord) -> None:
        print(f"modelyard-trainer: {format_progress(record)}", file=self._stream, flush=True)
        if self._file is not None:
            self._file.write(record.to_json() + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ConfigMapSink:
    """Patches data[progress.json] of the ConfigMap <mt>-progress; failures never stop training."""

    def __init__(self, namespace: str, name: str, api: Any = None) -> None:
        self.namespace = namespace
        self.name = name
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CoreV1Api()
        self._api = api

    def emit(self, record: ProgressRecord) -> None:
        body = {"data": {PROGRESS_DATA_KEY: record.to_json()}}
        try:
            self._api.patch_namespaced_config_map(self.name, self.namespace, body)
        except Exception as error:  # the API server may be briefly away; progress is best effort
            log.warning("cannot patch ConfigMap %s/%s: %s", self.namespace, self.name, error)

    def close(self) -> None:
        pass


class ProgressReporter:
    """Sends records to the sinks at most every `interval` seconds (forced ones always go)."""

    def __init__(
        self,
        sinks: Sequence[ProgressSink],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sinks = list(sinks)
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self.last_record: ProgressRecord | None = None

    def due(self) -> bool:
        """Cheap check so that callers build a record only when it will be sent."""
        return self._last is None or self._clock() - self._last >= self._interval

    def report(self, record: ProgressRecord, force: bool = False) -> bool:
        if not (force or self.due()):
            return False
        self._last = self._clock()
        record = record.model_copy(update={"updated_at": utc_now()})
        self.last_record = record
        for sink in self._sinks:
            sink.emit(record)
        return True

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def make_reporter(
    environ: Mapping[str, str], run_dir: Path | None, interval: float, enabled: bool
) -> ProgressReporter:
    """Rank 0 reports locally and, in a cluster, to the progress ConfigMap; others stay quiet."""
    if not enabled:
        return ProgressReporter([], interval)
    sinks: list[ProgressSink] = [
        LocalSink(run_dir / PROGRESS_JSONL_FILE if run_dir is not None else None)
    ]
    configmap = environ.get(ENV_PROGRESS_CONFIGMAP)
    if configmap:
        try:
            sinks.append(ConfigMapSink(environ.get(ENV_RUN_NAMESPACE) or "default", configmap))
        except Exception as error:  # no credentials: keep training, report locally
            log.warning("progress ConfigMap %s disabled: %s", configmap, error)
    return ProgressReporter(sinks, interval)


class EtaEstimator:
    """Time left = mean wall time per step x steps left.

    The mean covers everything the loop does (validation and checkpoints included), from the
    end of the first epoch this process ran: that epoch carries one-time costs (allocation,
    warm caches, the first checkpoint's directory) that would make every later estimate high.
    Until then, the mean since the start is the best there is.
    """

    def __init__(self, total_steps: int, done_steps: int, clock: Callable[[], float]) -> None:
        self.total = total_steps
        self._start_done = done_steps
        self._clock = clock
        self._start = clock()
        self._rebased = False

    def epoch_done(self, done_steps: int) -> None:
        """Call at each epoch's end; the first call moves the baseline past the warm-up."""
        if not self._rebased and done_steps < self.total:
            self._rebased = True
            self._start_done = done_steps
            self._start = self._clock()

    def eta(self, done_steps: int) -> float | None:
        progressed = done_steps - self._start_done
        if progressed <= 0:
            return None
        elapsed = self._clock() - self._start
        return max(0.0, elapsed / progressed * (self.total - done_steps))
