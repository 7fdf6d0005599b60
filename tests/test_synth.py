"""fastvid_cli.synth: a seeded generator of clips with known answers. Labels are checked three ways: by
construction (the generator), from the spec's per-frame states (check), and from rendered pixels (here)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fastvid_cli import synth
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.synth import (
    BACKGROUNDS,
    COLOURS,
    LETTERS,
    QA,
    TYPES,
    check,
    generate,
    iter_examples,
    make_split,
    mc_prompt,
    parse_choice,
    read_split,
    render,
    shipped_split_path,
    write_clip,
    write_jsonl,
)
from fastvid_cli.video import sample_frames

SEEDS = range(800)  # 100 clips per primary type


@pytest.fixture(scope="module")
def clips():
    return [(seed, *generate(seed)) for seed in SEEDS]


@pytest.fixture(scope="module")
def shipped():
    return read_split(shipped_split_path())


def primaries(clips, qtype):
    return [(spec, qas[0]) for _, spec, qas in clips if qas[0].type == qtype]


PALETTE = {**COLOURS, **BACKGROUNDS}
NAMES = list(PALETTE)


def labels(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) index into NAMES of each pixel's exact palette colour (rendered frames use only the palette)."""
    f = frames.astype(np.int32)
    key = (f[..., 0] << 16) | (f[..., 1] << 8) | f[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in PALETTE.values()])
    order = np.argsort(keys)
    idx = np.searchsorted(keys[order], key)
    assert (keys[order][np.minimum(idx, len(keys) - 1)] == key).all(), "a pixel outside the palette"
    return order[idx]


def colour_mask(lab: np.ndarray, name: str) -> np.ndarray:
    return lab == NAMES.index(name)


def pixel_clips(clips, qtype, n=24, primary=False, **subject):
    """(spec, qa, labels) for the first n questions of qtype (and subject) from ``clips``, primary questions only
    or all; rendering every clip would be too slow for a unit test."""
    out = []
    for _, spec, qas in clips:
        for qa in qas[:1] if primary else qas:
            if qa.type == qtype and subject.items() <= qa.subject.items() and len(out) < n:
                out.append((spec, qa, labels(render(spec))))
    return out


# --- determinism ---


def test_same_seed_same_clip_and_questions():
    for seed in (0, 7, 123_456, synth.TEST_SEED_START + 5):
        spec_a, qas_a = generate(seed)
        spec_b, qas_b = generate(seed)
        assert spec_a == spec_b and qas_a == qas_b
        assert np.array_equal(render(spec_a), render(spec_b))


def test_generator_ignores_global_rng():
    import random

    random.seed(1)
    np.random.seed(1)
    a = generate(42)
    random.seed(2)
    np.random.seed(2)
    assert generate(42) == a


def test_different_seeds_differ(clips):
    specs = [spec for _, spec, _ in clips[:64]]
    pixels = {render(s).tobytes() for s in specs}
    assert len(pixels) == len(specs)
    assert len({(s.backgrounds, s.objects) for s in specs}) == len(specs)


def test_primary_type_cycles_with_seed(clips):
    for seed, spec, qas in clips:
        assert qas[0].type == TYPES[seed % len(TYPES)]
        assert spec.seed == seed and spec.frames == 16 and (spec.height, spec.width) == (128, 128)


def test_render_shape_and_palette(clips):
    _, spec, _ = clips[0]
    frames = render(spec)
    assert frames.shape == (16, 128, 128, 3) and frames.dtype == np.uint8
    lab = labels(frames)  # asserts that every pixel is a palette colour
    assert set(np.unique(lab)) == {NAMES.index(s.colour) for s in spec.backgrounds} | {
        NAMES.index(st.colour) for o in spec.objects for st in o.states if st is not None}


# --- labels: check() on every question of many clips ---


def test_every_question_checks(clips):
    seen = Counter()
    for seed, spec, qas in clips:
        for qa in qas:
            assert check(spec, qa), (seed, qa)
            seen[qa.type] += 1
    assert set(seen) == set(TYPES)


@pytest.mark.parametrize("frames,size", [(8, 64), (32, 96)])
def test_other_clip_sizes_check(frames, size):
    for seed in range(120):
        spec, qas = generate(seed, frames=frames, size=size)
        assert render(spec).shape == (frames, size, size, 3)
        assert all(check(spec, qa) for qa in qas), seed


def test_check_rejects_wrong_labels(clips):
    for seed, spec, qas in clips[:40]:
        qa = qas[0]
        k = LETTERS.index(qa.answer)
        wrong = qa.options[(k + 1) % 4]
        assert not check(spec, dataclasses.replace(qa, answer=LETTERS[(k + 1) % 4]))
        assert not check(spec, dataclasses.replace(qa, answer=LETTERS[(k + 1) % 4], answer_text=wrong,
                                                   short_answer=wrong))
        assert not check(spec, dataclasses.replace(qa, options=(qa.answer_text,) * 4, answer="A"))


def test_check_rejects_ambiguous_clips(clips):
    spec, qa = next((s, q) for s, q in primaries(clips, "colour_of_shape") if len(s.objects) > 1)
    # Another object of the named shape: "the square" no longer names one object.
    twins = tuple(dataclasses.replace(o, shape=qa.subject["shape"]) for o in spec.objects)
    assert check(spec, qa) and not check(dataclasses.replace(spec, objects=twins), qa)
    # Overlapping objects make counts unanswerable from pixels.
    spec, qa = primaries(clips, "count")[0]
    o = spec.objects[0]
    assert not check(dataclasses.replace(spec, objects=spec.objects + (o,)), dataclasses.replace(
        qa, answer_text=str(len(spec.objects) + 1)))
    # No cut, no after-cut answer.
    spec, qa = primaries(clips, "after_cut")[0]
    assert not check(dataclasses.replace(spec, backgrounds=spec.backgrounds[:1]), qa)


def test_options_sane(clips):
    letters = Counter()
    for _, _, qas in clips:
        for qa in qas:
            assert len(qa.options) == 4 and len(set(qa.options)) == 4
            assert qa.options.count(qa.answer_text) == 1
            assert qa.options[LETTERS.index(qa.answer)] == qa.answer_text == qa.short_answer
            assert 1 <= len(qa.short_answer.split()) <= 2
            letters[qa.answer] += 1
    n = sum(letters.values())
    assert all(abs(letters[x] / n - 0.25) < 0.05 for x in LETTERS), letters


# --- labels from pixels, independent of the spec's states ---


def test_background_after_cut_from_pixels(clips):
    n = 0
    for spec, qa, lab in pixel_clips(clips, "after_cut", 24, what="background"):
        first, last = (NAMES[np.bincount(lab[t].ravel()).argmax()] for t in (0, -1))
        assert last == qa.answer_text and first != last  # it is a change
        n += 1
    assert n == 24


def test_new_shape_after_cut_from_pixels(clips):
    n = 0
    for spec, qa, lab in pixel_clips(clips, "after_cut", 20, primary=True, what="shape"):
        cut = spec.backgrounds[1].start
        colours = [c for c in COLOURS if colour_mask(lab, c).any()]
        new = [c for c in colours if not colour_mask(lab[:cut], c).any()]
        assert len(new) == 1  # exactly one colour is first seen after the cut
        target = next(o for o in spec.objects if o.visible()[0] >= cut)
        assert target.states[target.visible()[0]].colour == new[0] and target.shape == qa.answer_text
        n += 1
    assert n == 20


def test_direction_from_rendered_centroid(clips):
    items = pixel_clips(clips, "direction", 40)
    assert len(items) == 40
    for spec, qa, lab in items:
        mask = colour_mask(lab, qa.subject["colour"])
        present = [t for t in range(len(mask)) if mask[t].any()]
        (y0, x0), (y1, x1) = (np.argwhere(mask[t]).mean(axis=0) for t in (present[0], present[-1]))
        dx, dy = x1 - x0, y1 - y0
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == qa.answer_text
        assert max(abs(dx), abs(dy)) >= 30  # a clear move, not jitter


def test_count_from_pixels_needs_the_whole_clip(clips):
    items = pixel_clips(clips, "count", 24, primary=True)
    assert len(items) == 24 and {qa.answer_text for _, qa, _ in items} == {"1", "2", "3", "4"}
    for spec, qa, lab in items:
        per_frame = [{c for c in COLOURS if colour_mask(lab[t], c).any()} for t in range(len(lab))]
        assert len(set().union(*per_frame)) == int(qa.answer_text)
        if int(qa.answer_text) > 1:  # no single frame shows every shape
            assert max(len(s) for s in per_frame) < int(qa.answer_text)


def test_first_and_last_colour_from_pixels(clips):
    n = 0
    for qtype in ("first_appears", "last_appears"):
        for spec, qa, lab in pixel_clips(clips, qtype, 15, by="colour"):
            first_seen = {}
            for c in COLOURS:
                hits = np.flatnonzero(colour_mask(lab, c).any(axis=(1, 2)))
                if len(hits):
                    first_seen[c] = int(hits[0])
            order = sorted(first_seen, key=first_seen.get, reverse=qtype == "last_appears")
            assert order[0] == qa.answer_text
            assert first_seen[order[0]] != first_seen[order[1]]
            n += 1
    assert n == 30


def test_colour_change_from_pixels(clips):
    items = pixel_clips(clips, "colour_change", 24)
    assert len(items) == 24
    for spec, qa, lab in items:
        target = next(o for o in spec.objects if o.shape == qa.subject["shape"])
        vis = target.visible()
        s0, s1 = target.states[vis[0]], target.states[vis[-1]]
        before, after = NAMES[lab[vis[0], s0.y, s0.x]], NAMES[lab[vis[-1], s1.y, s1.x]]
        assert after == qa.answer_text and before != after and before in qa.options


# --- the shipped split ---


def test_shipped_split_is_what_the_generator_makes(shipped, tmp_path):
    assert len(shipped) >= 500
    seeds = [r["seed"] for r in shipped]
    assert seeds == list(range(synth.TEST_SEED_START, synth.TEST_SEED_START + len(shipped)))
    assert shipped == make_split(seeds[0], len(seeds))
    regenerated = write_jsonl(shipped, tmp_path / "again.jsonl")
    assert regenerated.read_bytes() == shipped_split_path().read_bytes()
    assert shipped_split_path().stat().st_size < 300_000


def test_shipped_split_records(shipped):
    required = {"id", "video", "seed", "frames", "type", "question", "options", "answer", "answer_text",
                "short_answer"}
    assert len({r["id"] for r in shipped}) == len(shipped)
    for r in shipped:
        assert required <= set(r)
        assert r["video"] == f"videos/synth_{r['seed']:07d}.mp4" and r["frames"] == 16
        assert r["options"][LETTERS.index(r["answer"])] == r["answer_text"]
        spec, qas = generate(r["seed"])
        assert check(spec, QA(r["type"], r["question"], tuple(r["options"]), r["answer"], r["answer_text"],
                              r["short_answer"], qas[0].subject))


def test_shipped_split_type_balance(shipped):
    counts = Counter(r["type"] for r in shipped)
    assert set(counts) == set(TYPES)
    assert len(set(counts.values())) == 1  # exactly balanced
    letters = Counter(r["answer"] for r in shipped)
    assert min(letters.values()) >= 0.8 * len(shipped) / 4


# --- training stream ---


def test_iter_examples():
    items = list(iter_examples(0, 16))
    assert len(items) == 16
    assert Counter(qa.type for _, qa in items) == Counter({t: 2 for t in TYPES})
    frames, qa = items[3]
    assert frames.shape == (16, 128, 128, 3) and frames.dtype == np.uint8
    spec, qas = generate(3)
    assert np.array_equal(frames, render(spec)) and qa == qas[0]
    every = list(iter_examples(0, 2, all_questions=True))
    assert len(every) == len(generate(0)[1]) + len(generate(1)[1])


# --- prompts and answer parsing ---


def test_mc_prompt():
    qa = generate(3)[1][0]
    lines = mc_prompt(qa).split("\n")
    assert lines[0] == qa.question
    assert lines[1:5] == [f"{x}. {o}" for x, o in zip(LETTERS, qa.options)]
    assert lines[5] == "Answer with the option's letter from the given choices directly."
    assert mc_prompt({"question": qa.question, "options": list(qa.options)}) == mc_prompt(qa)


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("[b]", "B"), ("b", "B"), ("  c\n", "C"), ("**D**", "D"),
    ("b) red", "B"), ("D. right", "D"), ("A", "A"), ("a", "A"), ("A.", "A"), ("A) red", "A"),
    ("The answer is B", "B"), ("The answer is: (c)", "C"), ("Answer: A", "A"), ("answer:d", "D"),
    ("Option A is correct", "A"), ("The correct choice is (D).", "D"), ("I think it's (C) blue.", "C"),
    ("I would pick C.", "C"),
    ("", None), (None, None), ("A red circle", None), ("a red circle", None), ("B or C", None),
    ("I don't know", None), ("blue", None), ("Cyan", None), ("The answer is a red circle", None),
])
def test_parse_choice(text, letter):
    assert parse_choice(text) == letter


def test_parse_choice_by_option_text():
    options = ["blue", "red", "green", "cyan"]
    assert parse_choice("Red.", options) == "B"
    assert parse_choice("The answer is a cyan circle", options) == "D"
    assert parse_choice("red or green", options) is None
    assert parse_choice("C", options) == "C"  # a letter wins over text


# --- video files ---


def test_write_clip_round_trip_keeps_colours(tmp_path):
    spec, _ = generate(synth.TEST_SEED_START + 6)
    frames = render(spec)
    path = write_clip(tmp_path / "clip.mp4", frames, fps=8)
    clip = sample_frames(path, 16)
    assert clip.frames.shape == frames.shape and clip.total_frames == 16
    assert clip.fps == pytest.approx(8)
    # Away from colour edges (chroma is subsampled 2x2 there), every pixel keeps its colour within a few levels.
    same = np.ones(frames.shape[:3], bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            same &= (np.roll(frames, (dy, dx), axis=(1, 2)) == frames).all(axis=-1)
    diff = np.abs(clip.frames.astype(int) - frames.astype(int)).max(axis=-1)
    assert same.mean() > 0.8
    assert diff[same].max() <= 16  # measured 6-10 at crf 12; any two palette colours differ by >= 90 in some channel
    # Edges included, at least 98% of pixels are still nearest to their own palette colour (measured 99.4-99.99%).
    palette = np.array([*COLOURS.values(), *BACKGROUNDS.values()])

    def nearest(x):
        return np.abs(x[..., None, :].astype(int) - palette).sum(-1).argmin(-1)

    assert (nearest(clip.frames) == nearest(frames)).mean() > 0.98


def test_write_clip_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError):
        write_clip(tmp_path / "odd.mp4", np.zeros((2, 65, 64, 3), np.uint8))


def test_materialize_is_idempotent_and_checks_records(tmp_path):
    records = make_split(synth.TEST_SEED_START, 2)
    jsonl = write_jsonl(records, tmp_path / "split.jsonl")
    out = tmp_path / "root"
    assert synth.materialize(jsonl, out) == {"written": 2, "kept": 0}
    video = out / records[0]["video"]
    assert sample_frames(video, 16).total_frames == 16
    assert synth.materialize(jsonl, out) == {"written": 0, "kept": 2}
    video.write_bytes(video.read_bytes()[:300])  # a broken file is written again
    assert synth.materialize(jsonl, out) == {"written": 1, "kept": 1}
    assert not list(out.rglob("*.part.mp4"))

    bad = dict(records[0], question="What colour is the moon?")
    with pytest.raises(InvalidOptionError, match="no longer generates"):
        synth.materialize(write_jsonl([bad], tmp_path / "bad.jsonl"), out)
    foreign = {k: v for k, v in records[0].items() if k != "seed"}
    with pytest.raises(InvalidOptionError, match="no seed"):
        synth.materialize(write_jsonl([foreign], tmp_path / "foreign.jsonl"), out)


def test_read_split_validates(tmp_path):
    good = {"video": "a.mp4", "question": "q?", "options": ["w", "x", "y", "z"], "answer": "C"}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(good) + "\n\n")
    assert read_split(path) == [good]  # the minimal (converted-benchmark) record is enough
    for broken in ({k: v for k, v in good.items() if k != "answer"}, dict(good, answer="E"),
                   dict(good, options=["x"])):
        path.write_text(json.dumps(broken) + "\n")
        with pytest.raises(InvalidOptionError, match=":1:"):
            read_split(path)
    path.write_text("{not json\n")
    with pytest.raises(InvalidOptionError, match="not JSON"):
        read_split(path)
    with pytest.raises(InvalidOptionError):
        read_split(tmp_path / "missing.jsonl")


def test_bad_generator_arguments():
    with pytest.raises(InvalidOptionError):
        generate(0, frames=4)
    with pytest.raises(InvalidOptionError):
        generate(0, size=63)


def test_example_script_writes_the_shipped_split(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "make_synth_bench.py"
    out = tmp_path / "split.jsonl"
    subprocess.run([sys.executable, str(script), "test", "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == shipped_split_path().read_bytes()
