"""`fastvid eval`: accuracy of pruning settings on a JSONL benchmark (multiple choice or short answer), resumable.

Registered in cli.py with ``app.command(name="eval")(eval_)``. Like cli.py, importing this module must not import
torch or transformers: everything heavy is imported inside the command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fastvid_cli import options as O
from fastvid_cli.cli_common import (feature_cache_dir, pop_select, run_command, server_client, server_url,
                                    traceback_printer)
from fastvid_cli.runs import RunCounts
from fastvid_cli.ui import ItemProgress

BENCH_HELP = ("Benchmark JSONL, one question per line: {\"id\", \"video\" (relative to the file's folder or "
              "--videos-root), \"question\", \"options\": [4 strings], \"answer\": \"A\"..\"D\"}, optional \"type\" "
              "(accuracy per type is shown too), \"seed\" (a missing video is regenerated with fastvid_cli.synth), "
              "\"frames\" (overrides --frames), \"short_answer\" (the gold answer of --form short). The whole file is "
              "checked before anything runs.")
FORM_HELP = ("mc: the question with its options, scored by the option letter read from the answer. short: the "
             "question alone (\"Answer the question using a single word or phrase.\"), scored by exact match "
             "with the line's short_answer after normalising both (lowercase; whitespace and punctuation at the ends "
             "stripped; a leading a/an/the dropped; number words zero-twenty as digits). Every line needs a "
             "short_answer for short. Each form has its own fingerprint: results of one never count for the "
             "other.")
OUTPUT_HELP = ("JSON Lines output, one record per (question, setting): form, setting, answer, predicted letter "
               "(short: the normalised answer), correct, tokens kept, TTFT, settings and fingerprint. Rerunning the "
               "same command resumes: what is already answered with the same settings is skipped. Default: BENCH's "
               "name with the suffix .eval.jsonl, in the current directory.")


@O.method_options(after="no_reference")
@O.select_options(after="fps")
def eval_(
    bench: Path = typer.Argument(..., metavar="BENCH", help=BENCH_HELP, show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help=OUTPUT_HELP,
                                          show_default=False, rich_help_panel="Output"),
    videos_root: Optional[Path] = typer.Option(None, "--videos-root", metavar="DIR", help="Folder that relative "
                                               "video paths are taken against (default: the benchmark file's "
                                               "folder; the current directory for the split shipped in the "
                                               "package).", show_default=False, rich_help_panel="Input"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, metavar="N", help="Only the first N questions of "
                                        "the file.", show_default=False, rich_help_panel="Input"),
    form: str = typer.Option("mc", "--form", metavar="FORM", help=FORM_HELP, rich_help_panel="Input"),
    model: str = O.MODEL,
    device: str = O.DEVICE,
    dtype: str = O.DTYPE,
    attn_implementation: str = O.ATTN,
    saliency_model: Optional[str] = O.SALIENCY,
    offline: bool = O.OFFLINE,
    threads: Optional[int] = O.THREADS,
    cache_dir: Optional[Path] = O.CACHE_DIR,
    no_cache: bool = O.NO_CACHE,
    decoder: str = O.DECODER,
    frames: Optional[int] = O.FRAMES,
    fps: Optional[float] = O.FPS,
    method: list[str] = typer.Option([], "--method", metavar="METHOD", help="Pruning method: " + O.METHODS_HELP,
                                     show_default=False, rich_help_panel="Pruning"),
    ratio: list[float] = typer.Option([], "--ratio", "-r", metavar="RATIO", help="Retention ratio in (0, 1]; repeat "
                                      "for several (default: 0.25, 0.1). 1.0 is the unpruned reference (method "
                                      "none), run once.", show_default=False, rich_help_panel="Pruning"),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not run the unpruned reference "
                                      "(none, ratio 1.0) unless asked for; retention is then not shown.",
                                      rich_help_panel="Pruning"),
    max_new_tokens: int = typer.Option(8, min=1, metavar="N", help="Most tokens per answer (greedy decoding).",
                                       rich_help_panel="Generation"),
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Answer again what failed before with the "
                                      "same settings (otherwise it is skipped too).", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the numbers of the tables.",
                                 rich_help_panel="Output"),
    server: Optional[str] = O.SERVER,
    api_key: Optional[str] = O.API_KEY,
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Score pruning settings on a benchmark (--form mc or short): accuracy, retention vs ratio 1.0, tokens, TTFT.

    Each video is sampled and encoded once; each setting prunes those features once and answers every question
    about the video with a shared prompt-prefix KV cache, greedy. Answers are appended (fsync'd) to the output
    as they finish; rerun the same command to resume. Ctrl-C stops (exit 130); what was written is kept.
    """
    select = pop_select(method_options, frames, fps)

    def body() -> int:
        from fastvid_cli import hub

        sel = select()
        hub.set_offline(offline)
        from fastvid_cli.evaluate import DEFAULT_RATIOS, EvalConfig, run_eval
        from fastvid_cli.pruning import DEFAULT_METHOD, given_options

        cfg = EvalConfig(bench=bench, output=output, videos_root=videos_root, model=model, threads=threads,
                         device=device, decoder=decoder,
                         dtype=dtype, attn_implementation=attn_implementation, saliency_model=saliency_model,
                         frames=frames, fps=fps, methods=list(method) or [DEFAULT_METHOD],
                         ratios=list(ratio) or list(DEFAULT_RATIOS), params=given_options(method_options),
                         reference=not no_reference, limit=limit, max_new_tokens=max_new_tokens, system=system,
                         compile=compile_decode,
                         retry_errors=retry_errors, form=form.strip().lower(),
                         cache_dir=feature_cache_dir(cache_dir, no_cache), select=sel)
        engine = None
        if server_url(server):  # every answer is a request to the server; records and resume as a local run
            from fastvid_cli.remote import remote_engine

            engine = remote_engine(server_client(server_url(server), api_key, not as_json), cfg)
        progress = EvalProgress(enabled=not as_json)
        result = run_eval(cfg, engine=engine, progress=progress, on_exception=traceback_printer(progress, debug))
        data = result_json(result)
        if as_json:
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            print_eval(data, max_new_tokens)
        failed = sum(r["errors"] for r in data["settings"])
        if failed:  # every item was tried, some stand as errors (exit 8)
            from fastvid_cli.errors import RowsFailedError

            raise RowsFailedError(f"{failed} of {result.total} items (question x setting) failed: their records in "
                                  f"{result.output} have status error and say why",
                                  "rerun with --retry-errors to try them again")
        return 0

    run_command(debug, body)


def result_json(result: Any) -> dict[str, Any]:
    """What `--json` prints: the summary (per setting and per type) plus the files and this run's counts."""
    return {"bench": str(result.bench), "output": str(result.output), **result.summary,
            "run": {"items": result.total, "skipped": result.skipped, "answered": result.answered,
                    "failed": result.failed}}


class EvalProgress(ItemProgress):
    """A rich progress bar over this run's (question, setting) items on a terminal; one plain line per item
    otherwise. Everything goes to stderr; nothing at all when disabled (--json), except --debug tracebacks."""

    label = "eval"

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.correct = 0

    # -- Progress protocol (fastvid_cli.runs.Progress)
    def start(self, counts: RunCounts) -> None:
        self.note(f"{counts.total} items (questions x settings): {counts.skipped} already done with these settings, "
                  f"{counts.pending} to do")
        self.open(counts.mine)

    def item_done(self, rec: dict[str, Any]) -> None:
        ok = rec.get("status") == "ok"
        self.correct += bool(rec.get("correct"))
        what = (f"{rec.get('predicted') or '?'} ({'right' if rec.get('correct') else 'wrong'}) · "
                f"{rec.get('video_tokens_kept')} tokens · TTFT {_ms(rec.get('ttft_ms'))}" if ok
                else f"error: {rec.get('error')}")
        item = f"{rec.get('id')} {rec.get('setting')}"
        self.advance(ok, f"{rec.get('id')} ({rec.get('setting')}): {rec.get('error')}", f"{item}: {what}")

    def stats(self) -> str:
        return f"{super().stats()} · {self.correct} right"


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}%"


def _column_groups(data: dict[str, Any], rows: list[dict[str, Any]], width: int) -> list[list[str]]:
    """The settings of the per-type table, cut into groups of columns that fit `width` (a table per group, rather
    than one whose cells rich would cut to "…"); the reference setting opens every group, to compare against."""
    names = [r["setting"] for r in rows]
    ref = next((r["setting"] for r in rows if r["reference"]), None)

    def col_width(name: str) -> int:
        cells = [_type_cell(c.get(name)) for c in data["by_type"].values()]
        return max(len(name), *(len(c) for c in cells)) + 3  # padding and border

    first = max(len("type"), *(len(t) for t in data["by_type"])) + 4
    groups: list[list[str]] = []
    current: list[str] = []
    used = first
    for name in names:
        w = col_width(name)
        if current and used + w > width:
            groups.append(current)
            current = [ref] if ref and name != ref else []
            used = first + (col_width(ref) if current else 0)
        current.append(name)
        used += w
    if current:
        groups.append(current)
    return groups


def _type_cell(cell: dict[str, Any] | None) -> str:
    if not cell or not cell["n"]:
        return "–"
    return f"{_pct(cell['accuracy_pct'])} ({cell['correct']}/{cell['n']})"


FORM_TITLES = {"mc": "multiple choice", "short": "short answer (normalised exact match)"}


def print_eval(data: dict[str, Any], max_new_tokens: int) -> None:
    """The results table on stdout (it is the command's output), a per-type table when the questions have
    types, and what the numbers mean on stderr."""
    from rich.console import Console
    from rich.table import Table

    from fastvid_cli.ui import err_console

    probe = Console()
    out = Console(highlight=False, width=None if probe.is_terminal else max(probe.width, 120))
    form = FORM_TITLES.get(data.get("form", "mc"), data.get("form"))
    title = f"{data['model']} · {data['questions']} questions · {form} · greedy, ≤{max_new_tokens} new tokens"
    table = Table(title=title, title_justify="left")
    for col in ("setting", "accuracy", "correct / n", "retention", "video tokens", "TTFT ms"):
        table.add_column(col, justify="left" if col == "setting" else "right", no_wrap=True)
    rows = data["settings"]
    if any(r["errors"] for r in rows):
        table.add_column("errors", justify="right")
    if any(r["pending"] for r in rows):
        table.add_column("pending", justify="right")
    for r in rows:
        kept = "–" if r["mean_video_tokens_kept"] is None else f"{r['mean_video_tokens_kept']:.0f}"
        if r["mean_video_tokens_kept"] is not None and r.get("video_tokens_total"):
            kept += f" / {r['video_tokens_total']}"
        cells = [r["setting"] + (" (ref)" if r["reference"] else ""), _pct(r["accuracy_pct"]),
                 f"{r['correct']} / {r['n']}",
                 "–" if r["retention"] is None else f"{100 * r['retention']:.1f}%", kept, _ms(r["mean_ttft_ms"])]
        if any(x["errors"] for x in rows):
            cells.append(str(r["errors"]))
        if any(x["pending"] for x in rows):
            cells.append(str(r["pending"]))
        table.add_row(*cells)
    out.print(table)
    if data["by_type"]:
        for part, settings in enumerate(_column_groups(data, rows, out.width)):
            title = "accuracy by question type" + (" (continued)" if part else "")
            types = Table(title=title, title_justify="left")
            types.add_column("type", no_wrap=True)
            for name in settings:
                types.add_column(name, justify="right", no_wrap=True)
            for t, cells in data["by_type"].items():
                types.add_row(t, *[_type_cell(cells.get(name)) for name in settings])
            out.print(types)
    err_console.print("[dim]accuracy over answered questions; retention = accuracy / accuracy of none@1 (ratio "
                      "1.0); video tokens = mean kept per question; TTFT measured per question (each video's "
                      "first question in a setting also pays pruning and the video-prefix prefill, later ones "
                      "reuse its KV cache; encoding is shared by all settings and not counted)[/]")
    run = data["run"]
    err_console.print(f"[dim]{run['answered']} answered now ({run['failed']} failed), {run['skipped']} from "
                      f"earlier runs → {data['output']}[/]")
