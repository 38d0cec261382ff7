"""Reference statistics of the training split, for drift monitoring.

The server compares live inputs and predictions with these (population stability index), so
they describe exactly what the server sees: raw feature values before imputation (missing
values are NaN or "") and the served model's outputs. Numbers get REFERENCE_BINS quantile bins
of the training values (fewer when values repeat: equal quantiles merge); strings get their
MAX_REFERENCE_CATEGORIES most frequent categories plus one bin for all others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .contracts import (
    MAX_REFERENCE_CATEGORIES,
    MAX_REFERENCE_FEATURES,
    REFERENCE_BINS,
    DriftReference,
    FeatureReference,
    Histogram,
    OutputReference,
)
from .data import Part, PreprocessingSpec
from .export import INPUT_CATEGORICAL, INPUT_NUMERIC, output_names

# Quantiles of a seeded sample this large are within about 1% of the whole split's, and the
# predictions on it take a moment even for large models.
REFERENCE_ROWS = 50_000

# (rows of one split) -> the model's outputs on them, in ONNX output order.
Predict = Callable[[Part], list[np.ndarray]]


def bin_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin index of each number: bin i holds edges[i-1] <= x < edges[i] (the server's rule)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def _shares(bins: np.ndarray, count: int) -> list[float]:
    if bins.size == 0:
        return [0.0] * count
    return [float(share) for share in np.bincount(bins, minlength=count) / bins.size]


def numeric_histogram(values: np.ndarray, bins: int = REFERENCE_BINS) -> Histogram:
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    present = values[~missing]
    finite = present[np.isfinite(present)]
    edges: list[float] = []
    if finite.size:
        # Values that occur, not interpolations between them: with repeated values (counts,
        # flags) an interpolated edge would split nothing but make a bin of the rare values.
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="lower")
        edges = [float(edge) for edge in np.unique(quantiles)]
    return Histogram(
        edges=edges,
        proportions=_shares(bin_of(present, edges), len(edges) + 1),
        missing_rate=float(missing.mean()) if values.size else 0.0,
    )


def string_histogram(values: np.ndarray) -> Histogram:
    strings = [str(value) for value in values]
    present = [value for value in strings if value != ""]
    names, counts = np.unique(np.asarray(present, dtype=str), return_counts=True)
    # Most frequent first; ties by name, so that the same data gives the same reference.
    order = sorted(range(len(names)), key=lambda i: (-int(counts[i]), str(names[i])))
    categories = [str(names[i]) for i in order[:MAX_REFERENCE_CATEGORIES]]
    index = {name: position for position, name in enumerate(categories)}
    bins = np.asarray([index.get(value, len(categories)) for value in present], dtype=np.int64)
    return Histogram(
        categories=categories,
        proportions=_shares(bins, len(categories) + 1),
        missing_rate=(len(strings) - len(present)) / len(strings) if strings else 0.0,
    )


def _sample(part: Part, rows: int, seed: int) -> Part:
    if len(part) <= rows:
        return part
    chosen = np.sort(np.random.default_rng(seed).choice(len(part), size=rows, replace=False))
    return part.take(chosen)


def _prediction(
    spec: PreprocessingSpec, outputs: list[np.ndarray], target: np.ndarray
) -> OutputReference:
    names = output_names(spec)
    if spec.task == "classification":
        classes = len(spec.class_labels)
        predicted = np.asarray(outputs[1], dtype=np.int64).reshape(-1)
        # Halfway between class indices: bin i is class i.
        edges = [index + 0.5 for index in range(classes - 1)]
        return OutputReference(
            output=names[1],
            edges=edges,
            proportions=_shares(np.clip(predicted, 0, classes - 1), classes),
            target_proportions=_shares(np.asarray(target, dtype=np.int64), classes),
        )
    values = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
    histogram = numeric_histogram(values)
    return OutputReference(
        output=names[0],
        edges=histogram.edges,
        proportions=histogram.proportions,
        missing_rate=histogram.missing_rate,
        target_proportions=_shares(
            bin_of(np.asarray(target, dtype=np.float64), histogram.edges), len(histogram.edges) + 1
        ),
    )


def training_reference(
    spec: PreprocessingSpec, train: Part, predict: Predict, seed: int = 0
) -> DriftReference:
    """Reference statistics of the training split: per input column and of the predictions."""
    sample = _sample(train, REFERENCE_ROWS, seed)
    columns = [(INPUT_NUMERIC, index, name) for index, name in enumerate(spec.numeric_columns)]
    columns += [(INPUT_CATEGORICAL, index, name) for index, name in enumerate(spec.string_columns)]
    features = []
    for tensor, index, name in columns[:MAX_REFERENCE_FEATURES]:
        histogram = (
            numeric_histogram(sample.numeric[:, index])
            if tensor == INPUT_NUMERIC
            else string_histogram(sample.strings[:, index])
        )
        features.append(
            FeatureReference(name=name, tensor=tensor, column=index, **histogram.model_dump())
        )
    return DriftReference(
        rows=len(sample),
        features_total=len(columns),
        features=features,
        prediction=_prediction(spec, predict(sample), sample.target),
    )
