"""Fixtures of the object-storage tests: one real S3-compatible server per test session.

Every test here is marked `s3`; they skip (with the reason) only when the server binary
cannot be built on this machine. They need no Kubernetes cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.storage.s3_server import S3Server, S3ServerUnavailable, serve

STORAGE_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STORAGE_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    try:
        yield from serve(root / "data", root / "versitygw.log")
    except S3ServerUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket per test."""
    return s3_server.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
