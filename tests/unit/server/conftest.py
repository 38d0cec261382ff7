"""Fixtures that run the real server as a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .onnx_models import all_types, lookup_table, mlp, save, slow_identity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    termination_log: Path
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_hostport(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if http_get(self.url + "/v2/health/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def metric(self, name: str) -> float:
        """Sum of a metric's samples; `name` may end with a label prefix, e.g. 'x{code="503"'."""
        _, body = http_get(self.url + "/metrics")
        total = 0.0
        prefixes = (name,) if "{" in name else (name + "{", name + " ")
        for line in body.decode().splitlines():
            if line.startswith(prefixes):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "mlp": save(mlp([10, 20, 10], seed=1), root / "mlp.onnx"),
        "all_types": save(all_types(), root / "all_types.onnx"),
        "slow": save(slow_identity(), root / "slow.onnx"),
        "lookup": save(lookup_table(), root / "lookup.onnx"),
    }


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """start_server(model_path, wait=True, **settings) -> ServerProcess; all stopped at the end."""
    started: list[ServerProcess] = []
    root = tmp_path_factory.mktemp("servers")

    def start(model: Path | str, wait: bool = True, **settings: object) -> ServerProcess:
        port, grpc_port = free_port(), free_port()
        workdir = root / f"s{len(started)}"
        workdir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_SERVER_")}
        env["MODELYARD_SERVER_INTRA_OP_THREADS"] = "1"
        env["MODELYARD_SERVER_SHUTDOWN_DELAY_SECONDS"] = "0"
        env["MODELYARD_SERVER_GRPC_PORT"] = str(grpc_port)
        for key, value in settings.items():
            env["MODELYARD_SERVER_" + key.upper()] = str(value)
        termination_log = workdir / "termination-log"
        log_path = workdir / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "modelyard_server",
                    "--model", str(model),
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--termination-log", str(termination_log),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        server = ServerProcess(proc, port, log_path, termination_log, env, grpc_port)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def load_failure(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())
