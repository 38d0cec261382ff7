"""The trainer's parts in-process: data, preprocessing, metrics, reports, checkpoints, CLI."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from modelyard_trainer.__main__ import run_name_from, write_termination
from modelyard_trainer.checkpoint import (
    checkpoint_files,
    read_latest,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from modelyard_trainer.config import DataConfig, ModelConfig, TrainerConfig
from modelyard_trainer.contracts import (
    ProgressRecord,
    RunIdentity,
    TrainingFailure,
    TrainingResult,
    parse_termination_message,
)
from modelyard_trainer.data import load_dataset
from modelyard_trainer.distributed import cpu_budget, is_peer_error, setup
from modelyard_trainer.errors import InvalidConfig
from modelyard_trainer.evaluate import classification_metrics, regression_metrics
from modelyard_trainer.launch import exit_code_of
from modelyard_trainer.models import build_network
from modelyard_trainer.report import (
    EtaEstimator,
    LocalSink,
    ProgressReporter,
    format_progress,
)
from modelyard_trainer.train import Trainer, _lr_factor, encode_part
from modelyard_trainer.transforms import FittedPreprocessing


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def data(document: Mapping[str, object]) -> DataConfig:
    return DataConfig.model_validate(document)


def test_builtin_split_is_seeded_stratified_and_deduplicated() -> None:
    config = data({"source": {"builtin": "iris"}, "split": {"validation": 0.2, "test": 0.2}})
    first = load_dataset(config, "classification", "/nonexistent")
    again = load_dataset(config, "classification", "/nonexistent")
    assert first.rows_loaded == 150 and first.rows_clean == 149  # iris has one duplicate row
    assert len(first.train) + len(first.validation) + len(first.test) == 149
    assert np.array_equal(first.test.numeric, again.test.numeric)
    assert np.bincount(first.test.target).tolist() == [10, 10, 10]
    assert first.spec.class_labels == ["setosa", "versicolor", "virginica"]
    train = first.train.numeric.astype(np.float64)
    assert first.spec.mean == pytest.approx(train.mean(axis=0).tolist())
    assert first.spec.scale == pytest.approx(train.std(axis=0).tolist())


def _frame_file(tmp_path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 1.0],
            "shade": ["x", "y", "x", None, "y", "x", "z", "y", "x", "y", "x"],
            "label": ["no", "yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no"],
        }
    )
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_csv_cleaning_and_categories(tmp_path: Path) -> None:
    path = _frame_file(tmp_path)
    base = {
        "source": {"uri": f"file://{path}"},
        "target": "label",
        "split": {"validation": 0.0, "test": 0.3},
    }
    dropped = load_dataset(data(base), "classification", "/nonexistent")
    # The last row duplicates the first; two rows have a missing value.
    assert dropped.rows_loaded == 11 and dropped.rows_clean == 8
    assert dropped.spec.class_labels == ["no", "yes"]
    assert dropped.spec.string_columns == ["shade"]
    assert dropped.spec.string_missing_code == [-1]
    imputed = load_dataset(
        data({**base, "preprocessing": {"missing": "most_frequent"}}), "classification", "/x"
    )
    assert imputed.rows_clean == 10
    categories = imputed.spec.string_categories[0]
    assert imputed.spec.string_missing_code[0] == categories.index("x")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "nope"}, "data.target: column 'nope' is not in the file"),
        ({"features": ["a", "zz"]}, "data.features: columns not in the file: zz"),
        ({"preprocessing": {"oneHot": ["zz"]}}, "data.preprocessing.oneHot: not feature columns"),
        ({"source": {"uri": "/no/such.csv"}}, "data.source.uri: no such file"),
        ({"source": {"uri": "/no/such.data"}}, "data.source.format: cannot tell the format"),
    ],
)
def test_file_problems_name_the_field(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    path = _frame_file(tmp_path)
    config = data({"source": {"uri": str(path)}, "target": "label", **changes})
    with pytest.raises(InvalidConfig, match=message.replace("(", r"\(")):
        load_dataset(config, "classification", "/nonexistent")


def test_fitted_preprocessing_imputes_scales_and_one_hot_encodes(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "x": [1.0, 3.0, np.nan, 5.0, 7.0, 9.0, 11.0, 13.0],
            "zone": [1, 2, 1, 2, 3, 1, 2, 3],
            "c": ["p", "q", "p", "q", "p", None, "q", "p"],
            "y": [0, 1, 0, 1, 0, 1, 0, 1],
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    config = data(
        {
            "source": {"uri": str(path)},
            "target": "y",
            "preprocessing": {"missing": "mean", "oneHot": ["zone"]},
            "split": {"validation": 0.0, "test": 0.25, "stratify": False},
        }
    )
    spec = load_dataset(config, "classification", "/x").spec
    module = FittedPreprocessing(spec)
    numeric = torch.tensor([[np.nan, 2.0], [spec.mean[0], 9.0]], dtype=torch.float32)
    codes = torch.from_numpy(spec.string_codes(np.array([[""], ["unseen"]], dtype=object)))
    encoded = module(numeric, codes)
    fill = (spec.fill[0] - spec.mean[0]) / spec.scale[0]
    assert encoded.shape == (2, spec.encoded_width) == (2, 1 + len(spec.numeric_categories[0]) + 2)
    assert encoded[0, 0].item() == pytest.approx(fill, abs=1e-6)
    assert encoded[1, 0].item() == pytest.approx(0.0, abs=1e-6)
    zone = spec.numeric_categories[0]
    assert encoded[0, 1 : 1 + len(zone)].tolist() == [float(v == 2.0) for v in zone]
    assert encoded[1, 1 : 1 + len(zone)].sum().item() == 0.0  # 9 was never seen
    mode = spec.string_missing_code[0]
    assert encoded[0, -2:].tolist() == [float(i == mode) for i in range(2)]
    assert encoded[1, -2:].tolist() == [0.0, 0.0]


def test_classification_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    labels[:100] = probabilities[:100].argmax(axis=1)
    ours = classification_metrics(probabilities, labels, 4)
    predicted = probabilities.argmax(axis=1)
    assert ours.test_accuracy == pytest.approx(skm.accuracy_score(labels, predicted))
    assert ours.f1_macro == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert ours.test_loss == pytest.approx(skm.log_loss(labels, probabilities, labels=range(4)))
    assert (
        ours.confusion_matrix == skm.confusion_matrix(labels, predicted, labels=range(4)).tolist()
    )


def test_regression_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    targets = rng.normal(50, 10, size=300)
    predictions = targets + rng.normal(0, 2, size=300)
    ours = regression_metrics(predictions, targets, target_scale=10.0)
    assert ours.rmse == pytest.approx(skm.mean_squared_error(targets, predictions) ** 0.5)
    assert ours.mae == pytest.approx(skm.mean_absolute_error(targets, predictions))
    assert ours.r2 == pytest.approx(skm.r2_score(targets, predictions))
    assert ours.test_loss == pytest.approx(skm.mean_squared_error(targets, predictions) / 100)


def test_reporter_throttles_but_forced_records_always_go(tmp_path: Path) -> None:
    clock = Clock()
    stream = io.StringIO()
    reporter = ProgressReporter([LocalSink(tmp_path / "p.jsonl", stream)], 5.0, clock)
    record = ProgressRecord(stage="Training", epoch=1, epochs=4, step=3, steps_per_epoch=10)
    assert reporter.report(record)
    clock.now += 4.9
    assert not reporter.due() and not reporter.report(record)
    assert reporter.report(record.model_copy(update={"stage": "Evaluating"}), force=True)
    clock.now += 5.0
    assert reporter.report(record.model_copy(update={"loss": 0.5, "eta_seconds": 3725}))
    reporter.close()
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["Training", "Evaluating", "Training"]
    assert all(ProgressRecord.model_validate_json(line).updated_at for line in lines)
    assert "epoch 1/4 step 3/10" in stream.getvalue()
    assert "loss 0.5000" in stream.getvalue() and "ETA 1:02:05" in stream.getvalue()


def test_format_progress_reads_well() -> None:
    line = format_progress(
        ProgressRecord(
            stage="Training",
            epoch=2,
            epochs=10,
            step=5,
            steps_per_epoch=20,
            percent=22.5,
            validation={"val_accuracy": 0.9},
            samples_per_second=1234.4,
        )
    )
    assert line == "[Training] epoch 2/10 step 5/20 22.5% val_accuracy 0.9000 1234 samples/s"


def test_eta_is_mean_time_per_step_times_steps_left() -> None:
    clock = Clock()
    eta = EtaEstimator(total_steps=100, done_steps=20, clock=clock)
    assert eta.eta(20) is None
    clock.now += 8.0
    assert eta.eta(60) == pytest.approx(8.0 / 40 * 40)
    clock.now += 8.0
    assert eta.eta(100) == 0.0


def test_eta_on_a_steady_run_is_exact_at_half_way_despite_a_slow_first_epoch() -> None:
    clock = Clock()
    steps_per_epoch, epochs = 50, 10
    eta = EtaEstimator(epochs * steps_per_epoch, 0, clock)
    estimates = {}
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            # A steady 10 ms per step, except one-time costs in the first epoch.
            clock.now += 0.5 if (epoch, step) == (0, 0) else 0.01
            done = epoch * steps_per_epoch + step + 1
            estimates[done] = (eta.eta(done), clock.now)
        eta.epoch_done((epoch + 1) * steps_per_epoch)
    half = epochs * steps_per_epoch // 2 + 1
    estimate, at = estimates[half]
    assert estimate == pytest.approx(clock.now - at)


def test_early_stopping_stops_and_restores_the_best_weights() -> None:
    config = TrainerConfig.model_validate(
        {
            "model": {"hiddenLayers": [8]},
            "training": {
                "epochs": 30,
                "batchSize": 32,
                # Nothing improves by a whole unit of loss: the first epoch stays the best.
                "earlyStopping": {"enabled": True, "patience": 2, "minDelta": 1.0},
            },
        }
    )
    dataset = load_dataset(config.data, config.task, "/nonexistent")
    trainer = Trainer(config, setup({}), dataset, ProgressReporter([], 60), RunIdentity(), None)
    outcome = trainer.fit(None)
    assert (outcome.epochs_run, outcome.best_epoch, outcome.stopped_early) == (3, 1, True)
    assert outcome.history[0]["validation"]["val_loss"] == pytest.approx(
        trainer._validate(
            outcome.network, encode_part(dataset.spec, dataset.validation, torch.device("cpu"))
        )["val_loss"]
    )


def test_learning_rate_schedules() -> None:
    def factors(schedule: dict[str, object], epochs: int) -> list[float]:
        config = TrainerConfig.model_validate(
            {"training": {"epochs": epochs, "schedule": schedule}}
        )
        factor = _lr_factor(config)
        return [factor(epoch) for epoch in range(epochs)]

    assert factors({"name": "step", "stepSize": 2, "gamma": 0.5}, 5) == [1, 1, 0.5, 0.5, 0.25]
    warm = factors({"name": "cosine", "warmupEpochs": 2}, 6)
    assert warm[:2] == pytest.approx([0.1, 0.55])
    assert warm[2] == pytest.approx(1.0) and warm[4] == pytest.approx(0.5)
    assert factors({"name": "constant"}, 3) == [1, 1, 1]


def test_checkpoints_are_pruned_and_a_damaged_one_is_skipped(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch, {"epoch": epoch, "weights": torch.ones(3) * epoch}, keep=2)
    assert [epoch for epoch, _ in checkpoint_files(tmp_path)] == [2, 3]
    (tmp_path / "epoch-000004.pt").write_bytes(b"half-written garbage")
    latest = read_latest(tmp_path)
    assert latest is not None and latest[0].name == "epoch-000003.pt"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    save_checkpoint(tmp_path, 1, {"epoch": 1, "rng": state}, keep=1)
    latest = read_latest(tmp_path)
    assert latest is not None
    restore_rng_state(torch.load(io.BytesIO(latest[1]), weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


def test_networks() -> None:
    cnn = build_network(ModelConfig(architecture="cnn", channels=[4, 8]), 64, 10)
    assert cnn(torch.zeros(5, 64)).shape == (5, 10)
    with pytest.raises(InvalidConfig, match=r"model\.architecture: 'cnn' needs a square"):
        build_network(ModelConfig(architecture="cnn"), 30, 2)
    mlp = build_network(ModelConfig(hidden_layers=[8], dropout=0.2, activation="gelu"), 4, 3)
    assert mlp(torch.zeros(2, 4)).shape == (2, 3)
    custom = ModelConfig(
        architecture="custom",
        entrypoint="tests.unit.trainer.custom_models:plain_mlp",
        entrypoint_args={"hidden": "5"},
    )
    assert build_network(custom, 4, 3)(torch.zeros(2, 4)).shape == (2, 3)
    missing = ModelConfig(architecture="custom", entrypoint="no_such_module:make")
    with pytest.raises(InvalidConfig, match=r"model\.entrypoint: cannot load"):
        build_network(missing, 4, 3)
    wrong_args = custom.model_copy(update={"entrypoint_args": {"depth": "2"}})
    with pytest.raises(InvalidConfig, match=r"model\.entrypointArgs"):
        build_network(wrong_args, 4, 3)
    not_a_module = ModelConfig(architecture="custom", entrypoint="json:dumps")
    with pytest.raises(InvalidConfig):
        build_network(not_a_module, 4, 3)


def test_distributed_helpers() -> None:
    context = setup({})
    assert (context.rank, context.world_size, context.backend) == (0, 1, "none")
    assert cpu_budget() >= 1
    assert is_peer_error(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"))
    assert not is_peer_error(ValueError("timed out"))
    assert not is_peer_error(RuntimeError("shape mismatch"))
    with pytest.raises(InvalidConfig, match="RANK=3 WORLD_SIZE=2"):
        setup({"RANK": "3", "WORLD_SIZE": "2"})


def test_launcher_exit_code_prefers_the_permanent_cause() -> None:
    assert exit_code_of({0: 1, 1: 65}) == 65
    assert exit_code_of({0: 64, 1: 64}) == 64
    assert exit_code_of({0: 1, 1: -9}) == 1
    assert exit_code_of({0: -9}) == 1


def test_termination_message_keeps_the_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    env = {"MODELYARD_TERMINATION_LOG": str(log)}
    write_termination(TrainingFailure(exit_code=65, reason="LossDiverged", rank=1), env)
    write_termination(TrainingFailure(exit_code=1, reason="PeerLost", rank=0), env)
    parsed = parse_termination_message(log.read_text())
    assert isinstance(parsed, TrainingFailure) and parsed.reason == "LossDiverged"
    log.write_text("")
    write_termination(TrainingResult(artifact_uri="pvc://m/x", sha256="a" * 64), env)
    assert isinstance(parse_termination_message(log.read_text()), TrainingResult)


def test_run_names_are_dns_labels() -> None:
    assert run_name_from("/x/My Iris_v2.yaml") == "my-iris-v2"
    assert run_name_from("___.yaml") == "local"
