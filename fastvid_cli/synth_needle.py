"""The synthetic benchmark's "needle" split: long clips where the object a question asks about is on screen only
briefly, so that K uniformly sampled frames often miss it and a question-aware choice of frames does not.

A needle clip (defaults): 128 frames of 128x128 at 8 fps (16 s), one background, 1-2 distractor shapes on screen
for most of the clip, and the target shape on screen for NEEDLE_FRAMES (4) consecutive frames somewhere in the
middle. Target, distractors: all different shapes and different colours. Questions (one per clip, alternating by
seed): "What colour is the <target shape>?" or "What shape is the <target colour> object?"; the wrong options
include the distractors' colours (shapes). With 8 uniform frames (one every ~18 frames) a 4-frame needle is seen
about a fifth of the time, with 16 about half the time.

Records are those of `fastvid_cli.synth` (same fields, so `fastvid eval` reads them; the clip length is
``"clip_frames"``, not ``"frames"``, which eval would take as the frames to sample) plus
``"generator": "needle"`` (so `synth.materialize` re-renders them with this module) and
``"needle": [start, end]``, the seconds the target is on screen (what `fastvid find` should return). Seeds start at NEEDLE_SEED_START, apart
from the regular test split's and the training streams'; the regular split is untouched.
"""

from __future__ import annotations

import random

from fastvid_cli import synth
from fastvid_cli.errors import InvalidOptionError

NEEDLE_SEED_START = 2_000_000
NEEDLE_COUNT = 200
NEEDLE_FRAMES = 4
DEFAULT_FRAMES = 128
TYPES = ("colour_of_shape", "shape_of_colour")


def generate(seed: int, *, frames: int = DEFAULT_FRAMES, size: int = synth.DEFAULT_SIZE,
             fps: int = synth.DEFAULT_FPS) -> tuple[synth.ClipSpec, list[synth.QA]]:
    """The needle clip of `seed` and its one question: (ClipSpec, [QA]). Deterministic (seeded RNGs only)."""
    if frames < 32:
        raise InvalidOptionError(f"needle clips need at least 32 frames, got {frames}")
    qtype = TYPES[seed % len(TYPES)]
    for attempt in range(100):
        pick = random.Random(f"fastvid-needle/{seed}")
        rng = random.Random(f"fastvid-needle/{seed}/{attempt}")
        try:
            bg, plans, qa = _build(pick, rng, qtype, frames, size)
            break
        except synth._Retry:
            continue
    else:  # pragma: no cover
        raise RuntimeError(f"no layout found for needle seed {seed}")
    spec = synth.ClipSpec(seed, frames, size, size, fps, bg, tuple(p.track(frames) for p in plans))
    return spec, [qa]


def _build(pick: random.Random, rng: random.Random, qtype: str, T: int, size: int):
    b = synth._Builder(rng, T, size, size)
    shapes = pick.sample(synth.SHAPES, len(synth.SHAPES))
    colours = pick.sample(list(synth.COLOURS), len(synth.COLOURS))
    bg = (synth.Segment(0, pick.choice(list(synth.BACKGROUNDS))),)
    n_distract = pick.randint(1, 2)
    start = rng.randint(T // 8, T - T // 8 - NEEDLE_FRAMES)
    target = b.add(shapes[0], colours[0], span=(start, start + NEEDLE_FRAMES), direction=None)
    for i in range(1, n_distract + 1):
        n = rng.randint((3 * T) // 4, T)
        a = rng.randint(0, T - n)
        b.add(shapes[i], colours[i], span=(a, a + n), direction=synth.ANY_DIRECTION)
    near = [p for p in b.plans if p is not target]
    if qtype == "colour_of_shape":
        qa = synth._make_qa(rng, qtype, {"shape": target.shape}, target.colour, [p.colour for p in near],
                            synth.COLOURS)
    else:
        qa = synth._make_qa(rng, qtype, {"colour": target.colour}, target.shape, [p.shape for p in near],
                            synth.SHAPES)
    rng.shuffle(b.plans)
    return bg, b.plans, qa


def needle_span(spec: synth.ClipSpec, qa: synth.QA) -> tuple[float, float]:
    """[start, end) seconds the question's subject is on screen."""
    key = "shape" if "shape" in qa.subject else "colour"
    for o in spec.objects:
        vis = o.visible()
        if (o.shape if key == "shape" else o.states[vis[0]].colour) == qa.subject[key]:
            return vis[0] / spec.fps, (vis[-1] + 1) / spec.fps
    raise ValueError("the question's subject is not in the clip")


def check(spec: synth.ClipSpec, qa: synth.QA) -> bool:
    """The answer recomputed from the per-frame states: the subject is one object, seen for NEEDLE_FRAMES frames,
    in one colour, and its other attribute is the answer the record names."""
    if "shape" in qa.subject:
        hits = [o for o in spec.objects if o.shape == qa.subject["shape"]]
    else:
        hits = [o for o in spec.objects if qa.subject["colour"] in {s.colour for s in o.states if s is not None}]
    if len(hits) != 1 or len(hits[0].visible()) != NEEDLE_FRAMES:
        return False
    o = hits[0]
    colours = {o.states[t].colour for t in o.visible()}
    if len(colours) != 1:
        return False
    got = colours.pop() if "shape" in qa.subject else o.shape
    return got == qa.answer_text and qa.options[synth.LETTERS.index(qa.answer)] == qa.answer_text


def to_record(spec: synth.ClipSpec, qa: synth.QA) -> dict:
    rec = synth.to_record(spec, qa, 0)
    rec["clip_frames"] = rec.pop("frames")  # "frames" is what `fastvid eval` samples: left to --frames / --select
    rec["generator"] = "needle"
    rec["needle"] = [round(x, 4) for x in needle_span(spec, qa)]
    return rec


def make_split(seed_start: int = NEEDLE_SEED_START, count: int = NEEDLE_COUNT, *,
               frames: int = DEFAULT_FRAMES) -> list[dict]:
    out = []
    for seed in range(seed_start, seed_start + count):
        spec, qas = generate(seed, frames=frames)
        out.append(to_record(spec, qas[0]))
    return out


synth.GENERATORS["needle"] = generate  # synth.materialize / render_record re-render "generator": "needle" records


def main() -> None:
    """Write the shipped needle split: python -m fastvid_cli.synth_needle fastvid_cli/data/synth_needle.jsonl"""
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else "fastvid_cli/data/synth_needle.jsonl"
    synth.write_jsonl(make_split(), path)
    print(f"wrote {NEEDLE_COUNT} needle questions to {path}")


if __name__ == "__main__":
    main()
