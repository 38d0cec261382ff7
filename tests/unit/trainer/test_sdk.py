"""modelyard_trainer.sdk: your own script with Modelyard's checkpoints, progress and publish.

In-process tests use a single process (no process group); the gang tests run the shipped
example script for real under torchrun with 2 gloo processes, as a spec.script pod runs it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modelyard_storage.digest import sha256_of
from modelyard_trainer import sdk
from modelyard_trainer.contracts import (
    CHECKPOINT_DIR,
    METADATA_FILE,
    MODEL_FILE,
    MODEL_INT8_FILE,
    ArtifactMetadata,
    ProgressRecord,
    TrainingFailure,
    TrainingResult,
    parse_termination_message,
)
from modelyard_trainer.sdk.example import make_data

from .support import trainer_env

RUN_DIR = Path("local") / "script" / "local" / "g1"


def _env(tmp_path: Path) -> dict[str, str]:
    return trainer_env(tmp_path / "termination")


def _init(tmp_path: Path, **options: Any) -> sdk.Run:
    return sdk.init(tmp_path / "out", environ=_env(tmp_path), **options)


def _termination(tmp_path: Path) -> TrainingResult | TrainingFailure | None:
    return parse_termination_message((tmp_path / "termination").read_text())


def test_the_sdk_imports_without_torch_or_the_built_in_trainer(tmp_path: Path) -> None:
    blocked = [
        "torch",
        "numpy",
        "onnx",
        "onnxruntime",
        "pandas",
        *(
            f"modelyard_trainer.{module}"
            for module in ("train", "data", "runner", "export", "models", "checkpoint", "config")
        ),
    ]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # importing it raises ImportError\n"
        "from modelyard_trainer import sdk\n"
        "assert callable(sdk.init) and callable(sdk.main)\n"
        "print(sorted(m for m in sys.modules if m.startswith('modelyard_trainer')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "modelyard_trainer.sdk" in done.stdout


def test_checkpoints_keep_the_newest_and_load_the_latest(tmp_path: Path) -> None:
    run = _init(tmp_path, checkpoints_kept=2)
    assert (run.rank, run.world_size, run.local_rank, run.is_rank_zero) == (0, 1, 0, True)
    assert run.checkpoints.load_latest() is None
    for epoch in (1, 2, 3):
        run.checkpoints.save({"epoch": epoch, "weights": torch.full((3,), float(epoch))})
    names = sorted(path.name for path in run.checkpoints.directory.iterdir())
    assert names == ["epoch-000002.pt", "epoch-000003.pt"]  # no temporary left behind
    assert run.checkpoints.directory == tmp_path / "out" / RUN_DIR / CHECKPOINT_DIR

    state = _init(tmp_path).checkpoints.load_latest()  # a new attempt of the same run
    assert state is not None and state["epoch"] == 3
    assert torch.equal(state["weights"], torch.full((3,), 3.0))
    run.close()


@pytest.mark.parametrize("state", [{}, {"epoch": "3"}, {"epoch": -1}, {"epoch": True}])
def test_a_checkpoint_without_an_epoch_is_refused(tmp_path: Path, state: dict[str, Any]) -> None:
    run = _init(tmp_path)
    with pytest.raises(sdk.InvalidConfig, match="integer 'epoch'"):
        run.checkpoints.save(state)
    assert not run.checkpoints.directory.exists()


def test_progress_goes_out_as_the_trainer_s_records(tmp_path: Path) -> None:
    run = _init(tmp_path, progress_interval_seconds=0.001)
    time.sleep(0.01)  # past the interval since init's record
    run.report(epoch=0, epochs=4, step=5, steps_per_epoch=10, loss=1.5)
    time.sleep(0.01)
    # The epoch's end need not repeat steps_per_epoch.
    run.report(epoch=1, epochs=4, loss=1.0, metrics={"val_accuracy": 0.5})
    time.sleep(0.01)
    run.report(epoch=1, epochs=4, step=5, steps_per_epoch=10, loss=0.5)
    run.close()
    lines = (tmp_path / "out" / RUN_DIR / "progress.jsonl").read_text().splitlines()
    records = [ProgressRecord.model_validate_json(line) for line in lines]
    assert [r.stage for r in records] == ["Preprocessing", "Training", "Training", "Training"]
    first, second, third = records[1:]
    assert (first.epoch, first.step, first.steps_per_epoch, first.percent) == (0, 5, 10, 12.5)
    assert first.loss == 1.5 and first.eta_seconds is None  # no pace measured yet
    assert (second.epoch, second.percent, second.validation) == (1, 25.0, {"val_accuracy": 0.5})
    # Like the built-in trainer, the pace counts from the end of the first epoch.
    assert (third.percent, third.loss) == (37.5, 0.5)
    assert third.eta_seconds is not None and third.eta_seconds > 0


def test_a_report_out_of_range_is_refused(tmp_path: Path) -> None:
    run = _init(tmp_path)
    with pytest.raises(sdk.InvalidConfig, match="epoch <= epochs"):
        run.report(epoch=5, epochs=4)
    with pytest.raises(sdk.InvalidConfig, match="step 11"):
        run.report(epoch=1, epochs=4, step=11, steps_per_epoch=10)


def test_publish_writes_the_built_in_trainer_s_result_contract(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    example = torch.randn(32, 4)
    run = _init(tmp_path)
    result = run.publish(model, example, {"test_accuracy": 0.75}, quantize_int8=True)
    run.close()
    assert result is not None
    assert _termination(tmp_path) == result
    run_dir = tmp_path / "out" / RUN_DIR
    assert result.artifact_uri == run_dir.resolve().as_uri()
    assert result.metrics == {"test_accuracy": 0.75}
    assert result.sha256 == sha256_of(run_dir / result.model_file)
    assert [(i.name, i.datatype, i.shape) for i in result.inputs] == [("input", "FP32", [-1, 4])]
    metadata = ArtifactMetadata.model_validate_json((run_dir / METADATA_FILE).read_text())
    assert metadata.export.parity.passed and metadata.export.parity.rows == 32
    assert set(metadata.files) == {MODEL_FILE, MODEL_INT8_FILE}
    assert metadata.export.int8 is not None
    assert metadata.export.int8.served == (result.model_file == MODEL_INT8_FILE)
    assert metadata.metrics.test_accuracy == 0.75

    # The served graph answers like the network, for any batch size.
    other = torch.randn(5, 4)
    session = ort.InferenceSession(str(run_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"input": other.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_output, model(other).numpy(), atol=1e-5)


class Drifting(nn.Module):
    """Answers differently on every call, so that the export cannot match PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return features * float(self.calls)


def test_an_export_that_differs_from_pytorch_is_rejected(tmp_path: Path) -> None:
    run = _init(tmp_path)
    with pytest.raises(sdk.TrainerError) as caught:
        run.publish(Drifting(), torch.ones(4, 2), {})
    assert caught.value.reason == "ParityCheckFailed" and caught.value.exit_code == 66
    run_dir = tmp_path / "out" / RUN_DIR
    assert (run_dir / "model.rejected.onnx").is_file()
    assert not (run_dir / MODEL_FILE).exists() and not (run_dir / METADATA_FILE).exists()


@pytest.mark.parametrize(
    ("example", "metrics", "message"),
    [
        (torch.ones(1, 2), {}, "at least 2 rows"),
        (torch.tensor(1.0), {}, "batch axis"),
        (torch.ones(4, 2), {"test_accuracy": float("nan")}, "'test_accuracy' is not finite"),
    ],
)
def test_publish_names_what_is_wrong_with_its_input(
    tmp_path: Path, example: torch.Tensor, metrics: dict[str, float], message: str
) -> None:
    run = _init(tmp_path)
    with pytest.raises(sdk.InvalidConfig, match=message):
        run.publish(nn.Linear(2, 1), example, metrics)


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    code = f"from modelyard_trainer import sdk\n{body}\n"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_script_that_never_publishes_fails_with_a_clear_reason(tmp_path: Path) -> None:
    done = _script(tmp_path, f"sdk.main(lambda run: None, output={str(tmp_path / 'out')!r})")
    assert done.returncode == 64, done.stderr
    failure = _termination(tmp_path)
    assert isinstance(failure, TrainingFailure) and failure.reason == "NotPublished"
    assert "without calling run.publish" in failure.message


def test_a_script_s_own_error_is_a_transient_failure(tmp_path: Path) -> None:
    body = (
        "def train(run):\n"
        "    raise RuntimeError('my loader broke')\n"
        f"sdk.main(train, output={str(tmp_path / 'out')!r})"
    )
    done = _script(tmp_path, body)
    assert done.returncode == 1, done.stderr
    failure = _termination(tmp_path)
    assert isinstance(failure, TrainingFailure) and failure.reason == "Error"
    assert failure.message == "RuntimeError: my loader broke"


def test_no_output_directory_is_a_config_error(tmp_path: Path) -> None:
    done = _script(tmp_path, "sdk.main(lambda run: None)")
    assert done.returncode == 64
    failure = _termination(tmp_path)
    assert isinstance(failure, TrainingFailure) and "MODELYARD_OUTPUT_DIR" in failure.message


# --- The example script, for real: two gloo processes under torchrun, killed and resumed. ------

EXAMPLE = ["-m", "modelyard_trainer.sdk.example", "--progress-interval-seconds", "0.05"]
EXAMPLE_RUN = Path("local") / "example" / "local" / "g1"


def _launch(nproc: int, *program: str) -> list[str]:
    """As the operator runs a script with processesPerWorker > 1 (here standalone)."""
    torchrun = ["--standalone", f"--nproc-per-node={nproc}"]
    return [
        sys.executable,
        "-m",
        "modelyard_trainer.launch",
        *torchrun,
        "--",
        "--command",
        *program,
    ]


def _torchrun(nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
    ]


def _check_published(output: Path, termination: Path, world_size: int) -> ArtifactMetadata:
    result = parse_termination_message(termination.read_text())
    assert isinstance(result, TrainingResult)
    run_dir = output / EXAMPLE_RUN
    assert result.sha256 == sha256_of(run_dir / result.model_file)
    metadata = ArtifactMetadata.model_validate_json((run_dir / METADATA_FILE).read_text())
    assert metadata.training.world_size == world_size
    assert metadata.export.parity.passed and metadata.export.parity.max_abs_diff <= 1e-4
    # The model really learned, and ONNX Runtime says so on points it never saw.
    points, labels = make_data(4000, 8, 3, 0)
    session = ort.InferenceSession(str(run_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    _, classes = session.run(None, {"input": points[3200:].numpy()})
    accuracy = float((classes == labels[3200:].numpy()).mean())
    assert accuracy >= 0.9
    assert result.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    return metadata


@pytest.mark.timeout(900)
def test_the_example_script_trains_and_publishes_on_two_processes(tmp_path: Path) -> None:
    output = tmp_path / "out"
    termination = tmp_path / "termination"
    done = subprocess.run(
        _launch(2, sys.executable, *EXAMPLE, "--epochs", "6", "--output", str(output)),
        env=trainer_env(termination),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    metadata = _check_published(output, termination, 2)
    assert metadata.training.backend == "gloo" and metadata.training.resumed_from_epoch is None
    progress = [
        ProgressRecord.model_validate_json(line)
        for line in (output / EXAMPLE_RUN / "progress.jsonl").read_text().splitlines()
    ]
    training = [record for record in progress if record.stage == "Training"]
    assert training and all(record.world_size == 2 for record in training)
    assert progress[-1].stage == "Done"


@pytest.mark.timeout(900)
def test_the_example_script_resumes_from_its_checkpoint_after_a_kill(tmp_path: Path) -> None:
    output = tmp_path / "out"
    termination = tmp_path / "termination"
    checkpoints = output / EXAMPLE_RUN / CHECKPOINT_DIR
    # Many epochs, so that the kill lands long before the end.
    command = [*EXAMPLE, "--epochs", "200", "--output", str(output)]
    with subprocess.Popen(
        [sys.executable, *command],
        env=trainer_env(termination),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            deadline = time.monotonic() + 300
            while not any(checkpoints.glob("epoch-*.pt")):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
    assert process.wait() == -signal.SIGKILL
    assert not (output / EXAMPLE_RUN / METADATA_FILE).exists()

    # The next attempt is a gang of two; each resumes from rank 0's newest checkpoint.
    resumed = subprocess.run(
        [*_torchrun(2), *EXAMPLE, "--epochs", "8", "--output", str(output)],
        env=trainer_env(termination),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stderr
    metadata = _check_published(output, termination, 2)
    assert metadata.training.resumed_from_epoch is not None
    assert 1 <= metadata.training.resumed_from_epoch < 8


def test_the_launcher_keeps_a_script_s_permanent_exit_code(tmp_path: Path) -> None:
    """torchrun alone would exit 1 (retry); the podFailurePolicy must see NotPublished's 64."""
    code = (
        f"from modelyard_trainer import sdk; sdk.main(lambda run: None, output={str(tmp_path)!r})"
    )
    done = subprocess.run(
        _launch(2, sys.executable, "-c", code),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 64, done.stderr[-3000:]
    failure = _termination(tmp_path)
    assert isinstance(failure, TrainingFailure) and failure.reason == "NotPublished"
