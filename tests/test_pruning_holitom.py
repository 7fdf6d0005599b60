"""HoliTom's outer stages (fastvid_cli.pruning.holitom): spec test vectors TV-H1..TV-H4, budgets, layout, merges,
edge cases, and the method end to end through the engine."""

from __future__ import annotations

import math

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning import DEFAULTS, REGISTRY, accepts_attention, get_method
from fastvid_cli.pruning.density import dpc_scores
from fastvid_cli.pruning.holitom import (
    expected_kept_holitom,
    holitom,
    inner_keep,
    llm_flops,
    rescaled_ratio,
    segment_windows,
    sequential_merge,
    static_run_lengths,
    temporal_similarity,
    window_budget,
    window_gains,
)

# ------------------------------------------------------------------------------------------ helpers


def structured(F=10, N=49, D=64, windows=((0, 3, 30), (5, 8, 20)), seed=0, dtype=torch.float32):
    """Random (unrelated) frames, except that in each (first, last, n) window n random positions repeat the
    window's first frame (plus a little noise, so density scores have no ties). Returns (X, attention)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(F, N, D, generator=gen)
    for s, e, n in windows:
        pos = torch.randperm(N, generator=gen)[:n]
        X[s + 1:e + 1, pos] = X[s, pos] + 0.01 * torch.randn(e - s, n, D, generator=gen)
    return X.to(dtype), torch.rand(F, N, generator=gen)


def static_positions(S: torch.Tensor, s: int, e: int, tau: float) -> torch.Tensor:
    """Positions whose similarity stays > tau over the window [s, e] (by the definition, with torch.all)."""
    return torch.all(S[s:e] > tau, dim=0).nonzero().flatten()


def reference_outer(X, a, ratio, tau, beta=0.6, K=7):
    """A plain-loop transcription of spec §3.11 (OV layout), for small inputs: (rows (K, D), sources (K,)).

    Ties are broken by the lowest index, as in the implementation under test (the reference adds noise)."""
    F, N, D = X.shape
    T = F * N
    S = temporal_similarity(X)
    windows, merged = plain_dp(S, tau, F)  # no window-size cap
    rp = min(ratio / ((T - merged) / T), 1)

    def top(values, m):  # indices of the m largest, lowest index first among equals, then in spatial order
        order = sorted(range(len(values)), key=lambda u: (-float(values[u]), u))
        return sorted(order[:m])

    rows, sources = [], []
    for s, e in windows:
        if s == e:
            for j in top(a[s], math.ceil(N * rp)):
                rows.append(X[s, j].float())
                sources.append(s * N + j)
            continue
        P = static_positions(S, s, e, tau).tolist()
        dyn = [j for j in range(N) if j not in P]
        ms = round(len(P) * rp)
        if ms:
            stat = X[s:e + 1][:, P].float().mean(0).to(X.dtype)
            score = dpc_scores(stat[None], min(K, ms))[2][0]
            centres = top(score, ms)
            d = torch.cdist(stat.float(), stat.float())
            groups = {c: [] for c in centres}
            for u in range(len(P)):
                if u not in centres:
                    groups[min(centres, key=lambda c: (float(d[u, c]), c))].append(u)
            for c in centres:
                x_c = stat[c].float()
                members = groups[c]
                rows.append(beta * x_c + (1 - beta) * stat[members].float().mean(0) if members else x_c)
                sources.append(s * N + P[c])
        for t in range(s, e + 1):
            for u in top(a[t, dyn], math.ceil(len(dyn) * rp)):
                rows.append(X[t, dyn[u]].float())
                sources.append(t * N + dyn[u])
    return torch.stack(rows), torch.tensor(sources), windows


# ------------------------------------------------------------------------------------------ TV-H1..TV-H4

TV_H1_S = torch.tensor([
    [.9, .9, .5, .9],  # f0-f1
    [.9, .9, .9, .2],  # f1-f2
    [.1, .1, .1, .1],  # f2-f3
    [.95, .95, .95, .95],  # f3-f4
    [.95, .3, .95, .95],  # f4-f5
])


def test_tv_h1_gains():
    G = window_gains(TV_H1_S, 0.8)
    nonzero = {(s, e): int(G[s, e]) for s in range(6) for e in range(6) if G[s, e]}
    assert nonzero == {(0, 1): 3, (0, 2): 4, (1, 2): 3, (3, 4): 4, (3, 5): 6, (4, 5): 3}


def test_tv_h1_windows_and_static_positions():
    windows, delta = segment_windows(TV_H1_S, 0.8)
    assert windows == [(0, 2), (3, 5)] and delta == 10
    run = static_run_lengths(TV_H1_S, 0.8, 5)
    assert (run[0] >= 2).nonzero().flatten().tolist() == [0, 1]
    assert (run[3] >= 2).nonzero().flatten().tolist() == [0, 2, 3]


def test_tv_h1_threshold_is_strict():
    S = torch.full((3, 4), 0.8)
    assert segment_windows(S, 0.8) == ([(0, 0), (1, 1), (2, 2), (3, 3)], 0)
    assert segment_windows(S, 0.79) == ([(0, 3)], 12)


def test_tv_h2_counts():
    # no static windows: F·ceil(N·r)
    singles = [(f, f) for f in range(32)]
    for r, per_frame in [(0.10, 20), (0.15, 30), (0.20, 40), (0.25, 49)]:
        assert expected_kept_holitom(196, r, singles, [0] * 32) == 32 * per_frame
    # windows [(0,3),(4,4),(5,9), then singles 10..31] with n_s = 100 and 150
    windows = [(0, 3), (4, 4), (5, 9)] + [(f, f) for f in range(10, 32)]
    n_static = [100, 0, 150] + [0] * 22
    rp = rescaled_ratio(0.1, 6272, 100 * 3 + 150 * 4)
    assert rp == pytest.approx(0.116754, abs=1e-6)
    assert window_budget(196, 100, 4, rp) == (12, 12)
    assert window_budget(196, 0, 1, rp) == (0, 23)
    assert window_budget(196, 150, 5, rp) == (18, 6)
    assert expected_kept_holitom(196, 0.1, windows, n_static) == 637
    # rounding: static counts round halves to even, dynamic counts use the double-precision product's ceil
    assert window_budget(10, 5, 2, 0.5) == (2, 3)
    assert window_budget(169, 0, 1, 0.15)[1] == 26 and window_budget(169, 0, 1, 0.1)[1] == 17
    assert window_budget(196, 0, 1, 0.15)[1] == 30


def test_tv_h2_end_to_end():
    """The TV-H2 window structure built into embeddings: the method finds it and keeps 637 tokens."""
    X, a = structured(F=32, N=196, D=128, windows=((0, 3, 100), (5, 9, 150)), seed=1)
    result = holitom(X, None, None, 0.1, attn=a, tau=0.65)
    assert result.segments == [4, 1, 5] + [1] * 22
    assert result.kept == 637 and result.context == 12 + 18 and result.salient == 637 - 30
    frames = result.source // 196
    per_frame = torch.bincount(frames[~result.merged], minlength=32).tolist()
    assert per_frame == [12] * 4 + [23] + [6] * 5 + [23] * 22
    assert torch.bincount(frames[result.merged], minlength=32).tolist()[:6] == [12, 0, 0, 0, 0, 18]


def test_tv_h3_inner_keep_and_sequential_merge():
    assert inner_keep(641, 0.5) == 320 and inner_keep(643, 0.5) == 322
    h = torch.randn(5, 3, dtype=torch.float64)
    kept = torch.tensor([1, 3])
    target = torch.tensor([1, 0, 0, 0, 1])  # tokens 0 and 4 -> kept[1] = 3; token 2 -> kept[0] = 1
    out = sequential_merge(h, kept, target).double()
    assert torch.allclose(out[1], h[3] / 4 + h[0] / 4 + h[4] / 2, atol=1e-6)
    assert torch.allclose(out[0], (h[1] + h[2]) / 2, atol=1e-6)
    # the closed form equals the reference's in-place sequence of pairwise averages
    h = torch.randn(12, 4, dtype=torch.float64)
    kept = torch.tensor([2, 5, 9])
    target = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(0))
    seq = h.clone()
    for u in range(12):
        if u not in kept.tolist():
            v = int(kept[target[u]])
            seq[v] = (seq[v] + seq[u]) / 2
    assert torch.allclose(sequential_merge(h, kept, target).double(), seq[kept], atol=1e-6)


@pytest.mark.parametrize("n, d, m, layers, inner, tflops", [
    (6272, 3584, 18944, 28, None, 40.8),
    (1568, 3584, 18944, 28, None, 8.7), (1568, 3584, 18944, 28, (18, 0.5), 7.1),
    (1280, 3584, 18944, 28, None, 7.0), (1280, 3584, 18944, 28, (18, 0.5), 5.8),
    (960, 3584, 18944, 28, None, 5.2), (960, 3584, 18944, 28, (18, 0.5), 4.3),
    (640, 3584, 18944, 28, None, 3.4), (640, 3584, 18944, 28, (18, 0.5), 2.8),
    (10816, 3584, 18944, 28, None, 80.2),
    (1664, 3584, 18944, 28, None, 9.3), (1664, 3584, 18944, 28, (18, 0.5), 7.6),
    (6272, 8192, 29568, 80, None, 429.3),
    (960, 8192, 29568, 80, None, 59.0), (960, 8192, 29568, 80, (60, 0.5), 51.6),
    (6272, 3584, 18944, 28, (2, 0.8), 9.3),  # FastV in HoliTom's table
])
def test_tv_h4_flops(n, d, m, layers, inner, tflops):
    assert round(llm_flops(n, d, m, layers, inner) / 1e12, 1) == tflops


# ------------------------------------------------------------------------------------------ counts and layout


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_count_matches_the_formula(ratio, seed):
    X, a = structured(seed=seed)
    tau = 0.8
    result = holitom(X, None, None, ratio, attn=a, tau=tau)
    S = temporal_similarity(X)
    bounds = torch.tensor(result.segments).cumsum(0).tolist()
    windows = [(e - L, e - 1) for e, L in zip(bounds, result.segments)]
    n_static = [len(static_positions(S, s, e, tau)) if e > s else 0 for s, e in windows]
    assert result.kept == expected_kept_holitom(49, ratio, windows, n_static)
    assert windows[0] == (0, 3) and (5, 8) in windows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio, k, beta", [(0.1, 7, 0.6), (0.3, 7, 0.6), (0.3, 2, 0.3)])
def test_matches_a_plain_loop_transcription_of_the_spec(seed, ratio, k, beta):
    X, a = structured(seed=seed)
    result = holitom(X, None, None, ratio, attn=a, tau=0.8, k=k, beta=beta)
    rows, sources, windows = reference_outer(X, a, ratio, 0.8, beta=beta, K=k)
    assert result.segments == [e - s + 1 for s, e in windows]
    assert result.source.tolist() == sources.tolist()
    assert torch.allclose(result.embeds.float(), rows, atol=1e-5)


def test_layout_static_first_then_each_frame_in_spatial_order():
    X, a = structured()
    N = 49
    result = holitom(X, None, None, 0.2, attn=a, tau=0.8)
    assert result.compact and result.index.tolist() == list(range(result.kept))
    frame, pos = result.source // N, result.source % N
    # row order: by frame; within a frame, static tokens (only at a window's first frame) before dynamic ones
    key = frame * 2 * N + (~result.merged).long() * N + pos
    assert bool((key[1:] > key[:-1]).all())
    starts = torch.tensor([0, *result.segments]).cumsum(0)[:-1]
    assert set(frame[result.merged].tolist()) <= set(starts.tolist())


def test_dynamic_tokens_are_the_attention_top_k_unchanged():
    X, a = structured()
    N, tau, ratio = 49, 0.8, 0.3
    result = holitom(X, None, None, ratio, attn=a, tau=tau)
    S = temporal_similarity(X)
    dyn = ~result.merged
    assert torch.equal(result.embeds[dyn], X.reshape(-1, 64)[result.source[dyn]])
    start = 0
    for L in result.segments:
        static = static_positions(S, start, start + L - 1, tau).tolist() if L > 1 else []
        for t in range(start, start + L):
            kept = (result.source[dyn & (result.source // N == t)] % N).tolist()
            others = [j for j in range(N) if j not in static and j not in kept]
            assert not set(kept) & set(static)
            assert float(a[t, kept].min()) >= float(a[t, others].max())
        start += L


def test_retention_is_rescaled_by_the_temporal_reduction():
    assert rescaled_ratio(0.1, 6272, 0) == pytest.approx(0.1)
    assert rescaled_ratio(0.5, 100, 60) == 1.0  # capped
    # every frame identical: one window of F frames; r' = min(r·F, 1)
    X = torch.randn(1, 49, 16).expand(6, 49, 16).contiguous()
    a = torch.rand(6, 49)
    result = holitom(X, None, None, 0.1, attn=a, tau=0.8)
    assert result.segments == [6] and result.kept == round(49 * 0.6) and result.context == result.kept
    assert bool(result.merged.all()) and set((result.source // 49).tolist()) == {0}
    # r·F ≥ 1: every static token kept, unmerged (the window mean of identical frames is the frame)
    full = holitom(X, None, None, 0.2, attn=a, tau=0.8)
    assert full.kept == 49 and torch.allclose(full.embeds, X[0], atol=1e-6)
    assert full.source.tolist() == list(range(49))


def test_all_dynamic_keeps_ceil_per_frame():
    X, a = structured(F=5, N=196, D=256, windows=())
    for ratio, per_frame in [(0.1, 20), (0.25, 49)]:
        result = holitom(X, None, None, ratio, attn=a, tau=0.65)
        assert result.segments == [1] * 5 and result.kept == 5 * per_frame and result.context == 0
        assert torch.bincount(result.source // 196, minlength=5).tolist() == [per_frame] * 5


def test_one_frame():
    X, a = structured(F=1, windows=())
    result = holitom(X, None, None, 0.1, attn=a)
    assert result.segments == [1] and result.kept == math.ceil(49 * 0.1)
    assert sorted(result.source.tolist()) == result.source.tolist()
    assert set(result.source.tolist()) == set(torch.topk(a[0], 5).indices.tolist())


def test_ratio_one_keeps_everything_unchanged():
    X, a = structured()
    result = holitom(X, None, None, 1.0, attn=a)
    assert torch.equal(result.embeds, X.reshape(-1, 64)) and result.index.tolist() == list(range(10 * 49))
    assert not result.compact


def test_a_budget_rounded_to_nothing_keeps_one_token():
    X = torch.randn(1, 4, 8).expand(2, 4, 8).contiguous()  # all static: round(4 · min(0.05·2, 1)) = 0
    result = holitom(X, None, None, 0.05, attn=torch.rand(2, 4))
    assert result.kept == 1 and result.context == 1 and any("kept 1 static token" in n for n in result.notes)


def test_max_window_bounds_the_windows():
    X = torch.randn(1, 16, 8).expand(5, 16, 8).contiguous()
    a = torch.rand(5, 16)
    assert holitom(X, None, None, 0.1, attn=a, max_window=2).segments == [2, 2, 1]
    assert holitom(X, None, None, 0.1, attn=a, max_window=1).segments == [1] * 5


def test_ties_prefer_shorter_windows():
    # 3 frames; the same positions are static over both transitions: [0,2] gains 2·n, [0,1]+[2] gains n only
    S = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    assert segment_windows(S, 0.8) == ([(0, 2)], 2)
    # [0,1] then [1..]: the same total from a longer or a shorter window -> the shorter
    S = torch.tensor([[0.9, 0.9], [0.1, 0.1], [0.9, 0.9]])
    assert segment_windows(S, 0.8) == ([(0, 1), (2, 3)], 4)


def plain_dp(S: torch.Tensor, tau: float, max_window: int):
    """Spec §3.4 written out: nested loops, strict improvement over ascending window sizes."""
    F = S.shape[0] + 1

    def gain(s, e):
        return len(static_positions(S, s, e, tau)) * (e - s)

    best, prev = [0] * F, list(range(F))
    for i in range(F):
        best[i] = best[i - 1] if i > 0 else 0
        for w in range(2, min(i + 1, max_window) + 1):
            cand = (best[i - w] if i - w >= 0 else 0) + gain(i - w + 1, i)
            if cand > best[i]:
                best[i], prev[i] = cand, i - w + 1
    windows, i = [], F - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], best[F - 1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_window", [2, 3, 1024])
def test_windows_equal_the_plain_dynamic_programme(seed, max_window):
    gen = torch.Generator().manual_seed(seed)
    # coarse values, so that many windows tie and the tie rule matters
    S = torch.randint(0, 5, (11, 6), generator=gen).float() / 4
    assert segment_windows(S, 0.5, max_window) == plain_dp(S, 0.5, max_window)


def test_positions_original_sorts_the_same_tokens_by_slot():
    X, a = structured()
    compact = holitom(X, None, None, 0.2, attn=a, tau=0.8)
    original = holitom(X, None, None, 0.2, attn=a, tau=0.8, positions="original")
    assert not original.compact and original.source is None
    assert bool((original.index[1:] > original.index[:-1]).all())
    order = torch.argsort(compact.source)
    assert torch.equal(original.index, compact.source[order])
    assert torch.equal(original.embeds, compact.embeds[order])
    assert torch.equal(original.merged, compact.merged[order])


def test_deterministic():
    X, a = structured(seed=3)
    first = holitom(X, None, None, 0.15, attn=a, tau=0.8)
    again = holitom(X.clone(), None, None, 0.15, attn=a.clone(), tau=0.8)
    assert torch.equal(first.embeds, again.embeds) and torch.equal(first.source, again.source)


def test_attention_ties_go_to_the_lowest_index():
    X = torch.randn(2, 16, 32)
    result = holitom(X, None, None, 0.25, attn=torch.ones(2, 16), tau=0.99)
    assert result.source.tolist() == [0, 1, 2, 3, 16, 17, 18, 19]


def test_saliency_is_the_fallback_for_missing_attention():
    X, a = structured()
    with_attn = holitom(X, torch.rand(10, 49), None, 0.2, attn=a, tau=0.8)
    assert with_attn.notes == []
    assert torch.equal(with_attn.source, holitom(X, torch.rand(10, 49), None, 0.2, attn=a, tau=0.8).source)
    fallback = holitom(X, a, None, 0.2, tau=0.8)
    assert torch.equal(fallback.source, with_attn.source)
    assert any("saliency" in n for n in fallback.notes)
    with pytest.raises(ValueError, match="attn"):
        holitom(X, None, None, 0.2)


def test_default_tau_follows_the_reference_scripts():
    # frame 1 is frame 0 rotated: similarity 0.7 everywhere, static at tau 0.65 (r = 0.10), not at 0.8 (r > 0.10)
    angle = math.acos(0.7)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    first = torch.randn(16, 2)
    X = torch.stack([first, first @ rot.T])
    a = torch.rand(2, 16)
    assert holitom(X, None, None, 0.1, attn=a).segments == [2]
    assert holitom(X, None, None, 0.15, attn=a).segments == [1, 1]


def test_half_precision():
    X, a = structured(dtype=torch.bfloat16)
    result = holitom(X, None, None, 0.2, attn=a, tau=0.8)
    ref = holitom(X.float(), None, None, 0.2, attn=a, tau=0.8)
    assert result.embeds.dtype == torch.bfloat16 and result.kept == ref.kept
    assert torch.equal(result.source, ref.source)
    assert torch.allclose(result.embeds.float(), ref.embeds, atol=3e-2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=0.0), "ratio"), (dict(ratio=1.5), "ratio"), (dict(beta=1.5), "beta"), (dict(k=0), "k"),
    (dict(max_window=0), "max_window"), (dict(positions="sorted"), "positions"), (dict(tau="high"), "tau"),
])
def test_invalid_parameters(kwargs, match):
    X, a = structured(F=2, windows=())
    params = dict(ratio=0.1) | kwargs
    with pytest.raises(InvalidOptionError, match=match):
        holitom(X, None, None, params.pop("ratio"), attn=a, **params)


def test_bad_shapes():
    with pytest.raises(ValueError, match="embeds"):
        holitom(torch.zeros(16, 4), None, None, 0.5, attn=torch.zeros(16, 4))
    with pytest.raises(ValueError, match="attn"):
        holitom(torch.zeros(2, 16, 4), None, None, 0.5, attn=torch.zeros(2, 15))


def test_registry():
    assert REGISTRY["holitom"].function is holitom and get_method("holitom") is holitom
    assert DEFAULTS["holitom"]["ratio"] == 0.1 and DEFAULTS["holitom"]["k"] == 7
    assert accepts_attention(holitom) and not accepts_attention(get_method("fastvid"))
    X, a = structured(windows=())
    params = {k: v for k, v in DEFAULTS["holitom"].items() if k != "ratio"}
    assert holitom(X, a, None, 0.1, **params).kept == 10 * 5


# ------------------------------------------------------------------------------------------ through the engine


def test_engine_answers_with_holitom(tiny_llava, tiny_saliency, index_video):
    """Attention received reaches the method; the prompt puts the kept tokens at contiguous positions."""
    from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions

    engine = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))
    sess = engine.session(str(index_video), frames=4, prune=PruneOptions(method="holitom", ratio=0.25))
    assert sess.feats.attn_received is not None and sess.feats.attn_received.shape == (4, 196)
    assert sess.result.compact and not any("saliency" in n for n in sess.result.notes)
    report = sess.answer("What is shown?", GenerationOptions(max_new_tokens=2))
    assert report.method == "holitom" and report.video_tokens_kept == sess.result.kept
    assert report.video_tokens_total == 4 * 196 and report.new_tokens >= 1
    prompt, asm = sess._assemble("What is shown?", None)
    assert asm.position_ids[0].tolist() == list(range(asm.length))  # re-indexed, as the reference
    assert report.prompt_tokens_total == asm.full_length == asm.length + 4 * 196 - sess.result.kept
    # a second question reuses the prefix cache and gets the same answer as a fresh session
    again = sess.answer("What is shown?", GenerationOptions(max_new_tokens=2))
    assert again.answer == report.answer


def test_attention_received_matches_the_stock_vision_attention(tiny_llava, tiny_saliency):
    """attn_received is the stock tower's last used layer's attention, averaged over heads and queries, pooled
    to the token grid with the features' bilinear resize (spec §3.2)."""
    import torch.nn.functional as Fn

    from fastvid_cli.engine import Engine

    engine = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency),
                         attn_implementation="eager")
    a = engine.adapter
    pixels = torch.randn(3, 3, a.image_size, a.image_size)
    feats = a.encode(pixels, chunk_frames=2)
    out = a.model.model.vision_tower(pixels, output_attentions=True)
    layer = a.config.vision_feature_layer
    n = len(a.vision.encoder.layers)
    used = (layer if layer >= 0 else n + 1 + layer) - 1  # hidden_states[k] is the output of layer k−1
    received = out.attentions[used].mean(dim=(1, 2))  # (3, P)
    g = a.patch_grid
    pooled = Fn.interpolate(received.view(3, 1, g, g), size=feats.grid, mode="bilinear").flatten(1)
    assert torch.allclose(feats.attn_received, pooled, atol=1e-6)
    assert not torch.allclose(feats.attn_received, feats.saliency)  # the SigLIP head's score is another thing


# ------------------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def cli_base(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu",
            "--frames", "6"]


def run_cli(*args):
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_ask_with_holitom(cli_base, index_video):
    import json

    res = run_cli("ask", index_video, "What happens?", *cli_base, "--max-new-tokens", "3", "--no-cache",
                  "--method", "holitom", "--ratio", "0.25", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["method"] == "holitom" and data["ratio"] == 0.25 and data["video_tokens_total"] == 6 * 196
    # at least ceil(N·r) per frame before the static merge, never more than the rescaled budget allows
    assert 0 < data["video_tokens_kept"] <= 6 * 196
    assert data["prompt_tokens_total"] - data["prompt_tokens_kept"] == 6 * 196 - data["video_tokens_kept"]
    assert sum(data["segments"]) == 6 and data["new_tokens"] == 3
    assert not any("saliency score instead" in n for n in data["notes"])


def test_cli_ask_with_holitom_through_the_feature_cache(cli_base, index_video, tmp_path):
    """A cache hit carries the attention received, so the answer and the kept tokens do not change."""
    import json

    args = ["ask", index_video, "Q?", *cli_base, "--max-new-tokens", "3", "--method", "holitom", "--ratio",
            "0.25", "--json", "--cache-dir", tmp_path]
    first, second = (json.loads(run_cli(*args).stdout) for _ in range(2))
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["answer"] == first["answer"] and second["video_tokens_kept"] == first["video_tokens_kept"]
    assert second["segments"] == first["segments"] and second["notes"] == first["notes"]


def test_cli_compare_fastvid_holitom_uniform_in_one_table(cli_base, index_video):
    import json

    args = ["compare", index_video, "What happens?", *cli_base, "--max-new-tokens", "2", "--repeat", "1",
            "--no-cache", "--method", "fastvid", "--method", "holitom", "--method", "uniform",
            "--ratio", "0.25", "--ratio", "0.1"]
    res = run_cli(*args, "--json")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert [(r["method"], r["ratio"]) for r in rows] == [
        ("none", 1.0), ("fastvid", 0.25), ("fastvid", 0.1), ("holitom", 0.25), ("holitom", 0.1),
        ("uniform", 0.25), ("uniform", 0.1)]
    holi = {r["ratio"]: r for r in rows if r["method"] == "holitom"}
    assert holi[0.1]["video_tokens_kept"] < holi[0.25]["video_tokens_kept"] < 6 * 196
    assert all(r["prune_ms"] >= 0 and r["prefill_ms"] > 0 and r["prefill_speedup"] > 0 for r in rows)
    table = run_cli(*args)
    assert table.exit_code == 0, table.stderr
    assert table.stdout.count("prefill×") == 1  # one table
    assert all(m in table.stdout for m in ("fastvid", "holitom", "uniform"))


def test_cli_batch_with_holitom(cli_base, index_video, tmp_path):
    import json
    import shutil

    shutil.copy(index_video, tmp_path / "a.mp4")
    csv = tmp_path / "q.csv"
    csv.write_text('id,video,question\nr1,a.mp4,What happens?\nr2,a.mp4,"Is it day, or night?"\n')
    out = tmp_path / "out.jsonl"
    res = run_cli("batch", csv, *cli_base, "--max-new-tokens", "2", "--method", "holitom", "--ratio", "0.25",
                  "-o", out)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["r1", "r2"] and all(r["status"] == "ok" for r in recs)
    assert {r["method"] for r in recs} == {"holitom"} and recs[0]["video_tokens_kept"] == recs[1]["video_tokens_kept"]
    assert 0 < recs[0]["video_tokens_kept"] < 6 * 196


def test_cli_eval_with_holitom(cli_base, index_video, tmp_path):
    import json
    import shutil

    shutil.copy(index_video, tmp_path / "a.mp4")
    bench = tmp_path / "bench.jsonl"
    rows = [{"id": f"q{i}", "video": "a.mp4", "question": f"Which colour ({i})?",
             "options": ["red", "green", "blue", "yellow"], "answer": "A"} for i in range(2)]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("eval", bench, *cli_base, "--max-new-tokens", "2", "--method", "holitom", "--ratio", "0.25",
                  "-o", tmp_path / "res.jsonl", "--json")
    assert res.exit_code == 0, res.output
    settings = {s["setting"]: s for s in json.loads(res.stdout)["settings"]}
    assert list(settings) == ["none@1", "holitom@0.25"]
    assert settings["holitom@0.25"]["n"] == 2 and settings["holitom@0.25"]["errors"] == 0
    assert 0 < settings["holitom@0.25"]["mean_video_tokens_kept"] < 6 * 196
    assert settings["holitom@0.25"]["params"]["k"] == 7


def test_holitom_orig_keeps_the_same_tokens_at_their_original_positions(tiny_llava, tiny_saliency, index_video):
    """`--method holitom-orig`: HoliTom's kept set, but each token at its original slot and position (as FastVID
    does), so decoding continues after the unpruned length."""
    from fastvid_cli.engine import Engine, PruneOptions

    engine = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))
    compact = engine.session(str(index_video), frames=4, prune=PruneOptions(method="holitom", ratio=0.25))
    orig = engine.session_from_features(str(index_video), compact.clip, compact.feats,
                                        PruneOptions(method="holitom-orig", ratio=0.25))
    assert compact.result.kept == orig.result.kept and not orig.result.compact
    _, asm = orig._assemble("What is shown?", None)
    pos = asm.position_ids[0].tolist()
    assert pos == sorted(pos) and len(set(pos)) == len(pos) and asm.length < asm.full_length
    assert asm.next_position.item() == asm.full_length  # decoding continues after the unpruned length
    res = run_cli("ask", index_video, "What happens?", "--model", str(tiny_llava), "--saliency-model",
                  str(tiny_saliency), "--device", "cpu", "--frames", "4", "--max-new-tokens", "2", "--no-cache",
                  "--method", "holitom-orig", "--ratio", "0.25", "--json")
    assert res.exit_code == 0, res.stderr
