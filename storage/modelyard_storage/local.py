"""The file-system backend: plain paths, file:// URIs and pvc:// claims mounted in the pod.

Every URI or relative name becomes a file here, through `local_path` and `path_below`: the
path is parsed by `modelyard_storage.uri` (no `..`), then resolved (symlinks followed) and
refused unless it stays under its mount: the claim's directory for pvc:// URIs and for plain
paths into the claims' mount root, the given directory for relative names. A symlink that a
user planted in a claim can therefore not make the trainer or the fetcher read
/proc/self/environ or another claim.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from modelyard_storage.digest import sha256_of
from modelyard_storage.errors import StorageError, StorageErrorReason
from modelyard_storage.store import Store, read_chunks, write_stream_atomically
from modelyard_storage.uri import (
    PvcUri,
    S3Uri,
    UriError,
    check_relative_path,
    parse_uri,
)


def _claim_root(path: Path, mount_root: Path) -> Path | None:
    """The claim directory that a plain path points into, when it is under the mount root."""
    absolute = Path(path).absolute()
    if not absolute.is_relative_to(mount_root):
        return None
    inside = absolute.relative_to(mount_root).parts
    return mount_root / inside[0] if inside else mount_root


def _contained(path: Path, root: Path, field: str, shown: str) -> Path:
    """`path` with symlinks resolved, when it stays under `root` (also resolved)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        # The target is not named: it may be a file whose very name is private.
        raise StorageError(
            "InvalidUri",
            f"{field}: {shown!r} leads outside {root} (through a symbolic link); "
            "storage paths must stay under their mount",
        )
    return resolved


def local_path(uri: str, mount_root: str, field: str = "uri") -> Path:
    """The file that `uri` (pvc://, file:// or a plain path) names on this machine.

    pvc://claim/path is <mount_root>/claim/path. StorageError("InvalidUri") naming `field` when
    the URI is malformed or its file lies outside its claim once symlinks are resolved.
    """
    try:
        parsed = parse_uri(uri, field)
    except UriError as error:
        raise StorageError("InvalidUri", str(error)) from None
    if isinstance(parsed, S3Uri):
        raise StorageError("InvalidUri", f"{field}: {uri!r} is not a local or pvc:// URI")
    root: Path | None
    if isinstance(parsed, PvcUri):
        root = Path(mount_root, parsed.claim)
        path = root / parsed.path
    else:
        path = Path(parsed.path)
        root = _claim_root(path, Path(mount_root))
        if root is None:
            return path  # a path of this machine, not of a claim: nothing to stay under
    return _contained(path, root, field, uri)


def path_below(root: Path, relative: str, field: str = "path") -> Path:
    """`root/relative` for a relative name from elsewhere (a listing, metadata, the spec).

    StorageError("InvalidUri") naming `field` when the name climbs, or leads out of `root`
    through a symlink.
    """
    try:
        check_relative_path(relative, field)
    except UriError as error:
        raise StorageError("InvalidUri", str(error)) from None
    return _contained(root / relative, root, field, relative)


class LocalStore(Store):
    """Files on a mounted volume; pvc://claim/path is <mount_root>/claim/path."""

    def __init__(self, pvc_mount_root: str) -> None:
        self.pvc_mount_root = pvc_mount_root

    def path(self, uri: str) -> Path:
        return local_path(uri, self.pvc_mount_root)

    def download(
        self, uri: str, dest: Path, sha256: str | None = None, max_bytes: int | None = None
    ) -> str:
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
            return write_stream_atomically(
                read_chunks(handle), dest, uri, [sha256], max_bytes, path.stat().st_size
            )

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
