"""Everything the user sees on stderr: stage progress while working, and the summary panel when done.

The answer itself goes to stdout (plain text, flushed per piece) so it can be piped; rich only ever writes to
stderr, and the live spinner is stopped before the first token so the two never interleave on a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

STAGE_LABELS = {
    "load": "load model",
    "sample": "sample frames",
    "encode": "encode (preprocess + vision)",
    "prune": "prune",
    "prefill": "prefill",
    "decode": "decode",
    "baseline": "baseline prefill (unpruned)",
    "compare": "compare settings",
}

err_console = Console(stderr=True, highlight=False)


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def warn_line(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


class StageDisplay:
    """A spinner naming the current stage, and one line per finished stage with its wall time."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.live = err_console.is_terminal and enabled
        self.status = None
        self.started: dict[str, float] = {}

    def __call__(self, stage: str, event: str) -> None:
        if not self.enabled:
            return
        label = STAGE_LABELS.get(stage, stage)
        if event == "start":
            self.started[stage] = time.perf_counter()
            if stage == "decode":  # the answer streams now: get the spinner out of the way
                self.stop()
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
            dt = time.perf_counter() - self.started.get(stage, time.perf_counter())
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


def summary_panel(r: dict[str, Any], load_ms: float | None = None) -> Panel:
    t = r.get("timings_ms", {})
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    ts = r.get("frame_timestamps") or [0.0]
    frames = f"{r['frames']} sampled, t = {ts[0]:.2f}–{ts[-1]:.2f} s of {r.get('video_duration_s', 0):.2f} s"
    if r["frames"] < r.get("frames_requested", r["frames"]):
        frames += f" [yellow](clip has only {r['frames']} frames; asked for {r['frames_requested']})[/]"
    grid.add_row("frames", frames)
    total, kept = r["video_tokens_total"], r["video_tokens_kept"]
    pct = 100.0 * kept / total if total else 0.0
    method = r["method"] if r["method"] == "none" else f"{r['method']} r={r['ratio']:g}"
    grid.add_row("video tokens", f"{total} → [bold]{kept}[/] ({pct:.1f}% kept, {method})")
    segs = r.get("segments") or []
    if segs:  # FastVID's DySeg segments, or HoliTom's temporal windows
        label, by = ("windows", "HoliTom's DP") if r["method"].startswith("holitom") else ("segments", "DySeg")
        grid.add_row(label, f"{len(segs)} by {by}: {' '.join(map(str, segs))}")
    grid.add_row("prompt", f"{r['prompt_tokens_total']} → [bold]{r['prompt_tokens_kept']}[/] tokens")
    grid.add_row("saliency", r.get("saliency_source", ""))
    if r.get("cache", "off") != "off":
        grid.add_row("feature cache", "[green]hit[/] (sampling and vision skipped)" if r["cache"] == "hit"
                     else "miss (features stored for the next run)")
    stages = [("sample", "sample"), ("preprocess", "preprocess"), ("vision", "vision"), ("prune", "prune"),
              ("prefill", "prefill"), ("ttft", "TTFT"), ("decode", "decode")]
    times = "  ".join(f"{label} [bold]{fmt_ms(t.get(key))}[/]" for key, label in stages if key in t)
    if "sample_wait" in t:  # sampling ran during the model load: only the wait after it counts
        times = times.replace(f"sample [bold]{fmt_ms(t.get('sample'))}[/]",
                              f"sample [bold]{fmt_ms(t.get('sample'))}[/] (during load; waited "
                              f"{fmt_ms(t['sample_wait'])})")
    if "encode_after_sample" in t:  # frames were encoded while the rest decoded: only the tail adds to TTFT
        times = times.replace(f"vision [bold]{fmt_ms(t.get('vision'))}[/]",
                              f"vision [bold]{fmt_ms(t.get('vision'))}[/] (during sampling; "
                              f"{fmt_ms(t['encode_after_sample'])} after it)")
    if load_ms is not None:
        times = f"load [bold]{fmt_ms(load_ms)}[/]  " + times
    grid.add_row("time", times)
    tps = r.get("decode_tokens_per_s")
    mode = r.get("decode_mode") or ""
    if mode in ("cuda-graph", "fused-graph"):
        cap = t.get("graph_capture")
        mode = ("fused " if mode == "fused-graph" else "") + "CUDA graph" + (
            f", captured in {fmt_ms(cap)}" if cap is not None else ", reused")
    grid.add_row("decode", f"{r['new_tokens']} new tokens" + (f", {tps:.1f} tok/s" if tps else "")
                 + (f" · {mode}" if mode else "")
                 + (f" (stopped: {r['stop_reason']})" if r.get("stop_reason") not in ("", "eos") else ""))
    if r.get("peak_gpu_mem_mb") is not None:
        grid.add_row("peak GPU mem", f"{r['peak_gpu_mem_mb'] / 1024:.2f} GiB")
    sp = r.get("prefill_speedup")
    if sp:
        if r.get("prefill_speedup_measured"):
            grid.add_row("prefill speedup", f"[bold green]{sp:.2f}x[/] measured "
                         f"({fmt_ms(r.get('baseline_prefill_ms'))} unpruned vs {fmt_ms(t.get('prefill_1tok'))})")
        else:
            grid.add_row("prefill speedup", f"[bold]{sp:.2f}x[/] est. (LLM prefill FLOPs; --baseline measures it)")
    grid.add_row("device", f"{r['device']} · {r['dtype']} · {r.get('attn_implementation', '')} · {r['model']}")
    for note in r.get("notes", []):
        grid.add_row("[yellow]note[/]", note)
    return Panel(grid, title="fastvid", title_align="left", border_style="dim", expand=False)


def print_summary(r: dict[str, Any], load_ms: float | None = None) -> None:
    err_console.print(summary_panel(r, load_ms))


def write_answer_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_compare(result: dict[str, Any], full: bool = False) -> None:
    """The `compare` table on stdout (it is the command's output), then each row's answer (shortened unless
    `full`); context lines on stderr."""
    table = Table(title=f"{result['model']} · {result['frames']} frames · median of {result['repeat']}",
                  title_justify="left")
    for col in ("method", "r", "kept", "seg", "prune ms", "prefill ms", "TTFT ms", "tok/s", "prefill×", "TTFT×"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result["rows"]:
        sp = f"{r['prefill_speedup']:.2f}x" if r.get("prefill_speedup") else "–"
        st = f"{r['ttft_speedup']:.2f}x" if r.get("ttft_speedup") else "–"
        tps = f"{r['decode_tokens_per_s']:.1f}" if r.get("decode_tokens_per_s") else "–"
        table.add_row(r["method"], f"{r['ratio']:g}", f"{r['video_tokens_kept']} ({r['kept_pct']:.0f}%)",
                      str(r["segments"] or "–"), f"{r['prune_ms']:.2f}", f"{r['prefill_ms']:.1f}",
                      f"{r['ttft_ms']:.1f}", tps, sp, st)
    probe = Console()
    out = Console(highlight=False, width=None if probe.is_terminal else max(probe.width, 120))
    out.print(table)
    for r in result["rows"]:
        text = r["answer"].strip() if full else _short(r["answer"], 100)
        out.print(f"[bold]{r['method']} {r['ratio']:g}:[/] {text}", markup=True, highlight=False)
    shared = result["shared_ms"]
    err_console.print(f"[dim]shared by every row: sample {fmt_ms(shared.get('sample'))} · preprocess "
                      f"{fmt_ms(shared.get('preprocess'))} · vision {fmt_ms(shared.get('vision'))} · feature cache "
                      f"{result['cache']} · speedups measured against the ratio 1.0 row[/]")
    for n in result.get("notes", []):
        warn_line(n)
    for r in result["rows"]:
        for n in r.get("notes", []):
            err_console.print(f"[yellow]note[/] ({r['method']} {r['ratio']:g}): {n}")
