"""OpenAI-style API errors: an HTTP status, a message the client can act on, and a machine-readable code.

Every error the server sends has the body ``{"error": {"message", "type", "param", "code"}}`` (the OpenAI
schema). Messages never carry a traceback, nor a server-side path the client did not send itself.
"""

from __future__ import annotations

from typing import Any

from fastvid_cli.errors import (FastVidError, InvalidOptionError, ModelUnavailableError, OutOfMemoryError,
                                UnknownModelError, VideoDecodeError, VideoNotFoundError)


class ApiError(Exception):
    """An error answered as an HTTP status with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.code = code
        self.param = param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


# Our own user errors, as statuses and codes. The client (fastvid_cli.client) maps the codes back to the exit codes
# the same error has locally.
_FROM_FASTVID: list[tuple[type, int, str]] = [
    (InvalidOptionError, 400, "invalid_option"),
    (VideoNotFoundError, 404, "video_not_found"),
    (VideoDecodeError, 422, "unprocessable_video"),
    (UnknownModelError, 404, "model_not_found"),
    (ModelUnavailableError, 503, "model_unavailable"),
    (OutOfMemoryError, 500, "out_of_memory"),
]


def from_fastvid(e: FastVidError, rewrite=None) -> ApiError:
    """The ApiError for one of our own errors; `rewrite(text)` replaces server-side paths by what the client
    sent."""
    text = e.one_line()
    if rewrite is not None:
        text = rewrite(text)
    for cls, status, code in _FROM_FASTVID:
        if isinstance(e, cls):
            return ApiError(status, text, code=code)
    return ApiError(500, text, code="internal_error")


def internal() -> ApiError:
    return ApiError(500, "internal error while answering (the server's log has the details)", code="internal_error")
