"""`fastvid ask VIDEO QUESTION --server URL` without typer: the command that answers from a warm server.

Building the typer app (click, pydantic, rich and the option tables of every command) took ~0.2 s, several times
what the server needs for a short answer. This module reads the command line of a plain `ask --server` itself and
runs the same body as the `ask` command (cli._ask_on_server's remote.ask_remote), with the same output, the same
one-line errors and exit codes (cli_common.run_body).

It takes only what it can read exactly as the typer command does: the two arguments and the options in `OPTIONS`
(values in the plain forms of `_INT` and `_FLOAT`), the method options of the pruning registry, `--opt=value`.
`--select K [--candidates M]` are read here (settings.select_options checks them, imported only then); `--selector`
is left to the typer command, which checks it against the server's selector.
Anything else (--help, a server-side option such as --device, a value out of its range or in an unusual form, a
check that fails before the request, no --server / FASTVID_SERVER) returns None before anything is printed, and
the caller runs the typer command, which says what is wrong in its own words. tests/test_ask_server_fast.py holds
`OPTIONS` to the command's own options.

Imports only the standard library and fastvid's client modules; rich only for the panel (on a thread while the
server works) or an error.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing (~2.5 ms to import) only for type checkers: the annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

# option -> (parameter name of the `ask` command, value kind, min, max). Kinds: "flag" (True when given), "no-flag"
# (False when given), "int", "float", "str". Ranges are the typer options' min/max (options.py).
OPTIONS: dict[str, tuple[str, str, float | None, float | None]] = {
    "--model": ("model", "str", None, None),
    "-m": ("model", "str", None, None),
    "--frames": ("frames", "int", 1, 4096),
    "-n": ("frames", "int", 1, 4096),
    "--fps": ("fps", "float", 0.0, None),
    "--method": ("method", "str", None, None),
    "--ratio": ("ratio", "float", None, None),
    "-r": ("ratio", "float", None, None),
    "--max-new-tokens": ("max_new_tokens", "int", 1, None),
    "--temperature": ("temperature", "float", 0.0, None),
    "--top-p": ("top_p", "float", 0.0, 1.0),
    "--seed": ("seed", "int", None, None),
    "--system": ("system", "str", None, None),
    "--compile": ("compile_decode", "flag", None, None),
    "--no-compile": ("compile_decode", "no-flag", None, None),
    "--baseline": ("baseline", "flag", None, None),
    "--no-cache": ("no_cache", "flag", None, None),
    "--json": ("as_json", "flag", None, None),
    "--quiet": ("quiet", "flag", None, None),
    "-q": ("quiet", "flag", None, None),
    "--margins": ("margins", "flag", None, None),
    "--select": ("select", "int", None, None),  # checked with settings.select_options (run)
    "--candidates": ("candidates", "int", None, None),
    "--server": ("server", "str", None, None),
    "--api-key": ("api_key", "str", None, None),
    "--debug": ("debug", "flag", None, None),
}
# The number forms read here (without re: ~6 ms to import); any other (1_000, " 2", inf, 0x10) goes to typer, whose
# reading of it is the rule. An int: -?[0-9]+ ; a float: -?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?
_DIGITS = frozenset("0123456789")


def _is_digits(text: str) -> bool:
    return bool(text) and _DIGITS.issuperset(text)


def _is_int(text: str) -> bool:
    return _is_digits(text[1:] if text[:1] == "-" else text)


def _is_float(text: str) -> bool:
    text = text[1:] if text[:1] == "-" else text
    mantissa, exponent = text, None
    for i, c in enumerate(text):
        if c in "eE":
            mantissa, exponent = text[:i], text[i + 1:]
            break
    if exponent is not None and not _is_digits(exponent[1:] if exponent[:1] in "+-" else exponent):
        return False
    return mantissa.count(".") <= 1 and _is_digits(mantissa.replace(".", "", 1))


def _as_path(text: str) -> str:
    """str(pathlib.Path(text)), as typer's Path argument gives it, without importing pathlib (~4 ms with re)."""
    if os.name != "posix":
        from pathlib import Path

        return str(Path(text))
    root = ""
    if text.startswith("/"):
        root = "//" if text.startswith("//") and not text.startswith("///") else "/"
    return root + "/".join(p for p in text.split("/") if p and p != ".") or "."


class _NotHere(Exception):
    """The command line is not one this module reads: the typer command runs it."""


class AskArgs:
    """A plain `ask --server` command line: the arguments, the options given (by parameter name) and the method
    options given (by flag, as pruning.given_options returns them). Not a dataclass: dataclasses costs ~7 ms to
    import."""

    def __init__(self, video: str, question: str, given: dict[str, Any], method_options: dict[str, Any]):
        self.video, self.question, self.given, self.method_options = video, question, given, method_options


def parse(argv: list[str]) -> AskArgs | None:
    """`argv` (without the program name) -> AskArgs, or None when the typer command must read it."""
    try:
        return _parse(argv)
    except _NotHere:
        return None


def _parse(argv: list[str]) -> AskArgs:
    if not argv or argv[0] != "ask":
        raise _NotHere
    positional: list[str] = []
    given: dict[str, Any] = {}
    method_options: dict[str, Any] = {}
    rest = argv[1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":
            positional += rest[i:]
            break
        if token[:1] != "-" or token == "-":
            positional.append(token)
            continue
        name, eq, attached = token.partition("=")
        if eq and not name.startswith("--"):
            raise _NotHere  # -r=0.5: click reads "=0.5" as the value
        spec = OPTIONS.get(name)
        into = given
        if spec is None:
            spec, into = _method_option(name), method_options
        if spec is None:
            raise _NotHere  # --help, an unknown option, a server-side one (--device …), a cluster like -qn
        dest, kind, lo, hi = spec
        if kind in ("flag", "no-flag"):
            if eq:
                raise _NotHere
            value: Any = kind == "flag"
        else:
            if eq:
                text = attached
            elif i < len(rest):
                text = rest[i]
                i += 1
            else:
                raise _NotHere
            value = _value(text, kind, lo, hi)
        into[dest] = value
    if len(positional) != 2:
        raise _NotHere
    return AskArgs(positional[0], positional[1], given, method_options)


def _method_option(flag: str) -> tuple[str, str, float | None, float | None] | None:
    """A method option of the pruning registry (--dyseg-tau …), keyed by its flag."""
    if not flag.startswith("--"):
        return None
    from fastvid_cli import pruning

    for p in pruning.options():
        if p.flag == flag:
            return p.flag, p.type.__name__, p.min, p.max
    return None


def _value(text: str, kind: str, lo: float | None, hi: float | None) -> Any:
    if text[:1] == "-" and kind == "str":
        raise _NotHere  # "--system -x": left to typer
    if kind == "int":
        if not _is_int(text):
            raise _NotHere
        value: Any = int(text)
    elif kind == "float":
        if not _is_float(text):
            raise _NotHere
        value = float(text)
    else:
        return text
    if (lo is not None and lo > value) or (hi is not None and hi < value):
        raise _NotHere  # typer's message for a value out of range
    return value


def server_of(args: AskArgs) -> str | None:
    """--server, else FASTVID_SERVER (an empty one counts as unset, as with typer); None: answer here."""
    from fastvid_cli.cli_common import server_url

    value = args.given.get("server")
    if value is None:
        value = os.environ.get("FASTVID_SERVER") or None
    return server_url(value)


def run(argv: list[str]) -> int | None:
    """Run `fastvid ask … --server URL` from `argv` (without the program name) and return its exit code; None
    (having printed nothing) when the typer command must run it."""
    args = parse(argv)
    if args is None:
        return None
    url = server_of(args)
    if url is None:
        return None
    g = args.given
    from fastvid_cli.client import Client, check_local_video
    from fastvid_cli.errors import FastVidError

    try:  # the checks the `ask` command makes before its request: a failure is the typer command's to report
        from fastvid_cli.cli_common import check_ratio

        check_ratio(g.get("ratio"))
        if "method" in g or args.method_options:
            from fastvid_cli.cli_common import check_method
            from fastvid_cli.pruning import DEFAULT_METHOD, check_options

            method = g.get("method", DEFAULT_METHOD)
            check_method(method)
            check_options([method], None, args.method_options)
        if not args.question.strip():
            return None
        select = None
        if "select" in g or "candidates" in g:  # --selector is the typer command's: it asks the server for its own
            from fastvid_cli.settings import select_options

            select = select_options(g.get("select"), g.get("candidates"), None, g.get("frames"), g.get("fps"))
        video = _as_path(args.video)  # as typer's Path argument gives it (the --json "video")
        check_local_video(video)
        from fastvid_cli.cli_common import say_waiting

        client = Client(url, g.get("api_key") or os.environ.get("FASTVID_API_KEY") or None,
                        on_wait=say_waiting if not (g.get("as_json") or g.get("quiet")) else None)
    except FastVidError:
        return None
    from fastvid_cli.cli_common import run_body

    return run_body(bool(g.get("debug")), lambda: _ask(client, video, args, select), loggers=False)


def _ask(client, video: str, args: AskArgs, select=None) -> int:
    from fastvid_cli.remote import ask_remote

    g = args.given
    params: dict[str, Any] = {}
    if args.method_options:
        from fastvid_cli.cli_common import method_params_by_name

        params = method_params_by_name(args.method_options)
    gen = {k: g.get(k) for k in ("max_new_tokens", "temperature", "top_p", "seed", "system")}
    return ask_remote(client, video, args.question, model=g.get("model"), frames=g.get("frames"), fps=g.get("fps"),
                      method=g.get("method"), ratio=g.get("ratio"), params=params, gen=gen,
                      baseline=bool(g.get("baseline")), margins=bool(g.get("margins")),
                      compile_decode=g.get("compile_decode"), cache=not g.get("no_cache"),
                      as_json=bool(g.get("as_json")), quiet=bool(g.get("quiet")), select=select)
