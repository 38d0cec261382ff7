"""The file-system backend: plain paths, file:// URIs and pvc:// claims mounted in the pod."""

from __future__ import annotations

import shutil
from pathlib import Path

from modelyard_storage.digest import sha256_of
from modelyard_storage.errors import StorageError, StorageErrorReason
from modelyard_storage.store import Store, read_chunks, write_stream_atomically
from modelyard_storage.uri import LocalUri, PvcUri, UriError, parse_uri


class LocalStore(Store):
    """Files on a mounted volume; pvc://claim/path is <mount_root>/claim/path."""

    def __init__(self, pvc_mount_root: str) -> None:
        self.pvc_mount_root = pvc_mount_root

    def path(self, uri: str) -> Path:
        try:
            parsed = parse_uri(uri)
        except UriError as error:
            raise StorageError("InvalidUri", str(error)) from None
        if isinstance(parsed, PvcUri):
            return Path(parsed.local_path(self.pvc_mount_root))
        if isinstance(parsed, LocalUri):
            return Path(parsed.path)
        raise StorageError("InvalidUri", f"{uri} is not a local or pvc:// URI")

    def download(self, uri: str, dest: Path, sha256: str | None = None) -> str:
        path = self.path(uri)
        if not path.is_file():
            raise StorageError("NotFound", f"no file at {path} (from {uri})")
        try:
            handle = path.open("rb")
        except OSError as error:
            reason: StorageErrorReason = (
                "AccessDenied" if isinstance(error, PermissionError) else "Failed"
            )
            raise StorageError(reason, f"cannot read {path}: {error.strerror}") from None
        with handle:
            return write_stream_atomically(read_chunks(handle), dest, uri, [sha256])

    def upload(self, source: Path, uri: str) -> str:
        path = self.path(uri)
        if path.resolve() == source.resolve():
            return sha256_of(source)
        with source.open("rb") as handle:
            return write_stream_atomically(read_chunks(handle), path, str(source), [])

    def exists(self, uri: str) -> bool:
        return self.path(uri).is_file()

    def listdir(self, prefix: str) -> list[str]:
        root = self.path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def delete(self, uri: str) -> None:
        path = self.path(uri)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
