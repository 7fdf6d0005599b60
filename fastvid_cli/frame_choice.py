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
from dataclasses import dataclass
from typing import Any

import torch

from fastvid_cli.frame_scorer import FrameScorer
from fastvid_cli.selection import select_frames
from fastvid_cli.settings import SelectOptions
from fastvid_cli.video import Clip, sample_frames


@dataclass
class Candidates:
    """A video's M candidate frames (uniform, `clip`) and their embeddings (M,D) by `scorer`."""

    clip: Clip
    embeds: torch.Tensor
    scorer: FrameScorer
    sample_ms: float
    embed_ms: float


def sample_candidates(video: str, opts: SelectOptions, scorer: FrameScorer, *, decoder: str = "cpu",
                      notes: list[str] | None = None) -> Candidates:
    """Decode the candidates of `video` (SelectOptions.count of them, uniformly) and embed them. `decoder`: "cpu"
    (numpy frames) or what `--decoder` resolved to (video_gpu.sample_clip: NVDEC frames stay on the GPU, where the
    scorer takes them; a fallback to the CPU adds a line to `notes`)."""
    t0 = time.perf_counter()
    if decoder == "cpu":
        clip = sample_frames(video, opts)
    else:
        from fastvid_cli.video_gpu import sample_clip

        clip = sample_clip(video, opts, decoder=decoder, device=scorer.device, notes=notes)
    t1 = time.perf_counter()
    embeds = scorer.embed_frames(clip.frames)
    t2 = time.perf_counter()
    return Candidates(clip, embeds, scorer, (t1 - t0) * 1e3, (t2 - t1) * 1e3)


def choose(cands: Candidates, question: str, opts: SelectOptions) -> tuple[Clip, dict[str, Any]]:
    """The K frames of `cands` for `question` (all of them when there are K or fewer) as a Clip whose frames are
    copied out of the decoded candidates, and the selection's record: chosen timestamps and scores, every
    candidate's time and score, the rule and its parameters, and the times it took."""
    t0 = time.perf_counter()
    scores = cands.scorer.scores(cands.embeds, question)
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
