"""The trainer against a hostile or careless spec (issue #17): real processes, real files.

- H2: a data or output path that climbs out of its claim (`..`, or a symlink) fails with
  InvalidConfig naming the field, and no credential value reaches the termination message or
  the logs.
- M9: ranks exchange tensors only, never pickles.
- Progress records are strict JSON even when the loss is NaN or infinite.
"""

from __future__ import annotations

import ast
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from modelyard_trainer.__main__ import output_directory
from modelyard_trainer.contracts import (
    ProgressRecord,
    TrainingFailure,
    parse_termination_message,
)
from modelyard_trainer.errors import InvalidConfig
from modelyard_trainer.report import LocalSink, ProgressReporter

from .support import ROOT, free_port, run_trainer, trainer_env

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CREDENTIALS = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": KEY_ID}
# Enough `..` to reach / from any temporary directory (the kernel stops at the root), as
# pvc://<claim>/../../../proc/self/environ does from the pods' /mnt/pvc/<claim>.
CLIMB = "../" * 40

SMALL: dict[str, Any] = {
    "model": {"hiddenLayers": [8]},
    "data": {"source": {"builtin": "iris"}},
    "training": {"epochs": 1, "batchSize": 16},
}


def _claim(tmp_path: Path) -> Path:
    mount = tmp_path / "pvc"
    (mount / "claim").mkdir(parents=True)
    return mount


def _assert_no_credentials(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and KEY_ID not in text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("attack", ["dotdot", "symlink"])
def test_a_data_path_out_of_its_claim_leaks_no_credential(tmp_path: Path, attack: str) -> None:
    mount = _claim(tmp_path)
    if attack == "dotdot":
        uri = f"pvc://claim/{CLIMB}proc/self/environ"
    else:
        (mount / "claim" / "rows.csv").symlink_to("/proc/self/environ")
        uri = "pvc://claim/rows.csv"
    config = {
        **SMALL,
        "data": {"source": {"uri": uri, "format": "csv"}, "target": "label"},
    }
    env = {"MODELYARD_PVC_MOUNT_ROOT": str(mount), **CREDENTIALS}
    run = run_trainer(tmp_path, "environ", config, env=env)
    assert run.returncode == 64, run.describe()
    failure = run.termination
    assert isinstance(failure, TrainingFailure) and failure.reason == "InvalidConfig"
    assert failure.message.startswith("data.source.uri: "), failure.message
    _assert_no_credentials(run.termination_text, run.stderr, run.stdout)


@pytest.mark.timeout(600)
def test_an_output_uri_that_climbs_is_refused(tmp_path: Path) -> None:
    mount = _claim(tmp_path)
    # What the operator makes of output.uri pvc://claim/../../escape: --output and the URI.
    output = Path(f"{mount}/claim/../../escape")
    env = {
        "MODELYARD_PVC_MOUNT_ROOT": str(mount),
        "MODELYARD_OUTPUT_URI": "pvc://claim/../../escape",
        **CREDENTIALS,
    }
    run = run_trainer(tmp_path, "escape", SMALL, output=output, env=env)
    assert run.returncode == 64, run.describe()
    failure = run.termination
    assert isinstance(failure, TrainingFailure) and failure.reason == "InvalidConfig"
    assert failure.message.startswith("output.uri: ") and "'..'" in failure.message
    assert not (tmp_path / "escape").exists()
    _assert_no_credentials(run.termination_text, run.stderr)


def test_the_output_directory_stays_in_its_claim(tmp_path: Path) -> None:
    mount = _claim(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (mount / "claim" / "out").symlink_to(tmp_path / "elsewhere")
    env = {"MODELYARD_PVC_MOUNT_ROOT": str(mount), "MODELYARD_OUTPUT_URI": "pvc://claim/out"}
    with pytest.raises(InvalidConfig, match=r"^--output: .* symbolic link"):
        output_directory(f"{mount}/claim/out", env)
    with pytest.raises(InvalidConfig, match=r"^--output: .* '\.\.'"):
        output_directory(f"{mount}/claim/x/../../other", {"MODELYARD_PVC_MOUNT_ROOT": str(mount)})
    assert output_directory(f"{mount}/claim/runs", env) == (mount / "claim" / "runs").resolve()
    assert output_directory("./out", {}) == Path("out")


def test_progress_with_nan_and_infinity_is_strict_json(tmp_path: Path) -> None:
    jsonl = tmp_path / "progress.jsonl"
    reporter = ProgressReporter([LocalSink(jsonl, io.StringIO())], interval=0)
    reporter.report(
        ProgressRecord(
            stage="Training",
            loss=math.nan,
            validation={"val_loss": math.inf, "val_accuracy": 0.5},
            samples_per_second=math.inf,
            eta_seconds=math.nan,
        ),
        force=True,
    )
    reporter.close()
    (line,) = jsonl.read_text().splitlines()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads(line, parse_constant=refuse)
    # Unknown values are left out (to_json leaves out every null).
    assert document["validation"] == {"val_accuracy": 0.5}
    assert not {"loss", "samplesPerSecond", "etaSeconds"} & set(document)
    assert ProgressRecord.model_validate_json(line).validation == {"val_accuracy": 0.5}
    # A record that an older trainer wrote (NaN tokens, null metrics) still parses.
    old = json.loads('{"loss": NaN, "etaSeconds": Infinity, "validation": {"val_loss": null}}')
    assert ProgressRecord.model_validate(old).model_dump(include={"loss", "validation"}) == {
        "loss": None,
        "validation": {},
    }


_FORBIDDEN_COLLECTIVES = {
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
}


def test_the_trainer_never_calls_a_pickle_based_collective() -> None:
    package = ROOT / "trainer_image" / "modelyard_trainer"
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name in _FORBIDDEN_COLLECTIVES:
                found.append(f"{path.name}:{node.lineno} {name}")
    assert found == []


@pytest.mark.timeout(300)
def test_rank_zero_broadcasts_tensors_to_its_peer(tmp_path: Path) -> None:
    """Two gloo processes: rank 0's flag and bytes (None, empty, 3 MiB) arrive unchanged."""
    import subprocess

    port = free_port()
    worker = Path(__file__).with_name("broadcast_worker.py")
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp_path / f"rank{rank}.json")],
            env=trainer_env(
                tmp_path / "termination",
                {
                    "RANK": str(rank),
                    "WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    "MODELYARD_PEER_TIMEOUT_SECONDS": "60",
                },
            ),
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [process.communicate(timeout=240)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert not any("terminate called" in text for text in errors), errors
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1]
    assert seen[1] == {
        "flags": [True, False],
        "none": None,
        "empty": "",
        "sha256": seen[0]["expected_sha256"],
        "expected_sha256": seen[0]["expected_sha256"],
        "size": 3 << 20,
    }


def test_a_result_whose_model_file_climbs_is_no_result() -> None:
    # The operator joins model_file to artifact_uri: a forged "../.." must not get there.
    good = {"kind": "result", "artifactUri": "pvc://models/ns/n/u/g1", "modelFile": "model.onnx"}
    assert parse_termination_message(json.dumps(good)) is not None
    for bad in ("../../other/model.onnx", "a/model.onnx", ".."):
        assert parse_termination_message(json.dumps({**good, "modelFile": bad})) is None
