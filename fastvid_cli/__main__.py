"""`python -m fastvid_cli` and the `fastvid` command (the entry point in pyproject.toml).

A plain `fastvid ask VIDEO QUESTION --server URL` runs without importing typer, click, pydantic or rich
(cli_ask_server.py): its whole process is then ~0.1 s shorter, and it ends with os._exit once its output is flushed
(`_exit`). Every other command line runs the typer app.
"""

import os
import sys


def main() -> None:
    from fastvid_cli.cli_ask_server import run

    code = run(sys.argv[1:])
    if code is not None:
        _exit(code)
    from fastvid_cli.cli import run_app

    run_app()


def _exit(code: int) -> None:
    """End the fast path's process now that it is done: its output flushed, then os._exit, without the interpreter's
    teardown (freeing every module, the garbage collector's last passes: tens of ms with many modules imported) that
    nothing here needs. Nothing is pending by then: the answer, the panel and any error were written by this thread,
    the panel's import thread was joined (remote._Waiting.ui) or only imports, and its spinner was stopped; the
    process opens no file it writes later and registers no atexit work. If flushing fails (a closed pipe), the
    ordinary exit reports it."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    main()
