"""Leaving a LoadFailure where the kubelet (and so the operator) will find it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from modelyard_server.contracts import LoadFailure, LoadFailureReason

log = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def report_load_failure(path: str, reason: LoadFailureReason, message: str) -> LoadFailure:
    """Print the failure to stderr and write it to the termination log.

    Kubernetes creates /dev/termination-log in every container; elsewhere (a laptop) that
    default path is skipped rather than created under /dev. Any other path is written.
    """
    failure = LoadFailure.create(reason, message)
    print(f"modelyard-server: {reason}: {failure.message}", file=sys.stderr, flush=True)
    target = Path(path)
    if path == DEFAULT_TERMINATION_LOG and not target.exists():
        return failure
    try:
        target.write_text(failure.to_termination_message(), encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)
    return failure
