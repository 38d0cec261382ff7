"""Storage URIs as typed values: `pvc://claim/path`, `s3://bucket/key`, local paths.

Stdlib only: the operator validates URIs with these functions, and the operator must never
import boto3. Every error names the field that held the URI, so that a user sees which part
of a spec is wrong.

This is the one parser of storage paths. A path may never climb out of its claim, bucket or
directory: `..` segments are refused everywhere; pvc://, s3:// and file:// paths also refuse
empty and `.` segments (they are never needed and hide what a path names), backslashes (read
as separators by some clients) and NUL bytes. A plain local path (a laptop's `--output ./out`)
may hold `.` and empty segments, never `..`. Where a path becomes a file, the file-system
backend (local.py) also checks, symlinks resolved, that it stays under its mount.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

# Bucket names as S3 accepts them (3-63 characters, lower case, digits, dots, hyphens).
S3_BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
PVC_CLAIM_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"

# Patterns for the CRDs' OpenAPI schemas (the API server checks them before any CEL rule).
PVC_URI_PATTERN = rf"^pvc://{PVC_CLAIM_PATTERN}(/[^\s]*)?$"
S3_URI_PATTERN = rf"^s3://{S3_BUCKET_PATTERN}(/[^\s]*)?$"
# Where storage is allowed: a claim or a bucket, each with an optional path.
STORAGE_URI_PATTERN = rf"^(pvc://{PVC_CLAIM_PATTERN}|s3://{S3_BUCKET_PATTERN})(/[^\s]*)?$"

# Where the pods mount the claims that pvc:// URIs name: <root>/<claim>/<path>.
ENV_PVC_MOUNT_ROOT = "MODELYARD_PVC_MOUNT_ROOT"
DEFAULT_PVC_MOUNT_ROOT = "/mnt/pvc"

_S3 = re.compile(rf"^s3://(?P<bucket>{S3_BUCKET_PATTERN})(?:/(?P<key>[^\s]*))?$")
_PVC = re.compile(rf"^pvc://(?P<claim>{PVC_CLAIM_PATTERN})(?:/(?P<path>[^\s]*))?$")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


class UriError(ValueError):
    """A URI that cannot be used; the message names the field and says what is wrong."""


@dataclass(frozen=True)
class S3Uri:
    """`s3://bucket/key`: key is '' for the bucket itself and never starts with '/'."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


@dataclass(frozen=True)
class PvcUri:
    """`pvc://claim/path`: path is relative to the claim's root ('' for the root)."""

    claim: str
    path: str

    def __str__(self) -> str:
        return f"pvc://{self.claim}/{self.path}" if self.path else f"pvc://{self.claim}"

    def local_path(self, mount_root: str) -> PurePosixPath:
        """Where the claim's file is inside a pod that mounts claims under `mount_root`."""
        return PurePosixPath(mount_root, self.claim, self.path)


@dataclass(frozen=True)
class LocalUri:
    """A path on this machine (a plain path or file:///path)."""

    path: str

    def __str__(self) -> str:
        return self.path


StorageUri = S3Uri | PvcUri | LocalUri


def is_s3(uri: str | None) -> bool:
    return uri is not None and uri.startswith("s3://")


def check_relative_path(path: str, field: str, uri: str | None = None) -> str:
    """`path` (relative, '/'-separated) when every segment is a plain name; else UriError.

    `uri` is what the error quotes (the whole URI the path came from); by default the path.
    """
    shown = repr(uri if uri is not None else path)
    if "\x00" in path:
        raise UriError(f"{field}: {shown} holds a NUL byte")
    if "\\" in path:
        raise UriError(f"{field}: {shown} holds a backslash; separate path segments with '/'")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty" if segment == "" else f"a {segment!r}"
            raise UriError(
                f"{field}: {shown} has {what} path segment; a storage path must name its file "
                "directly, without '.', '..' or '//'"
            )
    return path


def _path_below(rest: str | None, field: str, uri: str) -> str:
    """The path after a claim or bucket: '' or checked segments (one trailing '/' allowed)."""
    if not rest:
        return ""
    rest = rest.removesuffix("/")
    return check_relative_path(rest, field, uri) if rest else ""


def _check_local_path(path: str, field: str, uri: str) -> str:
    if "\x00" in path:
        raise UriError(f"{field}: {uri!r} holds a NUL byte")
    if ".." in path.split("/"):
        raise UriError(
            f"{field}: {uri!r} has a '..' path segment; name the file without climbing up"
        )
    return path


def parse_uri(uri: str, field: str = "uri") -> StorageUri:
    """The typed value of `uri`; UriError naming `field` when it is malformed."""
    if uri.startswith("s3://"):
        match = _S3.match(uri)
        if match is None:
            raise UriError(
                f"{field}: {uri!r} is not a valid s3://<bucket>/<key> URI (bucket names are "
                "3-63 lower-case letters, digits, dots and hyphens; no spaces)"
            )
        return S3Uri(match.group("bucket"), _path_below(match.group("key"), field, uri))
    if uri.startswith("pvc://"):
        match = _PVC.match(uri)
        if match is None:
            raise UriError(
                f"{field}: {uri!r} is not a valid pvc://<claim>/<path> URI (claim names are "
                "lower-case DNS names; no spaces)"
            )
        return PvcUri(match.group("claim"), _path_below(match.group("path"), field, uri))
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise UriError(f"{field}: {uri!r} must be file:///<absolute path>")
        return LocalUri("/" + _path_below(path[1:], field, uri))
    scheme = _SCHEME.match(uri)
    if scheme is not None:
        raise UriError(
            f"{field}: scheme {scheme.group('scheme')!r} of {uri!r} is not supported "
            "(use s3://, pvc://, file:// or a plain path)"
        )
    if not uri:
        raise UriError(f"{field}: the URI is empty")
    return LocalUri(_check_local_path(uri, field, uri))


def parse_s3_uri(uri: str, field: str = "uri") -> S3Uri:
    parsed = parse_uri(uri, field)
    if not isinstance(parsed, S3Uri):
        raise UriError(f"{field}: {uri!r} is not an s3:// URI")
    return parsed


def join_uri(base: str, *parts: str) -> str:
    """`base` with relative parts appended by single slashes (any scheme, or a directory).

    Empty parts and the slashes around each part are dropped; a part that would climb
    (`..`) or hide a segment (`.`, `//`) is a UriError.
    """
    pieces = [p.strip("/") for p in parts]
    for piece in pieces:
        if piece:
            check_relative_path(piece, "path")
    return "/".join([base.rstrip("/"), *(p for p in pieces if p)])
