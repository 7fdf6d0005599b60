"""What every command of the `fastvid` command line shares: running a command's body so that errors users can cause
are one line with their exit code (tracebacks only with --debug), and helpers for options several commands take.

cli.py, cli_batch.py and cli_eval.py import this module, and it imports none of them. Like them, it imports no torch
or transformers.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import typer

from fastvid_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, FastVidError


def run_command(debug: bool, body: Callable[[], int | None]) -> None:
    """Run a command body: one-line errors with their exit codes, tracebacks only with --debug."""
    hide_library_noise(debug)
    try:
        code = body() or 0
    except FastVidError as e:
        error(e.one_line(), debug)
        code = e.exit_code
    except KeyboardInterrupt:
        sys.stdout.flush()
        from fastvid_cli.ui import err_console

        err_console.print("\n[yellow]interrupted[/]")
        code = EXIT_INTERRUPTED
    except typer.Exit:
        raise
    except Exception as e:  # a bug: still one line, unless --debug
        from fastvid_cli.errors import OutOfMemoryError

        if type(e).__name__ == "OutOfMemoryError":
            error(OutOfMemoryError("out of memory", "try fewer --frames or a lower --ratio").one_line(), debug)
            code = OutOfMemoryError.exit_code
        else:
            msg = " ".join(str(e).split()) or type(e).__name__
            error(f"internal error: {type(e).__name__}: {msg[:300]} (rerun with --debug for the traceback)", debug)
            code = EXIT_INTERNAL
    raise typer.Exit(code)


def hide_library_noise(debug: bool) -> None:
    """Keep the libraries' own warnings (deprecations, hub retries, load reports) off the user's terminal: they
    land in the middle of the progress display and say nothing the user can act on. `--debug` shows them."""
    import logging
    import warnings

    level = logging.WARNING if debug else logging.ERROR
    if not debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    for name in ("transformers", "huggingface_hub", "accelerate", "torch", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(level)


def error(message: str, debug: bool) -> None:
    """The one line of an error on stderr (after its traceback with --debug)."""
    from fastvid_cli.ui import error_line

    if debug:
        traceback.print_exc()
    error_line(message)


def feature_cache_dir(cache_dir: Path | None, no_cache: bool) -> Path | None:
    """Where the feature cache is (--cache-dir, else ~/.cache/fastvid/features), or None with --no-cache."""
    if no_cache:
        return None
    from fastvid_cli import hub

    return cache_dir or hub.fastvid_cache_dir() / "features"


def traceback_printer(progress: Any, debug: bool) -> Callable[[BaseException], None] | None:
    """With --debug, what prints the traceback of an item's unexpected error above the progress display (even
    under --json, where the display is otherwise silent); None without --debug."""
    if not debug:
        return None
    from fastvid_cli.runs import format_exception

    def show(e: BaseException) -> None:
        progress.note(format_exception(e).rstrip(), force=True)

    return show
