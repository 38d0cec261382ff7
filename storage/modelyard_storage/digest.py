"""sha256 of files and streams, the one checksum every layer verifies."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20
METADATA_SHA256 = "sha256"
"""User-metadata key (x-amz-meta-sha256) under which uploads record their sha256."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()
