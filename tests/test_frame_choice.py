"""Candidates are embedded in groups while they decode (frame_choice.sample_candidates): the streamed embeddings
must be exactly the embeddings of the final frames, slot by slot, whatever order the decoder threads hand frames
over in; a rotated clip (whose final frames are new arrays) is embedded again; the question is embedded once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvid_cli.frame_choice import choose, sample_candidates
from fastvid_cli.frame_scorer import FRAME_CHUNK, FrameScorer
from fastvid_cli.settings import SelectOptions
from tests.videogen import write_video


class PixelScorer(FrameScorer):
    """Embeds a frame as its mean colour in each quarter (12 numbers, exact in float64), a text as a fixed vector;
    records the batch sizes and texts it was given."""

    source = "pixel-test"
    device = torch.device("cpu")

    def __init__(self):
        self.batches: list[int] = []
        self.texts: list[str] = []

    def embed_frames(self, frames):
        x = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
        self.batches.append(len(x))
        h, w = x.shape[1] // 2, x.shape[2] // 2
        quarters = [x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]]
        return torch.cat([q.mean(dim=(1, 2)) for q in quarters], dim=1)

    def identity(self):
        return {"kind": "pixel-test"}

    def embed_texts(self, texts):
        self.texts += list(texts)
        g = torch.Generator().manual_seed(len(texts[0]))
        return torch.rand(len(texts), 12, generator=g, dtype=torch.float64)


def _clip(path, n=150, rotation=None):
    """A 64x48 clip whose frames all differ (each quarter its own ramp) with 25-frame GOPs, so several decoder
    threads hand over frames out of order."""
    t = np.arange(n, dtype=np.int64)[:, None, None]
    frames = np.zeros((n, 48, 64, 3), np.uint8)
    frames[:, :24, :32, 0] = (t * 1) % 256
    frames[:, :24, 32:, 1] = (t * 3) % 256
    frames[:, 24:, :32, 2] = (255 - t) % 256
    frames[:, 24:, 32:, :] = ((t * 7) % 256)[..., None]
    return str(write_video(path, frames, fps=25, gop=25, rotation=rotation))


@pytest.mark.parametrize("rotation", [None, 90])
@pytest.mark.parametrize("grouped", [False, True])
def test_streamed_embeddings_are_those_of_the_final_frames(tmp_path, monkeypatch, rotation, grouped):
    """With CPU decoding the candidates are embedded once decoded; in groups as they are handed over (NVDEC's way,
    forced here on the CPU decoders) the result must be the same, slot by slot."""
    from fastvid_cli import frame_choice

    if grouped:
        monkeypatch.setattr(frame_choice, "CPU_GROUP", FRAME_CHUNK)
    video = _clip(tmp_path / "c.mp4", rotation=rotation)
    opts = SelectOptions(k=8, candidates=4 * FRAME_CHUNK // 2 + 3)  # more than a group, not a multiple of one
    scorer = PixelScorer()
    cands = sample_candidates(video, opts, scorer, texts=["what colour is the square?"])
    m = len(cands.clip.indices)
    assert m == opts.candidates and cands.embeds.shape == (m, 12)
    assert torch.equal(cands.embeds, scorer.embed_frames(cands.clip.frames))
    if grouped and not rotation:
        assert len(scorer.batches) > 2 and max(scorer.batches[:-1]) < m  # several groups, then the check's batch
    if rotation:  # the final frames are rotated copies: embedded again after decoding, not in groups
        assert cands.clip.rotation == rotation and scorer.batches[-2] == m
    # the question was embedded once, while decoding, and choosing for it does not embed it again
    _, info = choose(cands, "what colour is the square?", opts)
    assert scorer.texts == ["what colour is the square?"]
    assert info["k"] == 8 and info["candidates"] == m
    want = (cands.embeds @ cands.texts["what colour is the square?"]).tolist()
    assert info["candidate_scores"] == [round(s, 4) for s in want]


def test_a_decoding_error_reaches_the_caller_as_the_videos_error(tmp_path):
    from fastvid_cli.errors import FastVidError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(FastVidError):
        sample_candidates(str(bad), SelectOptions(k=4, candidates=16), PixelScorer())


def test_cached_candidates_skip_decoding_and_give_the_same_frames(tmp_path):
    """A video asked about again reads its candidates' embeddings from the cache: nothing is embedded, and only the
    K chosen frames are decoded; the chosen clip equals the one cut from freshly decoded candidates."""
    from fastvid_cli.feature_cache import FeatureCache

    video = _clip(tmp_path / "c.mp4")
    cache = FeatureCache(tmp_path / "cache")
    opts = SelectOptions(k=6, candidates=40)
    q = "where is the bright square?"
    fresh = sample_candidates(video, opts, PixelScorer(), cache=cache)
    assert not fresh.cached
    want, want_info = choose(fresh, q, opts)

    scorer = PixelScorer()
    again = sample_candidates(video, opts, scorer, cache=cache, texts=[q])
    assert again.cached and scorer.batches == [] and again.clip.frames.size == 0
    assert torch.equal(again.embeds, fresh.embeds) and again.clip.timestamps == fresh.clip.timestamps
    got, info = choose(again, q, opts)  # pending: Engine.session decodes the chosen frames (see below)
    assert info["cached"] and not want_info["cached"]
    assert got.pending and got.indices == want.indices and got.timestamps == want.timestamps
    assert info["timestamps"] == want_info["timestamps"] and info["candidate_scores"] == want_info["candidate_scores"]
    assert got.requested == 6 and got.chosen_from == 40
    now, _ = choose(again, q, opts, decode_now=True)  # `ask` decodes them at once, while its model loads
    assert not now.pending and now.indices == want.indices
    assert np.array_equal(np.asarray(now.frames), np.asarray(want.frames))
    assert now.requested == 6 and now.chosen_from == 40

    # another plan, or the file changed, is another entry
    assert not sample_candidates(video, SelectOptions(k=6, candidates=41), PixelScorer(), cache=cache).cached
    video = _clip(tmp_path / "c.mp4", n=151)
    assert not sample_candidates(video, opts, PixelScorer(), cache=cache).cached


def test_an_unreadable_cache_entry_is_a_miss_and_is_rewritten(tmp_path):
    from fastvid_cli.feature_cache import FeatureCache

    video = _clip(tmp_path / "c.mp4", n=60)
    cache = FeatureCache(tmp_path / "cache")
    opts = SelectOptions(k=4, candidates=20)
    sample_candidates(video, opts, PixelScorer(), cache=cache)
    (entry,) = (tmp_path / "cache").rglob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    assert not sample_candidates(video, opts, PixelScorer(), cache=cache).cached
    assert sample_candidates(video, opts, PixelScorer(), cache=cache).cached


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_session_decodes_a_pending_choice_into_the_same_features(engine, tmp_path, monkeypatch, pipelined):
    """The choice out of cached candidates reaches the engine undecoded; the session decodes exactly the chosen
    frames (through the pipelined sampler where it runs) and its features, clip and record equal those of the same
    choice cut from freshly decoded candidates."""
    from fastvid_cli.engine import PruneOptions
    from fastvid_cli.feature_cache import FeatureCache

    monkeypatch.setattr(engine, "pipeline", pipelined)
    video = _clip(tmp_path / "c.mp4", n=90)
    cache = FeatureCache(tmp_path / "cache")
    opts = SelectOptions(k=5, candidates=24)
    q = "where is the bright square?"
    want, _ = choose(sample_candidates(video, opts, PixelScorer(), cache=cache), q, opts)
    got, _ = choose(sample_candidates(video, opts, PixelScorer(), cache=cache), q, opts)
    assert got.pending and not want.pending
    prune = PruneOptions(method="none", ratio=1.0)
    a = engine.session(video, prune=prune, clip=want, sample_ms=0.0)
    b = engine.session(video, prune=prune, clip=got, sample_ms=1.5)
    assert not b.clip.pending and b.clip.indices == want.indices and b.clip.timestamps == want.timestamps
    assert np.array_equal(np.asarray(b.clip.frames), np.asarray(want.frames))
    assert (b.clip.requested, b.clip.chosen_from) == (5, 24)
    assert torch.equal(a.feats.embeds, b.feats.embeds)
    assert b.timings["sample"] >= 1.5  # the decode, plus what choosing took before
