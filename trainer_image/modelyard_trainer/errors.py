"""Failures that end a run, each tied to its exit code and CamelCase reason from the contracts."""

from __future__ import annotations

from .contracts import ExitCode, FailureReason


class TrainerError(Exception):
    """A failure the trainer understands; the message is written for the person who reads status."""

    exit_code: int = 1
    reason: FailureReason = "Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConfig(TrainerError):
    """The config (or the data it names) cannot work; retrying cannot help."""

    exit_code = int(ExitCode.CONFIG_INVALID)
    reason = "InvalidConfig"


class LossDiverged(TrainerError):
    """The loss became NaN/inf or crossed training.divergenceThreshold."""

    exit_code = int(ExitCode.LOSS_DIVERGED)
    reason = "LossDiverged"


class ParityCheckFailed(TrainerError):
    """ONNX Runtime disagrees with PyTorch beyond export.parityTolerance."""

    exit_code = int(ExitCode.PARITY_FAILED)
    reason = "ParityCheckFailed"


class NotPublished(TrainerError):
    """A spec.script run ended without publishing a model; running it again would do the same."""

    exit_code = int(ExitCode.CONFIG_INVALID)
    reason = "NotPublished"


class PeerLost(TrainerError):
    """Another worker vanished or stopped answering; a new attempt may succeed."""

    exit_code = 1
    reason = "PeerLost"


class StorageFailed(TrainerError):
    """Object storage refused or did not answer; a new attempt (or fixed credentials) may help."""

    exit_code = 1
    reason = "StorageFailed"
