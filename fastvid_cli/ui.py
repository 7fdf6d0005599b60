"""Everything the user sees on stderr: stage progress while working, and the summary panel when done.

The answer itself goes to stdout (plain text, flushed per piece) so it can be piped; rich only ever writes to
stderr, and the live spinner is stopped before the first token so the two never interleave on a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fastvid_cli.pruning import method_label

STAGE_LABELS = {
    "load": "load model",
    "sample": "sample frames",
    "encode": "encode (preprocess + vision)",
    "prune": "prune",
    "prefill": "prefill",
    "decode": "decode",
    "baseline": "time pruned and unpruned prefills",
    "compare": "compare settings",
    "cache": "look up cached features",
}

err_console = Console(stderr=True, highlight=False)


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def warn_line(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


class AnswerOut:
    """Writes the streamed answer to stdout, flushed per piece, and ends its last line once (`end_line`): before
    progress lines that come after the answer (`ask --baseline`) and when the command is done."""

    def __init__(self) -> None:
        self.open = True  # the answer's last line still needs its newline (also an empty answer gets one)

    def __call__(self, piece: str) -> None:
        write_answer_piece(piece)
        if piece:
            self.open = not piece.endswith("\n")

    def end_line(self) -> None:
        if self.open:
            write_answer_piece("\n")
            self.open = False


class StageDisplay:
    """A spinner naming the current stage, and one line per finished stage with its time: the wall time since the
    stage started, or the `seconds` given (work that overlapped something else, e.g. sampling during the load).
    With `answer`, the streamed answer's line is ended before any progress that follows the answer."""

    def __init__(self, enabled: bool = True, answer: AnswerOut | None = None):
        self.enabled = enabled
        self.live = err_console.is_terminal and enabled
        self.status = None
        self.started: dict[str, float] = {}
        self.answer = answer
        self.answering = False

    def __call__(self, stage: str, event: str, seconds: float | None = None) -> None:
        if not self.enabled:
            return
        label = STAGE_LABELS.get(stage, stage)
        if self.answering and stage != "decode" and self.answer is not None:
            self.answer.end_line()
        if event == "start":
            self.started[stage] = time.perf_counter()
            if stage == "decode":  # the answer streams now: get the spinner out of the way
                self.stop()
                self.answering = True
                return
            if self.live:
                if self.status is None:
                    self.status = err_console.status(f"{label}…", spinner="dots")
                    self.status.start()
                else:
                    self.status.update(f"{label}…")
            else:
                err_console.print(f"[dim]… {label}[/]")
        elif event == "done" and stage != "decode":
            dt = seconds if seconds is not None else time.perf_counter() - self.started.get(stage, time.perf_counter())
            err_console.print(f"[green]✓[/] {label} [dim]{_fmt_s(dt)}[/]")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_ms(v: float | None) -> str:
    """A duration for people: '12.3 ms', '1.25 s', or '–' when unknown."""
    if v is None:
        return "–"
    return f"{v:.1f} ms" if v < 1000 else f"{v / 1e3:.2f} s"


def fmt_secs(s: float) -> str:
    """A longer duration for people: '42 s' or '7 min'."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


class ItemProgress:
    """What `batch` and `eval` show while they work, on stderr: a rich bar over this run's items on a terminal,
    one plain line per item otherwise; notes print above the bar; the ETA counts only items done since the model
    was ready, and is "?" until one is. Subclasses say what an item is (`label`) and what the stats show (`stats`)."""

    label = "items"

    def __init__(self, enabled: bool = True) -> None:
        self.console = err_console
        self.enabled = enabled
        self.bar = None
        self.task = None
        self.prefix = ""  # e.g. "[rank 1/4] " under a multi-process launch
        self.total = 0
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()
        self.done_at_t0 = 0
        self.ready = False  # answering(): the model is loaded; items before that (invalid ones) say nothing of speed

    def open(self, total: int, *, bar: bool = True) -> None:
        """Start counting `total` items; with `bar`, draw the progress bar when stderr is a terminal."""
        self.total = total
        self.t0 = time.perf_counter()
        if total and bar and self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]} · ETA {task.fields[eta]}"),
                                console=self.console, transient=False)
            self.task = self.bar.add_task(self.label, total=total, stats=self.stats(), eta="?")
            self.bar.start()

    def answering(self) -> None:
        """The model is ready: items before this (invalid ones, instant) stay out of the rate."""
        self.t0 = time.perf_counter()
        self.done_at_t0 = self.done
        self.ready = True

    def note(self, message: str, force: bool = False) -> None:
        if not (self.enabled or force):
            return
        console = self.bar.console if self.bar is not None else self.console
        console.print(f"{self.prefix}{message}", markup=False, highlight=False, soft_wrap=True)

    def advance(self, ok: bool, failure: str, what: str, *, with_stats: bool = False) -> None:
        """One item done: the bar moves (a failure also prints `failure`), or without a bar a plain line
        "[done/total] what" (+ stats and ETA) is printed."""
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=1, stats=self.stats(), eta=self.eta())
            if not ok:
                self.bar.console.print(f"[red]✗[/] {failure}", highlight=False, soft_wrap=True)
            return
        tail = f" · {self.stats()} · ETA {self.eta()}" if with_stats else ""
        self.note(f"[{self.done}/{self.total}] {what}{tail}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def stats(self) -> str:
        return f"✓ {self.done - self.failed}  ✗ {self.failed}"

    def eta(self) -> str:
        """Remaining items times the mean time of the items done since the model was ready; "?" before the model
        is ready (it may still be loading) and until one item has been done since."""
        left = self.total - self.done
        timed = self.done - self.done_at_t0
        if left <= 0:
            return "0 s"
        if not self.ready or timed <= 0:
            return "?"
        return fmt_secs((time.perf_counter() - self.t0) / timed * left)


class Flow:
    """Values laid out on a line, wrapped between values only: a piece such as "vision 12.3 ms" is never split across
    lines (unless it alone is wider than the line). A piece given as a list of sub-pieces (rich markup) reads as one
    phrase, a space apart, and may wrap between its sub-pieces; pieces are `sep` apart."""

    def __init__(self, pieces: list[str | Text | list[str]], sep: str = "  ") -> None:
        self.parts: list[tuple[str, Text]] = []  # (separator before it, text)
        for piece in pieces:
            subs = [x for x in (piece if isinstance(piece, list) else [piece]) if x]
            for k, sub in enumerate(subs):
                text = sub if isinstance(sub, Text) else Text.from_markup(sub)
                self.parts.append((" " if k else sep, text))

    def __rich_measure__(self, console: Console, options) -> Measurement:
        widths = [text.cell_len for _, text in self.parts]
        one_line = sum(widths) + sum(cell_len(gap) for gap, _ in self.parts[1:])
        return Measurement(max(widths, default=0), one_line).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options):
        out, used = Text(), 0
        for gap, text in self.parts:
            if used and used + cell_len(gap) + text.cell_len > options.max_width:
                out.append("\n")
                used = 0
            elif used:
                out.append(gap)
                used += cell_len(gap)
            out.append_text(text)
            used += text.cell_len
        yield out


def _time_pieces(r: dict[str, Any], load_ms: float | None) -> list[str | list[str]]:
    """The stage times of the summary, one piece per stage. Sampling that ran beside the model load shows its own
    time and, only when the answer had to wait for it after the load, that wait; on a feature-cache hit nothing was
    sampled or encoded for this answer, so those stages are left out (the "feature cache" row says why)."""
    t = r.get("timings_ms", {})
    hit = r.get("cache") == "hit"
    pieces: list[str | list[str]] = [f"load [bold]{fmt_ms(load_ms)}[/]"] if load_ms is not None else []
    if "sample" in t and not hit:
        sample = [f"sample [bold]{fmt_ms(t['sample'])}[/]" + (" (GPU decode)" if r.get("frame_decoder") == "gpu" else "")]
        if "sample_wait" in t:  # sampled on the main thread while the model loaded
            waited = t["sample_wait"] or 0.0
            sample += ["(during load;", f"waited {fmt_ms(waited)})"] if round(waited, 1) > 0 else ["(during load)"]
        pieces.append(sample)
    for key, label in (("preprocess", "preprocess"), ("vision", "vision")):
        if key in t and not hit:
            piece = [f"{label} [bold]{fmt_ms(t[key])}[/]"]
            if key == "vision" and "encode_after_sample" in t:  # encoded while the rest decoded: only the tail counts
                piece += ["(during sampling;", f"{fmt_ms(t['encode_after_sample'])} after it)"]
            pieces.append(piece)
    for key, label in (("prune", "prune"), ("prefill", "prefill"), ("ttft", "TTFT"), ("decode", "decode")):
        if key in t:
            pieces.append(f"{label} [bold]{fmt_ms(t[key])}[/]")
    return pieces


def _segments_label(method: str) -> tuple[str, str]:
    """(row label, by what) of a method's PruneResult.segments, from its registry entry."""
    from fastvid_cli.pruning import REGISTRY

    spec = REGISTRY.get(method)
    return spec.segments if spec is not None and spec.segments else ("segments", method)


def summary_panel(r: dict[str, Any], load_ms: float | None = None, server: str | None = None) -> Panel:
    """The summary of one answer (`ask`, the fields of Report.to_dict()). Values are laid out as Flow pieces so that
    at any width (80 columns included) a line breaks between values, never inside one. `server`: the URL of the
    `fastvid serve` that answered (`ask --server`)."""
    t = r.get("timings_ms", {})
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    ts = r.get("frame_timestamps") or [0.0]
    frames: list[str] = [f"{r['frames']} sampled,", f"t = {ts[0]:.2f}–{ts[-1]:.2f} s",
                         f"of {r.get('video_duration_s', 0):.2f} s"]
    if r["frames"] < r.get("frames_requested", r["frames"]):
        frames += [f"[yellow](clip has only {r['frames']} frames;[/]", f"[yellow]asked for {r['frames_requested']})[/]"]
    grid.add_row("frames", Flow([frames]))
    sel = r.get("selection")
    if sel:
        grid.add_row("selected", Flow([[f"{sel['k']} of {sel['candidates']} candidates", "for the question",
                                        f"(BOLT ITS, power {sel['power']:g};", Text(f"{sel['selector']})")]]))
        grid.add_row("t (score)", Flow([[f"{t:.2f}s ({sc:.3f})" for t, sc in zip(sel["timestamps"],
                                                                                  sel["scores"])]]))
    total, kept = r["video_tokens_total"], r["video_tokens_kept"]
    pct = 100.0 * kept / total if total else 0.0
    method = method_label(r["method"], r["ratio"])
    grid.add_row("video tokens", Flow([[f"{total} → [bold]{kept}[/]", f"({pct:.1f}% kept,", f"{method})"]]))
    segs = r.get("segments") or []
    if segs:  # the method's temporal segments (FastVID's DySeg), or windows (HoliTom's), as its entry calls them
        label, by = _segments_label(r["method"])
        grid.add_row(label, f"{len(segs)} by {by}: {' '.join(map(str, segs))}")
    grid.add_row("prompt", f"{r['prompt_tokens_total']} → [bold]{r['prompt_tokens_kept']}[/] tokens")
    grid.add_row("saliency", Text(r.get("saliency_source", ""), overflow="fold"))
    if r.get("cache", "off") == "hit":
        note: list[str] = []
        if "sample_wait" in t:  # the frames were sampled during the load, before the cache could be read
            waited = t["sample_wait"] or 0.0
            note = (["(the frames sampled during the load were not needed;", f"waited {fmt_ms(waited)} for them)"]
                    if round(waited, 1) > 0 else ["(the frames sampled during the load were not needed)"])
        grid.add_row("feature cache", Flow([["[green]hit[/]: cached features used,", "preprocess and vision skipped"],
                                            note]))
    elif r.get("cache", "off") == "miss":
        grid.add_row("feature cache", "miss (features stored for the next run)")
    grid.add_row("time", Flow(_time_pieces(r, load_ms)))
    tps = r.get("decode_tokens_per_s")
    mode = r.get("decode_mode") or ""
    if mode in ("cuda-graph", "fused-graph"):
        cap = t.get("graph_capture")
        mode = ("fused " if mode == "fused-graph" else "") + "CUDA graph" + (
            f", captured in {fmt_ms(cap)}" if cap is not None else ", reused")
    stopped = f"(stopped: {r['stop_reason']})" if r.get("stop_reason") not in ("", "eos") else ""
    grid.add_row("decode", Flow([[f"{r['new_tokens']} new tokens" + ("," if tps else ""),
                                  f"{tps:.1f} tok/s" if tps else "", f"· {mode}" if mode else "", stopped]]))
    if r.get("peak_gpu_mem_mb") is not None:
        grid.add_row("peak GPU mem", f"{r['peak_gpu_mem_mb'] / 1024:.2f} GiB")
    sp = r.get("prefill_speedup")
    if sp:
        if r.get("prefill_speedup_measured"):
            runs = r.get("prefill_timed_runs")
            grid.add_row("prefill speedup", Flow([[
                f"[bold green]{sp:.2f}x[/] measured", f"({fmt_ms(r.get('baseline_prefill_ms'))} unpruned",
                f"vs {fmt_ms(r.get('pruned_prefill_ms'))} pruned" + ("," if runs else ")"),
                f"median of {runs})" if runs else ""]]))
        else:
            grid.add_row("prefill speedup", Flow([[f"[bold]{sp:.2f}x[/] est.", "(LLM prefill FLOPs;",
                                                   "--baseline measures it)"]]))
    grid.add_row("device", Flow([r["device"], r["dtype"], r.get("attn_implementation", ""),
                                 Text(str(r["model"]))], " · "))
    if server is not None:  # where it ran: the model was already loaded there
        grid.add_row("server", Flow([Text(server), [f"model loaded once, in {fmt_ms(t.get('load'))};",
                                                    f"queued {fmt_ms(t.get('queue'))}"]]))
    for note in r.get("notes", []):
        grid.add_row("[yellow]note[/]", Text(note))
    return Panel(grid, title="fastvid", title_align="left", border_style="dim", expand=False)


def selection_line(sel: dict[str, Any]) -> None:
    """`compare --select`: which frames every row answered from, on stderr."""
    times = " ".join(f"{t:.2f}s ({sc:.3f})" for t, sc in zip(sel["timestamps"], sel["scores"]))
    err_console.print(f"[dim]frames chosen for the question: {sel['k']} of {sel['candidates']} candidates (BOLT ITS, "
                      f"power {sel['power']:g}; {sel['selector']}), t (score): {times}[/]", highlight=False)


def print_summary(r: dict[str, Any], load_ms: float | None = None, server: str | None = None) -> None:
    err_console.print(summary_panel(r, load_ms, server))


def write_answer_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms_cell(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


# compare's columns: (header, justify, cell). Headers stay short so that the table reads at 80 columns; the legend
# printed under it says what they mean.
COMPARE_COLUMNS: list[tuple[str, str, Any]] = [
    ("method", "left", lambda r: r["method"]),
    ("r", "right", lambda r: f"{r['ratio']:g}"),
    ("kept", "right", lambda r: f"{r['video_tokens_kept']} ({r['kept_pct']:.0f}%)"),
    ("seg", "right", lambda r: str(r["segments"] or "–")),
    ("prune", "right", lambda r: _ms_cell(r["prune_ms"])),
    ("prefill", "right", lambda r: _ms_cell(r["prefill_ms"])),
    ("TTFT", "right", lambda r: _ms_cell(r["ttft_ms"])),
    ("tok/s", "right", lambda r: f"{r['decode_tokens_per_s']:.1f}" if r.get("decode_tokens_per_s") else "–"),
    ("prefill×", "right", lambda r: f"{r['prefill_speedup']:.2f}x" if r.get("prefill_speedup") else "–"),
    ("TTFT×", "right", lambda r: f"{r['ttft_speedup']:.2f}x" if r.get("ttft_speedup") else "–"),
]
# Left out, in this order, while the table is wider than the terminal (a note says which; --json has them all).
COMPARE_OPTIONAL = ("seg", "tok/s", "prune")


def compare_table(result: dict[str, Any], width: int) -> tuple[Table, list[str]]:
    """The `compare` table for a terminal `width` columns wide, and the headers of the columns left out to fit it:
    no cell is cut to "…" (or wraps, down to the narrowest table; in a terminal narrower still, cells fold)."""
    hidden: list[str] = []
    probe = Console(width=10_000)
    while True:
        table = Table(title=f"{result['model']} · {result['frames']} frames · times in ms, medians of "
                            f"{result['repeat']} runs", title_justify="left", box=box.SIMPLE_HEAD,
                      padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False)
        cols = [c for c in COMPARE_COLUMNS if c[0] not in hidden]
        left = [h for h in COMPARE_OPTIONAL if h not in hidden]
        for header, justify, _ in cols:  # narrower than even the shortest table: cells fold rather than lose text
            table.add_column(header, justify=justify, no_wrap=bool(left), overflow="fold")
        for r in result["rows"]:
            table.add_row(*(cell(r) for _, _, cell in cols))
        if not left or probe.measure(table).maximum <= width:
            return table, hidden
        hidden.append(left[0])


def compare_legend(result: dict[str, Any], hidden: list[str]) -> list[Flow]:
    """The lines under the compare table (stderr): what every row shared, what the columns mean, what was left
    out."""
    shared = result["shared_ms"]
    if result.get("cache") == "hit":
        common = [["shared by every row:", "features from the cache", "(preprocess and vision skipped;",
                   "frames sampled during the load not needed)"]]
    else:
        common = [["shared by every row:", f"sample {fmt_ms(shared.get('sample'))}"],
                  f"preprocess {fmt_ms(shared.get('preprocess'))}", f"vision {fmt_ms(shared.get('vision'))}",
                  f"feature cache {result['cache']}"]
    kinds = dict.fromkeys(_segments_label(r["method"]) for r in result["rows"] if r["segments"])
    legend = ["r: retention ratio", "kept: video tokens kept",
              "" if "seg" in hidden or not kinds else "seg: " + ", ".join(f"{by} {label}" for label, by in kinds),
              ", ".join(h for h in ("prune", "prefill", "TTFT") if h not in hidden) + " in ms",
              "×: speedup over the ratio 1.0 row"]
    lines = [Flow(common, " · "), Flow(legend, " · ")]
    if hidden:
        lines.append(Flow([f"left out at this width: {', '.join(hidden)}", "(widen the terminal, or see --json)"],
                          " "))
    return lines


def print_compare(result: dict[str, Any], full: bool = False, out: Console | None = None,
                  err: Console | None = None) -> None:
    """The `compare` table on stdout (it is the command's output), then each row's answer (shortened unless
    `full`); context lines on stderr (`out`, `err`: other consoles, e.g. tests at a given width)."""
    if out is None:
        probe = Console()
        out = Console(highlight=False, width=None if probe.is_terminal else max(probe.width, 120))
    err = err or err_console
    table, hidden = compare_table(result, out.width)
    out.print(table)
    for r in result["rows"]:
        text = r["answer"].strip() if full else _short(r["answer"], 100)
        out.print(f"[bold]{r['method']} {r['ratio']:g}:[/] {text}", markup=True, highlight=False)
    for line in compare_legend(result, hidden):
        err.print(line, style="dim")
    for n in result.get("notes", []):
        warn_line(n)
    for r in result["rows"]:
        for n in r.get("notes", []):
            err.print(f"[yellow]note[/] ({r['method']} {r['ratio']:g}): {n}")
