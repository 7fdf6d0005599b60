"""A synthetic video-QA benchmark whose answers are known by construction.

Each clip is a few flat-coloured shapes on a flat background: shapes appear, move in straight lines, disappear,
change colour; a scene cut may switch the background mid-clip; shapes the question is not about are distractors.
Every clip is a pure function of an integer seed (``generate(seed)``), so a split ships as a small JSONL file and
its videos are re-rendered from the seeds (``materialize``) instead of being committed.

Question types (``TYPES``); each needs the whole clip or its order, not one frame:

    colour_of_shape   What colour is the square?                      (the square may be visible only for a while)
    shape_of_colour   What shape is the red object?
    count             How many shapes appear in the video?            (1-4; with 2+, no one frame shows them all)
    direction         Which direction does the red circle move?       (left / right / up / down)
    first_appears     Which shape appears first? / What colour is the shape that appears first?
    last_appears      Which shape is the last to appear? / What colour is the shape that is the last to appear?
    after_cut         What colour is the background after the scene change?
                      / Which shape appears after the scene change?
    colour_change     What colour does the triangle turn into?        (the old colour is one of the wrong options)

The primary type of a seed is ``TYPES[seed % len(TYPES)]``, so consecutive seeds are balanced over types.

A clip (defaults): 16 frames of 128x128 at 8 fps; 1-4 shapes from SHAPES (circle, square, triangle, diamond: four,
so a shape question has four real options) of radius 15-20 px, each in its own colour from COLOURS (red, green,
blue, yellow, magenta, cyan), static or moving 30-70% of the frame in a straight line; backgrounds from BACKGROUNDS
(black, white, gray, brown), never a shape colour. Shapes never touch; every shape is visible for at least 3
consecutive frames and events whose order is asked about are at least 3 frames apart, so the labels hold for a
model that sees every other frame (T/2 uniformly sampled frames) or more.

Record format (JSONL, one question per line; what ``fastvid eval`` reads)::

    {"id": "synth_1000003_0",               # unique id of the question
     "video": "videos/synth_1000003.mp4",   # path relative to the video root (the folder given to materialize)
     "seed": 1000003,                       # synthetic only: regenerates the clip
     "frames": 16, "size": 128,             # synthetic only: clip length and (square) frame size in pixels
     "type": "direction",                   # question type (free text for other benchmarks)
     "question": "Which direction does the blue square move?",
     "options": ["up", "left", "down", "right"],   # 4 strings, exactly one correct
     "answer": "B",                         # letter of the correct option
     "answer_text": "left",                 # the correct option's text
     "short_answer": "left"}                # one or two words: the open-ended (short-answer) form

Required fields are ``video``, ``question``, ``options`` and ``answer``; the rest are optional. A VideoMME or
MVBench item converts to this by writing its video path, question, candidate list and answer letter.

Prompts follow the LLaVA / lmms-eval convention: ``mc_prompt`` for multiple choice (the model answers with a
letter, read back by ``parse_choice``), ``short_prompt`` for the short-answer form.

Clips are rendered with numpy only: uint8 (T, H, W, 3) RGB, no anti-aliasing, colours far apart so they survive
H.264 (yuv420p, crf 12) and a resize to a vision tower's input.

This module generates the questions of a seed's clip (``generate``), makes, writes and reads splits, encodes and
materializes their videos, keeps the registry of other splits' generators (``GENERATORS``) and holds the prompts
and the answer parser. The clip vocabulary, dataclasses, ``render`` and the layout planner are in
``fastvid_cli.synth_scene``; ``question_text`` and ``check`` in ``fastvid_cli.synth_check``. Both are re-exported
here, so ``synth.<name>`` keeps working for every public name.
"""

from __future__ import annotations

import json
import os
import random
import re
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InvalidOptionError
from .synth_check import check, question_text
from .synth_scene import (  # re-exported: callers use synth.<name>
    ANY_DIRECTION,
    BACKGROUNDS,
    COLOURS,
    COUNT_OPTIONS,
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    DIRECTIONS,
    LETTERS,
    SHAPES,
    TEST_COUNT,
    TEST_SEED_START,
    TRAIN_SEED_START,
    TYPES,
    QA,
    ClipSpec,
    ObjectTrack,
    Segment,
    State,
    _backgrounds,
    _Builder,
    _gap,
    _interval,
    _min_len,
    _Plan,
    _Retry,
    _shape_mask,  # noqa: F401 - used by fastvid_cli.demo.train_data
    render,
)

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "DIRECTIONS", "TYPES", "LETTERS", "COUNT_OPTIONS",
    "TEST_SEED_START", "TEST_COUNT", "TRAIN_SEED_START", "DEFAULT_FRAMES", "DEFAULT_SIZE", "DEFAULT_FPS",
    "State", "ObjectTrack", "Segment", "ClipSpec", "QA",
    "generate", "render", "check", "question_text",
    "iter_examples", "make_split", "to_record", "video_name", "render_record", "write_jsonl", "read_split", "shipped_split_path",
    "write_clip", "materialize", "mc_prompt", "short_prompt", "parse_choice",
]

# --- question generation --------------------------------------------------------------------------------------


def _others(rng: random.Random, universe, exclude) -> list[str]:
    rest = [u for u in universe if u not in exclude]
    rng.shuffle(rest)
    return rest


def _make_qa(rng: random.Random, qtype: str, subject: dict, answer: str, near: list[str], universe) -> QA:
    """Options: the answer, then ``near`` (wrong answers present in the clip), then the rest of ``universe``."""
    opts = [answer]
    for o in list(near) + _others(rng, universe, [answer, *near]):
        if o not in opts and len(opts) < 4:
            opts.append(o)
    rng.shuffle(opts)
    return QA(qtype, question_text(qtype, subject), tuple(opts), LETTERS[opts.index(answer)], answer, answer, subject)


def _build(pick: random.Random, rng: random.Random, qtype: str, T: int, H: int, W: int):
    """One attempt at a clip built around ``qtype``: (backgrounds, plans, primary QA). Raises _Retry.

    ``pick`` makes the choices that decide answers (shapes, colours, how many, which way) and is the same on every
    attempt; ``rng`` lays the clip out (times, places, sizes) and differs per attempt. So a retry after a crowded
    layout never favours easy answers (e.g. fewer shapes for a count).
    """
    b = _Builder(rng, T, H, W)
    shapes = pick.sample(SHAPES, len(SHAPES))
    colours = pick.sample(list(COLOURS), len(COLOURS))
    backgrounds = _backgrounds(pick, rng, T, cut=(qtype == "after_cut") or pick.random() < 0.3)
    n_distract = pick.randint(0, 2)

    if qtype in ("colour_of_shape", "shape_of_colour"):
        target = b.add(shapes[0], colours[0])
        b.distractors(n_distract, shapes[1:], colours[1:])
        near = [p for p in b.plans if p is not target]
        if qtype == "colour_of_shape":
            qa = _make_qa(rng, qtype, {"shape": target.shape}, target.colour, [p.colour for p in near], COLOURS)
        else:
            qa = _make_qa(rng, qtype, {"colour": target.colour}, target.shape, [p.shape for p in near], SHAPES)

    elif qtype == "count":
        n = pick.randint(1, 4)
        dirs = [None if rng.random() < 0.5 else rng.choice(DIRECTIONS) for _ in range(n)]
        for _ in range(200):  # with 2+ shapes, no single frame shows them all: counting needs the whole clip
            spans = [_interval(rng, T, max(_min_len(T), T // 2) if d else _min_len(T), whole=0.2) for d in dirs]
            if n == 1 or max(a for a, _ in spans) >= min(z for _, z in spans):
                break
        else:
            raise _Retry
        for i in range(n):
            b.add(rng.choice(SHAPES), colours[i], span=spans[i], direction=dirs[i])
        qa = _make_qa(rng, qtype, {}, str(len(b.plans)), [], COUNT_OPTIONS)

    elif qtype == "direction":
        d = pick.choice(DIRECTIONS)
        target = b.add(shapes[0], colours[0], direction=d, span=_interval(rng, T, max(6, (5 * T) // 8)))
        b.distractors(n_distract, shapes[1:], colours[1:], direction=(d,))
        subject = {"colour": target.colour, "shape": target.shape}
        qa = _make_qa(rng, qtype, subject, d, [], DIRECTIONS)

    elif qtype in ("first_appears", "last_appears"):
        n = pick.randint(2, 3)
        by = pick.choice(("shape", "colour"))
        g, m = _gap(T), _min_len(T)
        starts = _spaced(rng, n, 0, T - m, g)
        for i, a in enumerate(starts):
            b.add(shapes[i], colours[i], span=(a, rng.randint(a + m, T)), direction=ANY_DIRECTION)
        order = sorted(b.plans, key=lambda p: p.appear)
        target = order[0] if qtype == "first_appears" else order[-1]
        near = [p for p in b.plans if p is not target]
        if by == "shape":
            qa = _make_qa(rng, qtype, {"by": by}, target.shape, [p.shape for p in near], SHAPES)
        else:
            qa = _make_qa(rng, qtype, {"by": by}, target.colour, [p.colour for p in near], COLOURS)

    elif qtype == "after_cut":
        cut = backgrounds[1].start
        what = pick.choice(("background", "shape"))
        if what == "background":
            b.distractors(n_distract + 1, shapes, colours)
            qa = _make_qa(rng, qtype, {"what": what}, backgrounds[1].colour, [backgrounds[0].colour], BACKGROUNDS)
        else:
            g, m = _gap(T), _min_len(T)
            n_before = pick.randint(1, 2)
            for i in range(n_before):
                a = rng.randint(0, cut - g)
                b.add(shapes[i], colours[i], span=(a, rng.randint(max(a + m, cut), T)))
            target = b.add(shapes[n_before], colours[n_before], span=(cut, rng.randint(min(cut + m, T), T)))
            near = [p.shape for p in b.plans if p is not target]
            qa = _make_qa(rng, qtype, {"what": what}, target.shape, near, SHAPES)

    elif qtype == "colour_change":
        side = _min_len(T)
        a = rng.randint(0, T - 2 * side)
        z = rng.randint(a + 2 * side, T)
        target = b.add(shapes[0], colours[0], span=(a, z),
                       new_colour=colours[1], change_at=rng.randint(a + side, z - side))
        b.distractors(n_distract, shapes[1:], colours[2:])
        near = [target.colour] + [p.colour for p in b.plans if p is not target]
        qa = _make_qa(rng, qtype, {"shape": target.shape}, target.new_colour, near, COLOURS)

    else:
        raise ValueError(f"unknown question type {qtype!r}")

    # Draw order independent of role, so "the target is drawn first" is no cue.
    rng.shuffle(b.plans)
    return backgrounds, b.plans, qa


def _spaced(rng: random.Random, n: int, lo: int, hi: int, gap: int) -> list[int]:
    """n distinct integers in [lo, hi], pairwise at least ``gap`` apart, in random order."""
    slack = (hi - lo) - gap * (n - 1)
    if slack < 0:
        raise ValueError("clip too short for this many ordered events")
    cuts = sorted(rng.randint(0, slack) for _ in range(n))
    out = [lo + c + gap * i for i, c in enumerate(cuts)]
    rng.shuffle(out)
    return out


def _extra_qas(rng: random.Random, backgrounds, plans: list[_Plan], primary: QA) -> list[QA]:
    """Further questions this clip answers unambiguously, from the plans (each checked later like the primary)."""
    out: list[QA] = []
    seen = {(primary.type, tuple(sorted(primary.subject.items())))}

    def add(qa: QA) -> None:
        key = (qa.type, tuple(sorted(qa.subject.items())))
        if key not in seen:
            seen.add(key)
            out.append(qa)

    if len(plans) <= 4:
        add(_make_qa(rng, "count", {}, str(len(plans)), [], COUNT_OPTIONS))
    if len(backgrounds) == 2:
        add(_make_qa(rng, "after_cut", {"what": "background"}, backgrounds[1].colour, [backgrounds[0].colour],
                     BACKGROUNDS))
    for p in plans:
        if p.change_at is not None:
            continue
        others = [q for q in plans if q is not p]
        if all(q.shape != p.shape for q in others):
            add(_make_qa(rng, "colour_of_shape", {"shape": p.shape}, p.colour, [q.colour for q in others], COLOURS))
        add(_make_qa(rng, "shape_of_colour", {"colour": p.colour}, p.shape, [q.shape for q in others], SHAPES))
        if p.direction:
            add(_make_qa(rng, "direction", {"colour": p.colour, "shape": p.shape}, p.direction, [], DIRECTIONS))
    return out


def generate(seed: int, *, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
             fps: int = DEFAULT_FPS) -> tuple[ClipSpec, list[QA]]:
    """The clip of ``seed`` and its questions: (ClipSpec, [primary QA, further QAs the clip also answers]).

    The primary question's type is ``TYPES[seed % 8]``. Deterministic: only ``random.Random`` instances seeded
    from ``seed`` are used (never the global RNG).
    frames: clip length T (>= 8); size: frame height = width in pixels (even, >= 64).
    """
    if frames < 8:
        raise InvalidOptionError(f"synthetic clips need at least 8 frames, got {frames}")
    if size < 64 or size % 2:
        raise InvalidOptionError(f"synthetic clip size must be even and >= 64, got {size}")
    qtype = TYPES[seed % len(TYPES)]
    for attempt in range(100):
        # str seeds are hashed with SHA-512 by random.Random: stable across runs and Python versions.
        rng = random.Random(f"fastvid-synth/{seed}/{attempt}")
        try:
            backgrounds, plans, qa = _build(random.Random(seed), rng, qtype, frames, size, size)
            break
        except _Retry:
            continue
    else:  # pragma: no cover - never seen; a layout always fits within a few tries
        raise RuntimeError(f"no layout found for seed {seed}")
    qas = [qa] + _extra_qas(rng, backgrounds, plans, qa)
    spec = ClipSpec(seed, frames, size, size, fps, backgrounds, tuple(p.track(frames) for p in plans))
    return spec, qas




def iter_examples(seed_start: int, count: int, *, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
                  all_questions: bool = False) -> Iterator[tuple[np.ndarray, QA]]:
    """Training stream: for seeds seed_start..seed_start+count-1 yield (frames uint8 (T, H, W, 3), QA).

    One (primary) question per clip, balanced over TYPES; all_questions=True yields every question of each clip.
    Writes no files.
    """
    for seed in range(seed_start, seed_start + count):
        spec, qas = generate(seed, frames=frames, size=size)
        pixels = render(spec)
        for qa in qas if all_questions else qas[:1]:
            yield pixels, qa


def video_name(seed: int) -> str:
    """The relative video path of a seed's clip in a split: "videos/synth_<seed, 7 digits>.mp4"."""
    return f"videos/synth_{seed:07d}.mp4"


def to_record(spec: ClipSpec, qa: QA, index: int = 0) -> dict:
    """The JSONL record (see the module docstring) of question number ``index`` of a clip."""
    return {
        "id": f"synth_{spec.seed:07d}_{index}",
        "video": video_name(spec.seed),
        "seed": spec.seed,
        "frames": spec.frames,
        "size": spec.height,
        "type": qa.type,
        "question": qa.question,
        "options": list(qa.options),
        "answer": qa.answer,
        "answer_text": qa.answer_text,
        "short_answer": qa.short_answer,
    }


def make_split(seed_start: int, count: int, *, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE) -> list[dict]:
    """Records of a split: the primary question of each of ``count`` seeds from ``seed_start`` (one per video)."""
    out = []
    for seed in range(seed_start, seed_start + count):
        spec, qas = generate(seed, frames=frames, size=size)
        out.append(to_record(spec, qas[0], 0))
    return out


def write_jsonl(records: list[dict], path) -> Path:
    """Write one JSON object per line (UTF-8, "\\n" endings: byte-identical on every platform). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


_REQUIRED = ("video", "question", "options", "answer")


def read_split(path) -> list[dict]:
    """Records of a JSONL split, each checked for the required fields (video, question, 4 options, letter answer).

    Raises InvalidOptionError naming the file and line of the first bad record.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidOptionError(f"cannot read questions file {path}: {e.strerror or e}") from e
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidOptionError(f"{path}:{n}: not JSON ({e.msg})") from e
        if not isinstance(r, dict) or any(k not in r for k in _REQUIRED):
            raise InvalidOptionError(f"{path}:{n}: a record needs the fields {', '.join(_REQUIRED)}")
        if not (isinstance(r["options"], list) and len(r["options"]) == 4 and r["answer"] in LETTERS):
            raise InvalidOptionError(f"{path}:{n}: options must be 4 strings and answer one of A, B, C, D")
        out.append(r)
    return out


def shipped_split_path() -> Path:
    """The shipped fixed test split (fastvid_cli/data/synth_test.jsonl)."""
    return Path(str(resources.files("fastvid_cli.data").joinpath("synth_test.jsonl")))


def clip_frames(record: dict) -> int:
    """A synthetic record's clip length: "clip_frames" (the needle split, whose clips are longer than the frames a
    model samples, so its records leave "frames", which `fastvid eval` samples, to the command line), else
    "frames"."""
    return int(record.get("clip_frames", record.get("frames", DEFAULT_FRAMES)))


# Generators of other splits, by the name their records carry in "generator"; a split's module registers its own
# when imported (fastvid_cli.synth_needle: "needle"), so this module depends on none of them.
GENERATORS: dict = {}


def generator_of(record: dict):
    """The function that renders a record's clip from its seed: ``generate``, or the generator registered under
    the record's "generator" field (import its module first, e.g. ``fastvid_cli.synth_needle``)."""
    name = record.get("generator")
    if name in (None, "", "regular"):
        return generate
    if name in GENERATORS:
        return GENERATORS[name]
    raise InvalidOptionError(f"record {record.get('id', '?')}: unknown generator {name!r}",
                             f"known: regular, {', '.join(GENERATORS) or 'none registered'}")


def render_record(record: dict) -> np.ndarray:
    """Re-render a synthetic record's clip from its seed: uint8 (T, H, W, 3), no video file involved."""
    if "seed" not in record:
        raise InvalidOptionError(f"record {record.get('id', '?')} has no seed: not a synthetic clip")
    spec, _ = generator_of(record)(int(record["seed"]), frames=clip_frames(record),
                       size=int(record.get("size", DEFAULT_SIZE)))
    return render(spec)


# --- video files --------------------------------------------------------------------------------------------------


def write_clip(path, frames: np.ndarray, fps: int = DEFAULT_FPS, *, crf: int = 12) -> Path:
    """Encode uint8 (T, H, W, 3) RGB ``frames`` (H, W even) as H.264 yuv420p; crf 12 keeps flat colours within a
    few levels. The container follows the extension (.mp4, .mkv). Returns the path."""
    import av  # only writing videos needs PyAV

    path = Path(path)
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {W}x{H}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frame_count(path: Path) -> int:
    """Frames in the first video stream, counted by demuxing (no decoding); -1 when the file is unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size)
    except (av.error.FFmpegError, OSError, IndexError):
        return -1


def materialize(jsonl_path, out_dir, *, fps: int = DEFAULT_FPS) -> dict[str, int]:
    """Render and encode every video a synthetic split refers to, at ``out_dir / record["video"]``.

    Idempotent: a file that exists with the record's frame count is kept. Each record's question must be one the
    seed still generates (else the labels would not match the regenerated video: InvalidOptionError).
    Returns {"written": n, "kept": n}.
    """
    out_dir = Path(out_dir)
    records = read_split(jsonl_path)
    by_video: dict[str, list[dict]] = {}
    for r in records:
        by_video.setdefault(r["video"], []).append(r)
    written = kept = 0
    for video, recs in by_video.items():
        r0 = recs[0]
        if "seed" not in r0:
            raise InvalidOptionError(f"record {r0.get('id', '?')} has no seed: not a synthetic split")
        frames, size = clip_frames(r0), int(r0.get("size", DEFAULT_SIZE))
        spec, qas = generator_of(r0)(int(r0["seed"]), frames=frames, size=size, fps=fps)
        questions = {(q.question, q.answer_text) for q in qas}
        for r in recs:
            if (r["question"], r.get("answer_text", r["options"][LETTERS.index(r["answer"])])) not in questions:
                raise InvalidOptionError(f"record {r.get('id', '?')}: seed {r0['seed']} no longer generates its "
                                         f"question (made by another generator version?)")
        path = out_dir / video
        if path.is_file() and _frame_count(path) == frames:
            kept += 1
            continue
        # Write next to the target and rename: an interrupted run never leaves a short file under the real name.
        tmp = path.with_name(path.stem + ".part" + path.suffix)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write_clip(tmp, render(spec), fps)
        os.replace(tmp, path)
        written += 1
    return {"written": written, "kept": kept}


# --- prompts and answers ------------------------------------------------------------------------------------------


def mc_prompt(qa) -> str:
    """Multiple-choice prompt (LLaVA / lmms-eval convention) for a QA or a record dict."""
    question, options = (qa["question"], qa["options"]) if isinstance(qa, dict) else (qa.question, qa.options)
    lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


def short_prompt(qa) -> str:
    """Short-answer prompt (LLaVA convention) for a QA or a record dict."""
    question = qa["question"] if isinstance(qa, dict) else qa.question
    return f"{question}\nAnswer the question using a single word or phrase."


_CUE = re.compile(r"(?:answer|option|choice)(?:\s|is\b|:|=)*(?:option\s*)?[\(\[]?\s*([A-Da-d])(?![A-Za-z])", re.I)
_LEAD = re.compile(r"^[\s\W_]*([A-Da-d])(?![A-Za-z])(.*)$", re.S)
_EITHER = re.compile(r"\W*\s*(?:or|and|/|,)\s*\W*[A-Da-d](?![A-Za-z])", re.I)
_ALONE = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def _article(letter: str, rest: str) -> bool:
    """'A red circle' / 'a red circle': the word 'a', not the letter."""
    return letter in "aA" and re.match(r"\s+[a-z]", rest) is not None


def parse_choice(text: str | None, options=None) -> str | None:
    """The option letter "A".."D" in a model's answer, or None when there is none or it is ambiguous.

    Reads "B", "b", "B.", "(B)", "[b]", "b) red", "**C**", "The answer is B", "Answer: (c)", "Option D", "I think C";
    "A red circle" is the article, not option A. With ``options`` (4 strings), an answer that names exactly one
    option's text ("Red.") gives its letter.
    """
    if not text:
        return None
    s = text.strip()
    m = _LEAD.match(s)
    if m and not _article(m.group(1), m.group(2)):
        if _EITHER.match(m.group(2)):  # "B or C"
            return None
        return m.group(1).upper()
    m = _CUE.search(s)
    if m and not (m.group(1) == "a" and _article("a", s[m.end():])):
        return m.group(1).upper()
    if options is not None:
        words = re.sub(r"[^\w\s]", " ", s.lower()).split()
        hits = {i for i, o in enumerate(options) if o.lower().split() and _contains(words, o.lower().split())}
        if len(hits) == 1:
            return LETTERS[hits.pop()]
    found = set()
    for m in _ALONE.finditer(s):
        before = s[: m.start()]
        sentence_start = not before.strip() or re.search(r"[.!?]\s*$", before) is not None
        if m.group(1) == "A" and sentence_start and _article("A", s[m.end():]):
            continue
        found.add(m.group(1))
    return found.pop() if len(found) == 1 else None


def _contains(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(words[i : i + n] == phrase for i in range(len(words) - n + 1))
