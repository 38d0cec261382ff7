"""Drift of live traffic against the training reference: population stability index (PSI).

The trainer writes reference statistics of its training split into metadata.json
(`reference`, see modelyard_trainer.contracts.DriftReference): per input column the shares of
the training values in quantile bins (or among the most frequent categories) and the share
of missing values, and the same for the model's predictions. This module counts live rows
into the same bins over a rolling window and scores each column and the predictions with

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

where e_i is the training share and a_i the live share of bin i; missing values are one bin
more. A share of 0 would make the logarithm infinite, so both shares are floored at
PSI_EPSILON (1e-4) first. Rule of thumb: below 0.1 no real change, 0.1-0.25 a moderate
shift, above 0.25 a major one. With n live rows and k bins an unchanged distribution still
scores about (k - 1) / n on average (sampling noise), hence the minimum window size.

Cost: the batcher hands over each batch after ONNX Runtime ran it (on the event loop; its
cost is not in the model's time). Its arrays are kept (by reference, no copy) until FOLD_ROWS
rows are pending, then joined and counted into the bins: the numeric columns of an input as
one block (one comparison per edge), text columns by a dict lookup per value; and on each
scrape for what is still pending. Measured: about 0.15 us a row with 10 columns and 4 us a
row with 256 (64-row batches), under 2 us for a one-row request with 10 columns.
The window is WINDOW_SEGMENTS segments of window_rows / WINDOW_SEGMENTS rows each: when the
newest is full the oldest is dropped, so the window holds between 90% and 100% of
window_rows once it has filled, and its memory is a fixed array of counts.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError

from modelyard_server import contracts
from modelyard_server.config import ServerSettings
from modelyard_server.model import LoadedModel
from modelyard_server.signature import ModelSignature

# The trainer's contract module is pure pydantic: the reference's format is defined once.
from modelyard_trainer.contracts import METADATA_FILE, DriftReference, Histogram

log = logging.getLogger(__name__)

PSI_EPSILON = 1e-4
WINDOW_SEGMENTS = 10
# Few enough that pending requests' arrays are not held long, enough to count in bulk. In
# process the counting costs the same at 64 and 1,024; the server bench of the 784-column
# model measured less CPU per request at 64 (on a noisy shared machine: weak evidence).
FOLD_ROWS = 64
# metadata.json of a model with MAX_REFERENCE_FEATURES columns is a few hundred KiB.
MAX_METADATA_BYTES = 16 * 1024 * 1024


def drift_monitor(settings: ServerSettings, model: LoadedModel) -> DriftMonitor | None:
    """The monitor of this model, or None when drift monitoring is off or has no reference."""
    if settings.drift_window_rows == 0:
        return None
    reference = read_reference(Path(settings.model_path), model.sha256)
    if reference is None:
        return None
    try:
        monitor = DriftMonitor(
            reference,
            model.signature,
            settings.model_name,
            settings.drift_window_rows,
            settings.drift_min_rows,
        )
    except ValueError as exc:
        log.warning("drift monitoring off: the reference does not fit the model: %s", exc)
        return None
    log.info(
        "drift monitoring: %d input columns%s against the training reference, window %d rows",
        len(monitor.features),
        " and the predictions" if reference.prediction is not None else "",
        settings.drift_window_rows,
    )
    return monitor


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(expected, PSI_EPSILON)
    a = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True, slots=True)
class _Column:
    """One monitored column: where it is, how it is binned, and its training shares."""

    name: str
    source: str  # input or output tensor name
    column: int | None  # index along the last axis; None for a one-dimensional output
    edges: np.ndarray | None  # numbers
    categories: dict[str, int] | None  # strings
    expected: np.ndarray  # shares of every bin, the missing bin last
    offset: int  # of its first bin in the window's count vector

    @property
    def bins(self) -> int:
        return int(self.expected.size)

    def bin_indices(self, values: np.ndarray) -> np.ndarray:
        missing = self.bins - 1
        if self.categories is not None:
            lookup = self.categories
            other = missing - 1
            return np.fromiter(
                (missing if v == "" else lookup.get(v, other) for v in values.tolist()),
                dtype=np.int64,
                count=values.size,
            )
        assert self.edges is not None
        numbers = values.astype(np.float64, copy=False)
        found = np.searchsorted(self.edges, numbers, side="right")
        return np.where(np.isnan(numbers), missing, found)


def _joined(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return batches[0]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


@dataclass(frozen=True, slots=True)
class _NumericGroup:
    """The numeric columns of one input, binned all at once.

    A column's bin is the number of its edges at or below the value: one comparison of the
    whole [columns, rows] block per edge (at most REFERENCE_BINS - 1 of them) instead of a
    numpy call per column, about six times cheaper for a model with hundreds of columns.
    Columns with fewer edges are padded with +inf (never at or below a finite value).
    """

    source: str
    columns: np.ndarray  # indices along the input's last axis
    edges: np.ndarray  # [edges, columns, 1], padded with +inf
    last: np.ndarray  # [columns, 1]: each column's last value bin (clips +inf values)
    missing: np.ndarray  # [columns, 1]: each column's missing bin, offset included
    offsets: np.ndarray  # [columns, 1]

    def bin_indices(self, values: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(values[:, self.columns].T)
        found = np.zeros(block.shape, dtype=np.uint8)
        for edge in self.edges.astype(block.dtype, copy=False):
            np.add(found, block >= edge, out=found, casting="unsafe")
        bins = np.minimum(found, self.last) + self.offsets
        return np.where(np.isnan(block), self.missing, bins).ravel()


def _numeric_group(source: str, columns: list[_Column]) -> _NumericGroup:
    numeric = [c for c in columns if c.edges is not None]
    width = max(len(c.edges) for c in numeric if c.edges is not None)
    edges = np.full((width, len(numeric), 1), np.inf)
    for index, c in enumerate(numeric):
        assert c.edges is not None
        edges[: len(c.edges), index, 0] = c.edges

    def column(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)[:, None]

    return _NumericGroup(
        source,
        np.asarray([c.column for c in numeric], dtype=np.int64),
        edges,
        column([c.bins - 2 for c in numeric]),
        column([c.offset + c.bins - 1 for c in numeric]),
        column([c.offset for c in numeric]),
    )


def _expected(histogram: Histogram) -> np.ndarray:
    present = 1.0 - histogram.missing_rate
    return np.asarray([p * present for p in histogram.proportions] + [histogram.missing_rate])


def read_reference(model_path: Path, sha256: str) -> DriftReference | None:
    """The `reference` of metadata.json beside the model; None when there is none.

    It counts only when the metadata's `files` name the served file's sha256: a metadata.json
    that describes another model (a stale one in a user's directory) is ignored. A metadata
    file that cannot be used turns drift monitoring off with a warning (that names the file
    and the field, never its content): it never stops the model from serving.
    """
    path = model_path.parent / METADATA_FILE
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_METADATA_BYTES:
            log.warning("drift monitoring off: %s is over %d bytes", path, MAX_METADATA_BYTES)
            return None
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("drift monitoring off: cannot read %s (%s)", path, type(exc).__name__)
        return None
    if not isinstance(document, dict):
        log.warning("drift monitoring off: %s is not a JSON object", path)
        return None
    files = document.get("files")
    digests = (
        {d.get("sha256") for d in files.values() if isinstance(d, dict)}
        if isinstance(files, dict)
        else set()
    )
    if sha256 not in digests:
        log.warning("drift monitoring off: %s does not list the served file's sha256", path)
        return None
    raw = document.get("reference")
    if raw is None:
        log.info("drift monitoring off: %s has no reference statistics", path)
        return None
    try:
        return DriftReference.model_validate(raw)
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})[:5]
        log.warning("drift monitoring off: %s reference is invalid at %s", path, fields)
        return None


def _columns(reference: DriftReference, signature: ModelSignature) -> list[_Column]:
    """The monitored columns (the predictions' last); ValueError when the model differs."""
    columns: list[_Column] = []
    offset = 0
    for feature in reference.features:
        spec = signature.input(feature.tensor)
        if spec is None:
            raise ValueError(f"feature {feature.name!r}: the model has no input {feature.tensor!r}")
        # A fixed width: the server then refuses any request of another, and every batch's
        # column is where the reference says.
        shape = list(spec.shape or ())
        if len(shape) != 2 or not 0 <= feature.column < shape[1]:
            raise ValueError(
                f"feature {feature.name!r}: column {feature.column} of input {feature.tensor!r} "
                f"with shape {shape}"
            )
        column = _column(feature.name, feature.tensor, feature.column, feature, offset)
        columns.append(column)
        offset += column.bins
    prediction = reference.prediction
    if prediction is not None:
        if prediction.output not in signature.output_names:
            raise ValueError(f"the model has no output {prediction.output!r}")
        columns.append(_column("", prediction.output, None, prediction, offset))
    return columns


def _column(
    name: str, source: str, index: int | None, histogram: Histogram, offset: int
) -> _Column:
    categories = (
        {value: position for position, value in enumerate(histogram.categories)}
        if histogram.categories
        else None
    )
    edges = None if categories is not None else np.asarray(histogram.edges, dtype=np.float64)
    return _Column(name, source, index, edges, categories, _expected(histogram), offset)


class DriftMonitor(Collector):
    """Rolling window of live inputs and predictions, scored against the training reference.

    The batcher calls observe() with every batch that ONNX Runtime ran; collect() runs on each
    scrape. Both run on the event loop; the lock makes the monitor safe from any thread.
    """

    def __init__(
        self,
        reference: DriftReference,
        signature: ModelSignature,
        model_name: str,
        window_rows: int,
        min_rows: int,
    ) -> None:
        columns = _columns(reference, signature)
        self._features = [c for c in columns if c.column is not None]
        self._prediction = next((c for c in columns if c.column is None), None)
        self._model = model_name
        self._min_rows = min_rows
        self._segment_rows = max(1, math.ceil(window_rows / WINDOW_SEGMENTS))
        total = sum(c.bins for c in columns)
        self._counts = np.zeros((WINDOW_SEGMENTS, total), dtype=np.int64)
        self._rows = np.zeros(WINDOW_SEGMENTS, dtype=np.int64)
        self._current = 0
        self._pending: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._sources = {c.source for c in columns}
        self._numeric = [
            _numeric_group(source, [c for c in self._features if c.source == source])
            for source in sorted({c.source for c in self._features if c.edges is not None})
        ]
        self._categorical = [c for c in self._features if c.categories is not None]

        self._output_names = signature.output_names

    @property
    def features(self) -> list[str]:
        return [c.name for c in self._features]

    def observe(self, feed: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        """Remember a batch that ran; counted into the window once FOLD_ROWS are pending."""
        named = dict(zip(self._output_names, outputs, strict=False))
        rows = next(iter(feed.values())).shape[0] if feed else 0
        if rows == 0:
            return
        inputs = {name: feed[name] for name in self._sources if name in feed}
        # An output without a row per input row cannot be counted as predictions.
        kept_outputs = {
            name: named[name]
            for name in self._sources
            if name in named and named[name].ndim >= 1 and named[name].shape[0] == rows
        }
        if self._prediction is not None and self._prediction.source not in kept_outputs:
            return  # every pending batch carries the same arrays, so they join row for row
        with self._lock:
            self._pending.append((inputs, kept_outputs, rows))
            self._pending_rows += rows
            if self._pending_rows >= FOLD_ROWS:
                self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_rows = self._pending, [], 0
        # One array per column source for all pending batches: the binning below then costs
        # one numpy call per column for them all, not one per batch.
        inputs = _joined([batch[0] for batch in pending])
        outputs = _joined([batch[1] for batch in pending])
        rows = sum(batch[2] for batch in pending)
        start = 0
        while start < rows:
            if self._rows[self._current] >= self._segment_rows:
                self._current = (self._current + 1) % WINDOW_SEGMENTS
                self._counts[self._current] = 0
                self._rows[self._current] = 0
            room = int(self._segment_rows - self._rows[self._current])
            end = min(rows, start + room)
            self._count(inputs, outputs, start, end)
            self._rows[self._current] += end - start
            start = end

    def _count(
        self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], start: int, end: int
    ) -> None:
        indices = [group.bin_indices(inputs[group.source][start:end]) for group in self._numeric]
        for c in self._categorical:
            values = inputs[c.source][start:end, c.column]
            indices.append(c.offset + c.bin_indices(values))
        p = self._prediction
        if p is not None and p.source in outputs:
            values = outputs[p.source][start:end].reshape(end - start, -1)[:, 0]
            indices.append(p.offset + p.bin_indices(values))
        if indices:
            flat = np.concatenate(indices)
            self._counts[self._current] += np.bincount(flat, minlength=self._counts.shape[1])

    def scores(self) -> tuple[int, dict[str, float], float | None]:
        """(rows in the window, PSI per feature, PSI of the predictions); scores are empty
        (and None) while the window holds fewer than min_rows rows."""
        with self._lock:
            self._fold()
            rows = int(self._rows.sum())
            counts = self._counts.sum(axis=0)
        if rows == 0 or rows < self._min_rows:
            return rows, {}, None

        def score(c: _Column) -> float:
            live = counts[c.offset : c.offset + c.bins]
            return psi(c.expected, live / max(int(live.sum()), 1))

        features = {c.name: score(c) for c in self._features}
        prediction = score(self._prediction) if self._prediction is not None else None
        return rows, features, prediction

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows, features, prediction = self.scores()
        window = GaugeMetricFamily(
            contracts.METRIC_DRIFT_WINDOW_ROWS,
            "Rows in the drift window (live inputs compared with the training reference).",
            labels=["model"],
        )
        window.add_metric([self._model], rows)
        yield window
        feature_psi = GaugeMetricFamily(
            contracts.METRIC_DRIFT_FEATURE_PSI,
            "Population stability index of an input column over the drift window against the "
            "training split (absent below the minimum window rows).",
            labels=["model", "feature"],
        )
        for name, value in features.items():
            feature_psi.add_metric([self._model, name], value)
        yield feature_psi
        prediction_psi = GaugeMetricFamily(
            contracts.METRIC_DRIFT_PREDICTION_PSI,
            "Population stability index of the predictions (classes, or prediction bins) over "
            "the drift window against the training split.",
            labels=["model"],
        )
        if prediction is not None:
            prediction_psi.add_metric([self._model], prediction)
        yield prediction_psi
