"""The benchmark file of `fastvid eval`: JSON Lines, one multiple-choice question per line (format:
fastvid_cli/synth.py), read whole and validated before anything runs. A bad line is a usage error naming it; a
missing video only marks its question (answered by error records), unless it can be regenerated from its seed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastvid_cli.batch.rows import MAX_FRAMES
from fastvid_cli.errors import FastVidError, InvalidOptionError
from fastvid_cli.runs import read_input_text

BENCH_ERROR = InvalidOptionError

REQUIRED_KEYS = ("id", "video", "question", "options", "answer")
LETTERS = "ABCDEFGH"  # options per question: 2 to 8 (the benchmark format uses 4, A-D)


@dataclass
class BenchQuestion:
    """One line of the benchmark JSONL, validated. `error` set: answered by error records (missing video)."""

    line: int  # 1-based line number in the file
    id: str
    video: str  # as written in the file
    path: str  # resolved against `root`
    question: str
    options: list[str]
    answer: str  # the gold letter
    type: str | None = None
    seed: int | None = None
    frames: int | None = None
    short_answer: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the line's object, for synth.materialize
    root: str = ""  # the folder relative video paths are taken against: --videos-root or the file's folder
    error: str | None = None


def read_bench(path: str | os.PathLike, videos_root: str | os.PathLike | None = None) -> list[BenchQuestion]:
    """Read and validate the whole benchmark JSONL (format: see fastvid_cli/synth.py; keys id, video,
    question, options, answer; optional type, seed, frames, short_answer). Blank lines are skipped. Any
    problem with the file or a line raises BENCH_ERROR naming the line; a missing video only sets `error`."""
    p = Path(path)
    name = str(path)
    text = read_input_text(path, "benchmark file")  # BENCH_ERROR is InvalidOptionError too
    if videos_root is not None:
        root = Path(videos_root).expanduser()
        if root.exists() and not root.is_dir():
            raise BENCH_ERROR(f"--videos-root {videos_root} is not a folder")
        root = root.resolve()  # may not exist yet: videos regenerated from their seeds are written there
    else:
        root = p.resolve().parent
        if _in_package(root):  # the shipped split: its videos are not there, and regenerated ones must not go there
            root = Path.cwd().resolve()
    questions: list[BenchQuestion] = []
    first_line_of: dict[str, int] = {}
    for n, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise BENCH_ERROR(f"{name} line {n}: invalid JSON ({detail})") from None
        if not isinstance(obj, dict):
            raise BENCH_ERROR(f"{name} line {n}: expected a JSON object, got {type(obj).__name__}")
        q = _parse_question(obj, n, name, root)
        if q.id in first_line_of:
            raise BENCH_ERROR(f"{name} line {n}: duplicate id '{q.id}' (first used on line {first_line_of[q.id]})")
        first_line_of[q.id] = n
        questions.append(q)
    if not questions:
        raise BENCH_ERROR(f"benchmark file {name} has no questions")
    if not root.exists() and not any(q.seed is not None for q in questions):  # nothing to regenerate into it
        raise BENCH_ERROR(f"--videos-root {videos_root} does not exist")
    return questions


def _in_package(folder: Path) -> bool:
    """Whether `folder` is inside the installed fastvid_cli package (site-packages for a normal install)."""
    package = Path(__file__).resolve().parents[1]
    return folder == package or package in folder.parents


def _parse_question(obj: dict[str, Any], n: int, name: str, root: Path) -> BenchQuestion:
    def bad(message: str) -> InvalidOptionError:
        return BENCH_ERROR(f"{name} line {n}: {message}")

    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise bad(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    id_ = obj["id"]
    if isinstance(id_, int) and not isinstance(id_, bool):
        id_ = str(id_)
    if not isinstance(id_, str) or not id_.strip():
        raise bad(f"id must be a non-empty string, got {id_!r}")
    video, question, options = obj["video"], obj["question"], obj["options"]
    if not isinstance(video, str) or not video.strip():
        raise bad(f"video must be a non-empty path, got {video!r}")
    if not isinstance(question, str) or not question.strip():
        raise bad(f"question must be a non-empty string, got {question!r}")
    if (not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS)
            or not all(isinstance(o, str) and o.strip() for o in options)):
        raise bad(f"options must be a list of 2 to {len(LETTERS)} non-empty strings, got {options!r}")
    answer = obj["answer"]
    letters = LETTERS[: len(options)]
    if not isinstance(answer, str) or answer.strip().upper() not in letters or not answer.strip():
        raise bad(f"answer must be one of the letters {', '.join(letters)}, got {answer!r}")
    type_, seed, frames, short = obj.get("type"), obj.get("seed"), obj.get("frames"), obj.get("short_answer")
    if type_ is not None and not isinstance(type_, str):
        raise bad(f"type must be a string, got {type_!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad(f"seed must be an integer, got {seed!r}")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or
                               not 1 <= frames <= MAX_FRAMES):
        raise bad(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}")
    if short is not None and not isinstance(short, str):
        raise bad(f"short_answer must be a string, got {short!r}")
    vp = Path(video.strip()).expanduser()
    vp = vp if vp.is_absolute() else root / vp
    q = BenchQuestion(line=n, id=id_.strip(), video=video, path=str(vp), question=question, options=list(options),
                      answer=answer.strip().upper(), type=type_, seed=seed, frames=frames, short_answer=short,
                      raw=obj, root=str(root))
    q.error = _video_problem(q)
    return q


def _video_problem(q: BenchQuestion) -> str | None:
    vp = Path(q.path)
    if not vp.exists():
        return f"video not found: {q.video}"
    if not vp.is_file():
        return f"video is not a regular file: {q.video}"
    return None


def regenerate_videos(questions: list[BenchQuestion]) -> list[str]:
    """Questions whose video is missing but that have a "seed": re-render their clips with
    ``fastvid_cli.synth.materialize``, which writes ``root / record["video"]`` for the records of a JSONL; it gets
    a temporary one holding just these records. Clears `error` of each question whose video is there now; a
    failure becomes their error. Returns notes for the user."""
    wanted = [q for q in questions if q.error and q.seed is not None and not Path(q.path).exists()]
    if not wanted:
        return []
    import tempfile

    from fastvid_cli import synth_needle  # noqa: F401 - registers the needle split's generator
    from fastvid_cli.synth import materialize  # numpy: imported only when a video is to be regenerated

    notes = []
    by_root: dict[str, list[BenchQuestion]] = defaultdict(list)
    for q in wanted:
        by_root[q.root].append(q)
    for root, qs in by_root.items():
        with tempfile.TemporaryDirectory(prefix="fastvid-eval-") as tmp:
            split = Path(tmp) / "regenerate.jsonl"
            split.write_text("".join(json.dumps(q.raw, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
            try:
                materialize(split, root)
            except Exception as e:  # a failed regeneration is these questions' error, not the run's
                msg = (e.one_line() if isinstance(e, FastVidError) else " ".join(str(e).split())) or type(e).__name__
                for q in qs:
                    q.error = f"video not found: {q.video}; regenerating it from its seed failed: {msg[:200]}"
                notes.append(f"could not regenerate {len(qs)} video(s) from their seeds: {msg[:200]}")
                continue
        done = 0
        for q in qs:
            q.error = _video_problem(q)
            done += q.error is None
        if done:
            notes.append(f"regenerated the videos of {done} question(s) from their seeds under {root}")
    return notes
