"""A real S3-compatible server (versitygw over a temp directory) for the storage tests.

Built by hack/s3-server.sh from its Go module; started on a free loopback port with root
keys that only the tests know. Wrong keys are refused by the server itself (signature check).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

SCRIPT = ROOT / "hack" / "s3-server.sh"
BUILD_TIMEOUT_S = 900
START_TIMEOUT_S = 30


class S3ServerUnavailable(RuntimeError):
    """The server binary cannot be built here (no Go, no module proxy)."""


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path

    def env(self, **overrides: str) -> dict[str, str]:
        """What a pod gets: endpoint as plain env, keys as they would come from the Secret."""
        env = {
            "MODELYARD_S3_ENDPOINT_URL": self.endpoint,
            "MODELYARD_S3_REGION": "us-east-1",
            "MODELYARD_S3_ADDRESSING_STYLE": "path",
            "MODELYARD_S3_CONNECT_TIMEOUT_SECONDS": "2",
            "MODELYARD_S3_MAX_ATTEMPTS": "2",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        env.update(overrides)
        return env

    def client(self) -> Any:
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def binary() -> Path:
    """The server binary, built when missing; S3ServerUnavailable when it cannot be."""
    try:
        subprocess.run(
            [str(SCRIPT), "build"], check=True, timeout=BUILD_TIMEOUT_S, capture_output=True
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise S3ServerUnavailable(
            f"hack/s3-server.sh could not build versitygw: {error}: "
            f"{detail.decode(errors='replace')[-500:]}"
        ) from None
    path = subprocess.run(
        [str(SCRIPT), "--print-bin"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    return Path(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(data_dir: Path, log_path: Path) -> Iterator[S3Server]:
    """Start the server, wait until it answers, yield it, stop it."""
    exe = binary()
    port = free_port()
    server = S3Server(
        endpoint=f"http://127.0.0.1:{port}",
        access_key="modelyard" + secrets.token_hex(4),
        secret_key=secrets.token_urlsafe(24),
        data_dir=data_dir,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "ROOT_ACCESS_KEY_ID": server.access_key,
        "ROOT_SECRET_ACCESS_KEY": server.secret_key,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(exe), "--port", f"127.0.0.1:{port}", "--quiet", "posix", str(data_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"versitygw exited with {process.returncode}: {log_path.read_text()[-2000:]}"
                )
            try:
                server.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
