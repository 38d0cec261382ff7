"""Reference statistics of the training split in metadata.json (for drift monitoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from modelyard_trainer.config import TrainerConfig
from modelyard_trainer.contracts import MAX_REFERENCE_FEATURES, REFERENCE_BINS, Histogram
from modelyard_trainer.data import load_dataset
from modelyard_trainer.reference import bin_of, numeric_histogram, string_histogram

from .support import run_trainer


def test_quantile_bins_share_the_values_evenly_and_count_missing_apart() -> None:
    values = np.random.default_rng(1).normal(size=10_000)
    values[:500] = np.nan
    histogram = numeric_histogram(values)
    assert len(histogram.edges) == REFERENCE_BINS - 1
    assert histogram.missing_rate == pytest.approx(0.05)
    assert sum(histogram.proportions) == pytest.approx(1.0)
    assert all(share == pytest.approx(0.1, abs=0.002) for share in histogram.proportions)


def test_repeated_values_merge_equal_quantiles() -> None:
    histogram = numeric_histogram(np.array([0.0] * 80 + [1.0] * 10 + [2.0] * 10))
    assert histogram.edges == [0.0, 1.0]
    # Bin i holds edges[i-1] <= x < edges[i]: nothing is below 0.
    assert histogram.proportions == [0.0, 0.8, 0.2]
    assert bin_of(np.array([-1.0, 0.0, 0.5, 1.0, 9.0]), histogram.edges).tolist() == [0, 1, 1, 2, 2]


def test_categories_keep_the_most_frequent_and_one_bin_for_the_rest() -> None:
    values = np.array(
        ["a"] * 30 + ["b"] * 20 + [f"rare{i}" for i in range(12)] * 2 + [""] * 26, dtype=object
    )
    histogram = string_histogram(values)
    assert histogram.categories[:2] == ["a", "b"]
    assert len(histogram.categories) == 10
    assert histogram.missing_rate == pytest.approx(0.26)
    assert histogram.proportions[0] == pytest.approx(30 / 74)
    # Four of the twelve rare ones (two rows each) fall into the last bin.
    assert histogram.proportions[-1] == pytest.approx(8 / 74)


def test_a_histogram_with_the_wrong_number_of_shares_is_refused() -> None:
    with pytest.raises(ValueError, match="3 proportions for 2 bins"):
        Histogram(edges=[1.0], proportions=[0.2, 0.3, 0.5])


IRIS: dict[str, Any] = {
    "model": {"hiddenLayers": [16]},
    "data": {"source": {"builtin": "iris"}, "split": {"test": 0.2, "validation": 0.1}},
    "training": {"epochs": 30, "batchSize": 16, "optimizer": {"learningRate": 0.01}},
}


def test_iris_reference_matches_the_training_split_and_the_served_model(tmp_path: Path) -> None:
    run = run_trainer(tmp_path, "iris", IRIS)
    assert run.returncode == 0, run.describe()
    metadata = run.metadata()
    reference = metadata.reference
    assert reference is not None
    config = TrainerConfig.model_validate(metadata.config)
    train = load_dataset(config.data, config.task, str(tmp_path)).train
    assert reference.rows == len(train) == metadata.training.train_rows
    assert reference.features_total == 4
    assert [(f.name, f.tensor, f.column) for f in reference.features] == [
        (name, "input", index) for index, name in enumerate(metadata.inputs[0].features)
    ]
    for feature in reference.features:
        column = train.numeric[:, feature.column]
        shares = np.bincount(bin_of(column, feature.edges), minlength=len(feature.edges) + 1)
        assert feature.proportions == pytest.approx((shares / len(column)).tolist())
        assert feature.missing_rate == 0.0
    prediction = reference.prediction
    assert prediction is not None and prediction.output == "class_index"
    assert prediction.edges == [0.5, 1.5]
    # Class priors of the training labels, and the served model's classes on the same rows.
    priors = np.bincount(train.target, minlength=3) / len(train)
    assert prediction.target_proportions == pytest.approx(priors.tolist())
    session = ort.InferenceSession(str(run.run_dir / metadata.model_file))
    _, classes = session.run(None, {"input": train.numeric})
    predicted = np.bincount(classes, minlength=3) / len(train)
    assert prediction.proportions == pytest.approx(predicted.tolist())


def test_categorical_and_missing_columns_and_regression_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 400
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=rows),
            "color": rng.choice(["red", "green", "blue"], size=rows, p=[0.6, 0.3, 0.1]),
        }
    )
    frame["price"] = 10 + 3 * frame["size"] + frame["color"].map({"red": 2.0, "green": -1.0})
    frame["price"] = frame["price"].fillna(0.0)
    frame.loc[rng.choice(rows, 40, replace=False), "size"] = np.nan
    frame.to_csv(tmp_path / "houses.csv", index=False)
    config = {
        "model": {"hiddenLayers": [16]},
        "data": {
            "source": {"uri": str(tmp_path / "houses.csv")},
            "target": "price",
            "preprocessing": {"missing": "mean"},
            "split": {"test": 0.2, "validation": 0.1},
        },
        "training": {"epochs": 5, "loss": "mse"},
    }
    run = run_trainer(tmp_path, "houses", config)
    assert run.returncode == 0, run.describe()
    reference = run.metadata().reference
    assert reference is not None
    size, color = reference.features
    assert (size.name, size.tensor, size.column) == ("size", "input", 0)
    assert size.missing_rate == pytest.approx(0.1, abs=0.03)
    assert (color.name, color.tensor, color.column) == ("color", "categorical", 0)
    assert color.categories == ["red", "green", "blue"] and color.edges == []
    assert color.proportions[:3] == pytest.approx([0.6, 0.3, 0.1], abs=0.06)
    assert color.proportions[3] == 0.0  # no other category
    prediction = reference.prediction
    assert prediction is not None and prediction.output == "prediction"
    assert len(prediction.edges) == REFERENCE_BINS - 1
    assert sum(prediction.proportions) == pytest.approx(1.0)
    assert sum(prediction.target_proportions) == pytest.approx(1.0)


def test_reference_is_bounded_to_the_first_input_columns(tmp_path: Path) -> None:
    features = MAX_REFERENCE_FEATURES + 44
    config = {
        "model": {"hiddenLayers": [8]},
        "data": {
            "source": {
                "synthetic": {"samples": 300, "features": features, "informative": 4, "classes": 2}
            }
        },
        "training": {"epochs": 1},
    }
    run = run_trainer(tmp_path, "wide", config)
    assert run.returncode == 0, run.describe()
    reference = run.metadata().reference
    assert reference is not None
    assert reference.features_total == features
    assert [f.name for f in reference.features] == [
        f"x{index}" for index in range(MAX_REFERENCE_FEATURES)
    ]
    assert (run.run_dir / "metadata.json").stat().st_size < 400 * 1024
