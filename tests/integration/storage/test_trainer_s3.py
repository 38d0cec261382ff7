"""The trainer with object storage only: 2-process DDP (torchrun) reads its CSV from s3://,
checkpoints and exports to s3://, is killed, and resumes from the checkpoint in s3:// with an
empty local directory (no shared volume). The published artifact is verified by sha256, and a
reader sees the run only once metadata.json (written last) is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard_trainer.contracts import ArtifactMetadata, TrainingResult
from tests.integration.storage.s3_server import S3Server
from tests.unit.trainer.support import trainer_env, write_config

EPOCHS = 6


def _csv(rows: int = 8000, features: int = 16, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    weights = rng.standard_normal((features, 3))
    label = np.argmax(x @ weights + 0.3 * rng.standard_normal((rows, 3)), axis=1)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["label"] = [f"class-{v}" for v in label]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def _config(bucket: str) -> dict[str, Any]:
    return {
        "model": {"hiddenLayers": [64, 64]},
        "data": {"source": {"uri": f"s3://{bucket}/data/train.csv"}, "target": "label"},
        "training": {
            "epochs": EPOCHS,
            "batchSize": 64,
            "optimizer": {"name": "adam", "learningRate": 0.005},
            "progressIntervalSeconds": 0.5,
        },
        "checkpoint": {"everyEpochs": 1, "keep": 2},
    }


def _command(config: Path, output: str, nproc: int) -> list[str]:
    trainer = ["-m", "modelyard_trainer", "--config", str(config), "--output", output]
    if nproc == 1:
        return [sys.executable, *trainer]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [sys.executable, *launcher, *trainer]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_gang(pid: int) -> None:
    """SIGKILL the launcher and all its workers at once, as a node failure would."""
    for target in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _keys(server: S3Server, bucket: str, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents") or [])


@pytest.mark.timeout(900)
def test_ddp_run_on_s3_is_killed_and_resumes_from_s3(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="data/train.csv", Body=_csv())
    config = write_config(tmp_path / "configs", "s3-run", _config(bucket))
    output = f"s3://{bucket}/runs"
    run_prefix = "runs/local/s3-run/local/g1/"
    env = trainer_env(tmp_path / "termination-1", s3_server.env())

    # Attempt 1: killed (SIGKILL, the whole gang) once a checkpoint is in the bucket.
    with subprocess.Popen(
        _command(config, output, 2), env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as first:  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while not [k for k in _keys(s3_server, bucket, run_prefix) if "/checkpoints/" in k]:
                assert first.poll() is None, first.communicate()[1][-5000:]
                assert time.monotonic() < deadline, "no checkpoint reached the bucket"
                time.sleep(0.2)
            _kill_gang(first.pid)
        finally:
            _kill_gang(first.pid)
            first.communicate(timeout=60)
    time.sleep(1)  # let the killed workers' sockets close
    left = _keys(s3_server, bucket, run_prefix)
    assert any("/checkpoints/epoch-" in key for key in left), left
    # Not published: no reader can take the killed run for a finished one.
    assert run_prefix + "metadata.json" not in left and run_prefix + "model.onnx" not in left

    # Attempt 2: a fresh local scratch directory; everything it needs comes from s3://.
    env = trainer_env(tmp_path / "termination-2", s3_server.env())
    second = subprocess.run(
        _command(config, output, 2), env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-6000:]
    result = TrainingResult.model_validate_json(second.stdout.strip().splitlines()[-1])
    assert result.artifact_uri == f"s3://{bucket}/{run_prefix.rstrip('/')}"
    assert "pulled" in second.stderr and "checkpoint" in second.stderr

    keys = _keys(s3_server, bucket, run_prefix)
    metadata = ArtifactMetadata.model_validate_json(
        client.get_object(Bucket=bucket, Key=run_prefix + "metadata.json")["Body"].read()
    )
    assert metadata.training.resumed_from_epoch is not None
    assert 1 <= metadata.training.resumed_from_epoch < EPOCHS
    assert metadata.training.world_size == 2 and metadata.training.epochs_run == EPOCHS
    # It learned (chance is about 0.4 here); the resumed run is the whole run.
    assert metadata.metrics.test_accuracy is not None and metadata.metrics.test_accuracy > 0.7
    model = client.get_object(Bucket=bucket, Key=run_prefix + result.model_file)
    data = model["Body"].read()
    assert hashlib.sha256(data).hexdigest() == result.sha256 == metadata.files["model.onnx"].sha256
    assert model["Metadata"]["sha256"] == result.sha256
    checkpoints = [k for k in keys if "/checkpoints/" in k]
    assert checkpoints == [
        f"{run_prefix}checkpoints/epoch-{EPOCHS - 1:06d}.pt",
        f"{run_prefix}checkpoints/epoch-{EPOCHS:06d}.pt",
    ]
    # The marker is the newest object of the run: written after everything it describes.
    stamps = {k: client.head_object(Bucket=bucket, Key=k)["LastModified"] for k in keys}
    newest_artifact = max(v for k, v in stamps.items() if "/checkpoints/" not in k)
    assert stamps[run_prefix + "metadata.json"] == newest_artifact

    # A rerun (one process, nothing local) recognizes the published run without training.
    started = time.monotonic()
    env = trainer_env(tmp_path / "termination-3", s3_server.env())
    again = subprocess.run(
        _command(config, output, 1), env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["sha256"] == result.sha256
    assert "Training" not in again.stderr
    assert time.monotonic() - started < 60


def test_missing_data_names_the_field_and_is_permanent(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "configs", "no-data", _config(bucket))
    log = tmp_path / "termination"
    done = subprocess.run(
        _command(config, str(tmp_path / "out"), 1), env=trainer_env(log, s3_server.env()),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 64, done.stderr[-3000:]
    failure = json.loads(log.read_text())
    assert failure["reason"] == "InvalidConfig"
    assert failure["message"].startswith("data.source.uri: ")
    assert f"s3://{bucket}/data/train.csv" in failure["message"]
    assert s3_server.secret_key not in log.read_text() + done.stderr


def test_denied_credentials_fail_the_attempt_without_leaking_them(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="data/train.csv", Body=_csv(rows=200))
    config = write_config(tmp_path / "configs", "denied", _config(bucket))
    log = tmp_path / "termination"
    wrong = "not-" + s3_server.secret_key
    env = trainer_env(log, s3_server.env(AWS_SECRET_ACCESS_KEY=wrong))
    done = subprocess.run(
        _command(config, f"s3://{bucket}/runs", 1), env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    failure = json.loads(log.read_text())
    assert failure["reason"] == "StorageFailed" and "AccessDenied" in failure["message"]
    assert wrong not in log.read_text() + done.stderr + done.stdout


def test_data_over_the_size_limit_names_the_field_and_the_limit(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    rows = _csv(rows=200)
    s3_server.client().put_object(Bucket=bucket, Key="data/train.csv", Body=rows)
    config = write_config(tmp_path / "configs", "big-data", _config(bucket))
    log = tmp_path / "termination"
    limit = str(len(rows) - 1)
    done = subprocess.run(
        _command(config, str(tmp_path / "out"), 1),
        env=trainer_env(log, s3_server.env(MODELYARD_MAX_DATA_BYTES=limit)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 64, done.stderr[-3000:]
    failure = json.loads(log.read_text())
    assert failure["reason"] == "InvalidConfig"
    assert failure["message"] == (
        f"data.source.uri: s3://{bucket}/data/train.csv holds more than the limit of "
        f"{limit} bytes; not downloaded"
    )
    assert s3_server.secret_key not in log.read_text() + done.stderr
