"""Drift against the training reference: PSI per input column and of the predictions.

The server runs as a real process with a model and a metadata.json beside it; the reference
in it is built by the trainer's own functions from a seeded "training split".
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from modelyard_operator.api.deployment import DriftMonitoring
from modelyard_operator.podmetrics import MAX_BYTES, drift_of, scrape_drift
from modelyard_operator.status.drift import drifting
from modelyard_server.drift import PSI_EPSILON, DriftMonitor, psi
from modelyard_server.signature import ModelSignature, TensorSpec
from modelyard_trainer.contracts import DriftReference, FeatureReference, OutputReference
from modelyard_trainer.reference import bin_of, numeric_histogram, string_histogram

from .conftest import ServerProcess, free_port, http_get
from .onnx_models import mlp, save

FEATURES = 10
WINDOW = 2000
ROWS_PER_REQUEST = 200
# Over 0.25 is the usual "major shift" and the default alarm threshold; 0.1 "moderate".
ALARM = 0.25


def _reference(model: Path, train: np.ndarray) -> DriftReference:
    features = [
        FeatureReference(
            name=f"x{index}", tensor="input", column=index, **numeric_histogram(column).model_dump()
        )
        for index, column in enumerate(train.T)
    ]
    (output,) = ort.InferenceSession(str(model)).run(None, {"input": train})
    predicted = numeric_histogram(output[:, 0])
    return DriftReference(
        rows=len(train),
        features_total=FEATURES,
        features=features,
        prediction=OutputReference(output="output", **predicted.model_dump()),
    )


@pytest.fixture(scope="module")
def drift_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("drift")
    model = save(mlp([FEATURES, 20, 10], seed=1), directory / "model.onnx")
    train = np.random.default_rng(7).normal(size=(20_000, FEATURES)).astype(np.float32)
    reference = _reference(model, train)
    _write_metadata(model, reference)
    return model


def _write_metadata(model: Path, reference: DriftReference, sha256: str | None = None) -> None:
    digest = sha256 or hashlib.sha256(model.read_bytes()).hexdigest()
    document = {
        "formatVersion": 2,
        "files": {model.name: {"sha256": digest, "sizeBytes": model.stat().st_size}},
        "reference": reference.model_dump(by_alias=True),
    }
    (model.parent / "metadata.json").write_text(json.dumps(document))


def _send(server: ServerProcess, rows: np.ndarray) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for start in range(0, len(rows), ROWS_PER_REQUEST):
            chunk = rows[start : start + ROWS_PER_REQUEST]
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": list(chunk.shape),
                            "datatype": "FP32",
                            "data": chunk.ravel().tolist(),
                        }
                    ]
                }
            )
            conn.request("POST", "/v2/models/model/infer", body=body)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
    finally:
        conn.close()


def _scores(server: ServerProcess) -> tuple[float, dict[str, float], float | None]:
    _, body = http_get(server.url + "/metrics")
    rows, features, prediction = 0.0, {}, None
    for line in body.decode().splitlines():
        if line.startswith("modelyard_server_drift_window_rows{"):
            rows = float(line.rsplit(" ", 1)[1])
        elif line.startswith("modelyard_server_drift_feature_psi{"):
            name = line.split('feature="', 1)[1].split('"', 1)[0]
            features[name] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("modelyard_server_drift_prediction_psi{"):
            prediction = float(line.rsplit(" ", 1)[1])
    return rows, features, prediction


@pytest.fixture
def drift_server(start_server: Callable[..., ServerProcess], drift_model: Path) -> ServerProcess:
    return start_server(
        drift_model,
        max_batch_size=ROWS_PER_REQUEST,
        drift_window_rows=WINDOW,
        drift_min_rows=1000,
    )


def test_unshifted_inputs_score_low_and_a_shifted_feature_only_its_own(
    drift_server: ServerProcess,
) -> None:
    rng = np.random.default_rng(100)
    _send(drift_server, rng.normal(size=(600, FEATURES)).astype(np.float32))
    rows, features, prediction = _scores(drift_server)
    # Below driftMinRows: the window counts, the scores are not exported yet.
    assert rows == 600 and features == {} and prediction is None

    _send(drift_server, rng.normal(size=(WINDOW, FEATURES)).astype(np.float32))
    rows, features, prediction = _scores(drift_server)
    assert rows == WINDOW
    assert set(features) == {f"x{index}" for index in range(FEATURES)}
    assert max(features.values()) < 0.1, features
    assert prediction is not None and prediction < 0.1

    shifted = rng.normal(size=(WINDOW, FEATURES)).astype(np.float32)
    shifted[:, 3] += 1.0  # one standard deviation
    _send(drift_server, shifted)
    rows, features, prediction = _scores(drift_server)
    assert rows == WINDOW
    print(
        f"\nx3 shifted by one standard deviation: PSI {features['x3']:.3f}, others at most "
        f"{max(v for n, v in features.items() if n != 'x3'):.4f}, predictions {prediction}"
    )
    assert features["x3"] > ALARM, features
    assert max(value for name, value in features.items() if name != "x3") < 0.1, features

    # Back to normal: the window forgets the shifted rows.
    _send(drift_server, rng.normal(size=(WINDOW, FEATURES)).astype(np.float32))
    rows, features, _ = _scores(drift_server)
    assert features["x3"] < 0.1, features


def test_the_operator_reads_the_scores_from_the_pod_and_names_the_feature(
    drift_server: ServerProcess,
) -> None:
    """The operator's scrape, against the real server on loopback, into the condition."""
    rng = np.random.default_rng(5)
    shifted = rng.normal(size=(WINDOW, FEATURES)).astype(np.float32)
    shifted[:, 7] *= 3.0  # a wider spread, same mean
    _send(drift_server, shifted)
    scores = scrape_drift("m-1", "127.0.0.1", drift_server.port)
    assert scores.error == "" and scores.window_rows == WINDOW
    assert set(scores.features) == {f"x{index}" for index in range(FEATURES)}
    condition, event = drifting(DriftMonitoring(), [scores], [], datetime.now(UTC), 1)
    (drifting_now,) = condition
    assert (drifting_now.status, drifting_now.reason) == ("True", "InputDrift")
    assert drifting_now.message.startswith("PSI at or over 0.25: x7 (")
    assert event is not None and event.reason == "DriftDetected"


def test_the_scrape_is_bounded_in_size_and_refuses_names() -> None:
    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"# junk\n" * (MAX_BYTES // 7 + 10))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scores = scrape_drift("m-1", "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert scores.error == f"/metrics is over {MAX_BYTES} bytes"
    assert scrape_drift("m-1", "localhost", 1).error == "bad pod IP"
    assert scrape_drift("m-1", "127.0.0.1", free_port()).error.startswith("/metrics unreadable")
    # What the parser cannot read is named by its type only (the line may be anything).
    assert drift_of("m-1", 'modelyard_server_drift_window_rows{model="m"} secret\n').error == (
        "/metrics unparsable (ValueError)"
    )


def test_false_alarm_rate_over_fifty_windows(drift_server: ServerProcess) -> None:
    """Fifty windows of 2,000 unshifted rows each: how often does any feature pass 0.1 / 0.25?"""
    rng = np.random.default_rng(2026)
    windows = 50
    worst = []
    for _ in range(windows):
        _send(drift_server, rng.normal(size=(WINDOW, FEATURES)).astype(np.float32))
        rows, features, prediction = _scores(drift_server)
        assert rows == WINDOW
        assert prediction is not None
        worst.append(max([*features.values(), prediction]))
    moderate = sum(value > 0.1 for value in worst) / windows
    alarms = sum(value > ALARM for value in worst) / windows
    print(
        f"\nfalse alarms over {windows} windows of {WINDOW} rows, {FEATURES} features and the "
        f"predictions: PSI > {ALARM}: {alarms:.0%}, PSI > 0.1: {moderate:.0%}; worst PSI per "
        f"window: median {np.median(worst):.4f}, max {max(worst):.4f}"
    )
    assert alarms == 0


def test_no_reference_or_window_zero_means_no_drift_series(
    start_server: Callable[..., ServerProcess], drift_model: Path, models: dict[str, Path]
) -> None:
    without_metadata = start_server(models["mlp"])
    off = start_server(drift_model, drift_window_rows=0)
    for server in (without_metadata, off):
        _, body = http_get(server.url + "/metrics")
        assert b"modelyard_server_drift_" not in body
    assert "drift monitoring" not in off.log()


def test_a_reference_that_does_not_fit_the_model_turns_drift_off_and_serves(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    model = save(mlp([FEATURES, 20, 10], seed=1), tmp_path / "model.onnx")
    reference = DriftReference(
        features=[FeatureReference(name="far", column=FEATURES + 5, proportions=[1.0])]
    )
    _write_metadata(model, reference)
    server = start_server(model)
    _send(server, np.zeros((10, FEATURES), dtype=np.float32))
    assert b"modelyard_server_drift_" not in http_get(server.url + "/metrics")[1]
    assert "drift monitoring off: the reference does not fit the model" in server.log()
    assert "'far'" in server.log()


def test_metadata_of_another_model_is_ignored(
    start_server: Callable[..., ServerProcess], drift_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(drift_model.read_bytes())
    reference = DriftReference.model_validate(
        json.loads((drift_model.parent / "metadata.json").read_text())["reference"]
    )
    _write_metadata(model, reference, sha256="0" * 64)
    server = start_server(model)
    assert b"modelyard_server_drift_" not in http_get(server.url + "/metrics")[1]
    assert "does not list the served file's sha256" in server.log()


def test_psi_of_equal_shares_is_zero_and_empty_bins_are_floored() -> None:
    shares = np.array([0.25, 0.25, 0.5])
    assert psi(shares, shares) == 0.0
    # A live bin that training never saw: (a - eps) * ln(a / eps), finite.
    value = psi(np.array([0.5, 0.5, 0.0]), np.array([0.4, 0.4, 0.2]))
    expected = 2 * (-0.1 * np.log(0.4 / 0.5)) + (0.2 - PSI_EPSILON) * np.log(0.2 / PSI_EPSILON)
    assert value == pytest.approx(expected)


def test_categories_missing_values_and_the_rolling_window_in_process() -> None:
    """The monitor alone, on string and numeric columns with missing values."""
    rng = np.random.default_rng(3)
    colors = rng.choice(["red", "green", "blue", ""], size=5000, p=[0.5, 0.3, 0.1, 0.1])
    sizes = rng.normal(size=5000)
    sizes[rng.random(5000) < 0.2] = np.nan
    reference = DriftReference(
        features=[
            FeatureReference(
                name="size", tensor="input", column=0, **numeric_histogram(sizes).model_dump()
            ),
            FeatureReference(
                name="color",
                tensor="categorical",
                column=0,
                **string_histogram(colors).model_dump(),
            ),
        ]
    )
    signature = ModelSignature(
        inputs=(TensorSpec("input", "FP32", (-1, 1)), TensorSpec("categorical", "BYTES", (-1, 1))),
        outputs=(TensorSpec("prediction", "FP32", (-1,)),),
    )
    monitor = DriftMonitor(reference, signature, "m", window_rows=1000, min_rows=500)

    def feed(size: np.ndarray, color: np.ndarray) -> None:
        inputs = {
            "input": size.astype(np.float32).reshape(-1, 1),
            "categorical": color.astype(object).reshape(-1, 1),
        }
        monitor.observe(inputs, [np.zeros(len(size), dtype=np.float32)])

    for start in range(0, 1000, 50):
        feed(sizes[start : start + 50], colors[start : start + 50])
    rows, scores, prediction = monitor.scores()
    assert rows == 1000 and prediction is None
    assert scores["size"] < 0.1 and scores["color"] < 0.1, scores
    # Every size missing, every color unseen: both far off; the window keeps 1000 rows.
    feed(np.full(1000, np.nan), np.full(1000, "purple"))
    rows, scores, _ = monitor.scores()
    assert rows == 1000
    assert scores["size"] > 1.0 and scores["color"] > 1.0, scores


def _fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard_server.fetch", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fetch_copies_the_metadata_beside_the_model_when_there_is_one(
    drift_model: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "with" / "model.onnx"
    result = _fetch(
        "--source", str(drift_model), "--dest", str(dest),
        "--metadata-dest", str(dest.parent / "metadata.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (dest.parent / "metadata.json").read_bytes() == (
        drift_model.parent / "metadata.json"
    ).read_bytes()
    # Without one the model is fetched all the same.
    dest = tmp_path / "without" / "model.onnx"
    result = _fetch(
        "--source", str(models["mlp"]), "--dest", str(dest),
        "--metadata-dest", str(dest.parent / "metadata.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no metadata.json beside the model: drift monitoring off" in result.stdout
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.onnx"]


def test_columns_with_few_edges_nan_and_infinity_land_in_the_trainers_bins() -> None:
    """The monitor's block-wise binning agrees with the trainer's rule (bin_of) column by column."""
    rng = np.random.default_rng(11)
    train = np.stack(
        [rng.normal(size=3000), rng.integers(0, 3, size=3000), np.full(3000, 2.0)], axis=1
    )
    histograms = [numeric_histogram(column) for column in train.T]
    assert [len(h.edges) for h in histograms] == [9, 3, 1]
    reference = DriftReference(
        features=[
            FeatureReference(name=f"c{i}", column=i, **h.model_dump())
            for i, h in enumerate(histograms)
        ]
    )
    signature = ModelSignature(
        inputs=(TensorSpec("input", "FP32", (-1, 3)),), outputs=(TensorSpec("y", "FP32", (-1,)),)
    )
    monitor = DriftMonitor(reference, signature, "m", window_rows=2000, min_rows=100)
    live = rng.normal(1.0, 2.0, size=(1500, 3)).astype(np.float32)
    live[::7, 0] = np.nan
    live[::11, 1] = np.inf
    live[::13, 2] = -np.inf
    monitor.observe({"input": live}, [np.zeros(1500, dtype=np.float32)])
    rows, scores, _ = monitor.scores()
    assert rows == 1500
    for index, histogram in enumerate(histograms):
        values = live[:, index].astype(np.float64)
        missing = np.isnan(values)
        counts = np.bincount(
            bin_of(values[~missing], histogram.edges), minlength=len(histogram.edges) + 1
        )
        shares = np.append(counts, missing.sum()) / len(values)
        expected = np.append(
            np.asarray(histogram.proportions) * (1 - histogram.missing_rate),
            histogram.missing_rate,
        )
        assert scores[f"c{index}"] == pytest.approx(psi(expected, shares))


def test_a_trained_model_with_text_and_missing_values_end_to_end(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The trainer's own artifacts, served: the reference fits the model it describes."""
    from tests.unit.trainer.support import run_trainer

    def rows(seed: int, count: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame(
            {
                "size": rng.normal(size=count),
                "color": rng.choice(["red", "green", "blue"], size=count, p=[0.6, 0.3, 0.1]),
            }
        )
        frame.loc[rng.random(count) < 0.1, "size"] = np.nan
        return frame

    train = rows(0, 600)
    train["price"] = 10 + 3 * train["size"].fillna(0) + (train["color"] == "red")
    train.to_csv(tmp_path / "houses.csv", index=False)
    config = {
        "model": {"hiddenLayers": [8]},
        "data": {
            "source": {"uri": str(tmp_path / "houses.csv")},
            "target": "price",
            "preprocessing": {"missing": "mean"},
        },
        "training": {"epochs": 2, "loss": "mse"},
    }
    run = run_trainer(tmp_path, "houses", config)
    assert run.returncode == 0, run.describe()
    server = start_server(
        run.run_dir / run.metadata().model_file,
        max_batch_size=100,
        drift_window_rows=1000,
        drift_min_rows=500,
        allow_non_finite_inputs="true",
    )

    def send(frame: pd.DataFrame) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for start in range(0, len(frame), 100):
            chunk = frame.iloc[start : start + 100]
            # Numbers in the binary extension (JSON has no NaN for a missing one), text as JSON.
            size = chunk[["size"]].to_numpy(dtype=np.float32)
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": list(size.shape),
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": size.nbytes},
                        },
                        {
                            "name": "categorical",
                            "shape": [len(chunk), 1],
                            "datatype": "BYTES",
                            "data": list(chunk["color"]),
                        },
                    ]
                }
            ).encode()
            conn.request(
                "POST",
                "/v2/models/model/infer",
                body=header + size.tobytes(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        conn.close()

    send(rows(1, 1000))
    _, features, prediction = _scores(server)
    assert set(features) == {"size", "color"} and prediction is not None
    assert features["color"] < 0.1, features
    purple = rows(2, 1000)
    purple["color"] = "purple"
    send(purple)
    _, features, _ = _scores(server)
    assert features["color"] > 1.0 and features["size"] < 0.25, features
