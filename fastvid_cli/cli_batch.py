"""`fastvid batch`: answer a CSV of questions about videos into a resumable JSON Lines file.

Registered in cli.py with ``app.command()(batch)``. Like cli.py, importing this module must not import torch
or transformers: everything heavy is imported inside the command.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from fastvid_cli import options as O
from fastvid_cli.cli_common import (feature_cache_dir, pop_select, run_command, server_client, server_url,
                                    traceback_printer)
from fastvid_cli.runs import RunCounts
from fastvid_cli.ui import ItemProgress, fmt_ms

CSV_HELP = ("Questions CSV. Header row required: columns video,question; optional id (default: the 1-based data "
            "row number), ratio and frames (per-row overrides of --ratio/--frames). UTF-8 with or without BOM. "
            "Relative video paths are relative to the CSV's folder.")
OUTPUT_HELP = ("JSON Lines output, one record per row: the fields of `ask --json` plus id, row, status (ok|error), "
               "error, settings and fingerprint. Rerunning the same command resumes: rows already answered with "
               "the same settings are skipped. Default: QUESTIONS' name with the suffix .answers.jsonl, in the "
               "current directory.")


@O.method_options(after="ratio")
@O.select_options(after="fps")
def batch(
    questions: Path = typer.Argument(..., metavar="QUESTIONS", help=CSV_HELP, show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help=OUTPUT_HELP,
                                          show_default=False, rich_help_panel="Output"),
    csv_out: Optional[Path] = typer.Option(None, "--csv-out", metavar="FILE", help="Also write a flat CSV when the "
                                           "run ends (id, video, question, answer, status, error, video_tokens_kept, "
                                           "video_tokens_total, ttft_ms, decode_tokens_per_s), in the questions' "
                                           "order, covering rows answered in earlier runs too.",
                                           rich_help_panel="Output"),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Answer again the rows whose last record "
                                      "with the same settings is an error (otherwise they are skipped too).",
                                      rich_help_panel="Output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: empty the output (and its shard "
                                   "files) instead of resuming.", rich_help_panel="Output"),
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
    frames: Optional[int] = typer.Option(None, "--frames", "-n", min=1, max=4096, metavar="N",
                                         help="Frames to sample uniformly (default: the model's, 32 for LLaVA-OV); "
                                              "a frames column overrides it per row.", rich_help_panel="Video"),
    fps: Optional[float] = O.FPS,
    method: str = O.METHOD,
    ratio: Optional[float] = typer.Option(None, "--ratio", "-r", metavar="RATIO", help="Retention ratio in (0, 1]; "
                                          "1.0 keeps every token (default: the model's, 0.10 for LLaVA-OV); a ratio "
                                          "column overrides it per row.", rich_help_panel="Pruning"),
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_p: float = O.TOP_P,
    seed: Optional[int] = O.SEED,
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    answer_batch: str = typer.Option("auto", "--answer-batch", metavar="auto|N",
                                     help="Greedy questions about one video decoded together, 1 to 256 (same "
                                          "answers as one by one). auto: 16 on CUDA, where a decode step costs about "
                                          "the same for many rows as for one; 1 on CPU, where batching gained at "
                                          "most 1.6x and lost up to 3x on a busy machine (benchmarks/RESULTS.md).",
                                     rich_help_panel="Generation"),
    server: Optional[str] = O.SERVER,
    api_key: Optional[str] = O.API_KEY,
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Answer every question of a CSV, one video session per (video, frames, ratio), into a resumable JSONL.

    Each row's record is appended and fsync'd as it finishes; rerun the same command to resume (rows already
    answered with the same settings fingerprint are skipped). Ctrl-C stops after the current row (a second
    Ctrl-C aborts at once), exit code 130. Under `torchrun --nproc_per_node N` or `accelerate launch`, whole
    video groups are split over the processes (one per GPU, or gloo on CPU) and merged into the output in CSV
    order at the end. Progress (done/failed, ETA, mean tokens kept, mean TTFT) goes to stderr.
    """
    select = pop_select(method_options, frames, fps)

    def body() -> int:
        from fastvid_cli import hub

        sel = select()
        hub.set_offline(offline)
        from fastvid_cli.batch import BatchConfig, run_batch
        from fastvid_cli.errors import EXIT_INTERRUPTED, RowsFailedError

        rows_together = _answer_batch(answer_batch)
        from fastvid_cli.pruning import given_options

        out = output if output is not None else Path(questions.stem + ".answers.jsonl")  # in the working dir
        cfg = BatchConfig(questions=questions, output=out, csv_out=csv_out, model=model, threads=threads,
                          device=device, dtype=dtype, decoder=decoder,
                          attn_implementation=attn_implementation, saliency_model=saliency_model, frames=frames,
                          fps=fps,
                          method=method, ratio=ratio, params=given_options(method_options),
                          max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=seed, system=system, compile=compile_decode,
                          answer_batch=rows_together,
                          retry_errors=retry_errors, overwrite=overwrite,
                          cache_dir=feature_cache_dir(cache_dir, no_cache), select=sel)
        engine = None
        if server_url(server):  # every answer is a request to the server; records and resume as a local run
            from fastvid_cli.remote import remote_engine

            engine = remote_engine(server_client(server_url(server), api_key, True), cfg)
        stop = threading.Event()
        progress = BatchProgress()
        restore = _stop_on_sigint(stop, progress)
        try:
            result = run_batch(cfg, engine=engine, progress=progress, stop=stop,
                               on_exception=traceback_printer(progress, debug), prefetch=engine is None)
        finally:
            restore()
        if result.final:
            progress.summary(result, out, csv_out)
        if result.interrupted:
            return EXIT_INTERRUPTED
        if result.final_failed:  # main process: every row was tried, some stand as errors (exit 8)
            raise RowsFailedError(f"{result.final_failed} of {result.rows} rows failed: their records in {out} have "
                                  "status error and say why", "rerun with --retry-errors to try them again")
        return 0

    run_command(debug, body)


def _answer_batch(text: str) -> int | None:
    """--answer-batch: None for auto (batch.resolve_answer_batch picks per device once the model is loaded)."""
    from fastvid_cli.errors import InvalidOptionError

    t = text.strip().lower()
    if t == "auto":
        return None
    n = int(t) if t.isdigit() else 0
    if not 1 <= n <= 256:
        raise InvalidOptionError(f"--answer-batch must be auto or a whole number from 1 to 256 (got '{text}')")
    return n


def _stop_on_sigint(stop: threading.Event, progress: "BatchProgress"):
    """First Ctrl-C: finish the current row, then stop. Second: KeyboardInterrupt now. Returns the undo."""

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        progress.note("interrupt: stopping after the current row (Ctrl-C again to abort now)")

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        return lambda: None
    return lambda: signal.signal(signal.SIGINT, old)


class BatchProgress(ItemProgress):
    """A rich progress bar over this process's rows on a terminal; one plain line per row otherwise (and under a
    multi-process launch, where several bars would fight over one terminal)."""

    label = "batch"

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[int] = []
        self.ttft: list[float] = []

    # -- Progress protocol (fastvid_cli.runs.Progress)
    def start(self, counts: RunCounts) -> None:
        if counts.world > 1:
            self.prefix = f"[rank {counts.rank}/{counts.world}] "
        if counts.is_main:
            self.note(f"{counts.total} rows: {counts.skipped} already answered with these settings, {counts.pending} "
                      "to do" + (f" over {counts.world} processes" if counts.world > 1 else ""))
        if counts.world > 1:
            self.note(f"{counts.mine} rows for this process")
        self.open(counts.mine, bar=counts.world == 1)

    def item_done(self, rec: dict[str, Any]) -> None:
        ok = rec.get("status") == "ok"
        if ok:
            if rec.get("video_tokens_kept") is not None:
                self.kept.append(rec["video_tokens_kept"])
            ttft = (rec.get("timings_ms") or {}).get("ttft")
            if ttft is not None:
                self.ttft.append(ttft)
        what = (f"ok · {rec.get('video_tokens_kept')}/{rec.get('video_tokens_total')} tokens kept · TTFT "
                f"{fmt_ms((rec.get('timings_ms') or {}).get('ttft'))}" if ok else f"error: {rec.get('error')}")
        row = f"row {rec.get('row')} (id {_id(rec)})"
        self.advance(ok, f"{row}: {rec.get('error')}", f"{row} {what}", with_stats=True)

    # -- end of run
    def summary(self, result: Any, output: Path, csv_out: Path | None) -> None:
        parts = [f"{result.final_ok} ok", f"{result.final_failed} failed"]
        if result.final_pending:
            parts.append(f"{result.final_pending} not answered yet (rerun the same command to resume)")
        self.note(f"{result.rows} rows: " + ", ".join(parts) + f" → {output}"
                  + (f" and {csv_out}" if csv_out is not None else ""))

    def stats(self) -> str:
        s = super().stats()
        if self.kept:
            s += f" · kept {sum(self.kept) / len(self.kept):.0f} tok"
        if self.ttft:
            s += f" · TTFT {fmt_ms(sum(self.ttft) / len(self.ttft))}"
        return s


def _id(rec: dict[str, Any]) -> str:
    return str(rec.get("id") if rec.get("id") is not None else rec.get("duplicate_id"))


