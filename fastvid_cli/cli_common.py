"""What every command of the `fastvid` command line shares: running a command's body so that errors users can cause
are one line with their exit code (tracebacks only with --debug), and helpers for options several commands take.

cli.py, cli_batch.py, cli_eval.py and cli_ask_server.py import this module, and it imports none of them. Like them,
it imports no torch or transformers; typer and rich only inside the functions that need them, so that the
`ask --server` fast path (cli_ask_server.py) runs its body through `run_body` without either.
"""

from __future__ import annotations

import math
import os
import sys

TYPE_CHECKING = False  # typing (~2.5 ms to import) only for type checkers: the annotations are strings (PEP 563)
if TYPE_CHECKING:  # pathlib too (~4 ms with fnmatch and re; the `ask --server` fast path has no use for it)
    from pathlib import Path
    from typing import Any, Callable

from fastvid_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, FastVidError, InvalidOptionError


def run_command(debug: bool, body: Callable[[], int | None]) -> None:
    """Run a command body: one-line errors with their exit codes, tracebacks only with --debug."""
    import typer

    raise typer.Exit(run_body(debug, body, passthrough=(typer.Exit,)))


def run_body(debug: bool, body: Callable[[], int | None], passthrough: tuple[type[BaseException], ...] = (),
             loggers: bool = True) -> int:
    """Run a command body and return its exit code: an error users can cause is one line on stderr with its code,
    a bug one line too (tracebacks only with --debug). `passthrough`: exceptions raised on as they are (typer's
    Exit). `loggers`: also quiet the loggers of torch, transformers & co (see hide_library_noise)."""
    hide_library_noise(debug, loggers)
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
    except passthrough:
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
    return code


def hide_library_noise(debug: bool, loggers: bool = True) -> None:
    """Keep the libraries' own warnings (deprecations, hub retries, load reports) off the user's terminal: they
    land in the middle of the progress display and say nothing the user can act on. `--debug` shows them.
    `loggers=False` leaves the logging module alone: for a process that imports none of those libraries."""
    import warnings

    if not debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    if not loggers:
        return
    import logging

    level = logging.WARNING if debug else logging.ERROR
    for name in ("transformers", "huggingface_hub", "accelerate", "torch", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(level)


def error(message: str, debug: bool) -> None:
    """The one line of an error on stderr (after its traceback with --debug)."""
    from fastvid_cli.ui import error_line

    if debug:
        import traceback

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

    return method_params_by_name(pruning.given_options(method_options))


def method_params_by_name(given: dict[str, Any]) -> dict[str, Any]:
    """Method options given, keyed by flag ({"--dyseg-tau": 0.8}) -> keyed by parameter name ({"tau": 0.8})."""
    from fastvid_cli import pruning

    by_flag = {p.flag: p for p in pruning.options()}
    return {by_flag[flag].name: v for flag, v in given.items()}


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


def server_client(url: str, api_key: str | None, chatty: bool, except_options: tuple[str, ...] = ()):
    """The client of the server at `url`, once the options that belong to the server and were set here are checked
    against it (remote.check_server_options), but for `except_options` (ask sends --model with its request, and the
    server refuses one it does not serve). `chatty`: say on stderr when waiting for a loading server."""
    from fastvid_cli.client import Client
    from fastvid_cli.remote import check_server_options

    client = Client(url, api_key or None, on_wait=say_waiting if chatty else None)
    check_server_options(client, given_options(*(o for o in SERVER_SIDE_OPTIONS if o not in except_options)),
                         _warn_line)
    return client


def say_waiting(message: str) -> None:
    """What the client says (dim, on stderr) while it waits for a server that is loading its model."""
    from fastvid_cli.ui import err_console

    err_console.print(f"[dim]{message}[/]")


def _warn_line(message: str) -> None:
    from fastvid_cli.ui import warn_line

    warn_line(message)


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
