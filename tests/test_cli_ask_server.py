"""cli_ask_server.py, the `ask --server` command line read without typer: it reads what it takes exactly as the typer
command does, and leaves everything else to it. (Its output against a real server: tests/test_remote.py.)"""

from __future__ import annotations

import inspect
import typing

import pytest
import typer

from fastvid_cli import cli, pruning
from fastvid_cli.cli_ask_server import OPTIONS, parse, run

URL = "http://127.0.0.1:9"  # nothing listens there; parse() never connects


def ask_command():
    return typer.main.get_command(cli.app).commands["ask"]


def base_type(annotation) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def test_options_are_those_of_the_ask_command():
    """Each option read here is the command's: same parameter, same kind of value, same range; only --server and
    --api-key have environment variables (read here too)."""
    params = {p.name: p for p in ask_command().params}
    annotations = {n: base_type(p.annotation) for n, p in inspect.signature(cli.ask, eval_str=True).parameters.items()}
    for flag, (dest, kind, lo, hi) in OPTIONS.items():
        p = params[dest]
        assert flag in (p.opts if kind != "no-flag" else p.secondary_opts), flag
        want = {"flag": bool, "no-flag": bool, "int": int, "float": float, "str": str}[kind]
        assert annotations[dest] is want, flag
        assert (p.min, p.max) == (lo, hi), flag
    read_here = {dest for dest, *_ in OPTIONS.values()}
    assert {p.name: p.envvar for p in params.values() if p.envvar and p.name in read_here} == \
           {"server": "FASTVID_SERVER", "api_key": "FASTVID_API_KEY"}
    method_flags = {p.flag for p in pruning.options()}
    for p in params.values():  # the method options, read from the registry here: the command has each
        if p.opts[0] in method_flags:
            spec = next(q for q in pruning.options() if q.flag == p.opts[0])
            assert (p.min, p.max) == (spec.min, spec.max) and annotations[p.name] is spec.type


def test_reads_a_plain_command_line():
    args = parse(["ask", "clip.mp4", "What happens?", "--server", URL, "-r", "0.25", "--json", "--frames=8",
                  "--no-compile", "--dyseg-tau", "0.5", "--seed", "-3", "-m", "demo"])
    assert (args.video, args.question) == ("clip.mp4", "What happens?")
    assert args.given == {"server": URL, "ratio": 0.25, "as_json": True, "frames": 8, "compile_decode": False,
                          "seed": -3, "model": "demo"}
    assert args.method_options == {"--dyseg-tau": 0.5}
    # options anywhere, `--` before an argument that starts with '-', the last of a repeated option
    args = parse(["ask", "-q", "--server", URL, "--", "-clip.mp4", "-what?"])
    assert (args.video, args.question, args.given) == ("-clip.mp4", "-what?", {"quiet": True, "server": URL})
    assert parse(["ask", "a.mp4", "q", "-r", "0.1", "-r", "0.5"]).given == {"ratio": 0.5}


@pytest.mark.parametrize("argv", [
    [],
    ["compare", "a.mp4", "q", "--server", URL],
    ["ask", "a.mp4", "q", "--server", URL, "--help"],
    ["ask", "a.mp4", "--server", URL],  # a missing argument
    ["ask", "a.mp4", "q", "extra", "--server", URL],
    ["ask", "a.mp4", "q", "--server", URL, "--device", "cpu"],  # decided by the server: the command checks it
    ["ask", "a.mp4", "q", "--server", URL, "--threads", "2"],  # a warning with --server: the command says it
    ["ask", "a.mp4", "q", "--server", URL, "-r=0.5"],
    ["ask", "a.mp4", "q", "--server", URL, "-qr", "0.5"],
    ["ask", "a.mp4", "q", "--server", URL, "--json=yes"],
    ["ask", "a.mp4", "q", "--server", URL, "--frames", "0"],  # out of range
    ["ask", "a.mp4", "q", "--server", URL, "--top-p", "1.5"],
    ["ask", "a.mp4", "q", "--server", URL, "--frames", "1_000"],  # number forms typer's reading decides
    ["ask", "a.mp4", "q", "--server", URL, "--ratio", "inf"],
    ["ask", "a.mp4", "q", "--server", URL, "--stprune-d", "2"],  # a method option out of its range
    ["ask", "a.mp4", "q", "--server", URL, "--system", "-x"],
    ["ask", "a.mp4", "q", "--server"],  # no value
])
def test_leaves_other_command_lines_to_typer(argv):
    assert parse(argv) is None


@pytest.mark.parametrize("argv", [
    ["ask", "a.mp4", "q"],  # no --server: answered here, by the typer command
    ["ask", "a.mp4", "q", "--server", ""],
    ["ask", "missing.mp4", "q", "--server", URL],  # the command's own checks fail: its messages
    ["ask", __file__, " ", "--server", URL],
    ["ask", __file__, "q", "--server", URL, "--ratio", "1.5"],
    ["ask", __file__, "q", "--server", URL, "--method", "pool"],
    ["ask", __file__, "q", "--server", URL, "--method", "uniform", "--dyseg-tau", "0.5"],
    ["ask", __file__, "q", "--server", "ftp://host"],
])
def test_runs_nothing_the_command_reports(argv, monkeypatch, capsys):
    monkeypatch.delenv("FASTVID_SERVER", raising=False)
    assert run(argv) is None
    assert capsys.readouterr() == ("", "")


def test_server_from_the_environment(monkeypatch):
    from fastvid_cli.cli_ask_server import server_of

    monkeypatch.setenv("FASTVID_SERVER", URL)
    assert server_of(parse(["ask", "a.mp4", "q"])) == URL
    assert server_of(parse(["ask", "a.mp4", "q", "--server", ""])) is None  # the option wins, and empty = here
    monkeypatch.setenv("FASTVID_SERVER", "")
    assert server_of(parse(["ask", "a.mp4", "q"])) is None
