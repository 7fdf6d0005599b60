"""Running a command's body, shared by every command module (cli.py, cli_batch.py, cli_eval.py): our errors as
one line with their exit code, a traceback only with --debug, the libraries' warnings kept off the terminal.

Its own module so that the command modules need not import each other (cli.py registers the others' commands).
Importing it imports no torch.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

import typer

from fastvid_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, FastVidError


def run(debug: bool, body: Callable[[], int | None]) -> None:
    """Run a command body: one-line errors with their exit codes, tracebacks only with --debug."""
    _hide_library_noise(debug)
    try:
        code = body() or 0
    except FastVidError as e:
        _error(e.one_line(), debug)
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
            _error(OutOfMemoryError("out of memory", "try fewer --frames or a lower --ratio").one_line(), debug)
            code = OutOfMemoryError.exit_code
        else:
            msg = " ".join(str(e).split()) or type(e).__name__
            _error(f"internal error: {type(e).__name__}: {msg[:300]} (rerun with --debug for the traceback)", debug)
            code = EXIT_INTERNAL
    raise typer.Exit(code)


def _hide_library_noise(debug: bool) -> None:
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


def _error(message: str, debug: bool) -> None:
    from fastvid_cli.ui import error_line

    if debug:
        traceback.print_exc()
    error_line(message)
