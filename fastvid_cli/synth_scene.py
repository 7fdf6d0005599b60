"""The synthetic shapes benchmark's clips: vocabulary, clip description, rendering and scene planning.

Split out of ``fastvid_cli.synth`` (which re-exports the public names and documents the benchmark): the shape,
colour, background and direction vocabularies, the seed ranges and default clip size, the frozen dataclasses that
describe a clip (``State``, ``ObjectTrack``, ``Segment``, ``ClipSpec``) and a question (``QA``), ``render`` (numpy
only, no anti-aliasing), and the layout planner the question generators use (``_Plan``, ``_Builder``: placement
that keeps shapes inside the frame and apart, visibility intervals, backgrounds and scene cuts). Depends on no other
synth module.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "DIRECTIONS", "TYPES", "LETTERS", "COUNT_OPTIONS",
    "TEST_SEED_START", "TEST_COUNT", "TRAIN_SEED_START", "DEFAULT_FRAMES", "DEFAULT_SIZE", "DEFAULT_FPS", "EXTENT",
    "State", "ObjectTrack", "Segment", "ClipSpec", "QA", "render",
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


# --- scene planning -----------------------------------------------------------------------------------------------


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


ANY_DIRECTION = "any"  # _Builder.add: static half the time, else one of DIRECTIONS at random


class _Builder:
    def __init__(self, rng: random.Random, T: int, H: int, W: int):
        self.rng, self.T, self.H, self.W = rng, T, H, W
        self.plans: list[_Plan] = []

    def add(self, shape: str, colour: str, *, span=None, direction=ANY_DIRECTION, required=True,
            **kw) -> _Plan | None:
        rng, T = self.rng, self.T
        if direction is ANY_DIRECTION:
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

