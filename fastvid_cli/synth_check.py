"""The synthetic shapes benchmark's question wording and independent label verification.

Split out of ``fastvid_cli.synth`` (which re-exports ``question_text`` and ``check``): ``question_text`` is the one
wording of each question type, shared by the generators and the checker; ``check`` recomputes a question's answer
from a clip's per-frame states (never from how the generator chose them) and rejects labels that are ambiguous or
not visible (overlaps, order gaps too small, too little motion).
"""

from __future__ import annotations

import math

from .synth_scene import BACKGROUNDS, COLOURS, EXTENT, LETTERS, QA, ClipSpec, ObjectTrack, _gap, _min_len

__all__ = ["question_text", "check"]


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


