"""`--select K`: sample a video's candidate frames once, score them against a question, keep K of them.

    video ──sample_candidates──▶ Candidates (M decoded frames + their embeddings, once per video)
          ──choose(question)──▶ a K-frame Clip cut from the decoded candidates (no second decode), and a record

The rule lives in `fastvid_cli.selection` (pure tensors), the model side in `fastvid_cli.frame_scorer`; this
module ties them to clips and times them. The K-frame clip then goes through the usual pipeline of every family
and method (Engine.ask/session/compare take a clip).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from fastvid_cli.encoding import decode_in_groups, handed_whole, stack_frames
from fastvid_cli.frame_scorer import FRAME_CHUNK, FrameScorer
from fastvid_cli.selection import select_frames
from fastvid_cli.settings import SelectOptions
from fastvid_cli.video import Clip, sample_frames


@dataclass
class Candidates:
    """A video's M candidate frames (uniform, `clip`) and their embeddings (M,D) by `scorer`; `texts` keeps the
    embeddings of the texts embedded so far (the question, embedded while the frames were decoding)."""

    clip: Clip
    embeds: torch.Tensor
    scorer: FrameScorer
    sample_ms: float
    embed_ms: float
    texts: dict[str, torch.Tensor] = field(default_factory=dict)

    def scores(self, text: str) -> torch.Tensor:
        """(M,) cosine similarity of each candidate to `text`."""
        if text not in self.texts:
            self.texts[text] = self.scorer.embed_texts([text])[0]
        return self.embeds @ self.texts[text]


def sample_candidates(video: str, opts: SelectOptions, scorer: FrameScorer, *, decoder: str = "cpu",
                      notes: list[str] | None = None, texts: Sequence[str] = ()) -> Candidates:
    """Decode the candidates of `video` (SelectOptions.count of them, uniformly) and embed them, in groups as the
    decoders hand them over (the scorer works while the rest is decoded; `texts`, e.g. the question, are embedded
    first, while the first frames decode). `decoder`: "cpu" (numpy frames) or what `--decoder` resolved to
    (video_gpu.sample_clip: NVDEC frames stay on the GPU, where the scorer takes them; a fallback to the CPU adds a
    line to `notes`).

    sample_ms is the decoding wall time; embed_ms what embedding added after the last frame was decoded (the rest
    ran meanwhile)."""
    if decoder == "cpu":
        def sample(on_frame):
            return sample_frames(video, opts, on_frame=on_frame)
    else:
        from fastvid_cli.video_gpu import sample_clip

        def sample(on_frame):
            return sample_clip(video, opts, decoder=decoder, device=scorer.device, notes=notes, on_frame=on_frame)
    parts: list[tuple[list[int], list, torch.Tensor]] = []
    text_embeds: dict[str, torch.Tensor] = {}

    def take(pending: list) -> int:
        if not text_embeds and texts:
            text_embeds.update(zip(texts, scorer.embed_texts(list(texts))))
        parts.append(([s for s, _ in pending], [a for _, a in pending],
                      scorer.embed_frames(stack_frames([a for _, a in pending]))))
        return len(pending)

    t0 = time.perf_counter()
    with torch.inference_mode():
        box = decode_in_groups(sample, FRAME_CHUNK, take)
    if "error" in box:
        raise box["error"]
    clip: Clip = box["clip"]
    if handed_whole(clip, [(s, a) for slots, arrays, _ in parts for s, a in zip(slots, arrays)]):
        embeds = parts[0][2].new_empty(len(clip.indices), parts[0][2].shape[1])
        for slots, _, e in parts:
            embeds[slots] = e
    else:  # the final frames are not the ones handed over (sequential fallback, rotation): embed them again
        embeds = scorer.embed_frames(clip.frames)
    if texts and not text_embeds:
        text_embeds.update(zip(texts, scorer.embed_texts(list(texts))))
    t1 = time.perf_counter()
    return Candidates(clip, embeds, scorer, (box["t"] - t0) * 1e3, (t1 - box["t"]) * 1e3, text_embeds)


def choose(cands: Candidates, question: str, opts: SelectOptions) -> tuple[Clip, dict[str, Any]]:
    """The K frames of `cands` for `question` (all of them when there are K or fewer) as a Clip whose frames are
    copied out of the decoded candidates, and the selection's record: chosen timestamps and scores, every
    candidate's time and score, the rule and its parameters, and the times it took."""
    t0 = time.perf_counter()
    scores = cands.scores(question)
    m = scores.numel()
    sel = select_frames(scores, min(opts.k, m), opts.power)
    t1 = time.perf_counter()
    pos = sel.indices.tolist()
    c = cands.clip
    clip = dataclasses.replace(c, frames=c.frames[pos], indices=[c.indices[i] for i in pos],
                               timestamps=[c.timestamps[i] for i in pos], requested=opts.k, chosen_from=m)
    info = {
        "k": len(pos), "candidates": m, "selector": cands.scorer.source, "rule": "bolt-its",
        "power": opts.power,
        "timestamps": [round(c.timestamps[i], 3) for i in pos],
        "scores": [round(float(scores[i]), 4) for i in pos],
        "candidate_timestamps": [round(t, 3) for t in c.timestamps],
        "candidate_scores": [round(float(s), 4) for s in scores],
        "timings_ms": {"sample_candidates": round(cands.sample_ms, 3), "embed_frames": round(cands.embed_ms, 3),
                       "score_and_select": round((t1 - t0) * 1e3, 3)},
    }
    return clip, info
