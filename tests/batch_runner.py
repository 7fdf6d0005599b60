"""Runs `fastvid batch` as a real process: `python tests/batch_runner.py batch ...` (also under torchrun).

Uses the command as registered in fastvid_cli.cli when it is there, else registers it on a small app of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import typer  # noqa: E402

from fastvid_cli import cli  # noqa: E402
from fastvid_cli.cli_batch import batch  # noqa: E402


def build_app() -> typer.Typer:
    if any(c.callback is batch or c.name == "batch" for c in cli.app.registered_commands):
        return cli.app
    app = typer.Typer(add_completion=False)
    app.command()(batch)

    @app.callback()
    def _root() -> None:
        pass

    return app


if __name__ == "__main__":
    build_app()()
