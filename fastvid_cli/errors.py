"""Errors a user can cause, each with a one-line message and its own exit code.

The CLI prints ``error: <message>`` on stderr and exits with ``exit_code``; no traceback unless ``--debug``.
The codes are documented in README.md ("Exit codes"); keep the two in step.
"""

from __future__ import annotations

import contextlib


class FastVidError(Exception):
    """Base class: an error with a user-facing one-line message."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class InvalidOptionError(FastVidError):
    """An option value is out of range or inconsistent (same code as typer's own usage errors)."""

    exit_code = 2


class VideoNotFoundError(FastVidError):
    """The video path does not exist or is not a regular file."""

    exit_code = 3


class VideoDecodeError(FastVidError):
    """The file is not a video, has no decodable video stream, or is truncated/corrupt."""

    exit_code = 4


class UnknownModelError(FastVidError):
    """The model id/alias is unknown, or its architecture is not supported."""

    exit_code = 5


class ModelUnavailableError(FastVidError):
    """The model exists in principle but is not available here (offline and not cached, download failed)."""

    exit_code = 6


class OutOfMemoryError(FastVidError):
    """The device ran out of memory."""

    exit_code = 7


@contextlib.contextmanager
def oom_guard():
    """Turn torch's out-of-memory error inside the block into ours (one line, its exit code, what to try)."""
    import torch  # here, not at the top: this module is imported before torch is (`fastvid --help`)

    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemoryError("out of GPU memory",
                               "try fewer --frames, a lower --ratio, or --dtype float16/bfloat16") from None


class RowsFailedError(FastVidError):
    """`batch` / `eval` tried every row (item), and some of them stand as error records in the output."""

    exit_code = 8


class ServerError(FastVidError):
    """`--server`: the fastvid server cannot be reached, refused the API key, or failed (a 5xx answer)."""

    exit_code = 9


EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1

EXIT_CODES: dict[int, str] = {
    0: "success",
    EXIT_INTERNAL: "unexpected internal error (a bug: please report it with --debug output)",
    InvalidOptionError.exit_code: "invalid option value or usage error (also: a questions CSV that is missing, "
                                  "unreadable or lacks a required column)",
    VideoNotFoundError.exit_code: "video file not found, or not a regular file",
    VideoDecodeError.exit_code: "not a video, no decodable video stream, or a truncated/corrupt file",
    UnknownModelError.exit_code: "unknown model, or unsupported architecture",
    ModelUnavailableError.exit_code: "model not available (offline and not cached, or download failed)",
    OutOfMemoryError.exit_code: "out of GPU/CPU memory",
    RowsFailedError.exit_code: "batch/eval: every row was tried, but some ended as errors (their records say why)",
    ServerError.exit_code: "--server: the fastvid server cannot be reached, refused the API key, or failed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); text already printed is kept",
}
