"""A spec.script run with object storage only: the SDK mirrors its checkpoints to s3:// as it
writes them, publishes there with metadata.json last, and a new attempt with an empty scratch
directory (another pod, no shared volume) resumes from the checkpoints in the bucket.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard_trainer.contracts import ArtifactMetadata, TrainingResult
from tests.integration.storage.s3_server import S3Server
from tests.unit.trainer.support import trainer_env

RUN_PREFIX = "runs/local/example/local/g1/"


def _attempt(
    s3_server: S3Server, bucket: str, tmp_path: Path, attempt: int, epochs: int
) -> subprocess.CompletedProcess[str]:
    scratch = tmp_path / f"scratch-{attempt}"  # each attempt's pod starts with an empty one
    env = trainer_env(
        tmp_path / f"termination-{attempt}",
        s3_server.env(
            MODELYARD_OUTPUT_URI=f"s3://{bucket}/runs", MODELYARD_OUTPUT_DIR=str(scratch)
        ),
    )
    command = [sys.executable, "-m", "modelyard_trainer.sdk.example", "--epochs", str(epochs)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_a_script_checkpoints_publishes_and_resumes_through_s3(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3_server.client()
    first = _attempt(s3_server, bucket, tmp_path, 1, epochs=3)
    assert first.returncode == 0, first.stderr[-5000:]
    result = TrainingResult.model_validate_json(first.stdout.strip().splitlines()[-1])
    assert result.artifact_uri == f"s3://{bucket}/{RUN_PREFIX.rstrip('/')}"
    model = client.get_object(Bucket=bucket, Key=RUN_PREFIX + result.model_file)["Body"].read()
    assert hashlib.sha256(model).hexdigest() == result.sha256
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert RUN_PREFIX + "metadata.json" in keys
    assert RUN_PREFIX + "checkpoints/epoch-000003.pt" in keys

    second = _attempt(s3_server, bucket, tmp_path, 2, epochs=5)
    assert second.returncode == 0, second.stderr[-5000:]
    assert "pulled" in second.stderr and "resuming from" in second.stderr
    metadata = ArtifactMetadata.model_validate_json(
        client.get_object(Bucket=bucket, Key=RUN_PREFIX + "metadata.json")["Body"].read()
    )
    assert metadata.training.resumed_from_epoch == 3 and metadata.training.epochs_run == 5
    assert metadata.export.parity.passed
