"""One interface for every place a model or a data file lives; `open_store` picks the backend.

Downloads land atomically (temp file beside the destination, then rename) and are verified
against the expected sha256 and against the sha256 that our own uploads record, so a reader
never sees half a file or a corrupted one. `publish_directory` uploads a directory so that a
reader that requires its marker file sees it only when complete: the marker goes last.

Downloads are capped: a caller passes `max_bytes` (the fetcher's default is
MODELYARD_MAX_MODEL_BYTES, the trainer's MODELYARD_MAX_DATA_BYTES; see `byte_limit`), and an
object over it is refused from its size before a byte is written and, should the size lie,
as soon as the stream passes the cap, so that no download can fill a volume or the memory
of the pod that reads it.

This module imports no boto3; the S3 backend is loaded only when an s3:// URI is opened, so
that the operator (which validates URIs) never pays for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

from modelyard_storage.digest import CHUNK_BYTES
from modelyard_storage.errors import StorageError
from modelyard_storage.uri import DEFAULT_PVC_MOUNT_ROOT, ENV_PVC_MOUNT_ROOT, is_s3, join_uri

ENV_MAX_MODEL_BYTES = "MODELYARD_MAX_MODEL_BYTES"
ENV_MAX_DATA_BYTES = "MODELYARD_MAX_DATA_BYTES"
# ONNX models are single protobuf files, which cannot exceed 2 GiB.
DEFAULT_MAX_MODEL_BYTES = 2 << 30
# Data files are read whole into memory by the trainer.
DEFAULT_MAX_DATA_BYTES = 4 << 30


def byte_limit(environ: Mapping[str, str], name: str, default: int) -> int:
    """The byte cap in the variable `name` (a positive integer), or `default` when unset."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StorageError("InvalidUri", f"environment {name}={raw!r} is not a positive integer")
    return value


class Store(ABC):
    """Files addressed by URI. Every method raises StorageError with a clear reason."""

    @abstractmethod
    def download(
        self, uri: str, dest: Path, sha256: str | None = None, max_bytes: int | None = None
    ) -> str:
        """Copy `uri` to `dest` atomically and return its sha256.

        ChecksumMismatch when it differs from `sha256` or from the one recorded at upload;
        TooLarge when it holds more than `max_bytes`; `dest` is then left as it was.
        """

    @abstractmethod
    def upload(self, source: Path, uri: str) -> str:
        """Store the file `source` at `uri` (atomically for readers); return its sha256."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object (file) is at `uri`."""

    @abstractmethod
    def listdir(self, prefix: str) -> list[str]:
        """Names of the objects below the directory `prefix`, relative to it, sorted."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove the object at `uri`; no error when it is already gone."""

    def publish_directory(
        self, source: Path, prefix: str, marker: str, skip_dirs: tuple[str, ...] = ()
    ) -> list[str]:
        """Upload every file below `source` to `prefix`, `marker` (relative name) last.

        Hidden files (temp files of atomic writes) and the top-level `skip_dirs` stay local.

        Readers that require the marker never see a partial directory: a single object
        write is atomic, and the marker is written only after everything else is in place.
        """
        names = sorted(
            str(path.relative_to(source))
            for path in source.rglob("*")
            if path.is_file()
            and not path.name.startswith(".")
            and path.relative_to(source).parts[0] not in skip_dirs
        )
        if marker not in names:
            raise StorageError("Failed", f"cannot publish {source}: it has no {marker}")
        for name in [n for n in names if n != marker] + [marker]:
            self.upload(source / name, join_uri(prefix, name))
        return names


def _too_large(source: str, max_bytes: int) -> StorageError:
    return StorageError(
        "TooLarge", f"{source} holds more than the limit of {max_bytes} bytes; not downloaded"
    )


def write_stream_atomically(
    chunks: Iterable[bytes],
    dest: Path,
    source: str,
    expected: Iterable[str | None],
    max_bytes: int | None = None,
    size: int | None = None,
) -> str:
    """Write `chunks` to `dest` through a temp file, check every expected sha256, rename.

    With `max_bytes`, a source whose announced `size` is over it is refused before anything
    is written, and one that streams more than it is cut off there.
    """
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _too_large(source, max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temporary = Path(name)
    # mkstemp makes the file private; another container (another user) may have to read it.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            try:
                for chunk in chunks:
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise _too_large(source, max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            except OSError as error:
                raise StorageError(
                    "Failed", f"writing {source} to {dest} failed: {error}"
                ) from None
        actual = digest.hexdigest()
        for want in expected:
            if want is not None and actual != want.lower():
                raise StorageError(
                    "ChecksumMismatch", f"sha256 of {source} is {actual}, expected {want.lower()}"
                )
        os.replace(temporary, dest)
        return actual
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read_chunks(handle: object) -> Iterable[bytes]:
    read = handle.read  # type: ignore[attr-defined]
    while chunk := read(CHUNK_BYTES):
        yield chunk


def open_store(uri: str, environ: Mapping[str, str] | None = None) -> Store:
    """The store that serves `uri`: S3 for s3://, the file system for pvc://, file:// and paths.

    s3:// reads the endpoint, region and addressing style from MODELYARD_S3_* variables and
    the credentials from AWS_* variables (the pod gets them from the CR's Secret).
    """
    environ = os.environ if environ is None else environ
    if is_s3(uri):
        from modelyard_storage.connection import S3Connection
        from modelyard_storage.s3 import S3Store

        try:
            connection = S3Connection.from_env(environ)
        except ValueError as error:
            raise StorageError("InvalidUri", f"S3 settings: {error}") from None
        return S3Store(connection)
    from modelyard_storage.local import LocalStore

    return LocalStore(environ.get(ENV_PVC_MOUNT_ROOT) or DEFAULT_PVC_MOUNT_ROOT)
