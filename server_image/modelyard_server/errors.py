"""Errors that become HTTP answers: every client mistake ends here, never in a 500."""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be served; `status` and `message` go back to the client."""

    def __init__(
        self, status: int, message: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)


def not_found(message: str) -> RequestError:
    return RequestError(404, message)


def unavailable(message: str, retry_after_s: int = 1) -> RequestError:
    return RequestError(503, message, headers=((b"retry-after", str(retry_after_s).encode()),))
