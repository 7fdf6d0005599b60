"""The demo trainer's data side (`train.py` trains on it): synthetic clips rendered from seeds below SEED_END,
dense targets read from each clip's description (per tower patch, per video-token cell, per frame), the question
rows each clip is asked, and batches collated in worker processes so the training step only moves tensors.

Targets (exact: shapes never overlap and stay inside the frame):
  presence     which palette colours a frame shows (the saliency head's auxiliary task);
  patch        shape and colour of the object covering each tower patch (MIN_SHARE of it at least);
  cell         per pooled cell (a video token): shape, colour, motion so far, appearance rank, newest (CELL_TARGETS);
  background   each frame's background colour (every tower patch learns it).
Question rows: the clip's primary question, then others drawn by TYPE_WEIGHT, plus the order questions the
benchmark's own checker accepts on that clip; prompts exactly as `fastvid eval` builds them.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

SEED_END = 800_000  # training seeds stay below this (benchmarks/diag_demo_margins.py relies on it)
MOTIONS = ("none", "static", "left", "right", "up", "down")  # "none": no object on the cell
MOVED_PX = 6  # clip pixels from where it appeared before an object counts as moving (it moves >= 2.5 px a frame)
MAX_RANK = 4
MIN_SHARE = 0.125  # an object labels a patch / cell when it covers at least this share of its pixels
# How often a clip's non-primary questions are drawn, by type: counting is learnt first and easily; shape, motion and
# order questions are the ones a short run leaves at chance.
TYPE_WEIGHT = {"count": 0.25, "after_cut": 0.5, "colour_change": 1.0, "colour_of_shape": 1.0, "shape_of_colour": 2.0,
               "direction": 2.0, "first_appears": 2.0, "last_appears": 2.0}
# Share of clips skipped by their primary type (seed % 8) before anything is rendered. None now: skipping half the
# count-primary clips (counting is asked again as an extra question of almost every clip) left the hard counts —
# a count-primary clip never shows all its shapes on one frame — to 1 clip in 16: training first-token accuracy
# on counts 0.91, the test split's (all count-primary) 69 % (benchmarks/RESULTS.md, session 8).
PRIMARY_SKIP: dict[str, float] = {}
CELL_TARGETS = ("shape", "colour", "motion", "rank", "newest")


def _palette() -> np.ndarray:
    from fastvid_cli import synth

    return np.array([np.asarray(rgb) for rgb in synth.COLOURS.values()], dtype=np.int16)


def colour_presence(frames: np.ndarray, palette: np.ndarray, min_pixels: int = 24) -> np.ndarray:
    """(T,H,W,3) uint8 -> (T, K) float: is palette colour k visible in frame t (>= min_pixels close pixels).

    Reference for `clip_targets`' presence, which reads the same thing from the clip description ~40x faster."""
    diff = np.abs(frames[:, :, :, None, :].astype(np.int16) - palette[None, None, None]).sum(-1)  # (T,H,W,K)
    return ((diff < 60).sum((1, 2)) >= min_pixels).astype(np.float32)


def owner_map(spec) -> np.ndarray:
    """(T, H, W) int8: index + 1 of the object drawn on each pixel (0: background), as `synth.render` draws them."""
    from fastvid_cli import synth_scene

    T, H, W = spec.frames, spec.height, spec.width
    out = np.zeros((T, H, W), np.int8)
    for i, obj in enumerate(spec.objects):
        e = int(math.ceil(synth_scene.EXTENT * obj.radius)) + 1
        yy, xx = np.mgrid[-e:e + 1, -e:e + 1]
        stencil = synth_scene._shape_mask(obj.shape, xx, yy, obj.radius)
        for t, s in enumerate(obj.states):
            if s is None:
                continue
            y0, y1, x0, x1 = max(s.y - e, 0), min(s.y + e + 1, H), max(s.x - e, 0), min(s.x + e + 1, W)
            mask = stencil[y0 - (s.y - e):y1 - (s.y - e), x0 - (s.x - e):x1 - (s.x - e)]
            out[t, y0:y1, x0:x1][mask] = i + 1
    return out


def _cover(owner: np.ndarray, n: int, grid: int) -> np.ndarray:
    """(T, grid, grid) index + 1 of the object covering the largest share (>= MIN_SHARE) of each cell, else 0."""
    T, H, _ = owner.shape
    if not n:
        return np.zeros((T, grid, grid), np.int64)
    s = H // grid
    blocks = owner.reshape(T, grid, s, grid, s)
    counts = np.stack([(blocks == i + 1).sum((2, 4)) for i in range(n)], -1)
    best = counts.argmax(-1)
    return np.where(counts.max(-1) >= MIN_SHARE * s * s, best + 1, 0).astype(np.int64)


def object_states(spec) -> np.ndarray:
    """(n_objects + 1, T, 5) int64 per object and frame: shape + 1, colour + 1, motion so far (index in MOTIONS),
    appearance rank (1 = appears first, capped at MAX_RANK), newest (2: no object appeared after it by frame t,
    1: one did); 0 everywhere while the object is not visible, and for row 0 (the background)."""
    from fastvid_cli import synth

    T, n = spec.frames, len(spec.objects)
    colours, shapes = list(synth.COLOURS), list(synth.SHAPES)
    out = np.zeros((n + 1, T, 5), np.int64)
    appear = [o.visible()[0] for o in spec.objects]
    order = sorted(set(appear))
    for i, obj in enumerate(spec.objects):
        first = obj.states[appear[i]]
        rank = min(order.index(appear[i]) + 1, MAX_RANK)
        for t, s in enumerate(obj.states):
            if s is None:
                continue
            dx, dy = s.x - first.x, s.y - first.y
            if max(abs(dx), abs(dy)) < MOVED_PX:
                motion = "static"
            elif abs(dx) >= abs(dy):
                motion = "right" if dx > 0 else "left"
            else:
                motion = "down" if dy > 0 else "up"
            newest = 2 if all(a <= appear[i] for a in appear if a <= t) else 1
            out[i + 1, t] = (shapes.index(obj.shape) + 1, colours.index(s.colour) + 1, MOTIONS.index(motion), rank,
                             newest)
    return out


def clip_targets(spec, grid: int, pooled: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense training targets of a clip from its description (exact: shapes never overlap and stay inside).

    presence (T, K) float: palette colour k is on frame t (what `colour_presence` measures on pixels);
    patch (T, 2, grid, grid) int64: shape index + 1 and colour index + 1 of the object covering most of each tower
    patch (at least MIN_SHARE of it; 0: background);
    cell (T, 5, pooled, pooled) int64: per pooled cell (the video tokens) the object's CELL_TARGETS of
    `object_states` (0: no object covers MIN_SHARE of the cell)."""
    from fastvid_cli import synth

    T = spec.frames
    presence = np.zeros((T, len(synth.COLOURS)), np.float32)
    colours = list(synth.COLOURS)
    for obj in spec.objects:
        for t, s in enumerate(obj.states):
            if s is not None:
                presence[t, colours.index(s.colour)] = 1.0
    owner = owner_map(spec)
    states = object_states(spec)  # (n+1, T, 5)
    t_idx = np.arange(T)[:, None, None]
    patch_obj = _cover(owner, len(spec.objects), grid)
    patch = states[patch_obj, t_idx][..., :2].transpose(0, 3, 1, 2)
    cell = states[_cover(owner, len(spec.objects), pooled), t_idx].transpose(0, 3, 1, 2)
    return presence, np.ascontiguousarray(patch), np.ascontiguousarray(cell)


def frame_backgrounds(spec) -> np.ndarray:
    """(T,) int64: index in synth.BACKGROUNDS of each frame's background colour (it changes at a scene cut). Every
    tower patch is trained to tell it, objects' patches too, so that whichever video tokens a pruner keeps still
    carry it (the background question after a cut sat at chance, 3 % under FastVID at 0.1, without this target)."""
    from fastvid_cli import synth

    names = list(synth.BACKGROUNDS)
    out = np.zeros(spec.frames, np.int64)
    for seg in spec.backgrounds:  # in order of their starts: each one runs until the next
        out[seg.start:] = names.index(seg.colour)
    return out


def order_questions(rng: random.Random, spec, skip: set) -> list:
    """The first / last appears questions (by shape and by colour) that the benchmark's checker accepts on this
    clip, except those whose (type, subject) is in `skip`."""
    from fastvid_cli import synth

    objs = list(spec.objects)
    if len(objs) < 2:
        return []
    out = []
    for qtype in ("first_appears", "last_appears"):
        order = sorted(objs, key=lambda o: o.visible()[0], reverse=qtype == "last_appears")
        target, others = order[0], order[1:]
        for by in ("shape", "colour"):
            if (qtype, (("by", by),)) in skip:
                continue
            if by == "shape":
                qa = synth._make_qa(rng, qtype, {"by": by}, target.shape, [o.shape for o in others], synth.SHAPES)
            else:
                colour = lambda o: o.states[o.visible()[0]].colour  # noqa: E731
                qa = synth._make_qa(rng, qtype, {"by": by}, colour(target), [colour(o) for o in others],
                                    synth.COLOURS)
            if synth.check(spec, qa):
                out.append(qa)
    return out


def pick_questions(rng: random.Random, qas: list, k: int) -> list:
    """k of a clip's questions: its primary one (types balanced over seeds), then others drawn by TYPE_WEIGHT
    without replacement (with replacement once they run out)."""
    out, rest = [qas[0]], list(qas[1:])
    while len(out) < k:
        if not rest:
            out.append(rng.choice(qas))
            continue
        q = rng.choices(rest, weights=[TYPE_WEIGHT.get(q.type, 1.0) for q in rest])[0]
        rest.remove(q)
        out.append(q)
    return out


class PromptIds:
    """Token ids of the chat prompt around the <video> run: a prefix shared by every question and a per-question
    suffix (question, instruction, generation prompt), exactly what the adapter builds at inference."""

    def __init__(self):
        from fastvid_cli.tiny import byte_tokenizer

        self.tok = byte_tokenizer()
        self.vid = self.tok.convert_tokens_to_ids("<video>")
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id
        self.prefix = self._split("x")[0]

    def _split(self, prompt: str) -> tuple[list[int], list[int]]:
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        v = ids.index(self.vid)
        return ids[:v], ids[v + 1:]

    def row(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(suffix ids + answer ids + eos, number of target tokens)."""
        prefix, suffix = self._split(prompt)
        assert prefix == self.prefix, "the chat template's text before <video> must not depend on the question"
        target = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return suffix + target, len(target)


class Clips(torch.utils.data.IterableDataset):
    """Endless batches: each worker renders seeds wid, wid+W, ... (< SEED_END) and yields whole collated batches
    (pixels, dense targets, and k question rows per clip, padded), so the training process only moves tensors."""

    def __init__(self, batch: int, frames: int, questions: int, short_share: float, mc_target: str, seed: int,
                 grid: int, start: int = 0):
        self.batch, self.frames, self.questions = batch, frames, questions
        self.short_share, self.mc_target, self.seed = short_share, mc_target, seed
        self.grid, self.pooled = grid, math.ceil(grid / 2)
        self.start = start  # a resumed run goes on from about where the last one stopped in the seed order

    def __iter__(self):
        from fastvid_cli import synth

        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"{self.seed}/{wid}" + (f"/{self.start}" if self.start else ""))
        ids = PromptIds()
        seed = wid + self.start // workers * workers  # this worker's seeds are wid mod workers, as from 0
        seed = seed if seed < SEED_END else wid
        while True:
            clips = []
            while len(clips) < self.batch:
                this, seed = seed, seed + workers if seed + workers < SEED_END else wid
                if rng.random() < PRIMARY_SKIP.get(synth.TYPES[this % len(synth.TYPES)], 0.0):
                    continue
                spec, qas = synth.generate(this, frames=self.frames)
                asked = {(q.type, tuple(sorted(q.subject.items()))) for q in qas}
                qas = qas + order_questions(rng, spec, asked)
                rows = []
                for qa in pick_questions(rng, qas, self.questions):
                    short = rng.random() < self.short_share
                    prompt = synth.short_prompt(qa) if short else synth.mc_prompt(qa)
                    answer = qa.short_answer if short or self.mc_target == "word" else qa.answer
                    rows.append((*ids.row(prompt, answer), synth.TYPES.index(qa.type)))
                clips.append((synth.render(spec), *clip_targets(spec, self.grid, self.pooled), rows,
                              frame_backgrounds(spec)))
            yield collate(clips, ids.pad)


def collate(clips: list, pad: int) -> dict[str, torch.Tensor]:
    """Stack a batch of (pixels, presence, patch, cell, rows, backgrounds) clips. Question rows are clip-major (k per clip);
    `labels[r, j]` is the token that position j of row r's suffix must predict (-100: none), `first` marks the
    position that predicts the first answer token."""
    rows = [r for c in clips for r in c[4]]
    S = max(len(ids) for ids, _, _ in rows)
    suffix = torch.full((len(rows), S), pad, dtype=torch.long)
    labels = torch.full((len(rows), S), -100, dtype=torch.long)
    first = torch.zeros((len(rows), S), dtype=torch.bool)
    for i, (ids, n_target, _) in enumerate(rows):
        n = len(ids)
        suffix[i, :n] = torch.tensor(ids)
        labels[i, n - n_target - 1:n - 1] = torch.tensor(ids[n - n_target:])
        first[i, n - n_target - 1] = True
    return dict(frames=torch.from_numpy(np.stack([c[0] for c in clips])),
                presence=torch.from_numpy(np.stack([c[1] for c in clips])),
                patch=torch.from_numpy(np.stack([c[2] for c in clips])),
                cell=torch.from_numpy(np.stack([c[3] for c in clips])),
                background=torch.from_numpy(np.stack([c[5] for c in clips])),
                suffix=suffix, labels=labels, first=first, qtype=torch.tensor([r[2] for r in rows]))
