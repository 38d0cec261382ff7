"""Storage failures with a cause that callers map to their own reasons (exit codes, states)."""

from __future__ import annotations

from typing import Literal

StorageErrorReason = Literal[
    "NotFound",
    "BucketNotFound",
    "AccessDenied",
    "Unreachable",
    "ChecksumMismatch",
    "TooLarge",
    "InvalidUri",
    "Failed",
]


class StorageError(Exception):
    """A storage operation failed; `message` names the object and the cause, never a secret."""

    def __init__(self, reason: StorageErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: StorageErrorReason = reason
        self.message = message
