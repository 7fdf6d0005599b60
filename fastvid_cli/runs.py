"""What the long resumable runs (`batch`, `eval`) share besides their journal (fastvid_cli.journal): the Progress
protocol they report to (and the silent default), the model options and loading the engine, reading the input
file, writing records, and the one-line message an item's failure is recorded with.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from fastvid_cli.errors import FastVidError, InvalidOptionError
from fastvid_cli.journal import Appender
from fastvid_cli.models import DEFAULT_MODEL


@dataclass(frozen=True)
class RunCounts:
    """What a run has to do, as it starts. An item is a CSV row (batch) or a (question, setting) pair (eval)."""

    total: int  # items the run covers
    skipped: int  # done before this run (same settings fingerprint)
    pending: int  # left to do, over all processes
    mine: int  # of those, this process's share (all of them but in a data-parallel batch)
    rank: int = 0  # this process in a data-parallel batch (torchrun / accelerate launch)
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Progress(Protocol):
    """What a run tells its display (cli_batch.BatchProgress and cli_eval.EvalProgress draw it on stderr)."""

    def start(self, counts: RunCounts) -> None:
        """Before the first item is written."""

    def note(self, message: str) -> None:
        """A line for the user (model loaded, a torn line repaired, a warning)."""

    def answering(self) -> None:
        """The model is ready: items from now on take model time (the ETA should be based on them)."""

    def item_done(self, record: dict[str, Any]) -> None:
        """`record` was appended to the journal."""

    def stop(self) -> None:
        """The run is over (also when it fails or is interrupted)."""


class NoProgress(Progress):
    """A Progress that shows nothing (each method is the protocol's, which does nothing): the default of
    `run_batch` and `run_eval`."""


@dataclass(kw_only=True)
class ModelOptions:
    """Which model a run loads and how: the options BatchConfig and EvalConfig share (keyword-only, so that each
    config's own required fields can come first)."""

    model: str = DEFAULT_MODEL
    threads: int | None = None  # torch's CPU threads (engine.set_threads)
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    saliency_model: str | None = None
    decoder: str = "auto"  # --decoder: cpu | gpu | auto (video_gpu.resolve_decoder)


def load_engine(cfg: ModelOptions, progress: Progress, device: str | None = None):
    """Load the model of `cfg` (on `device` when given, else cfg.device), telling `progress` how long it took and
    what the model's adapter warned about. Returns the Engine."""
    from fastvid_cli.engine import Engine, set_threads

    set_threads(cfg.threads)
    progress.note("loading model…")
    engine = Engine.load(cfg.model, device=device or cfg.device, dtype=cfg.dtype,
                         attn_implementation=cfg.attn_implementation, saliency_model=cfg.saliency_model,
                         decoder=cfg.decoder)
    progress.note(f"model loaded in {(engine.load_ms or 0) / 1e3:.2f} s on {engine.device}")
    for w in engine.adapter.warnings:
        progress.note(f"warning: {w}")
    return engine


class Counted(Protocol):
    """A run's result, as far as writing records counts them."""

    answered: int
    failed: int


class RecordWriter:
    """Appends a run's records to its journal (`Appender`: whole lines, fsync'd, file locked), counts them on the
    run's result and reports each to the progress. A torn last line left by a killed run is cut off first."""

    def __init__(self, path: Path, result: Counted, progress: Progress):
        self.appender = Appender(path)
        self.result, self.progress = result, progress
        if self.appender.repaired:
            progress.note(f"removed a torn last line ({self.appender.repaired} bytes) from {path.name}")

    def write(self, rec: dict[str, Any]) -> None:
        self.appender.append(rec)
        self.result.answered += 1
        self.result.failed += rec["status"] == "error"
        self.progress.item_done(rec)

    def close(self) -> None:
        self.appender.close()


def read_input_text(path: str | os.PathLike, what: str, utf8_hint: str | None = None) -> str:
    """The whole input file of a run (`what`: "questions file", "benchmark file") as text: UTF-8, a byte order
    mark dropped. A missing, unreadable or non-UTF-8 file is a usage error (exit 2) naming it."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise InvalidOptionError(f"{what} not found: {name}")
    if not p.is_file():
        raise InvalidOptionError(f"{what} is not a regular file: {name}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InvalidOptionError(f"cannot read {what} {name}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")  # also strips a UTF-8 byte order mark
    except UnicodeDecodeError as e:
        raise InvalidOptionError(f"{what} {name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                                 f"{e.start})", utf8_hint) from None


def item_error(e: BaseException, on_exception: Callable[[BaseException], None] | None = None) -> str:
    """The one-line message an item that raised `e` is recorded with. Our own errors say what went wrong;
    anything else is an internal error, also handed to `on_exception` (the CLI prints its traceback under
    --debug)."""
    if isinstance(e, FastVidError):
        return e.one_line()
    if on_exception is not None:
        on_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"internal error: {type(e).__name__}: {msg[:300]}"


def format_exception(e: BaseException) -> str:
    """`e` with its traceback, as Python prints it (for --debug)."""
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))
