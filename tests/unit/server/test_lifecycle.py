"""Start and stop of a real server process: graceful shutdown, queue limit, load failures."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modelyard_server import contracts
from modelyard_server.contracts import parse_load_failure

from .conftest import ServerProcess, free_port, http_get

ROWS = 256  # rows per request to the slow model: tens of milliseconds of work each, even on
# a fast idle machine (at 64 rows, 32 queued requests drained within the 0.5 s delay there)


def _binary_request(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + rows.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _post(port: int, rows: np.ndarray) -> tuple[int, np.ndarray | None, dict[str, str], float]:
    """(status, output or None, headers, completion time); raises on connection errors."""
    body, headers = _binary_request(rows)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        done = time.monotonic()
        if response.status != 200:
            return response.status, None, dict(response.getheaders()), done
        length = int(response.getheader("Inference-Header-Content-Length") or "0")
        out = np.frombuffer(payload[length:], dtype="<f4").reshape(rows.shape)
        return 200, out, dict(response.getheaders()), done
    finally:
        conn.close()


def _single_latency(port: int) -> float:
    rows = np.ones((ROWS, 512), dtype=np.float32)
    _post(port, rows)
    started = time.monotonic()
    _post(port, rows)
    return time.monotonic() - started


def test_sigterm_fails_readiness_first_then_drains_every_in_flight_request(
    start_server, models: dict[str, Path]
) -> None:
    delay = 0.5
    server: ServerProcess = start_server(
        models["slow"], max_batch_size=1, shutdown_delay_seconds=delay, shutdown_grace_seconds=30
    )
    # Enough requests that the queue outlasts the delay by far, whatever the CPU's speed.
    clients = max(8, min(64, math.ceil(4 * delay / _single_latency(server.port))))
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((ROWS, 512)).astype(np.float32) for _ in range(clients)]
    results: list[tuple[int, np.ndarray | None, dict[str, str], float] | BaseException] = [
        RuntimeError("not run")
    ] * clients

    def client(i: int) -> None:
        try:
            results[i] = _post(server.port, inputs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while server.metric(contracts.METRIC_INFLIGHT_REQUESTS) < clients // 2:
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.01)

    server.proc.send_signal(signal.SIGTERM)
    term_at = time.monotonic()
    # Readiness fails at once, while the server still serves during the delay.
    status, body = http_get(server.url + "/v2/health/ready")
    assert status == 503 and json.loads(body)["ready"] is False
    assert http_get(server.url + "/v2/models/model/ready")[0] == 503
    assert http_get(server.url + "/v2/health/live")[0] == 200

    for thread in threads:
        thread.join(timeout=60)
    assert server.proc.wait(timeout=30) == 0, server.log()

    late = 0
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException), (i, result)
        status, out, _, done = result
        assert status == 200 and out is not None
        np.testing.assert_array_equal(out, inputs[i])
        late += done > term_at + delay
    # Some requests were still queued when the listener closed, and they were not dropped.
    assert late > 0, "the test did not keep requests in flight past the delay"
    assert "readiness off" in server.log()
    with pytest.raises(OSError):
        http_get(server.url + "/v2/health/live", timeout=2)


def test_full_queue_answers_503_with_retry_after(start_server, models: dict[str, Path]) -> None:
    server: ServerProcess = start_server(models["slow"], max_batch_size=1, max_queue_size=2)
    rows = np.ones((ROWS, 512), dtype=np.float32)
    statuses: list[tuple[int, dict[str, str]]] = []
    lock = threading.Lock()

    def client() -> None:
        status, _, headers, _ = _post(server.port, rows)
        with lock:
            statuses.append((status, headers))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(s for s, _ in statuses)
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}
    for status, headers in statuses:
        if status == 503:
            assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
    # The rejected requests are counted, and the server answers normally afterwards.
    assert server.metric(contracts.METRIC_REQUESTS_TOTAL + '{code="503"') == codes.count(503)
    assert _post(server.port, rows)[0] == 200


def _run_server(args: list[str], env_extra: dict[str, str], timeout: float = 60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_SERVER_")}
    env.update(env_extra)
    port = str(free_port())
    return subprocess.run(
        [sys.executable, "-m", "modelyard_server", "--host", "127.0.0.1", "--port", port, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("kind", "reason", "needle"),
    [
        ("corrupt", "InvalidModel", "ONNX Runtime cannot load"),
        ("checksum", "ChecksumMismatch", "expected " + "0" * 64),
        ("missing", "ModelNotFound", "no model file at"),
    ],
)
def test_load_failure_exits_with_a_clear_message(
    tmp_path: Path, models: dict[str, Path], kind: str, reason: str, needle: str
) -> None:
    model = tmp_path / "model.onnx"
    args = ["--model", str(model), "--termination-log", str(tmp_path / "termination-log")]
    if kind == "corrupt":
        model.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    elif kind == "checksum":
        model.write_bytes(models["mlp"].read_bytes())
        args += ["--sha256", "0" * 64]
    result = _run_server(args, {})
    assert result.returncode == contracts.EXIT_LOAD_FAILURE, result.stderr
    failure = parse_load_failure((tmp_path / "termination-log").read_text())
    assert failure is not None and failure.reason == reason
    assert needle in failure.message and str(model) in failure.message
    assert needle in result.stderr


def test_matching_sha256_is_accepted(start_server, models: dict[str, Path]) -> None:
    digest = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
    server: ServerProcess = start_server(models["mlp"], sha256=digest.upper())
    assert http_get(server.url + "/v2/health/ready")[0] == 200


def test_bad_setting_exits_2_naming_the_variable(tmp_path: Path, models: dict[str, Path]) -> None:
    log = tmp_path / "termination-log"
    result = _run_server(
        ["--model", str(models["mlp"]), "--termination-log", str(log)],
        {"MODELYARD_SERVER_MAX_BATCH_SIZE": "zero"},
    )
    assert result.returncode == contracts.EXIT_CONFIG_ERROR
    failure = parse_load_failure(log.read_text())
    assert failure is not None and failure.reason == "InvalidConfig"
    assert "MODELYARD_SERVER_MAX_BATCH_SIZE" in failure.message


def _fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard_server.fetch", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fetch_copies_and_verifies(tmp_path: Path, models: dict[str, Path]) -> None:
    digest = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
    dest = tmp_path / "model" / "model.onnx"
    result = _fetch("--source", str(models["mlp"]), "--dest", str(dest), "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == models["mlp"].read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    ("source", "sha", "reason"),
    [
        ("mlp", "0" * 64, "ChecksumMismatch"),
        ("/nonexistent/model.onnx", None, "ModelNotFound"),
        ("gs://bucket/model.onnx", None, "InvalidConfig"),
    ],
)
def test_fetch_failures_leave_a_load_failure(
    tmp_path: Path, models: dict[str, Path], source: str, sha: str | None, reason: str
) -> None:
    log = tmp_path / "termination-log"
    dest = tmp_path / "model.onnx"
    args = [
        "--source",
        str(models.get(source, source)),
        "--dest",
        str(dest),
        "--termination-log",
        str(log),
    ]
    if sha:
        args += ["--sha256", sha]
    result = _fetch(*args)
    assert result.returncode == contracts.EXIT_LOAD_FAILURE
    failure = parse_load_failure(log.read_text())
    assert failure is not None and failure.reason == reason, result.stderr
    assert not dest.exists() and list(tmp_path.iterdir()) == [log]


@pytest.mark.parametrize("which", ["port", "grpc-port"])
def test_port_in_use_exits_1_not_the_load_failure_code(models: dict[str, Path], which: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"port": str(free_port()), "grpc-port": str(free_port())}
        ports[which] = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "modelyard_server", "--model", str(models["mlp"]),
             "--host", "127.0.0.1", "--port", ports["port"], "--grpc-port", ports["grpc-port"]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == contracts.EXIT_SERVER_ERROR, result.stderr
    expected = "address already in use" if which == "port" else "gRPC server could not start"
    assert expected in result.stderr
