"""One interface for every place a model or a data file lives; `open_store` picks the backend.

Downloads land atomically (temp file beside the destination, then rename) and are verified
against the expected sha256 and against the sha256 that our own uploads record, so a reader
never sees half a file or a corrupted one. `publish_directory` uploads a directory so that a
reader that requires its marker file sees it only when complete: the marker goes last.

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
from modelyard_storage.uri import is_s3

DEFAULT_PVC_MOUNT_ROOT = "/mnt/pvc"


class Store(ABC):
    """Files addressed by URI. Every method raises StorageError with a clear reason."""

    @abstractmethod
    def download(self, uri: str, dest: Path, sha256: str | None = None) -> str:
        """Copy `uri` to `dest` atomically and return its sha256.

        ChecksumMismatch when it differs from `sha256` or from the one recorded at upload;
        `dest` is then left as it was.
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
            self.upload(source / name, join(prefix, name))
        return names


def join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name.lstrip('/')}"


def write_stream_atomically(
    chunks: Iterable[bytes], dest: Path, source: str, expected: Iterable[str | None]
) -> str:
    """Write `chunks` to `dest` through a temp file, check every expected sha256, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temporary = Path(name)
    # mkstemp makes the file private; another container (another user) may have to read it.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                for chunk in chunks:
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

    return LocalStore(environ.get("MODELYARD_PVC_MOUNT_ROOT") or DEFAULT_PVC_MOUNT_ROOT)
