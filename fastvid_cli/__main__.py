"""`python -m fastvid_cli` and the `fastvid` command (the entry point in pyproject.toml).

A plain `fastvid ask VIDEO QUESTION --server URL` runs without importing typer, click, pydantic or rich
(cli_ask_server.py): its whole process is then ~0.1 s shorter. Every other command line runs the typer app.
"""

import sys


def main() -> None:
    from fastvid_cli.cli_ask_server import run

    code = run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from fastvid_cli.cli import run_app

    run_app()


if __name__ == "__main__":
    main()
