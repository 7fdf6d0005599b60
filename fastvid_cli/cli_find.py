"""`fastvid find VIDEO... TEXT`: the moments of one or many videos that best match a text, from the frame scores
`--select` uses (no Video LLM at all).

Registered in cli.py. Like cli.py, importing this module imports no torch: everything heavy loads in the command.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from fastvid_cli import options as O
from fastvid_cli.cli_common import run_command
from fastvid_cli.errors import InvalidOptionError

FIND_MIN_CANDIDATES = 64
FIND_MAX_CANDIDATES = 256
FIND_RATE = 2.0  # candidates per second of video by default


def find_candidates(total: int, video_fps: float | None, given: int | None) -> int:
    """Candidates scored per video: --candidates, else two per second of video, from 64 to 256; never more than
    the video has."""
    if given:
        return min(given, total)
    seconds = total / video_fps if video_fps and video_fps > 0 else 0.0
    return min(total, max(FIND_MIN_CANDIDATES, min(FIND_MAX_CANDIDATES, math.ceil(seconds * FIND_RATE))))


class _Plan:
    """find's frame plan (a video.IndexPlan): `find_candidates` frames, uniformly."""

    def __init__(self, given: int | None) -> None:
        self.given = given

    def __call__(self, total: int, video_fps: float | None) -> list[int]:
        import numpy as np

        return np.linspace(0, total - 1, find_candidates(total, video_fps, self.given), dtype=int).tolist()

    def plan_key(self) -> dict:
        """What decides the candidate frames (for the candidate cache)."""
        if self.given:
            return {"plan": "find-linspace", "count": self.given}
        return {"plan": "find-linspace", "rate": FIND_RATE, "min": FIND_MIN_CANDIDATES, "max": FIND_MAX_CANDIDATES}


def find(
    videos: list[Path] = typer.Argument(..., metavar="VIDEO...", help="One or more video files.",
                                        show_default=False),
    text: str = typer.Argument(..., metavar="TEXT", help="What to look for (the last argument).",
                               show_default=False),
    top: int = typer.Option(5, "--top", "-n", min=1, max=1000, metavar="N", help="How many moments to list.",
                            rich_help_panel="Output"),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, max=4096, metavar="M",
                                             help="Frames scored per video, uniformly spaced (default: two per "
                                                  "second of video, from 64 to 256).", rich_help_panel="Video"),
    selector: Optional[str] = typer.Option(None, "--selector", metavar="MODEL",
                                           help="Text-image model that scores the frames: hub id or folder of a "
                                                "SigLIP checkpoint, or 'demo' (default: "
                                                "google/siglip-so400m-patch14-384).", rich_help_panel="Model"),
    device: str = O.DEVICE,
    cache_dir: Optional[Path] = O.CACHE_DIR,
    no_cache: bool = O.NO_CACHE,
    offline: bool = O.OFFLINE,
    threads: Optional[int] = O.THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: the moments and each video's "
                                 "candidate count and times.", rich_help_panel="Output"),
    debug: bool = O.DEBUG,
) -> None:
    """Find the moments that best match a text across one or many videos: video, start–end seconds, score.

    Each video's candidate frames are scored against the text by a text-image model (cosine of the embeddings);
    adjacent candidates scoring at least half-way from that video's median score to its best merge into one moment
    (README 'fastvid find'). Moments of all videos are ranked by their best score. No Video LLM is loaded.
    """

    def body() -> int:
        if not text.strip():
            raise InvalidOptionError("the text to find is empty")
        from fastvid_cli.video import probe_video

        for v in videos:  # every file is checked before anything loads
            probe_video(v)
        from fastvid_cli import hub
        from fastvid_cli.models import check_device_name

        check_device_name(device)
        hub.set_offline(offline)
        from fastvid_cli.engine import set_threads
        from fastvid_cli.frame_scorer import load_scorer, selector_source
        from fastvid_cli.models.loading import resolve_device
        from fastvid_cli.selection import find_moments
        from fastvid_cli.frame_choice import sample_candidates

        from fastvid_cli.feature_cache import FeatureCache

        set_threads(threads)
        fcache = None if no_cache else FeatureCache(cache_dir or hub.fastvid_cache_dir() / "features")
        progress = FindProgress(enabled=not as_json, total=len(videos))
        try:
            t0 = time.perf_counter()
            scorer = load_scorer(selector_source(selector), resolve_device(device))
            load_ms = (time.perf_counter() - t0) * 1e3
            query = scorer.embed_texts([text])[0]
            moments: list[dict[str, Any]] = []
            per_video: list[dict[str, Any]] = []
            for v in videos:
                cands = sample_candidates(str(v), _Plan(candidates), scorer, cache=fcache)
                clip, scores = cands.clip, cands.embeds @ query
                found = find_moments(scores, clip.timestamps, clip.duration)
                moments += [{"video": str(v), "start": round(m.start, 3), "end": round(m.end, 3),
                             "peak": round(m.peak, 3), "score": round(m.score, 4)} for m in found]
                per_video.append({"video": str(v), "candidates": len(clip.indices), "cached": cands.cached,
                                  "duration_s": round(clip.duration, 3), "moments": len(found),
                                  "timings_ms": {"sample": round(cands.sample_ms, 3),
                                                 "score": round(cands.embed_ms, 3)}})
                progress.advance(str(v))
        finally:
            progress.stop()
        moments.sort(key=lambda m: -m["score"])  # stable: a video's own order, then the order of the videos
        data = {"text": text, "selector": scorer.source, "top": top, "moments": moments[:top],
                "videos": per_video, "load_ms": round(load_ms, 3)}
        if as_json:
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        else:
            print_moments(data)
        return 0

    run_command(debug, body)


class FindProgress:
    """A rich progress bar over the videos on stderr (a terminal, not --json); nothing otherwise."""

    def __init__(self, enabled: bool, total: int) -> None:
        from fastvid_cli.ui import err_console

        self.bar = None
        if enabled and err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("[bold]find"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[video]}"), console=err_console, transient=True)
            self.task = self.bar.add_task("find", total=total, video="")
            self.bar.start()

    def advance(self, video: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, video=Path(video).name)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_moments(data: dict[str, Any]) -> None:
    """The moments table on stdout; what the score is on stderr."""
    from rich.console import Console
    from rich.table import Table

    from fastvid_cli.ui import err_console

    table = Table(title=f"moments matching \"{data['text']}\"", title_justify="left")
    for col in ("#", "video", "start–end s", "peak s", "score"):
        table.add_column(col, justify="left" if col == "video" else "right", no_wrap=col != "video",
                         overflow="fold")
    for i, m in enumerate(data["moments"], 1):
        table.add_row(str(i), m["video"], f"{m['start']:.2f}–{m['end']:.2f}", f"{m['peak']:.2f}",
                      f"{m['score']:.4f}")
    Console(highlight=False).print(table)
    n = sum(v["candidates"] for v in data["videos"])
    err_console.print(f"[dim]score = cosine of text and frame embeddings ({data['selector']}); {n} candidate "
                      f"frames in {len(data['videos'])} video(s)[/]")
