"""Issue #15: the fixed-shape, sync-free FlashVID (fastvid_cli.pruning.flashvid) against the code it replaced
(tests/flashvid_reference.py, a frozen copy), index for index, on randomized videos, shapes, ratios and settings;
and the number of host waits of one call.

FASTVID_TEST_DEVICE=cuda runs the comparison on a GPU (both versions there; the new one through its CUDA graph).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

import flashvid_reference as old
from fastvid_cli.pruning import flashvid as new
from fastvid_cli.pruning import graphed

DEVICE = torch.device(os.environ.get("FASTVID_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("FASTVID_TEST_DEVICE=cuda without a GPU", allow_module_level=True)


def random_video(rng: random.Random, F: int, N: int, D: int, dtype):
    """Scenes that drift, jump or stand still (TSTM's soft threshold), attention possibly with exact ties."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    drift, jump = rng.choice([0.0, 0.01, 0.05, 0.2]), rng.choice([0.0, 0.1, 0.3, 1.0])
    X = torch.empty(F, N, D)
    X[0] = torch.randn(N, D, generator=gen)
    for t in range(1, F):
        X[t] = torch.randn(N, D, generator=gen) if torch.rand(1, generator=gen).item() < jump else \
            X[t - 1] + drift * torch.randn(N, D, generator=gen)
    X = torch.round(X * 256) / 256 if rng.random() < 0.5 else X
    a = torch.rand(F, N, generator=gen)
    if rng.random() < 0.2:
        a = torch.round(a * 4) / 4 + 0.25  # ties in the attention
    return X.to(dtype), (a / a.sum(dim=1, keepdim=True)).to(dtype)


def random_case(seed: int) -> dict:
    rng = random.Random(seed)
    F = rng.choice([1, 2, 3, 5, 8, 12, 17])
    N = rng.choice([9, 16, 25, 30, 36, 49, 64])
    D = rng.choice([4, 8, 16, 33])
    dtype = rng.choice([torch.float32, torch.float32, torch.bfloat16])
    X, a = random_video(rng, F, N, D, dtype)
    params = dict(selection=rng.choice(new.SELECTIONS), min_segment_num=rng.choice([1, 2, 4, 8]),
                  complementary=rng.random() < 0.85, do_segment=rng.random() < 0.9,
                  temporal_threshold=rng.choice([0.8, 0.8, 0.5, -0.5]), segment_threshold=rng.choice([0.9, 0.5]),
                  duplicates=rng.choice(new.DUPLICATES), seed=rng.randrange(100))
    ratio = rng.choice([0.1, 0.15, 0.2, 0.25, 0.4])
    if new.flashvid_budget(N, ratio)[0] >= N:
        ratio = 0.1
    return dict(X=X.to(DEVICE), a=a.to(DEVICE), ratio=ratio, params=params)


def assert_same(a, b, dtype):
    assert a.segments == b.segments
    assert a.index.tolist() == b.index.tolist()
    assert a.merged.tolist() == b.merged.tolist()
    assert (a.salient, a.context, a.budget, a.compact) == (b.salient, b.context, b.budget, b.compact)
    assert a.notes == b.notes
    assert a.similarities == b.similarities
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # float32 sums in another order; bf16: one rounding step
    assert torch.allclose(a.embeds.float(), b.embeds.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("block", range(8))
def test_matches_the_previous_implementation(block):
    for seed in range(block * 40, block * 40 + 40):
        case = random_case(seed)
        X, a = case["X"], case["a"]
        want = old.flashvid(X, None, None, case["ratio"], attn=a, **case["params"])
        got = new.flashvid(X, None, None, case["ratio"], attn=a, **case["params"])
        assert_same(got, want, X.dtype)


def test_cases_cover_the_odd_paths():
    soft = empty = repeated = single = dpc_exact_switch = 0
    for seed in range(320):
        case = random_case(seed)
        res = new.flashvid(case["X"], None, None, case["ratio"], attn=case["a"], **case["params"])
        soft += any("soft threshold" in n for n in res.notes)
        empty += 0 in res.segments
        repeated += any("repeated slot" in n for n in res.notes)
        single += 1 in res.segments
        N = case["X"].shape[1]
        dpc_exact_switch += N - res.budget[1] <= 25 < N
    assert min(soft, empty, repeated, single, dpc_exact_switch) >= 5, (soft, empty, repeated, single,
                                                                        dpc_exact_switch)


@pytest.mark.parametrize("selection", ["attn_div_v2", "attn_div"])
def test_larger_shapes_match(selection):
    """A LLaVA-sized frame (196 tokens: Gram-matrix DPC distances, long ADTS loops), fewer frames to stay fast."""
    rng = random.Random(7)
    for ratio in (0.1, 0.25):
        X, a = random_video(rng, 6, 196, 64, torch.float32)
        X, a = X.to(DEVICE), a.to(DEVICE)
        kw = dict(attn=a, selection=selection, min_segment_num=2)
        assert_same(new.flashvid(X, None, None, ratio, **kw), old.flashvid(X, None, None, ratio, **kw), X.dtype)


def test_injected_noise_matches_the_seeded_default():
    for seed in range(20):
        case = random_case(1000 + seed)
        s = case["params"]["seed"]
        kw = dict(case["params"], attn=case["a"])
        a = new.flashvid(case["X"], None, None, case["ratio"], **kw)
        b = new.flashvid(case["X"], None, None, case["ratio"], **dict(kw, noise=new.uniform_noise(s)))
        assert torch.equal(a.index, b.index) and torch.equal(a.embeds, b.embeds)


def test_one_host_read_per_call(monkeypatch):
    """The default path reads the device once (counts, cuts and similarities in one copy)."""
    if DEVICE.type != "cpu":
        pytest.skip("counted on the CPU")
    case = random_case(3)
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: pytest.fail("item() called"))
    new.flashvid(case["X"], None, None, 0.25, attn=case["a"], **dict(case["params"], duplicates="distinct"))
    assert len(reads) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_equals_eager():
    case = random_case(11)
    X, a = case["X"].cuda(), case["a"].cuda()
    graphed.clear()
    with_graph = [new.flashvid(X, None, None, case["ratio"], attn=a, **case["params"]) for _ in range(3)]
    assert not graphed.failures(), graphed.failures()
    graphed.enabled(False)
    try:
        eager = new.flashvid(X, None, None, case["ratio"], attn=a, **case["params"])
    finally:
        graphed.enabled(True)
    for res in with_graph:
        assert torch.equal(res.index, eager.index) and torch.equal(res.embeds, eager.embeds)
