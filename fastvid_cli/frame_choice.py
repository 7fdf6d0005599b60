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
from fastvid_cli.feature_cache import FeatureCache, cache_key, clip_from_meta, clip_meta
from fastvid_cli.frame_scorer import FRAME_CHUNK, FrameScorer
from fastvid_cli.selection import select_frames
from fastvid_cli.settings import SelectOptions
from fastvid_cli.video import ChosenFrames, Clip, sample_frames


CPU_GROUP = 1 << 30  # frames per embedding group with CPU decoding: all at once (see sample_candidates)


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
    # Read from the candidate cache: `clip` describes the candidates but holds no frames; `choose` decodes the K
    # chosen ones (with `decoder`, from `video`).
    cached: bool = False
    video: str = ""
    decoder: str = "cpu"
    notes: list[str] | None = None

    def scores(self, text: str) -> torch.Tensor:
        """(M,) cosine similarity of each candidate to `text`."""
        if text not in self.texts:
            self.texts[text] = self.scorer.embed_texts([text])[0]
        return self.embeds @ self.texts[text]


def sample_candidates(video: str, opts: SelectOptions, scorer: FrameScorer, *, decoder: str = "cpu",
                      notes: list[str] | None = None, texts: Sequence[str] = (),
                      cache: FeatureCache | None = None) -> Candidates:
    """Decode the candidates of `video` (the frame plan `opts`: SelectOptions.count of them, uniformly) and embed
    them (with NVDEC, in groups as the decoders hand them over: the scorer works while the rest is decoded) and
    `texts` (e.g. the question). `decoder`: "cpu" (numpy frames) or what `--decoder` resolved to
    (video_gpu.sample_clip: NVDEC frames stay on the GPU, where the scorer takes them; a fallback to the CPU adds a
    line to `notes`).

    With `cache` (the feature cache's folder), the embeddings are read from / written to it, keyed by the file's
    identity, the plan (`opts.plan_key()`) and the scorer (`scorer.identity()`): a video asked about again is
    neither decoded nor embedded; only its K chosen frames are decoded, by `choose`.

    sample_ms is the decoding wall time; embed_ms what embedding added after the last frame was decoded (the rest
    ran meanwhile)."""
    key = None
    if cache is not None:
        key = cache_key(video, kind="candidates", plan=opts.plan_key(), selector=scorer.identity())
        got = _cached(cache, key, scorer, video, decoder, notes, texts)
        if got is not None:
            return got
    def sample(on_frame):
        return _sample_clip(video, opts, decoder, scorer, notes, on_frame)

    parts: list[tuple[list[int], list, torch.Tensor]] = []
    text_embeds: dict[str, torch.Tensor] = {}

    def take(pending: list) -> int:
        if not text_embeds and texts:
            text_embeds.update(zip(texts, scorer.embed_texts(list(texts))))
        parts.append(([s for s, _ in pending], [a for _, a in pending],
                      scorer.embed_frames(stack_frames([a for _, a in pending]))))
        return len(pending)

    # Embedding eagerly while the CPU decoders run was measured to help neither (H100 host, 16 decoder threads,
    # so400m: the embedding's ~700 launches a group starve for the GIL, 396 ms of it were left after decoding, and
    # decoding took 342 ms instead of ~220): an eager scorer embeds CPU-decoded frames once all are decoded. A
    # scorer whose groups are one graph replay (`scorer.group()`) embeds them as they arrive, as does any scorer
    # with NVDEC, which leaves the CPU free (83 ms left after decoding).
    chunk = scorer.group() or (FRAME_CHUNK if decoder != "cpu" else CPU_GROUP)
    t0 = time.perf_counter()
    with torch.inference_mode():
        box = decode_in_groups(sample, chunk, take)
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
    if key is not None:
        cache.store_tensors(key, {"embeds": embeds}, {"clip": clip_meta(clip)})
    return Candidates(clip, embeds, scorer, (box["t"] - t0) * 1e3, (t1 - box["t"]) * 1e3, text_embeds,
                      video=video, decoder=decoder, notes=notes)


def _sample_clip(video: str, plan, decoder: str, scorer: FrameScorer, notes, on_frame=None) -> Clip:
    if decoder == "cpu":
        return sample_frames(video, plan, on_frame=on_frame)
    from fastvid_cli.video_gpu import sample_clip

    return sample_clip(video, plan, decoder=decoder, device=scorer.device, notes=notes, on_frame=on_frame)


def _cached(cache: FeatureCache, key: str, scorer: FrameScorer, video: str, decoder: str, notes,
            texts: Sequence[str]) -> Candidates | None:
    """The candidates stored under `key` (their description and embeddings, no frames), or None."""
    t0 = time.perf_counter()
    got = cache.load_tensors(key)
    if got is None:
        return None
    try:
        clip, embeds = clip_from_meta(got[1]["clip"]), got[0]["embeds"]
    except (KeyError, TypeError, ValueError):
        return None
    if embeds.dim() != 2 or embeds.shape[0] != len(clip.indices):
        return None
    text_embeds = dict(zip(texts, scorer.embed_texts(list(texts)))) if texts else {}
    return Candidates(clip, embeds, scorer, (time.perf_counter() - t0) * 1e3, 0.0, text_embeds, cached=True,
                      video=video, decoder=decoder, notes=notes)


def choose(cands: Candidates, question: str, opts: SelectOptions, *,
           decode_now: bool = False) -> tuple[Clip, dict[str, Any]]:
    """The K frames of `cands` for `question` (all of them when there are K or fewer) as a Clip whose frames are
    copied out of the decoded candidates, and the selection's record: chosen timestamps and scores, every
    candidate's time and score, the rule and its parameters, and the times it took.

    Candidates read from the cache hold no frames: the clip then comes back `pending` (its indices chosen, its
    frames not decoded), and `Engine.session` decodes those frames through its pipelined sampler, encoding them
    while they decode, as it samples uniform frames. `decode_now` decodes them here instead (`ask` does, while the
    model is still loading)."""
    t0 = time.perf_counter()
    scores = cands.scores(question)
    m = scores.numel()
    sel = select_frames(scores, min(opts.k, m), opts.power)
    t1 = time.perf_counter()
    pos = sel.indices.tolist()
    c = cands.clip
    sample_ms = cands.sample_ms
    chosen = [c.indices[i] for i in pos]
    if cands.cached and decode_now:
        t2 = time.perf_counter()
        got = _sample_clip(cands.video, ChosenFrames(chosen), cands.decoder, cands.scorer, cands.notes)
        clip = dataclasses.replace(got, requested=opts.k, chosen_from=m)
        sample_ms += (time.perf_counter() - t2) * 1e3
    else:  # cut out of the decoded candidates, or pending (cached candidates: frames=None)
        clip = dataclasses.replace(c, frames=None if cands.cached else c.frames[pos], indices=chosen,
                                   timestamps=[c.timestamps[i] for i in pos], requested=opts.k, chosen_from=m)
    info = {
        "k": len(pos), "candidates": m, "selector": cands.scorer.source, "rule": "bolt-its",
        "power": opts.power, "cached": cands.cached,
        "timestamps": [round(c.timestamps[i], 3) for i in pos],
        "scores": [round(float(scores[i]), 4) for i in pos],
        "candidate_timestamps": [round(t, 3) for t in c.timestamps],
        "candidate_scores": [round(float(s), 4) for s in scores],
        "timings_ms": {"sample_candidates": round(sample_ms, 3), "embed_frames": round(cands.embed_ms, 3),
                       "score_and_select": round((t1 - t0) * 1e3, 3)},
    }
    return clip, info
