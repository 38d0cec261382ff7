"""The one scrubber of credential values, for every text that leaves a process on failure.

A failure message, a termination message, a progress record or a log line may carry text that
we did not write (a library's error, a path, a stack trace). Whatever it holds, the values of
this process's credential variables are replaced by a placeholder before it is written:
the S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and every variable
whose name says it is a secret (*SECRET*, *TOKEN*, *PASSWORD*, ...). Values shorter than a
few characters are left alone: replacing "1" or "true" everywhere would mangle messages and
hide nothing.

Stdlib only: the operator and the trainer's contracts may import it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from modelyard_storage.connection import CREDENTIAL_ENV

PLACEHOLDER = "<redacted>"
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE_KEY")
# The S3 keys are known credentials: any value of theirs is hidden from this length on.
_MIN_KNOWN = 4
# A variable that only looks like a secret by its name: from this length on.
_MIN_BY_NAME = 8


def credential_values(environ: Mapping[str, str]) -> list[str]:
    """The values to hide, longest first (so that a value inside another goes with it)."""
    values = {
        value
        for name, value in environ.items()
        if len(value) >= (_MIN_KNOWN if name in CREDENTIAL_ENV else _MIN_BY_NAME)
        and (name in CREDENTIAL_ENV or _SECRET_NAME.search(name.upper()))
    }
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every credential value of `environ` (default: this process's) replaced."""
    for value in credential_values(os.environ if environ is None else environ):
        text = text.replace(value, PLACEHOLDER)
    return text


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's final text (message, arguments, traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = scrub(text)
        record.args = None
        return True
