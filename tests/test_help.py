"""Every command's --help, as a user reads it at 80 and at 120 columns: paragraphs that flow, options grouped the
same way everywhere, no type placeholders, and runnable examples at the end."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from fastvid_cli import options as O
from fastvid_cli.cli import app

COMMANDS = ["ask", "compare", "batch", "eval", "serve", "chat", "find", "models", "doctor"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _help(runner, command: str, width: int) -> str:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_the_same_in_every_command(runner, command, width):
    text = _help(runner, command, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    # no type placeholders on flags or repeatable options (metavars such as RATIO instead)
    for placeholder in ("<bool>", "list[", "<int", "<float", "<text>"):
        assert placeholder not in text, f"{placeholder} in `{command} --help`"
    # option groups in the canonical order, --help in the last one, no catch-all "Options" group
    panels = [p for p in re.findall(r"╭─ (\w+) ─", text) if p != "Arguments"]
    assert panels and panels == [p for p in O.PANELS if p in panels], panels
    assert panels[-1] == "Output" and re.search(r"--help\s+-h\s+Show this message", text)
    # ends with an Examples block whose every line is whole on its own line
    examples = text[text.rindex("Examples"):]
    assert f"$ fastvid {command}" in examples and not examples.split("Examples")[1].split("$")[0].strip()
    for example in O.EXAMPLES[command]:
        assert any(line.strip() in (f"$ {example}", example.strip()) for line in lines), example
    assert all(not line.strip() or line.startswith((" $", "     ")) for line in examples.splitlines()[1:])


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_flow_to_the_width(runner, command, width):
    """The description under the usage line is filled like any paragraph: a line only ends early when the next word
    would not fit (docstrings broke mid-sentence wherever the source wrapped them)."""
    text = _help(runner, command, width)
    head = text.split("╭")[0].splitlines()
    body = head[head.index(next(line for line in head if "Usage:" in line)) + 1:]
    paragraph: list[str] = []
    for line in [*body, ""]:
        if line.strip():
            paragraph.append(line.strip())
            continue
        for this, following in zip(paragraph, paragraph[1:]):
            assert len(this) + 1 + len(following.split()[0]) > width - 2, f"'{this}' / '{following}'"
        paragraph = []


def test_baseline_help_says_it_once(runner):
    text = " ".join(_help(runner, "ask", 120).split())
    assert text.count("MEASURED") == 1 and "est." in text
    assert "3 runs each, alternating" in text


def test_root_help_lists_examples_and_no_flag_placeholders(runner):
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert "<bool>" not in res.stdout and "$ fastvid ask" in res.stdout and "Exit codes" in res.stdout


def test_examples_fit_80_columns():
    for command, lines in O.EXAMPLES.items():
        assert 1 <= sum(not line.startswith(" ") for line in lines) <= 3, command
        assert all(len(line) + 3 <= 80 for line in lines), command  # "$ " and the help's margin


def test_ask_example_runs(runner, monkeypatch):
    """The first `ask` example, as printed, answers with the demo model that ships in the package."""
    import shlex
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the examples run from the repository's root

    args = shlex.split(O.EXAMPLES["ask"][0])
    assert args[:2] == ["fastvid", "ask"]
    res = runner.invoke(app, [*args[1:], "--json", "--no-cache"])
    assert res.exit_code == 0, res.stderr
