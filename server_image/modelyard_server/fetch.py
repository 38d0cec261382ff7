"""`python -m modelyard_server.fetch --source URI --dest PATH [--sha256 HEX]`.

The init container of a serving pod: copies the model from where it is stored (a mounted
volume path, file:// or s3://bucket/key) into the pod's own volume, verifying its sha256 on
the way. The copy is atomic (temp file + rename), so the server never sees half a model. A
copy already in place whose sha256 matches is kept (a restarted pod does not download again).
On failure it writes a LoadFailure whose reason names the cause (ModelNotFound,
BucketNotFound, AccessDenied, StorageUnreachable, ChecksumMismatch, FetchFailed) to the
termination log and exits with EXIT_LOAD_FAILURE; the operator turns that into the model's
FailedToLoad state and condition. s3:// reads its endpoint from MODELYARD_S3_* and its keys
from AWS_* variables; every failure message is scrubbed of credential values.

The source is parsed by `modelyard_storage.uri` (no `..`); a path into the claims' mount root
(/mnt/pvc/<claim>/..., or pvc://claim/path) must stay in its claim once symlinks are resolved.
A model over MODELYARD_MAX_MODEL_BYTES (default 2 GiB, ONNX's own limit for one file) is
refused from its size, before it is copied (FetchFailed, naming the limit).

With --metadata-dest, the run's metadata.json beside the source (the trainer's reference
statistics for drift monitoring) is copied too, when there is one: it is optional, so its
absence or any failure to copy it is only a warning, and the model is served either way. The
server uses it only when it names the served file's sha256 (a stale metadata.json in a user's
directory describes another model).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from modelyard_server.contracts import (
    EXIT_CONFIG_ERROR,
    EXIT_LOAD_FAILURE,
    EXIT_OK,
    LoadFailureReason,
)
from modelyard_server.termination import DEFAULT_TERMINATION_LOG, report_load_failure
from modelyard_storage.digest import sha256_of
from modelyard_storage.errors import StorageError, StorageErrorReason
from modelyard_storage.redact import scrub
from modelyard_storage.store import (
    DEFAULT_MAX_MODEL_BYTES,
    ENV_MAX_MODEL_BYTES,
    byte_limit,
    open_store,
)
from modelyard_trainer.contracts import METADATA_FILE

_REASONS: dict[StorageErrorReason, LoadFailureReason] = {
    "NotFound": "ModelNotFound",
    "BucketNotFound": "BucketNotFound",
    "AccessDenied": "AccessDenied",
    "Unreachable": "StorageUnreachable",
    "ChecksumMismatch": "ChecksumMismatch",
    "TooLarge": "FetchFailed",
    "InvalidUri": "InvalidConfig",
    "Failed": "FetchFailed",
}


class FetchError(Exception):
    def __init__(self, reason: LoadFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: LoadFailureReason = reason
        self.message = message


def cached(dest: Path, sha256: str | None) -> bool:
    """A previous fetch left exactly the expected model in place."""
    if sha256 is None or not dest.is_file():
        return False
    try:
        return sha256_of(dest) == sha256.lower()
    except OSError:
        return False


def fetch_model(
    source: str, dest: Path, sha256: str | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[str, bool]:
    """Copy `source` to `dest` atomically; (its sha256, whether the cached copy was kept).

    Raises FetchError with the cause as its reason; `dest` is then left as it was.
    """
    if cached(dest, sha256):
        assert sha256 is not None
        return sha256.lower(), True
    try:
        max_bytes = byte_limit(environ, ENV_MAX_MODEL_BYTES, DEFAULT_MAX_MODEL_BYTES)
        store = open_store(source, environ)
        return store.download(source, dest, sha256, max_bytes), False
    except StorageError as error:
        raise FetchError(_REASONS[error.reason], scrub(error.message, environ)) from None


# metadata.json with the reference of MAX_REFERENCE_FEATURES columns is a few hundred KiB.
MAX_METADATA_BYTES = 16 * 1024 * 1024


def fetch_metadata(source: str, dest: Path, environ: Mapping[str, str] = os.environ) -> str:
    """Copy the metadata.json beside `source` to `dest` if there is one; what happened, in words.

    Never raises for a storage failure: the model is served without drift monitoring then.
    """
    beside = source.rsplit("/", 1)[0] + "/" + METADATA_FILE if "/" in source else METADATA_FILE
    try:
        open_store(beside, environ).download(beside, dest, None, MAX_METADATA_BYTES)
    except StorageError as error:
        if error.reason == "NotFound":
            return f"no {METADATA_FILE} beside the model: drift monitoring off"
        return f"{METADATA_FILE} not copied ({scrub(error.message, environ)}): drift monitoring off"
    return f"copied {beside} -> {dest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard_server.fetch",
        description="Copy a model into place and verify its sha256 (init container).",
    )
    parser.add_argument(
        "--source", required=True, help="model to copy: a path, file:// or s3://bucket/key URI"
    )
    parser.add_argument("--dest", required=True, help="where the model goes")
    parser.add_argument("--sha256", default=None, help="expected sha256 (64 hex digits)")
    parser.add_argument(
        "--metadata-dest",
        default=None,
        help=f"where the {METADATA_FILE} beside the source goes, when there is one (optional)",
    )
    parser.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help="file that receives the LoadFailure record on failure",
    )
    args = parser.parse_args(argv)
    if args.sha256 is not None and not re.fullmatch(r"[0-9A-Fa-f]{64}", args.sha256):
        report_load_failure(
            args.termination_log, "InvalidConfig", f"--sha256 {args.sha256!r} is not 64 hex digits"
        )
        return EXIT_CONFIG_ERROR
    try:
        digest, kept = fetch_model(args.source, Path(args.dest), args.sha256)
    except FetchError as exc:
        report_load_failure(args.termination_log, exc.reason, exc.message)
        return EXIT_LOAD_FAILURE
    except Exception as exc:
        # Anything else leaves a scrubbed record too: with FallbackToLogsOnError an empty
        # termination log would let the log tail (a traceback) become the message.
        message = scrub(f"{type(exc).__name__}: {exc}")
        report_load_failure(args.termination_log, "FetchFailed", message)
        return EXIT_LOAD_FAILURE
    size = Path(args.dest).stat().st_size
    how = "kept the cached copy of" if kept else "fetched"
    print(f"{how} {args.source} -> {args.dest} ({size} bytes, sha256 {digest})", flush=True)
    if args.metadata_dest is not None:
        print(fetch_metadata(args.source, Path(args.metadata_dest)), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
