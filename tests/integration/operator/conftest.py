"""The operator as users run it: `python -m modelyard_operator`, a separate process, against
the local control plane, under its own user name so the audit log tells its writes apart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from tests.integration.operator.kinds import Objects
from tests.integration.support import CLUSTER_DIR, Cluster, wait_until

OPERATOR_USER = "modelyard-operator-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """Start, kill -9 and restart the operator; its log goes to .cluster/logs/."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = env or {}  # MODELYARD_* settings over the tests' defaults below
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELYARD_METRICS_PORT": str(self.metrics_port),
            "MODELYARD_HEALTH_PORT": str(self.health_port),
            "MODELYARD_PROGRESS_SECONDS": "1",
            "MODELYARD_RESYNC_SECONDS": "5",
            **self.env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelyard_operator"], env=env, stdout=log, stderr=log
        )
        wait_until(self.healthy, timeout=60, what="operator /healthz")

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"operator exited; see {self.log_path}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def kill(self) -> None:
        """kill -9: no cleanup, as a node failure or OOM kill would do."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    kubeconfig = cluster.user_kubeconfig(OPERATOR_USER, "system:masters")
    logs = CLUSTER_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    process = OperatorProcess(kubeconfig, logs / "operator-tests.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def objects(api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Objects:
    """The test's namespace, under Pod Security "restricted", with a bound models claim."""
    objects = Objects(api, namespace)
    objects.restrict_pod_security()
    objects.models_claim()
    return objects
