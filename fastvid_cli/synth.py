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
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InvalidOptionError

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "DIRECTIONS", "TYPES", "LETTERS", "COUNT_OPTIONS",
    "TEST_SEED_START", "TEST_COUNT", "TRAIN_SEED_START", "DEFAULT_FRAMES", "DEFAULT_SIZE", "DEFAULT_FPS",
    "State", "ObjectTrack", "Segment", "ClipSpec", "QA",
    "generate", "render", "check", "question_text",
    "iter_examples", "make_split", "to_record", "video_name", "render_record", "write_jsonl", "read_split", "shipped_split_path",
    "write_clip", "materialize", "mc_prompt", "short_prompt", "parse_choice",
]

SHAPES = ("circle", "square", "triangle", "diamond")  # four, so a shape question has four real options
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 235),
    "yellow": (245, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 215, 225),
}
# Background colours are never shape colours, so "the red object" is never the background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (120, 120, 120),
    "brown": (110, 65, 25),
}
_RGB = {name: np.array(rgb, np.uint8) for name, rgb in {**COLOURS, **BACKGROUNDS}.items()}
DIRECTIONS = ("left", "right", "up", "down")
_UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image coordinates: y grows downwards
TYPES = (
    "colour_of_shape", "shape_of_colour", "count", "direction",
    "first_appears", "last_appears", "after_cut", "colour_change",
)
LETTERS = "ABCD"
COUNT_OPTIONS = ("1", "2", "3", "4")

# Seed ranges: the shipped test split and training streams never share a clip.
TEST_SEED_START = 1_000_000
TEST_COUNT = 512
TRAIN_SEED_START = 0

DEFAULT_FRAMES = 16
DEFAULT_SIZE = 128
DEFAULT_FPS = 8

# Shape geometry in units of the radius r. Every shape fits in a circle of EXTENT * r around its centre, which is
# what layout and overlap tests use.
EXTENT = 1.25
_SQUARE_HALF = 0.88  # half side: about the circle's area
_TRI_TOP, _TRI_BASE, _TRI_HALF = -1.25, 0.625, 1.08  # apex above the centroid, base below it, base half-width


# --- the clip description -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """An object on one frame: centre (x, y) in pixels and its colour name."""

    x: int
    y: int
    colour: str


@dataclass(frozen=True)
class ObjectTrack:
    """One shape through the clip: ``states[t]`` is its state on frame t, or None while it is not visible."""

    shape: str
    radius: int
    states: tuple[State | None, ...]

    def visible(self) -> list[int]:
        """Frames on which the object is drawn, increasing."""
        return [t for t, s in enumerate(self.states) if s is not None]


@dataclass(frozen=True)
class Segment:
    """A background run: from frame ``start`` until the next segment's start (a scene cut) or the clip's end."""

    start: int
    colour: str


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides a clip's pixels. Objects are drawn in order, later ones on top (they never overlap)."""

    seed: int
    frames: int
    height: int
    width: int
    fps: int
    backgrounds: tuple[Segment, ...]
    objects: tuple[ObjectTrack, ...]

    def background_at(self, t: int) -> str:
        colour = self.backgrounds[0].colour
        for seg in self.backgrounds:
            if seg.start <= t:
                colour = seg.colour
        return colour


@dataclass(frozen=True)
class QA:
    """One question about a clip. ``subject`` names what the question refers to (e.g. {"shape": "square"}); the
    question text is ``question_text(type, subject)``."""

    type: str
    question: str
    options: tuple[str, ...]
    answer: str
    answer_text: str
    short_answer: str
    subject: dict = field(default_factory=dict)


# --- rendering ----------------------------------------------------------------------------------------------------


def render(spec: ClipSpec) -> np.ndarray:
    """Pixels of ``spec``: uint8 (T, H, W, 3) RGB. Pure: the same spec always gives the same array."""
    T, H, W = spec.frames, spec.height, spec.width
    out = np.empty((T, H, W, 3), np.uint8)
    ends = [seg.start for seg in spec.backgrounds[1:]] + [T]
    for seg, end in zip(spec.backgrounds, ends):
        # Fill one frame, then copy it: broadcasting a 3-byte colour over every frame is ~10x slower.
        frame = np.empty((H, W, 3), np.uint8)
        frame[:] = _RGB[seg.colour]
        out[seg.start : end] = frame
    for obj in spec.objects:
        # One stencil per object, pasted at each frame's centre (clipped at the frame's edges).
        e = int(math.ceil(EXTENT * obj.radius)) + 1
        yy, xx = np.mgrid[-e : e + 1, -e : e + 1]
        stencil = _shape_mask(obj.shape, xx, yy, obj.radius)
        for t, s in enumerate(obj.states):
            if s is None:
                continue
            y0, y1 = max(s.y - e, 0), min(s.y + e + 1, H)
            x0, x1 = max(s.x - e, 0), min(s.x + e + 1, W)
            mask = stencil[y0 - (s.y - e) : y1 - (s.y - e), x0 - (s.x - e) : x1 - (s.x - e)]
            out[t, y0:y1, x0:x1][mask] = _RGB[s.colour]
    return out


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = _SQUARE_HALF * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= EXTENT * r
    if shape == "triangle":  # apex up, centred on its centroid
        top, base = _TRI_TOP * r, _TRI_BASE * r
        return (dy >= top) & (dy <= base) & (np.abs(dx) <= _TRI_HALF * r * (dy - top) / (base - top))
    raise ValueError(f"unknown shape {shape!r}")


# --- generation ---------------------------------------------------------------------------------------------------


def _gap(T: int) -> int:
    """Frames between two events whose order a question asks about: survives sampling every other frame."""
    return max(2, round(3 * T / 16))


def _min_len(T: int) -> int:
    """Fewest frames any object is visible."""
    return max(3, round(3 * T / 16))


def _min_disp(H: int, W: int) -> float:
    """Smallest travel (pixels) of a moving object; check() accepts a little less to allow for rounding."""
    return 0.3 * min(H, W)


@dataclass
class _Plan:
    """An object as the generator thinks of it (the answer comes from these parameters, never from states)."""

    shape: str
    colour: str
    radius: int
    appear: int
    disappear: int  # exclusive
    direction: str | None = None
    dist: float = 0.0
    x0: float = 0.0
    y0: float = 0.0
    new_colour: str | None = None
    change_at: int | None = None
    _memo: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def extent(self) -> int:
        return int(math.ceil(EXTENT * self.radius)) + 1

    def centres(self) -> np.ndarray:
        """(n, 2) rounded centres on frames appear..disappear-1."""
        key = (self.x0, self.y0, self.dist)
        if self._memo is not None and self._memo[0] == key:  # placement tests a placed object many times
            return self._memo[1]
        n = self.disappear - self.appear
        f = np.arange(n) / (n - 1) if n > 1 else np.zeros(1)
        ux, uy = _UNIT[self.direction] if self.direction else (0, 0)
        xs = np.floor(self.x0 + ux * self.dist * f + 0.5)
        ys = np.floor(self.y0 + uy * self.dist * f + 0.5)
        out = np.stack([xs, ys], axis=1).astype(int)
        self._memo = (key, out)
        return out

    def track(self, T: int) -> ObjectTrack:
        states: list[State | None] = [None] * T
        for k, (x, y) in enumerate(self.centres()):
            t = self.appear + k
            colour = self.new_colour if self.change_at is not None and t >= self.change_at else self.colour
            states[t] = State(int(x), int(y), colour)
        return ObjectTrack(self.shape, self.radius, tuple(states))


def _place(rng: random.Random, p: _Plan, placed: list[_Plan], H: int, W: int, tries: int = 60) -> bool:
    """Choose p's travel and start so that it stays inside the frame and never touches ``placed``."""
    e = p.extent
    for _ in range(tries):
        if p.direction:
            horizontal = p.direction in ("left", "right")
            span = (W if horizontal else H) - 1 - 2 * e
            p.dist = rng.uniform(_min_disp(H, W), span)
            lo_x, hi_x, lo_y, hi_y = e, W - 1 - e, e, H - 1 - e
            ux, uy = _UNIT[p.direction]
            # Start far enough from the edge it moves towards.
            if ux > 0:
                hi_x -= p.dist
            elif ux < 0:
                lo_x += p.dist
            if uy > 0:
                hi_y -= p.dist
            elif uy < 0:
                lo_y += p.dist
        else:
            p.dist = 0.0
            lo_x, hi_x, lo_y, hi_y = e, W - 1 - e, e, H - 1 - e
        p.x0, p.y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        if all(_apart(p, q) for q in placed):
            return True
    return False


def _apart(p: _Plan, q: _Plan) -> bool:
    a, b = max(p.appear, q.appear), min(p.disappear, q.disappear)
    if a >= b:
        return True
    cp = p.centres()[a - p.appear : b - p.appear]
    cq = q.centres()[a - q.appear : b - q.appear]
    d2 = ((cp - cq) ** 2).sum(axis=1)
    return bool(d2.min() >= (p.extent + q.extent + 2) ** 2)


def _interval(rng: random.Random, T: int, min_len: int, whole: float = 0.4) -> tuple[int, int]:
    if rng.random() < whole:
        return 0, T
    n = rng.randint(min(min_len, T), T)
    a = rng.randint(0, T - n)
    return a, a + n


def _radius(rng: random.Random, H: int, W: int) -> int:
    s = min(H, W) / 128
    return rng.randint(max(3, round(15 * s)), max(3, round(20 * s)))


class _Retry(Exception):
    """A required object found no place: the builder starts over (the RNG goes on, so this stays deterministic)."""


class _Builder:
    def __init__(self, rng: random.Random, T: int, H: int, W: int):
        self.rng, self.T, self.H, self.W = rng, T, H, W
        self.plans: list[_Plan] = []

    def add(self, shape: str, colour: str, *, span=None, direction="random", required=True, **kw) -> _Plan | None:
        rng, T = self.rng, self.T
        if direction == "random":
            direction = None if rng.random() < 0.5 else rng.choice(DIRECTIONS)
        elif isinstance(direction, tuple):  # any direction but these
            direction = rng.choice([None] + [d for d in DIRECTIONS if d not in direction])
        if span is None:
            span = _interval(rng, T, max(_min_len(T), T // 2) if direction else _min_len(T))
        p = _Plan(shape, colour, _radius(rng, self.H, self.W), span[0], span[1], direction, **kw)
        if _place(rng, p, self.plans, self.H, self.W):
            self.plans.append(p)
            return p
        if required:
            raise _Retry
        return None

    def distractors(self, n: int, shapes, colours, **kw) -> None:
        for shape, colour in zip(list(shapes)[:n], list(colours)[:n]):
            self.add(shape, colour, required=False, **kw)


def _backgrounds(pick: random.Random, rng: random.Random, T: int, cut: bool) -> tuple[Segment, ...]:
    names = list(BACKGROUNDS)
    first = pick.choice(names)
    second = pick.choice([n for n in names if n != first])
    if not cut:
        return (Segment(0, first),)
    # Room before the cut for the order gap, after it for an object that appears at the cut.
    c = rng.randint(max(_gap(T), T // 4), min(T - max(_gap(T), _min_len(T)), (3 * T) // 4))
    return (Segment(0, first), Segment(c, second))


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
            b.add(shapes[i], colours[i], span=(a, rng.randint(a + m, T)), direction="random")
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


def question_text(qtype: str, subject: dict) -> str:
    """The question of ``qtype`` about ``subject`` (see the module docstring)."""
    if qtype == "colour_of_shape":
        return f"What colour is the {subject['shape']}?"
    if qtype == "shape_of_colour":
        return f"What shape is the {subject['colour']} object?"
    if qtype == "count":
        return "How many shapes appear in the video?"
    if qtype == "direction":
        return f"Which direction does the {subject['colour']} {subject['shape']} move?"
    if qtype in ("first_appears", "last_appears"):
        when = "appears first" if qtype == "first_appears" else "is the last to appear"
        return f"Which shape {when}?" if subject["by"] == "shape" else f"What colour is the shape that {when}?"
    if qtype == "after_cut":
        if subject["what"] == "background":
            return "What colour is the background after the scene change?"
        return "Which shape appears after the scene change?"
    if qtype == "colour_change":
        return f"What colour does the {subject['shape']} turn into?"
    raise ValueError(f"unknown question type {qtype!r}")


# --- independent verification -------------------------------------------------------------------------------------


def check(spec: ClipSpec, qa: QA) -> bool:
    """True when ``qa`` is well formed and its answer is the only correct one, recomputed from ``spec``'s per-frame
    states (not from how the generator chose them): 4 distinct options, the letter points at ``answer_text``, the
    question names exactly one thing, and what it asks about is visible (no overlaps, order gaps, real motion)."""
    opts = list(qa.options)
    if len(opts) != 4 or len(set(opts)) != 4 or qa.answer not in LETTERS:
        return False
    if opts[LETTERS.index(qa.answer)] != qa.answer_text or qa.short_answer != qa.answer_text:
        return False
    try:
        if qa.question != question_text(qa.type, qa.subject):
            return False
        return _layout_ok(spec) and _derive(spec, qa) == qa.answer_text
    except (KeyError, ValueError):
        return False


def _layout_ok(spec: ClipSpec) -> bool:
    T, H, W = spec.frames, spec.height, spec.width
    bg = spec.backgrounds
    if not bg or bg[0].start != 0 or any(a.start >= b.start or a.colour == b.colour for a, b in zip(bg, bg[1:])):
        return False
    if bg[-1].start >= T or any(s.colour not in BACKGROUNDS for s in bg):
        return False
    for o in spec.objects:
        e = EXTENT * o.radius
        vis = o.visible()
        if len(o.states) != T or len(vis) < _min_len(T) or vis != list(range(vis[0], vis[-1] + 1)):
            return False
        for t in vis:
            s = o.states[t]
            if s.colour not in COLOURS or not (e <= s.x <= W - 1 - e and e <= s.y <= H - 1 - e):
                return False
    for i, o in enumerate(spec.objects):  # no two objects touch: each is seen whole, so counts are unambiguous
        for p in spec.objects[i + 1 :]:
            for so, sp in zip(o.states, p.states):
                if so is not None and sp is not None:
                    if math.hypot(so.x - sp.x, so.y - sp.y) < EXTENT * (o.radius + p.radius):
                        return False
    return True


def _colours(o: ObjectTrack) -> list[str]:
    return [o.states[t].colour for t in o.visible()]


def _constant_colour(o: ObjectTrack) -> str | None:
    cs = set(_colours(o))
    return cs.pop() if len(cs) == 1 else None


def _only(items: list):
    return items[0] if len(items) == 1 else None


def _motion(spec: ClipSpec, o: ObjectTrack) -> str | None:
    """left/right/up/down when the object moves monotonically along one axis by a clear distance, else None."""
    pts = [(o.states[t].x, o.states[t].y) for t in o.visible()]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    for along, across, neg, pos in ((xs, ys, "left", "right"), (ys, xs, "up", "down")):
        if len(set(across)) != 1:
            continue
        steps = [b - a for a, b in zip(along, along[1:])]
        travel = along[-1] - along[0]
        if abs(travel) < 0.25 * min(spec.height, spec.width):
            continue
        if all(s >= 0 for s in steps) or all(s <= 0 for s in steps):
            return pos if travel > 0 else neg
    return None


def _derive(spec: ClipSpec, qa: QA) -> str | None:
    objs, sub, T = list(spec.objects), qa.subject, spec.frames
    if qa.type == "colour_of_shape":
        o = _only([o for o in objs if o.shape == sub["shape"]])
        return _constant_colour(o) if o else None
    if qa.type == "shape_of_colour":
        o = _only([o for o in objs if sub["colour"] in _colours(o)])
        return o.shape if o and _constant_colour(o) else None
    if qa.type == "count":
        return str(len(objs))
    if qa.type == "direction":
        o = _only([o for o in objs if sub["colour"] in _colours(o)])
        if o is None or o.shape != sub["shape"] or _constant_colour(o) is None:
            return None
        return _motion(spec, o)
    if qa.type in ("first_appears", "last_appears"):
        if len(objs) < 2:
            return None
        order = sorted(objs, key=lambda o: o.visible()[0], reverse=qa.type == "last_appears")
        if abs(order[0].visible()[0] - order[1].visible()[0]) < _gap(T):
            return None
        return _attribute(order[0], objs, sub["by"])
    if qa.type == "after_cut":
        if len(spec.backgrounds) != 2:
            return None
        cut = spec.backgrounds[1].start
        if sub["what"] == "background":
            return spec.backgrounds[1].colour
        new = [o for o in objs if o.visible()[0] >= cut]
        if len(new) != 1 or any(o.visible()[0] > cut - _gap(T) for o in objs if o is not new[0]):
            return None
        return _attribute(new[0], objs, "shape")
    if qa.type == "colour_change":
        o = _only([o for o in objs if o.shape == sub["shape"]])
        if o is None:
            return None
        cs = _colours(o)
        changes = [k for k in range(1, len(cs)) if cs[k] != cs[k - 1]]
        if len(changes) != 1 or min(changes[0], len(cs) - changes[0]) < 2:
            return None
        return cs[-1]
    raise ValueError(f"unknown question type {qa.type!r}")


def _attribute(o: ObjectTrack, objs: list[ObjectTrack], by: str) -> str | None:
    """o's shape or colour, when it tells o apart from every other object."""
    if by == "shape":
        return o.shape if sum(p.shape == o.shape for p in objs) == 1 else None
    c = _constant_colour(o)
    return c if c and sum(c in _colours(p) for p in objs) == 1 else None


# --- splits and records -------------------------------------------------------------------------------------------


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
