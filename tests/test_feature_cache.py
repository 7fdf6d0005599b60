"""The on-disk feature cache (fastvid_cli.feature_cache): what an entry carries back, and which entries miss."""

from __future__ import annotations

import numpy as np
import torch

from fastvid_cli import feature_cache as FC
from fastvid_cli.models.interface import VideoFeatures
from fastvid_cli.video import Clip


def clip() -> Clip:
    return Clip(frames=np.zeros((2, 4, 4, 3), np.uint8), indices=[0, 5], timestamps=[0.0, 0.2], fps=25.0,
                duration=1.0, total_frames=25, requested=2, path="v.mp4", width=4, height=4, rotation=0,
                codec="h264")


def features(attn: bool) -> VideoFeatures:
    gen = torch.Generator().manual_seed(0)
    return VideoFeatures(embeds=torch.randn(2, 9, 6, generator=gen), saliency=torch.rand(2, 9, generator=gen),
                         frame_features=torch.randn(2, 5, generator=gen), extra_embeds=torch.randn(1, 6, generator=gen),
                         grid=(3, 3), saliency_source="test",
                         attn_received=torch.rand(2, 9, generator=gen) if attn else None)


def test_attention_received_round_trips(tmp_path):
    cache = FC.FeatureCache(tmp_path)
    stored = features(attn=True)
    cache.store("ab" * 16, clip(), stored)
    _, loaded = cache.load("ab" * 16, "cpu")
    for name in ("embeds", "saliency", "frame_features", "extra_embeds", "attn_received"):
        assert torch.equal(getattr(loaded, name), getattr(stored, name)), name
    assert loaded.grid == (3, 3) and loaded.saliency_source == "test"


def test_an_entry_without_attention_loads_with_none(tmp_path):
    """A family that has no attention stores none; its entries load, and methods fall back (with a note)."""
    cache = FC.FeatureCache(tmp_path)
    cache.store("cd" * 16, clip(), features(attn=False))
    _, loaded = cache.load("cd" * 16, "cpu")
    assert loaded.attn_received is None and torch.equal(loaded.embeds, features(attn=False).embeds)


def test_entries_of_the_format_before_attention_miss(tmp_path, monkeypatch):
    """Format-1 entries lack the attention HoliTom ranks tokens by: their keys differ, so they are recomputed
    instead of silently degrading holitom to the saliency fallback."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 100)
    now = FC.cache_key(video, model="m", frames=2)
    monkeypatch.setattr(FC, "FORMAT", 1)
    assert FC.cache_key(video, model="m", frames=2) != now


def test_a_mis_shaped_attention_tensor_is_a_miss(tmp_path):
    cache = FC.FeatureCache(tmp_path)
    bad = features(attn=True)
    bad.attn_received = torch.rand(2, 8)
    cache.store("ef" * 16, clip(), bad)
    assert cache.load("ef" * 16, "cpu") is None
