"""What every command of the `fastvid` command line shares: running a command's body so that errors users can cause
are one line with their exit code (tracebacks only with --debug), and helpers for options several commands take.

cli.py, cli_batch.py and cli_eval.py import this module, and it imports none of them. Like them, it imports no torch
or transformers.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import typer

from fastvid_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, FastVidError, InvalidOptionError


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


# ---------------------------------------------------------------------------------------------- option checks
def check_method(method: str) -> None:
    from fastvid_cli.pruning import method_names

    if method not in method_names():
        raise InvalidOptionError(f"--method must be one of {', '.join(method_names())} (got '{method}')")


def check_ratio(ratio: float | None) -> None:
    if ratio is not None and (math.isnan(ratio) or not 0 < ratio <= 1):
        raise InvalidOptionError(f"--ratio must be in (0, 1] (got {ratio})")


def check_cheaply(video: Path | None, model: str, device: str, dtype: str, attn_implementation: str) -> None:
    """Every check that needs no torch, before torch is imported (~1-3 s): a bad option or file fails at once.
    The video is probed (ms) so that a bad file fails before any load starts, and no load is abandoned mid-way."""
    from fastvid_cli.models import check_attn_implementation, check_device_name, check_dtype_name, resolve_model

    check_device_name(device)
    check_dtype_name(dtype)
    check_attn_implementation(attn_implementation)
    if video is not None:
        from fastvid_cli.video import probe_video

        probe_video(video)
    resolve_model(model)


def method_options_by_name(method_options: dict[str, Any]) -> dict[str, Any]:
    """The method options a command received (its `**method_options`, see options.method_options) that the user
    gave, keyed by parameter NAME ({"tau": 0.8, "inner": "18,0.5"}): what a request to a server carries, and what
    pruning.check_options / resolve_params take as well as flags."""
    from fastvid_cli import pruning

    by_flag = {p.flag: p for p in pruning.options()}
    return {by_flag[flag].name: v for flag, v in pruning.given_options(method_options).items()}


# ---------------------------------------------------------------------------------------------- --server
SERVER_SIDE_OPTIONS = ("model", "device", "dtype", "attn_implementation", "saliency_model", "threads", "offline",
                       "cache_dir")


def server_url(value: str | None) -> str | None:
    """--server / FASTVID_SERVER: the URL, or None to run here (also for an empty value)."""
    return (value.strip() or None) if value is not None else None


def given_options(*names: str) -> dict[str, Any]:
    """The options among `names` (parameter names of the running command) that the user set, on the command line
    or through their environment variable, with their values; defaults are left out."""
    try:  # typer >= 0.29 carries its own copy of click
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
        from click.core import ParameterSource

    ctx = get_current_context()
    return {name: ctx.params[name] for name in names
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def server_client(url: str, api_key: str | None, chatty: bool):
    """The client of the server at `url`, once the options that belong to the server and were set here are checked
    against it (remote.check_server_options). `chatty`: say on stderr when waiting for a loading server."""
    from fastvid_cli.client import Client
    from fastvid_cli.remote import check_server_options
    from fastvid_cli.ui import err_console, warn_line

    client = Client(url, api_key or None,
                    on_wait=(lambda msg: err_console.print(f"[dim]{msg}[/]")) if chatty else None)
    check_server_options(client, given_options(*SERVER_SIDE_OPTIONS), warn_line)
    return client


# ---------------------------------------------------------------------------------------------- --select
def pop_select(kwargs: dict[str, Any], frames: int | None = None, fps: float | None = None
               ) -> Callable[[], Any]:
    """Take --select/--candidates/--selector (options.select_options) out of a command's keyword arguments (they
    arrive there with the method options), and return what checks them inside the command's body (so that a bad
    value is a one-line error, exit 2): a function giving settings.SelectOptions, or None without --select."""
    values = {name: kwargs.pop(name, None) for name in ("select", "candidates", "selector")}

    def check():
        from fastvid_cli.settings import select_options

        return select_options(values["select"], values["candidates"], values["selector"], frames, fps)

    check.values = values  # `serve` takes --selector alone too: the scorer of the requests that select
    return check
