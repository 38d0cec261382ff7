"""The trainer as users and the operator run it: real processes, real torchrun, real gloo DDP.

Expensive runs are module fixtures shared by the tests that inspect them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard_storage.digest import sha256_of
from modelyard_trainer.contracts import (
    CHECKPOINT_DIR,
    METADATA_FILE,
    MODEL_FILE,
    MODEL_INT8_FILE,
    TERMINATION_MESSAGE_LIMIT,
    ProgressRecord,
    TrainingFailure,
    TrainingResult,
)

from .support import (
    Run,
    free_port,
    result_json,
    run_trainer,
    trainer_command,
    trainer_env,
    write_config,
)

IRIS: dict[str, Any] = {
    "model": {"hiddenLayers": [32]},
    # 101 training rows: the last global batch is partial, and uneven over two ranks.
    "data": {"source": {"builtin": "iris"}, "split": {"test": 0.2, "validation": 0.12}},
    "training": {
        "epochs": 40,
        "batchSize": 16,
        "optimizer": {"name": "adam", "learningRate": 0.01},
        "progressIntervalSeconds": 0.2,
    },
    "checkpoint": {"everyEpochs": 10, "keep": 2},
}

DIGITS: dict[str, Any] = {
    "model": {"hiddenLayers": [256, 128]},
    "data": {"source": {"builtin": "digits"}},
    "training": {
        "epochs": 15,
        "batchSize": 64,
        "optimizer": {"name": "adam", "learningRate": 0.001},
    },
    "checkpoint": {"everyEpochs": 5},
    "export": {"quantizeInt8": True, "maxInt8AccuracyDrop": 0.02},
}

# Big enough that an epoch takes a noticeable fraction of a second, so that a test can kill
# the run between checkpoints and the ETA has a steady run to be judged on. No dropout: the
# resumed run has another world size, and dropout masks depend on each rank's rows.
STEADY: dict[str, Any] = {
    "model": {"hiddenLayers": [64, 64]},
    "data": {
        "source": {"synthetic": {"samples": 15000, "features": 20, "informative": 8, "classes": 3}}
    },
    # 40 epochs: about a second on an idle machine, so that records every 0.1 s show a pace
    # (8 epochs ended in 0.2 s with the half-way record as the first after epoch 0).
    "training": {"epochs": 40, "batchSize": 64, "progressIntervalSeconds": 0.1},
    # Only at the end: fsync latency on a shared disk would make the pace unsteady.
    "checkpoint": {"everyEpochs": 100},
}
# The same run with a checkpoint every epoch (checkpoints do not change the result).
CHECKPOINTED: dict[str, Any] = {**STEADY, "checkpoint": {"everyEpochs": 1, "keep": 2}}


@pytest.fixture(scope="module")
def iris_ddp(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_trainer(tmp_path_factory.mktemp("ddp"), "iris", IRIS, nproc=2, launcher="torchrun")
    assert run.returncode == 0, run.describe()
    return run


@pytest.fixture(scope="module")
def iris_single(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_trainer(tmp_path_factory.mktemp("single"), "iris", IRIS)
    assert run.returncode == 0, run.describe()
    return run


@pytest.mark.timeout(900)
def test_two_process_ddp_trains_iris(iris_ddp: Run) -> None:
    metadata = iris_ddp.metadata()
    assert metadata.metrics.test_accuracy is not None
    assert metadata.metrics.test_accuracy >= 0.90
    assert metadata.training.world_size == 2
    assert metadata.training.backend == "gloo"
    assert metadata.class_labels == ["setosa", "versicolor", "virginica"]
    assert metadata.metrics.confusion_matrix is not None
    assert sum(map(sum, metadata.metrics.confusion_matrix)) == metadata.metrics.rows


@pytest.mark.timeout(900)
def test_artifacts_are_complete_and_final(iris_ddp: Run) -> None:
    run_dir = iris_ddp.run_dir
    metadata = iris_ddp.metadata()
    assert metadata.model_file == MODEL_FILE
    for name, digest in metadata.files.items():
        assert sha256_of(run_dir / name) == digest.sha256
        assert (run_dir / name).stat().st_size == digest.size_bytes
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("input", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 3]),
        ("class_index", "INT64", [-1]),
    ]
    assert metadata.export.parity.passed
    assert metadata.export.parity.max_abs_diff <= 1e-4
    assert metadata.config["training"]["batchSize"] == 16
    assert metadata.run.relpath == "local/iris/local/g1"
    leftovers = [
        p.name for p in run_dir.rglob("*") if p.name.startswith(".") or "candidate" in p.name
    ]
    assert leftovers == []
    checkpoints = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir())
    assert checkpoints == ["epoch-000030.pt", "epoch-000040.pt"]
    stages = [record.stage for record in iris_ddp.progress()]
    assert stages[0] == "Preprocessing" and stages[-1] == "Done"
    assert {"Training", "Evaluating", "Exporting"} <= set(stages)


@pytest.mark.timeout(900)
def test_termination_message_parses_and_fits(iris_ddp: Run) -> None:
    text = iris_ddp.termination_text
    assert 0 < len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    result = iris_ddp.termination
    assert isinstance(result, TrainingResult)
    assert result.artifact_uri == iris_ddp.run_dir.resolve().as_uri()
    assert result.sha256 == sha256_of(iris_ddp.run_dir / result.model_file)
    assert result.metrics["test_accuracy"] >= 0.90
    assert result_json(iris_ddp) == json.loads(text)


@pytest.mark.timeout(900)
def test_two_processes_match_one_with_the_same_global_batch(
    iris_ddp: Run, iris_single: Run
) -> None:
    two, one = iris_ddp.metadata(), iris_single.metadata()
    assert one.training.world_size == 1
    assert two.metrics.test_accuracy == one.metrics.test_accuracy
    assert two.metrics.test_loss == pytest.approx(one.metrics.test_loss, abs=1e-5)
    for name, value in one.training.final_validation.items():
        assert two.training.final_validation[name] == pytest.approx(value, abs=1e-5)


@pytest.mark.timeout(900)
def test_rerunning_a_final_run_reports_it_again(iris_single: Run, tmp_path: Path) -> None:
    before = (iris_single.run_dir / METADATA_FILE).stat().st_mtime_ns
    again = run_trainer(tmp_path, "iris", IRIS, output=iris_single.output)
    assert again.returncode == 0, again.describe()
    assert (iris_single.run_dir / METADATA_FILE).stat().st_mtime_ns == before
    assert result_json(again) == result_json(iris_single)


@pytest.mark.timeout(900)
def test_parity_check_catches_a_corrupted_export(iris_single: Run, tmp_path: Path) -> None:
    """Rebuild the model from its checkpoint: the real export passes, a damaged one fails."""
    import onnx
    from onnx import numpy_helper

    from modelyard_trainer.checkpoint import decode, read_latest
    from modelyard_trainer.config import load_trainer_config
    from modelyard_trainer.data import PreprocessingSpec, load_dataset
    from modelyard_trainer.errors import ParityCheckFailed
    from modelyard_trainer.export import check_parity
    from modelyard_trainer.models import ExportableModel, build_network

    config = load_trainer_config(write_config(tmp_path, "iris", IRIS))
    latest = read_latest(iris_single.run_dir / CHECKPOINT_DIR)
    assert latest is not None
    state = decode(latest[1])
    spec = PreprocessingSpec.from_dict(state["preprocessing"])
    network = build_network(config.model, spec.encoded_width, spec.outputs)
    network.load_state_dict(state["model"])
    model = ExportableModel(spec, network).eval()
    rows = load_dataset(config.data, config.task, "/nonexistent").test

    exported = iris_single.run_dir / MODEL_FILE
    assert check_parity(exported, model, spec, rows, 1e-4, True).passed

    proto = onnx.load(str(exported))
    weights = max(proto.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    damaged = numpy_helper.to_array(weights).copy()
    damaged.flat[0] += 0.5
    weights.CopyFrom(numpy_helper.from_array(damaged, weights.name))
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(proto, str(corrupted))
    with pytest.raises(ParityCheckFailed, match="differs from PyTorch"):
        check_parity(corrupted, model, spec, rows, 1e-4, True)


@pytest.mark.timeout(900)
def test_an_export_that_differs_fails_with_its_exit_code(tmp_path: Path) -> None:
    config = {
        "model": {
            "architecture": "custom",
            "entrypoint": "tests.unit.trainer.custom_models:export_skewed_mlp",
            "entrypointArgs": {"hidden": "8"},
        },
        "data": {"source": {"builtin": "iris"}},
        "training": {"epochs": 3, "batchSize": 16},
    }
    run = run_trainer(tmp_path, "skewed", config)
    assert run.returncode == 66, run.describe()
    failure = run.termination
    assert isinstance(failure, TrainingFailure)
    assert failure.reason == "ParityCheckFailed" and failure.exit_code == 66
    assert "export.parityTolerance" in failure.message
    assert not (run.run_dir / METADATA_FILE).exists()
    assert not (run.run_dir / MODEL_FILE).exists()
    assert (run.run_dir / "model.rejected.onnx").exists()


@pytest.mark.timeout(900)
def test_digits_mlp_and_int8_quantization(tmp_path: Path) -> None:
    # Through the launcher the operator uses: torchrun whose exit code is the workers'.
    run = run_trainer(tmp_path, "digits", DIGITS, nproc=2, launcher="launch")
    assert run.returncode == 0, run.describe()
    metadata = run.metadata()
    assert metadata.metrics.test_accuracy is not None and metadata.metrics.test_accuracy >= 0.95
    int8 = metadata.export.int8
    assert int8 is not None and int8.file == MODEL_INT8_FILE
    size = (run.run_dir / MODEL_INT8_FILE).stat().st_size
    assert size == int8.size_bytes
    assert size < 0.5 * (run.run_dir / MODEL_FILE).stat().st_size
    drop = -int8.metric_change["test_accuracy"]
    assert int8.served == (drop <= 0.02)
    assert metadata.model_file == (MODEL_INT8_FILE if int8.served else MODEL_FILE)
    assert isinstance(run.termination, TrainingResult)
    assert run.termination.model_file == metadata.model_file


@pytest.mark.timeout(900)
def test_csv_and_parquet_with_categories_and_missing_values(tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    rows = 600
    color = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=rows),
            "age": rng.normal(5, 2, size=rows),
            "color": color,
            "zone": rng.integers(0, 4, size=rows),
        }
    )
    frame["price"] = (
        100
        + 3 * frame["size"]
        - 0.5 * frame["age"]
        + frame["color"].map({"red": 2.0, "green": -1.0, "blue": 0.0})
        + 1.5 * frame["zone"]
        + rng.normal(0, 0.1, rows)
    )
    frame.loc[rng.choice(rows, 30, replace=False), "age"] = np.nan
    frame.loc[rng.choice(rows, 20, replace=False), "color"] = None
    frame.to_parquet(tmp_path / "houses.parquet")
    config = {
        "model": {"hiddenLayers": [32, 32]},
        "data": {
            "source": {"uri": str(tmp_path / "houses.parquet")},
            "target": "price",
            "preprocessing": {"missing": "mean", "oneHot": ["zone"]},
        },
        "training": {
            "epochs": 40,
            "batchSize": 32,
            "loss": "mse",
            "optimizer": {"name": "adam", "learningRate": 0.005},
        },
    }
    run = run_trainer(tmp_path, "houses", config)
    assert run.returncode == 0, run.describe()
    metadata = run.metadata()
    assert metadata.task == "regression"
    assert metadata.metrics.r2 is not None and metadata.metrics.r2 > 0.9
    assert [(t.name, t.datatype, t.features) for t in metadata.inputs] == [
        ("input", "FP32", ["size", "age", "zone"]),
        ("categorical", "BYTES", ["color"]),
    ]
    # The served model takes raw features: NaN, a missing and an unseen category included.
    session = ort.InferenceSession(str(run.run_dir / metadata.model_file))
    (prediction,) = session.run(
        None,
        {
            "input": np.array([[0.5, 4.0, 2], [0.5, np.nan, 2], [0.5, 4.0, 7]], dtype=np.float32),
            "categorical": np.array([["red"], [""], ["purple"]], dtype=object),
        },
    )
    assert prediction.shape == (3,) and np.isfinite(prediction).all()
    assert prediction[0] == pytest.approx(100 + 1.5 - 2 + 2 + 3, abs=1.0)


@pytest.mark.timeout(900)
def test_a_diverging_loss_stops_every_rank(tmp_path: Path) -> None:
    config = {
        "data": {"source": {"synthetic": {"task": "regression", "samples": 500}}},
        "training": {
            "epochs": 5,
            "loss": "mse",
            "optimizer": {"name": "sgd", "learningRate": 10, "momentum": 0.9},
        },
    }
    # torchrun alone would turn any failure into exit code 1; the launcher keeps 65.
    run = run_trainer(tmp_path, "diverge", config, nproc=2, launcher="launch")
    assert run.returncode == 65, run.describe()
    failure = run.termination
    assert isinstance(failure, TrainingFailure) and failure.reason == "LossDiverged"
    assert "learningRate" in failure.message
    assert not (run.run_dir / METADATA_FILE).exists()


@pytest.mark.timeout(900)
def test_a_bad_config_names_the_field_and_exits_64(tmp_path: Path) -> None:
    bad = {"training": {"optimizer": {"learningRate": -1}}}
    run = run_trainer(tmp_path, "bad", bad)
    assert run.returncode == 64, run.describe()
    failure = run.termination
    assert isinstance(failure, TrainingFailure) and failure.reason == "InvalidConfig"
    assert "training.optimizer.learningRate" in failure.message


def _wait_for(predicate: Any, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before the test could act"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_trainer(tmp_path_factory.mktemp("steady"), "steady", STEADY)
    assert run.returncode == 0, run.describe()
    return run


@pytest.mark.timeout(900)
def test_a_killed_run_resumes_and_ends_with_the_same_metrics(steady: Run, tmp_path: Path) -> None:
    config = write_config(tmp_path / "configs", "steady", CHECKPOINTED)
    output = tmp_path / "out"
    run_dir = output / "local" / "steady" / "local" / "g1"
    log = tmp_path / "termination"
    command = trainer_command(config, output)
    with subprocess.Popen(
        command, env=trainer_env(log), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            _wait_for(lambda: any((run_dir / CHECKPOINT_DIR).glob("epoch-*.pt")), process, 600)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / METADATA_FILE).exists()

    # The next attempt runs on two workers, and only rank 0 sees the output volume: rank 1
    # gets an empty directory of its own, and must neither need nor write anything there.
    private = tmp_path / "rank-1-sees-nothing"
    private.mkdir()
    ranks = start_ranks(config, [output, private], tmp_path)
    try:
        outcomes = [process.communicate(timeout=600) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    for process, (_, stderr) in zip(ranks, outcomes, strict=True):
        assert process.returncode == 0, stderr[-5000:]
    assert list(private.iterdir()) == []
    after = Run("steady", output, 0, "", "", log).metadata()
    reference = steady.metadata()
    assert after.training.world_size == 2 and reference.training.world_size == 1
    assert after.training.resumed_from_epoch is not None and after.training.resumed_from_epoch >= 1
    assert (
        after.training.epochs_run == reference.training.epochs_run == STEADY["training"]["epochs"]
    )
    # Same seed, same global batch: the same run up to float summation order.
    assert after.metrics.test_loss == pytest.approx(reference.metrics.test_loss, abs=1e-5)
    assert after.metrics.test_accuracy == pytest.approx(
        reference.metrics.test_accuracy, abs=1.5 / reference.metrics.rows
    )


def start_ranks(
    config: Path, outputs: list[Path], tmp_path: Path, extra: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """One plain process per rank, as the operator runs single-process workers."""
    port = str(free_port())
    processes = []
    for rank, output in enumerate(outputs):
        env = trainer_env(
            tmp_path / f"termination-{rank}",
            {
                "RANK": str(rank),
                "WORLD_SIZE": str(len(outputs)),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                **(extra or {}),
            },
        )
        processes.append(
            subprocess.Popen(
                trainer_command(config, output),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return processes


@pytest.mark.timeout(900)
def test_the_eta_at_half_way_is_honest(steady: Run) -> None:
    training = [r for r in steady.progress() if r.stage == "Training"]
    assert training[-1].percent == 100.0
    end = _seconds(training[-1].updated_at)
    half = min(training, key=lambda record: abs(record.percent - 50.0))
    assert 40.0 <= half.percent <= 60.0 and half.eta_seconds is not None
    actual = end - _seconds(half.updated_at)

    def steps(record: ProgressRecord) -> int:
        return record.epoch * record.steps_per_epoch + record.step

    # The pace (steps/s) of each stretch between records after the first epoch.
    warm = [r for r in training if r.epoch >= 1]
    paces = [
        (steps(b) - steps(a)) / (_seconds(b.updated_at) - _seconds(a.updated_at))
        for a, b in itertools.pairwise(warm)
        if steps(b) > steps(a)
    ]
    before = [r for r in warm if _seconds(r.updated_at) <= _seconds(half.updated_at)]
    assert before[0] is not half, f"too few records to see a pace: {len(training)}"
    pace_before = (steps(half) - steps(before[0])) / (
        _seconds(half.updated_at) - _seconds(before[0].updated_at)
    )
    pace_after = (steps(training[-1]) - steps(half)) / actual
    detail = (
        f"eta {half.eta_seconds:.2f}s, actual {actual:.2f}s, "
        f"pace before/after {pace_before:.0f}/{pace_after:.0f} steps/s"
    )
    if abs(pace_after / pace_before - 1) <= 0.1:
        # A steady run (this suite shares its machine, so that is measured, not assumed).
        assert abs(half.eta_seconds - actual) <= 0.25 * actual, detail
    else:
        # Other processes changed the pace: the ETA must still follow the pace it observed.
        left = steps(training[-1]) - steps(half)
        assert left / max(paces) * 0.9 <= half.eta_seconds <= left / min(paces) * 1.1, detail


@pytest.mark.timeout(900)
def test_a_worker_that_loses_its_peer_fails_fast(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "configs", "peers", {**STEADY, "training": {**STEADY["training"], "epochs": 200}}
    )
    output = tmp_path / "out"
    progress = output / "local" / "peers" / "local" / "g1" / "progress.jsonl"
    processes = start_ranks(
        config, [output, output], tmp_path, {"MODELYARD_PEER_TIMEOUT_SECONDS": "60"}
    )
    rank0, rank1 = processes
    try:
        _wait_for(lambda: progress.exists() and '"Training"' in progress.read_text(), rank0, 600)
        os.kill(rank1.pid, signal.SIGKILL)
        lost_at = time.monotonic()
        _, stderr = rank0.communicate(timeout=90)
        elapsed = time.monotonic() - lost_at
    finally:
        for process in processes:
            process.kill()
            process.communicate(timeout=30)
    assert rank0.returncode == 1, stderr[-5000:]
    failure = TrainingFailure.model_validate_json((tmp_path / "termination-0").read_text())
    assert failure.reason == "PeerLost" and failure.rank == 0
    assert "lost contact" in failure.message
    assert elapsed < 60
