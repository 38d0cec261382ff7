"""The serving pods' fetch init container against a real S3 server: success, cache, failures.

Each failure must end as a LoadFailure whose reason names the cause and whose message says
what to fix, with no credential in it (the operator copies it into status).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from modelyard_server import contracts
from modelyard_server.contracts import parse_load_failure
from tests.integration.storage.s3_server import S3Server, free_port
from tests.unit.server.onnx_models import mlp, save


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(mlp([4, 8, 3], seed=3), tmp_path_factory.mktemp("model") / "model.onnx")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upload(server: S3Server, bucket: str, key: str, path: Path) -> str:
    from modelyard_storage.store import open_store

    env = server.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return open_store(f"s3://{bucket}/{key}").upload(path, f"s3://{bucket}/{key}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fetch(
    env: dict[str, str], source: str, dest: Path, log: Path, sha256: str | None = None
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "modelyard_server.fetch", "--source", source]
    args += ["--dest", str(dest), "--termination-log", str(log)]
    if sha256:
        args += ["--sha256", sha256]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELYARD_S3_"))}
    return subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def _assert_failure(
    result: subprocess.CompletedProcess[str], log: Path, reason: str, server: S3Server
) -> str:
    assert result.returncode == contracts.EXIT_LOAD_FAILURE, result.stderr
    failure = parse_load_failure(log.read_text())
    assert failure is not None, log.read_text()
    assert failure.reason == reason, failure
    everything = failure.message + result.stdout + result.stderr
    assert server.secret_key not in everything
    assert "Traceback" not in result.stderr
    return failure.message


def test_fetch_from_s3_verifies_caches_and_serves(
    s3_server: S3Server, bucket: str, model_file: Path, tmp_path: Path
) -> None:
    digest = _upload(s3_server, bucket, "models/m1/model.onnx", model_file)
    assert digest == _sha(model_file)
    dest = tmp_path / "models" / "model.onnx"
    log = tmp_path / "termination-log"
    uri = f"s3://{bucket}/models/m1/model.onnx"

    first = _fetch(s3_server.env(), uri, dest, log, digest)
    assert first.returncode == 0, first.stderr
    assert dest.read_bytes() == model_file.read_bytes()
    assert "fetched" in first.stdout
    assert not log.exists()

    # A restarted init container finds the verified copy and downloads nothing: even with
    # the endpoint gone it succeeds.
    dead = s3_server.env(MODELYARD_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    again = _fetch(dead, uri, dest, log, digest)
    assert again.returncode == 0, again.stderr
    assert "kept the cached copy" in again.stdout

    # A damaged cached copy is not trusted: fetched again and verified.
    dest.write_bytes(b"damaged")
    third = _fetch(s3_server.env(), uri, dest, log, digest)
    assert third.returncode == 0, third.stderr
    assert "fetched" in third.stdout and _sha(dest) == digest

    # The server loads what the fetcher left and is ready.
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_SERVER_")}
    server_env["MODELYARD_SERVER_SHUTDOWN_DELAY_SECONDS"] = "0"
    server_env["MODELYARD_SERVER_INTRA_OP_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard_server", "--model", str(dest), "--sha256", digest,
         "--host", "127.0.0.1", "--port", str(port), "--termination-log", str(log)],
        env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=1
                ) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_tampered_object_is_refused(
    s3_server: S3Server, bucket: str, model_file: Path, tmp_path: Path
) -> None:
    digest = _upload(s3_server, bucket, "m/model.onnx", model_file)
    # Tamper with the stored object behind the server's back (versitygw keeps objects as
    # files): the bytes change, the recorded sha256 does not.
    stored = s3_server.data_dir / bucket / "m" / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = tmp_path / "model.onnx"
    log = tmp_path / "termination-log"
    for expected in (digest, None):  # with the spec's sha256, and without one
        result = _fetch(s3_server.env(), f"s3://{bucket}/m/model.onnx", dest, log, expected)
        message = _assert_failure(result, log, "ChecksumMismatch", s3_server)
        assert f"s3://{bucket}/m/model.onnx" in message
        assert expected is None or expected in message
        assert not dest.exists()
        assert list(tmp_path.iterdir()) == [log]


def test_object_that_differs_from_its_recorded_sha256_is_refused(
    s3_server: S3Server, bucket: str, model_file: Path, tmp_path: Path
) -> None:
    # Consistent for the store (its own checksum matches), but not what was published.
    recorded = "0" * 64
    s3_server.client().put_object(
        Bucket=bucket, Key="model.onnx", Body=model_file.read_bytes(),
        Metadata={"sha256": recorded},
    )  # fmt: skip
    log = tmp_path / "termination-log"
    result = _fetch(s3_server.env(), f"s3://{bucket}/model.onnx", tmp_path / "m", log)
    message = _assert_failure(result, log, "ChecksumMismatch", s3_server)
    assert recorded in message and _sha(model_file) in message


def test_missing_object_and_missing_bucket(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    result = _fetch(s3_server.env(), f"s3://{bucket}/nothing/model.onnx", tmp_path / "m", log)
    message = _assert_failure(result, log, "ModelNotFound", s3_server)
    assert f"s3://{bucket}/nothing/model.onnx" in message and "no such object" in message

    result = _fetch(s3_server.env(), "s3://no-such-bucket/model.onnx", tmp_path / "m", log)
    message = _assert_failure(result, log, "BucketNotFound", s3_server)
    assert "bucket 'no-such-bucket'" in message and "does not exist" in message
    assert s3_server.endpoint in message


def test_wrong_credentials_are_denied_without_leaking_them(
    s3_server: S3Server, bucket: str, model_file: Path, tmp_path: Path
) -> None:
    _upload(s3_server, bucket, "model.onnx", model_file)
    log = tmp_path / "termination-log"
    wrong = "wrong-" + s3_server.secret_key[::-1]
    result = _fetch(
        s3_server.env(AWS_SECRET_ACCESS_KEY=wrong), f"s3://{bucket}/model.onnx",
        tmp_path / "m", log,
    )  # fmt: skip
    message = _assert_failure(result, log, "AccessDenied", s3_server)
    assert wrong not in message + result.stderr + result.stdout
    assert "access denied" in message and "s3.secretName" in message

    unknown = s3_server.env(AWS_ACCESS_KEY_ID="nobody-knows-me")
    result = _fetch(unknown, f"s3://{bucket}/model.onnx", tmp_path / "m", log)
    _assert_failure(result, log, "AccessDenied", s3_server)


def test_unreachable_endpoint(s3_server: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _fetch(
        s3_server.env(MODELYARD_S3_ENDPOINT_URL=endpoint), "s3://models/model.onnx",
        tmp_path / "m", log,
    )  # fmt: skip
    message = _assert_failure(result, log, "StorageUnreachable", s3_server)
    assert endpoint in message and "unreachable" in message
    assert time.monotonic() - started < 60


def test_a_model_over_the_size_limit_is_refused(
    s3_server: S3Server, bucket: str, model_file: Path, tmp_path: Path
) -> None:
    _upload(s3_server, bucket, "big/model.onnx", model_file)
    size = model_file.stat().st_size
    uri = f"s3://{bucket}/big/model.onnx"
    dest, log = tmp_path / "models" / "model.onnx", tmp_path / "termination-log"
    limit = s3_server.env(MODELYARD_MAX_MODEL_BYTES=str(size - 1))
    message = _assert_failure(_fetch(limit, uri, dest, log), log, "FetchFailed", s3_server)
    assert message == f"{uri} holds more than the limit of {size - 1} bytes; not downloaded"
    assert not dest.exists() and not any(dest.parent.glob("*"))
    exact = s3_server.env(MODELYARD_MAX_MODEL_BYTES=str(size))
    assert _fetch(exact, uri, dest, log).returncode == 0
    assert dest.read_bytes() == model_file.read_bytes()
