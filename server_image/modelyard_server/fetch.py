"""`python -m modelyard_server.fetch --source PATH --dest PATH [--sha256 HEX]`.

The init container of a serving pod: copies the model from where it is stored (today a
mounted volume path; object storage plugs in behind `open_source`) into the pod's own
volume, verifying its sha256 on the way. The copy is atomic (temp file + rename), so the
server never sees half a model. On failure it writes a LoadFailure to the termination log
and exits with EXIT_LOAD_FAILURE.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from modelyard_server.contracts import (
    EXIT_CONFIG_ERROR,
    EXIT_LOAD_FAILURE,
    EXIT_OK,
    LoadFailureReason,
)
from modelyard_server.termination import DEFAULT_TERMINATION_LOG, report_load_failure

_CHUNK = 1024 * 1024


class FetchError(Exception):
    def __init__(self, reason: LoadFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: LoadFailureReason = reason
        self.message = message


@contextlib.contextmanager
def open_source(source: str) -> Iterator[BinaryIO]:
    """A readable stream of the model at `source`: a path or a file:// URI."""
    parsed = urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise FetchError(
            "FetchFailed", f"cannot fetch {source}: scheme {parsed.scheme!r} is not supported"
        )
    path = Path(parsed.path if parsed.scheme == "file" else source)
    if not path.is_file():
        raise FetchError("ModelNotFound", f"no model file at {path}")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise FetchError("FetchFailed", f"cannot read {path}: {exc}") from None
    with handle:
        yield handle


def fetch_model(source: str, dest: Path, sha256: str | None = None) -> str:
    """Copy `source` to `dest` atomically; the sha256 of what was copied.

    Raises FetchError (ModelNotFound, ChecksumMismatch or FetchFailed); `dest` is then
    left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    # mkstemp makes the file private; the server container may run as another user.
    os.fchmod(fd, 0o644)
    try:
        with open_source(source) as src, os.fdopen(fd, "wb") as out:
            try:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise FetchError(
                    "FetchFailed", f"copying {source} to {dest} failed: {exc}"
                ) from None
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise FetchError(
                "ChecksumMismatch", f"sha256 of {source} is {actual}, expected {sha256.lower()}"
            )
        os.replace(tmp, dest)
        return actual
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard_server.fetch",
        description="Copy a model into place and verify its sha256 (init container).",
    )
    parser.add_argument("--source", required=True, help="model path (or file:// URI) to copy")
    parser.add_argument("--dest", required=True, help="where the model goes")
    parser.add_argument("--sha256", default=None, help="expected sha256 (64 hex digits)")
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
        digest = fetch_model(args.source, Path(args.dest), args.sha256)
    except FetchError as exc:
        report_load_failure(args.termination_log, exc.reason, exc.message)
        return EXIT_LOAD_FAILURE
    size = Path(args.dest).stat().st_size
    print(f"fetched {args.source} -> {args.dest} ({size} bytes, sha256 {digest})", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
