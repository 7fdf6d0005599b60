"""FlashVID's pre-LLM compression (fastvid_cli.pruning.flashvid): every test vector of flashvid-spec.md §6 for
this stage (TV1–TV5, TV7; TV6/TV8 are in test_pruning_flashvid_inner.py), the budget arithmetic, identity at ratio
1.0, determinism and ties, dtypes, argument checks, and a plain-loop transcription of the spec (§2.2–2.7)
compared with the vectorised code on random videos (the TV9 idea)."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.flashvid import (
    FAMILY_VARIANTS,
    adts_select,
    dpc_batch,
    dpc_peaks,
    dyseg_lengths,
    flashvid,
    flashvid_budget,
    in_dtype,
    min_kept,
    prune_flashvid,
    seeded_draws,
    transition_similarities,
    tstm,
    uniform_noise,
)

RATIOS = (0.10, 0.15, 0.20, 0.25)


def midpoint_noise(n: int) -> torch.Tensor:
    """TV7's deterministic density noise: u_i = (i + 0.5)/n within each DPC call."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


# --------------------------------------------------------------------------------------------- TV1


@pytest.mark.parametrize("N, expected", [
    (196, [(25, 18, 7), (37, 26, 11), (49, 35, 14), (62, 44, 18)]),
    (169, [(22, 16, 6), (32, 23, 9), (43, 31, 12), (53, 38, 15)]),
    (144, [(18, 13, 5), (27, 19, 8), (36, 26, 10), (45, 32, 13)]),
    (256, [(32, 23, 9), (48, 34, 14), (64, 45, 19), (80, 56, 24)]),
    (729, [(92, 65, 27), (137, 96, 41), (183, 129, 54), (228, 160, 68)]),
])
def test_tv1_budgets(N, expected):
    assert [flashvid_budget(N, r) for r in RATIOS] == expected


@pytest.mark.parametrize("N, r, B", [(12, .2, 4), (24, .1, 4), (24, .2, 7), (28, .2, 8), (48, .1, 7), (56, .1, 8),
                                     (96, .1, 13), (112, .1, 15), (184, .1, 24), (192, .1, 25), (192, .2, 49)])
def test_tv1_float_artifacts(N, r, B):
    """B follows the reference's float expression, one more than the exact rational ceiling here."""
    assert flashvid_budget(N, r)[0] == B
    assert math.ceil(N * Fraction(str(r)) * Fraction(5, 4)) == B - 1


def test_tv1_artifact_count_and_clean_ceilings():
    artifacts = [(N, r) for N in range(1, 1500) for r in RATIOS
                 if flashvid_budget(N, r)[0] != math.ceil(N * Fraction(str(r)) * Fraction(5, 4))]
    assert len(artifacts) == 118
    assert {r for _, r in artifacts} <= {0.10, 0.20}
    assert all(math.ceil(B * 0.7) == math.ceil(Fraction(B) * Fraction(7, 10)) for B in range(2000))
    assert all(math.ceil(V * 0.3) == math.ceil(Fraction(V) * Fraction(3, 10)) for V in range(20000))


# --------------------------------------------------------------------------------------------- TV2

S_A = [.95, .85, .97, .99, .93, .80, .96]
S_B = [.95, .85, .97, .99, .93, .92, .96]


@pytest.mark.parametrize("sims, M, complementary, lengths", [
    (S_A, 4, True, [2, 3, 1, 2]),
    (S_B, 4, True, [2, 3, 1, 2]),
    (S_B, 8, True, [1] * 8),
    ([.5, .95, .92], 8, True, [1, 0, 1, 1, 1]),  # a zero-length segment (repeated cut, spec §7.3)
    (S_B, 4, False, [2, 6]),
])
def test_tv2_dyseg(sims, M, complementary, lengths):
    threshold = in_dtype(0.9, torch.float32)  # the reference compares float32 similarities
    sims = torch.tensor(sims).tolist()
    assert dyseg_lengths(sims, threshold, M, complementary) == lengths


def test_dyseg_edge_cases():
    assert dyseg_lengths([], 0.9, 8) == [1]  # one frame
    assert dyseg_lengths([.99, .99], 0.9, 1) == [3]
    # ties among the complementary candidates: the lowest index first
    assert dyseg_lengths([.95, .95, .95], 0.9, 2) == [1, 3]
    assert dyseg_lengths([float("nan"), .95], 0.9, 2) == [2, 1]  # NaN never cuts and is chosen last


def test_threshold_compared_in_the_embeddings_dtype():
    """torch compares a bf16 tensor with 0.9 as bf16 0.8984375: a bf16 similarity of 0.8984375 is not a cut."""
    assert in_dtype(0.9, torch.bfloat16) == 0.8984375
    assert dyseg_lengths([0.8984375], in_dtype(0.9, torch.bfloat16), 1) == [2]
    assert dyseg_lengths([0.8984375], 0.9, 1) == [1, 1]


# --------------------------------------------------------------------------------------------- TV3


def frame(points, attention):
    x = torch.tensor(points, dtype=torch.float32)[None]
    return x, torch.tensor(attention, dtype=torch.float32)[None], x.mean(dim=1)  # centre of a 1-frame segment


def select(points, attention, A, selection):
    x, a, centre = frame(points, attention)
    return adts_select(x, a, A, selection, centre if selection == "attn_div_v2" else None)[0].tolist()


TV3_POINTS = [(1, 0), (.8, .6), (0, 1), (-.6, .8)]
TV3_ATTN = [.1, .4, .3, .2]


def test_tv3_distance_matrix():
    from fastvid_cli.pruning.flashvid import cosine_distances

    delta = cosine_distances(frame(TV3_POINTS, TV3_ATTN)[0])[0]
    expected = torch.tensor([[0, .2, 1, 1.6], [.2, 0, .4, 1], [1, .4, 0, .2], [1.6, 1, .2, 0]])
    assert torch.allclose(delta, expected, atol=1e-6)


@pytest.mark.parametrize("selection, picks", [
    ("attn_div", [[1], [1, 3], [1, 2, 3], [0, 1, 2, 3]]),
    ("attn_div_v2", [[1], [1, 2], [1, 2, 3], [0, 1, 2, 3]]),
])
def test_tv3_adts(selection, picks):
    assert [select(TV3_POINTS, TV3_ATTN, A, selection) for A in (1, 2, 3, 4)] == picks


def test_tv3_duplicate_case():
    """v2 neither excludes picked tokens nor keeps relevance positive: A=3 picks token 0 twice (spec §7.4)."""
    pts, att = [(1, 0), (.8, .6), (-1, 0)], [.3, .3, .4]
    assert [select(pts, att, A, "attn_div_v2") for A in (1, 2, 3)] == [[1], [0, 1], [0, 0, 1]]
    assert [select(pts, att, A, "attn_div") for A in (1, 2, 3)] == [[2], [0, 2], [0, 1, 2]]


def test_tv3_ablations():
    assert select(TV3_POINTS, TV3_ATTN, 2, "attn") == [1, 2]
    assert select(TV3_POINTS, TV3_ATTN, 2, "div") == [0, 3]


def test_adts_scale_of_attention_does_not_matter():
    x = torch.randn(3, 20, 16, generator=torch.Generator().manual_seed(0))
    a = torch.rand(3, 20, generator=torch.Generator().manual_seed(1))
    for sel in ("attn_div", "attn_div_v2"):
        centre = x.mean(dim=1)
        assert torch.equal(adts_select(x, a, 6, sel, centre), adts_select(x, a * 8.0, 6, sel, centre))


def test_adts_ties_lowest_index():
    """Identical tokens: every distance is 0, so every pick is a tie; v1 takes 0, 1, 2, …"""
    x = torch.ones(2, 10, 4)
    a = torch.ones(2, 10)
    assert adts_select(x, a, 4, "attn_div").tolist() == [[0, 1, 2, 3]] * 2
    assert adts_select(x, a, 3, "attn").tolist() == [[0, 1, 2]] * 2


# --------------------------------------------------------------------------------------------- TV4


def tv4_video():
    return torch.tensor([[[1, 0], [0, 1]], [[1, .1], [-1, 0]], [[1, .2], [0, -1]]], dtype=torch.float32)


def run_tstm(x, kappa, lower_bound, tau):
    return [(v.tolist(), i.tolist()) for v, i in tstm(x, kappa, lower_bound, tau)]


def close(a, b, tol=1e-6):
    return len(a) == len(b) and all(
        abs(p - q) <= tol for ra, rb in zip(a, b) for p, q in zip(ra, rb))


def check_frames(out, expected):
    assert [i for _, i in out] == [i for _, i in expected]
    assert all(close(v, w) for (v, _), (w, _) in zip(out, expected))


def test_tv4_tree_merge():
    x = tv4_video()
    before = x.clone()
    out = run_tstm(x, torch.ones(3, 2, dtype=torch.bool), 3, 0.8)
    # (a0 + a1 + a2)/2: the root's count grows by direct children only (spec §7.1)
    check_frames(out, [([[1.5, 0.15], [0, 1]], [0, 1]), ([[-1, 0]], [1]), ([[0, -1]], [1])])
    assert torch.equal(x, before)  # the reference modifies its input in place; this does not (§7.10)


def test_tv4_adts_token_neither_joins_nor_anchors():
    kappa = torch.ones(3, 2, dtype=torch.bool)
    kappa[1, 0] = False
    out = run_tstm(tv4_video(), kappa, 3, 0.8)
    check_frames(out, [([[1, 0], [0, 1]], [0, 1]), ([[-1, 0]], [1]), ([[1, .2], [0, -1]], [0, 1])])


def test_tv4_soft_threshold():
    """tau = −0.5 would leave 2 < 3 roots; the soft threshold (3rd largest sigma = 0) gives the base case."""
    out = run_tstm(tv4_video(), torch.ones(3, 2, dtype=torch.bool), 3, -0.5)
    check_frames(out, [([[1.5, 0.15], [0, 1]], [0, 1]), ([[-1, 0]], [1]), ([[0, -1]], [1])])


def test_tv4_budget_covering_every_token_is_refused():
    """S=2 (LB = 6 = F·N): the reference's top-k of 0 raises IndexError; here a clear error (§7.7)."""
    with pytest.raises(ValueError, match="B < N"):
        tstm(tv4_video(), torch.ones(3, 2, dtype=torch.bool), 6, 0.8)


# --------------------------------------------------------------------------------------------- TV5


def tv5(c, k, noise=None):
    x = torch.tensor([0, .1, .3, 5, 5.4]).view(1, 5, 1)
    valid = torch.ones(1, 5, dtype=torch.bool)
    noise = torch.zeros(1, 5) if noise is None else noise.view(1, 5)
    return x, valid, torch.tensor([c]), torch.tensor([k]), noise


def test_tv5_density_peaks():
    x, valid, _, k, noise = tv5(3, 3)
    _, density, dist, score = dpc_peaks(x, valid, k, noise, max_neighbours=3)
    assert torch.allclose(density[0], torch.tensor([.96722, .98347, .95759, .00060, .00016]), atol=6e-6)
    assert torch.allclose(dist[0], torch.tensor([.1, 5.4, .2, 4.7, .4]), atol=1e-6)
    assert torch.allclose(score[0], torch.tensor([.09672, 5.31075, .19152, .00283, .00007]), atol=6e-6)


def test_tv5_clusters():
    centres, member, ok = dpc_batch(*tv5(3, 3), max_clusters=3, max_neighbours=3)
    assert centres[0].tolist() == [1, 2, 0] and ok.all()
    assignment = member[0].int().argmax(dim=0).tolist()
    assert assignment == [2, 0, 1, 1, 1]
    x = torch.tensor([0, .1, .3, 5, 5.4])
    means = [float(x[member[0, c]].mean()) for c in range(3)]
    assert means == pytest.approx([0.1, 3.5667, 0.0], abs=1e-4)
    centres, member, _ = dpc_batch(*tv5(2, 3), max_clusters=2, max_neighbours=3)
    assert centres[0].tolist() == [1, 2] and member[0].int().argmax(dim=0).tolist() == [0, 0, 1, 1, 1]


def test_tv5_single_cluster_is_decided_by_the_noise():
    """c=1, k=1: every density is exp(0) = 1, so the noise alone picks the centre (spec §7.5)."""
    seen = set()
    for seed in range(20):
        u = uniform_noise(seed)(5)
        centres, _, _ = dpc_batch(*tv5(1, 1, u), max_clusters=1, max_neighbours=1)
        density = torch.ones(5) + u * 1e-6  # float32, as in the method
        assert int(centres[0, 0]) == int(torch.argmax(density))  # the densest (first among equals)
        seen.add(int(centres[0, 0]))
    assert len(seen) >= 3


def test_dpc_ignores_padding():
    """A padded batch gives each set the clusters it gets alone."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 5, generator=gen), torch.randn(4, 5, generator=gen)
    u_a, u_b = torch.rand(7, generator=gen), torch.rand(4, generator=gen)
    pts = torch.zeros(2, 7, 5)
    pts[0], pts[1, :4] = a, b
    valid = torch.arange(7)[None] < torch.tensor([[7], [4]])
    noise = torch.zeros(2, 7)
    noise[0], noise[1, :4] = u_a, u_b
    centres, member, ok = dpc_batch(pts, valid, torch.tensor([3, 2]), torch.tensor([3, 2]), noise,
                                    max_clusters=3, max_neighbours=3)
    c_a, m_a, _ = dpc_batch(a[None], torch.ones(1, 7, dtype=torch.bool), torch.tensor([3]), torch.tensor([3]),
                            u_a[None], max_clusters=3, max_neighbours=3)
    c_b, m_b, _ = dpc_batch(b[None], torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]), torch.tensor([2]),
                            u_b[None], max_clusters=2, max_neighbours=2)
    assert centres[0].tolist() == c_a[0].tolist() and torch.equal(member[0], m_a[0])
    assert centres[1, :2].tolist() == c_b[0].tolist() and torch.equal(member[1, :2, :4], m_b[0])
    assert ok[1].tolist() == [True, True, False] and not member[1, 2].any() and not member[1, :, 4:].any()


# --------------------------------------------------------------------------------------------- TV7


def tv7_inputs():
    F, N, D = 6, 25, 8
    t = torch.arange(F, dtype=torch.float64).view(F, 1, 1)
    n = torch.arange(N, dtype=torch.float64).view(1, N, 1)
    d = torch.arange(D, dtype=torch.float64).view(1, 1, D)
    A = torch.sin(1.7 * (n + 1) + 0.9 * (d + 1) * ((n % 3) + 1))
    Bsc = torch.cos(0.37 * 2.3 * (n + 1) * (d + 1))
    X = torch.where(t < 3, A + 0.05 * t * torch.cos(0.3 * (d + 1) * (n + 1)),
                    Bsc + 0.05 * (t - 3) * torch.sin(0.7 * (d + 1) + n))
    w = 1 + ((5 * torch.arange(N).view(1, N) + 3 * torch.arange(F).view(F, 1)) % 7).double()
    return X.float(), (w / w.sum(dim=1, keepdim=True)).float()


def test_tv7_inputs_and_segments():
    X, _ = tv7_inputs()
    assert X[0, 0, :3].tolist() == pytest.approx([0.51550, -0.35078, -0.95160], abs=6e-6)
    sims = transition_similarities(X)
    assert sims.tolist() == pytest.approx([0.9994836, 0.9994833, -0.2345657, 0.9999932, 0.9999933], abs=1e-7)
    theta = in_dtype(0.9, torch.float32)
    assert dyseg_lengths(sims.tolist(), theta, 2) == [3, 3]
    assert dyseg_lengths(sims.tolist(), theta, 4) == [1, 1, 1, 3]
    assert dyseg_lengths(sims.tolist(), theta, 8) == [1, 1, 1, 0, 1, 1, 1]
    assert flashvid_budget(25, 0.25) == (8, 6, 2) and flashvid_budget(25, 0.10) == (4, 3, 1)


TV7_EXACT = [
    ("attn_div", 2, 0.25, [0, 1, 2, 4, 5, 6, 11, 12, 13, 18, 22, 23, 27, 31, 34, 37, 38, 41, 48, 50, 51, 57, 58, 63, 64,
                           71, 75, 76, 77, 80, 82, 84, 85, 87, 92, 94, 96, 99, 100, 105, 107, 110, 117, 121, 124, 126,
                           127, 130, 131, 134, 135, 147], -0.06331, 270.60094),
    ("attn_div", 4, 0.25, [1, 5, 11, 12, 18, 18, 19, 22, 27, 31, 34, 38, 41, 43, 48, 49, 50, 51, 57, 58, 64, 68, 71, 74,
                           75, 76, 77, 80, 82, 84, 85, 87, 92, 94, 96, 99, 100, 105, 107, 110, 117, 121, 124, 126, 127,
                           130, 131, 134, 135, 147], 0.19581, 242.08958),
    ("attn_div_v2", 2, 0.25, [0, 1, 2, 4, 5, 6, 7, 13, 16, 18, 23, 24, 27, 28, 29, 31, 45, 48, 51, 52, 54, 55, 68, 71,
                              75, 76, 77, 83, 88, 89, 90, 92, 94, 97, 98, 99, 100, 101, 118, 119, 122, 124, 125, 126,
                              127, 140, 144, 147, 148], -1.01206, 250.92235),
    ("attn_div_v2", 4, 0.25, [1, 2, 4, 5, 6, 18, 18, 19, 27, 28, 29, 31, 43, 45, 48, 49, 51, 52, 54, 55, 68, 68, 71, 74,
                              75, 76, 77, 83, 88, 89, 90, 92, 94, 97, 98, 99, 100, 101, 118, 119, 122, 124, 125, 126,
                              127, 140, 144, 147, 148], -0.42027, 229.66009),
]


@pytest.mark.parametrize("selection, M, r, slots, total, total_abs", TV7_EXACT)
def test_tv7_end_to_end(selection, M, r, slots, total, total_abs):
    X, sal = tv7_inputs()
    res = flashvid(X, None, None, r, attn=sal, selection=selection, min_segment_num=M, noise=midpoint_noise)
    assert res.kept == len(slots) and res.index.tolist() == slots
    assert float(res.embeds.double().sum()) == pytest.approx(total, abs=2e-5)
    assert float(res.embeds.double().abs().sum()) == pytest.approx(total_abs, abs=2e-4)


# The two r=0.10 vectors: every single-frame segment has c=1 cluster, k=1, so all 25 densities are exactly 1 and
# the noise decides; in float32, 1 + 1e-6·u_i is the same number for i = 22, 23, 24 (tested below), so three
# tokens tie for the top score and the reference's torch.topk returned 24 or 23; this implementation takes the
# lowest index, 22 (spec §2.11: top-k tie order is undefined). Everything else is identical.
TV7_TIED = [
    ("attn_div_v2", 8, 0.10, [4, 5, 18, 24, 28, 31, 45, 48, 54, 55, 71, 74, 75, 77, 94, 98, 100, 101, 118, 124, 126,
                              127, 147, 149], 1.37606, [0, 1, 2, 3, 4, 5]),
    ("attn_div", 4, 0.10, [5, 11, 18, 24, 34, 38, 48, 48, 58, 64, 71, 74, 80, 85, 93, 94, 95, 98, 105, 107, 110, 124,
                           126, 130, 135, 147], -8.10689, [0, 1, 2]),
]


def test_tv7_tie_group():
    u = midpoint_noise(25).float()
    density = torch.ones(25) + u * 1e-6
    assert (density == density.max()).nonzero().flatten().tolist() == [22, 23, 24]


@pytest.mark.parametrize("selection, M, r, ref_slots, total, tied_frames", TV7_TIED)
def test_tv7_end_to_end_with_tied_centres(selection, M, r, ref_slots, total, tied_frames):
    X, sal = tv7_inputs()
    res = flashvid(X, None, None, r, attn=sal, selection=selection, min_segment_num=M, noise=midpoint_noise)
    N = 25
    ours = res.index.tolist()
    moved = sorted((Counter(ref_slots) - Counter(ours)).elements())  # the reference's centres we did not take
    added = sorted((Counter(ours) - Counter(ref_slots)).elements())
    assert [s // N for s in moved] == tied_frames and all(s % N in (23, 24) for s in moved)
    assert added == [22 + f * N for f in tied_frames]
    assert set(added) <= set(res.index[res.merged].tolist())  # contextual centres, not ADTS picks
    assert res.kept == len(ref_slots)
    assert float(res.embeds.double().sum()) == pytest.approx(total, abs=2e-5)  # one cluster: the same mean


def test_tv7_default_noise_is_seeded():
    X, sal = tv7_inputs()
    a = flashvid(X, None, None, 0.10, attn=sal, selection="attn_div", min_segment_num=4)
    b = flashvid(X, None, None, 0.10, attn=sal, selection="attn_div", min_segment_num=4, seed=0)
    assert torch.equal(a.index, b.index) and torch.equal(a.embeds, b.embeds)
    outcomes = {tuple(flashvid(X, None, None, 0.10, attn=sal, selection="attn_div", min_segment_num=4,
                               seed=s).index.tolist()) for s in range(8)}
    assert len(outcomes) > 1  # the seed matters here
    # ... and not at all for v2, M=2, r=0.25 (spec: 1 outcome): the TV7 list whatever the seed
    v2 = TV7_EXACT[2]
    for seed in range(6):
        res = flashvid(X, None, None, 0.25, attn=sal, selection="attn_div_v2", min_segment_num=2, seed=seed)
        assert res.index.tolist() == v2[3]


def test_default_noise_is_the_per_call_draws():
    """The default draws all DPC calls' noise at once; torch's CPU generator gives the same numbers as one draw
    per call (what uniform_noise, and the reference's global RNG, do)."""
    for sizes in ([196] * 32, [25, 3, 17, 1, 40], [5000, 7, 20000]):
        per_call = uniform_noise(11)
        assert all(torch.equal(a, per_call(n)) for a, n in zip(seeded_draws(11, sizes), sizes))
    X, sal = tv7_inputs()
    for seed in (0, 3):
        a = flashvid(X, None, None, 0.10, attn=sal, selection="attn_div", min_segment_num=4, seed=seed)
        b = flashvid(X, None, None, 0.10, attn=sal, selection="attn_div", min_segment_num=4,
                     noise=uniform_noise(seed))
        assert torch.equal(a.index, b.index) and torch.equal(a.embeds, b.embeds)


# ------------------------------------------------------------------------------ budgets, shapes, identity


def video(F, N, D, seed=0, drift=0.2, jump=0.2, dtype=torch.float32, quantum=None):
    """Scenes of slowly drifting frames (jumps with probability ``jump``), and an attention map."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.empty(F, N, D)
    X[0] = torch.randn(N, D, generator=gen)
    for t in range(1, F):
        if torch.rand(1, generator=gen).item() < jump:
            X[t] = torch.randn(N, D, generator=gen)
        else:
            X[t] = X[t - 1] + drift * torch.randn(N, D, generator=gen)
    if quantum:  # dyadic values: sums of a few of them are exact in float32, in any order
        X = torch.round(X / quantum) * quantum
    a = torch.rand(F, N, generator=gen)
    return X.to(dtype), (a / a.sum(dim=1, keepdim=True)).to(dtype)


@pytest.mark.parametrize("F", [1, 2, 5, 8])
@pytest.mark.parametrize("N", [9, 16, 25, 49])
def test_budget_arithmetic_grid(F, N):
    X, a = video(F, N, 12, seed=F * 100 + N)
    for r in (0.1, 0.15, 0.2, 0.25, 0.5, 0.7):
        B = math.ceil(N * r * 1.25)
        A = math.ceil(B * 0.7)
        S = B - A
        res = flashvid(X, None, None, r, attn=a, min_segment_num=4)
        assert res.budget == (B, A, S) == flashvid_budget(N, r)
        assert sum(res.segments) == F and res.salient == F * A
        assert res.kept == res.salient + res.context >= min_kept(F, N, r) == F * B
        frames = res.index // N
        adts_per_frame = torch.bincount(frames[~res.merged], minlength=F)
        assert adts_per_frame.tolist() == [A] * F
        ctx_frames = frames[res.merged]
        start = 0
        for L in res.segments:  # contextual rows of a segment: S·F_s plus at most one per frame from ceilings
            n = int(((ctx_frames >= start) & (ctx_frames < start + L)).sum())
            assert S * L <= n <= S * L + L
            start += L
        assert torch.all(res.index[1:] >= res.index[:-1])


def test_ratio_one_keeps_everything_in_order():
    X, a = video(4, 16, 8)
    res = flashvid(X, None, None, 1.0, attn=a)
    assert torch.equal(res.embeds, X.reshape(-1, 8)) and res.index.tolist() == list(range(64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_dtypes(dtype):
    X, a = video(6, 36, 16, dtype=dtype)
    res = flashvid(X, a, torch.zeros(6, 3), 0.25, attn=a)
    assert res.embeds.dtype == dtype and res.embeds.shape == (res.kept, 16)
    assert res.index.dtype == torch.int64 and res.index.shape == (res.kept,)
    assert res.merged.dtype == torch.bool and res.merged.shape == (res.kept,)
    assert res.compact and torch.equal(res.source, res.index)
    assert res.kept >= min_kept(6, 36, 0.25)
    assert 0 <= int(res.index.min()) and int(res.index.max()) < 6 * 36
    embeds, index = prune_flashvid(X, a, None, 0.25, attn=a)
    assert torch.equal(embeds, res.embeds) and torch.equal(index, res.index)


def test_bf16_is_close_to_fp32():
    X, a = video(6, 36, 16, seed=5, quantum=1 / 64)
    r32 = flashvid(X, None, None, 0.25, attn=a)
    r16 = flashvid(X.bfloat16(), None, None, 0.25, attn=a.bfloat16())
    assert r16.segments == r32.segments
    common = set(r16.index.tolist()) & set(r32.index.tolist())
    assert len(common) >= 0.7 * r32.kept


def test_deterministic():
    X, a = video(8, 25, 16, seed=7)
    runs = [flashvid(X, None, None, 0.15, attn=a) for _ in range(2)]
    assert torch.equal(runs[0].index, runs[1].index) and torch.equal(runs[0].embeds, runs[1].embeds)
    assert runs[0].notes == runs[1].notes


def test_static_video_ties_go_to_the_lowest_index():
    """Every frame identical and every token identical: all choices tie; ADTS takes tokens 0..A−1 (v1)."""
    X = torch.ones(4, 16, 8)
    a = torch.full((4, 16), 1 / 16)
    res = flashvid(X, None, None, 0.25, attn=a, selection="attn_div", min_segment_num=1, noise=lambda n: [0.0] * n)
    B, A, S = res.budget
    adts = res.index[~res.merged].view(4, A) % 16
    assert adts.tolist() == [list(range(A))] * 4
    # TSTM: every later token links to the first non-ADTS token of the previous frame, so frame 0 holds the
    # 12 roots: slot 4 (its tree, (1 + 3·12)/13 by the direct-children count) and 11 identical ones; those 11 tie
    # in density and score, so the 4 centres are the lowest of them
    assert res.index[res.merged].tolist() == [5, 6, 7, 8] and res.kept == 4 * B


def test_input_is_not_modified():
    X, a = video(6, 25, 8, seed=2, drift=0.05)
    before = X.clone()
    flashvid(X, None, None, 0.25, attn=a)
    assert torch.equal(X, before)


def test_repeated_slots_per_family():
    """A single-frame segment offers its ADTS tokens to DPC too, so a centre can repeat an ADTS slot (§7.2):
    LLaVA keeps both vectors (ADTS row first), Qwen gives every copy the contextual value."""
    X, sal = tv7_inputs()
    llava = flashvid(X, None, None, 0.25, attn=sal, selection="attn_div", min_segment_num=4, noise=midpoint_noise)
    qwen = flashvid(X, None, None, 0.25, attn=sal, noise=midpoint_noise, **FAMILY_VARIANTS["qwen2_5_vl"])
    assert llava.index.tolist() == qwen.index.tolist()  # min_segment_num 4, attn_div: the same run
    dup = (llava.index[1:] == llava.index[:-1]).nonzero().flatten()
    assert dup.numel() == 1
    i = int(dup[0])
    assert not llava.merged[i] and llava.merged[i + 1]  # ADTS row, then the cluster mean
    assert not torch.equal(llava.embeds[i], llava.embeds[i + 1])
    assert torch.equal(qwen.embeds[i], llava.embeds[i + 1]) and torch.equal(qwen.embeds[i + 1], llava.embeds[i + 1])
    keep = torch.ones(llava.kept, dtype=torch.bool)
    keep[i] = False
    assert torch.equal(qwen.embeds[keep], llava.embeds[keep])
    assert not qwen.compact and qwen.source is None
    assert any("repeated slot" in n for n in qwen.notes)


def test_family_table():
    assert FAMILY_VARIANTS["llava_onevision"]["selection"] == "attn_div_v2"
    assert FAMILY_VARIANTS["llava_video"]["min_segment_num"] == 8
    assert {FAMILY_VARIANTS[f]["selection"] for f in ("qwen2_5_vl", "qwen3_vl")} == {"attn_div"}
    assert {FAMILY_VARIANTS[f]["min_segment_num"] for f in ("qwen2_5_vl", "qwen3_vl")} == {4}
    X, a = video(4, 16, 8)
    for family, params in FAMILY_VARIANTS.items():
        assert flashvid(X, None, None, 0.25, attn=a, **params).kept >= min_kept(4, 16, 0.25)


def test_saliency_stands_in_for_attention():
    X, a = video(4, 16, 8)
    with_attn = flashvid(X, None, None, 0.25, attn=a)
    with_sal = flashvid(X, a, None, 0.25)
    assert torch.equal(with_attn.index, with_sal.index)
    assert any("saliency" in n for n in with_sal.notes) and not any("saliency" in n for n in with_attn.notes)
    with pytest.raises(ValueError):
        flashvid(X, None, None, 0.25)


# ------------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("kwargs", [
    dict(ratio=0.0), dict(ratio=1.5), dict(ratio="0.1"), dict(ratio=float("nan")),
    dict(ratio=0.8),  # B = N: nothing to prune (the reference crashes, §7.7)
    dict(ratio=0.9),  # B > N
    dict(expansion=0.0), dict(expansion=-1.0), dict(alpha=1.5), dict(alpha=-0.1),
    dict(temporal_threshold=1.0), dict(temporal_threshold=1.2), dict(temporal_threshold=-1.5),
    dict(segment_threshold="x"), dict(min_segment_num=0), dict(min_segment_num=2.5),
    dict(complementary="yes"), dict(do_segment=1), dict(selection="v3"), dict(positions="shifted"),
    dict(duplicates="first"), dict(seed=1.5), dict(noise=3),
])
def test_invalid_arguments(kwargs):
    X, a = video(3, 16, 8)
    kwargs = dict(dict(ratio=0.25), **kwargs)
    with pytest.raises(InvalidOptionError) as err:
        flashvid(X, None, None, attn=a, **kwargs)
    assert "\n" not in err.value.one_line()


def test_invalid_shapes():
    X, a = video(3, 16, 8)
    with pytest.raises(ValueError):
        flashvid(X[0], None, None, 0.25, attn=a)
    with pytest.raises(ValueError):
        flashvid(X, None, None, 0.25, attn=a[:, :5])
    with pytest.raises(ValueError):
        flashvid(X.long(), None, None, 0.25, attn=a)


def test_options_without_dpc_or_segments():
    X, a = video(6, 25, 8, seed=4)
    alone = flashvid(X, None, None, 0.25, attn=a, alpha=1.0)  # S = 0: ADTS only
    assert alone.context == 0 and alone.kept == 6 * alone.budget[1]
    none = flashvid(X, None, None, 0.25, attn=a, alpha=0.0)  # A = 0: contextual tokens only
    assert none.salient == 0 and none.kept >= 6 * none.budget[0]
    whole = flashvid(X, None, None, 0.25, attn=a, do_segment=False)
    assert whole.segments == [6] and whole.similarities == []
    few = flashvid(X, None, None, 0.25, attn=a, complementary=False, segment_threshold=-2.0)
    assert few.segments == [6]


# ---------------------------------------------------------------- plain-loop transcription of §2.2–2.7


def plain_flashvid(X, a, ratio, *, selection, M, draw, tau=0.8, theta=0.9, e=1.25, alpha=0.7):
    """FlashVID written out from the spec with loops over segments, frames and tokens. Ties: the lowest index
    (as the implementation). Returns (slots, rows) sorted stably by slot, ADTS rows first on a repeated slot."""
    F, N, D = X.shape
    B = math.ceil(N * ratio * e)
    A = math.ceil(B * alpha)
    S = B - A
    dt = X.dtype
    tau_d, theta_d = in_dtype(tau, dt), in_dtype(theta, dt)

    # DySeg
    means = X.mean(dim=1)
    unit = means / means.norm(dim=-1, keepdim=True)
    sims = [float((unit[i] * unit[i + 1]).sum()) for i in range(F - 1)]
    cuts = [i for i in range(F - 1) if sims[i] < theta_d]
    if len(cuts) + 1 < M:
        filled = [1.0 if s < theta_d else s for s in sims]
        extra = sorted(range(F - 1), key=lambda i: (filled[i], i))[:min(M - len(cuts) - 1, F - 1)]
        cuts = sorted(cuts + extra)
    bounds = [-1] + cuts + [F - 1]
    lengths = [b - c for c, b in zip(bounds, bounds[1:])]

    items = []  # (slot, order, row): order 0 for ADTS rows, 1 for contextual ones
    start = 0
    for L in lengths:
        seg = list(range(start, start + L))
        start += L
        if not L:
            continue
        # ADTS, frame by frame
        kappa = {t: [True] * N for t in seg}
        if A:
            mu = torch.stack([X[t].float().mean(dim=0) for t in seg]).mean(dim=0)
            for t in seg:
                x = X[t].float()
                xn = x / x.norm(dim=-1, keepdim=True)
                delta = (1 - xn @ xn.T).tolist()
                w = [float(a[t, j]) * 1e6 for j in range(N)]
                if selection == "attn_div_v2":
                    w = [w[j] * float(x[j] @ mu) for j in range(N)]
                W = [[delta[i][j] * w[j] for j in range(N)] for i in range(N)]
                col2 = [sorted(W[i][j] for i in range(N))[1] for j in range(N)]
                picks = [max(range(N), key=lambda j: (col2[j], -j))]
                while len(picks) < A:
                    m = [min(W[s][j] for s in picks) for j in range(N)]
                    if selection == "attn_div":
                        m = [-1.0 if j in picks else m[j] for j in range(N)]
                    picks.append(max(range(N), key=lambda j: (m[j], -j)))
                for j in sorted(picks):
                    items.append((t * N + j, 0, X[t, j].clone()))
                    kappa[t][j] = False
        if not S:
            continue
        # TSTM (segments of >= 2 frames), token by token, aggregated frame by frame as the reference
        if L == 1:
            cands = {seg[0]: [(seg[0] * N + n, X[seg[0], n].clone()) for n in range(N)]}
        else:
            xs = X[seg[0]:seg[-1] + 1]
            xn = xs / xs.norm(dim=-1, keepdim=True)
            sigma = [[-1.0] * N for _ in seg]
            anchor = [[-1] * N for _ in seg]
            for i in range(1, L):
                c = (xn[i] @ xn[i - 1].T).tolist()
                for n in range(N):
                    row = [(-1.0 if (not kappa[seg[i]][n] or not kappa[seg[i - 1]][m]) else c[n][m]) for m in range(N)]
                    best = max(range(N), key=lambda m: (row[m], -m))
                    sigma[i][n], anchor[i][n] = row[best], best
            merge = [[s > tau_d for s in frame_sig] for frame_sig in sigma]
            if sum(not v for row in merge for v in row) < B * L:
                ranked = sorted((s for row in sigma for s in row), reverse=True)
                v = max(ranked[L * N - B * L - 1], -1.0 + 1e-6)
                merge = [[s > v for s in frame_sig] for frame_sig in sigma]
            value = [[xs[i, n].clone() for n in range(N)] for i in range(L)]
            count = [[1.0] * N for _ in range(L)]
            for i in range(L - 1, -1, -1):
                for n in range(N):
                    if not merge[i][n]:
                        value[i][n] = value[i][n] / count[i][n]
                        count[i][n] = 1.0
                for n in range(N):
                    if merge[i][n]:
                        value[i - 1][anchor[i][n]] = value[i - 1][anchor[i][n]] + value[i][n]
                        count[i - 1][anchor[i][n]] += 1.0
                        count[i][n] = 0.0
            cands = {seg[i]: [(seg[i] * N + n, value[i][n]) for n in range(N)
                              if not merge[i][n] and kappa[seg[i]][n]] for i in range(L)}
        # contextual DPC per frame
        rho = (S * L) / sum(len(v) for v in cands.values())
        for t in seg:
            pts = cands[t]
            n = len(pts)
            c = math.ceil(n * rho)
            if not (c > 0 and rho < 1.0):
                items += [(slot, 1, row) for slot, row in pts]
                continue
            k = min(c, 7)
            Y = torch.stack([row for _, row in pts])
            delta = torch.cdist(Y.float(), Y.float()) / math.sqrt(D)
            u = torch.as_tensor(draw(n), dtype=torch.float32)
            density = [torch.mean(-(torch.sort(delta[i]).values[:k] ** 2)).exp() + u[i] * 1e-6 for i in range(n)]
            dmax = float(delta.max())
            dist = []
            for i in range(n):
                denser = [float(delta[i, j]) for j in range(n) if density[j] > density[i]]
                dist.append(min(denser) if denser else dmax)
            score = [float(torch.tensor(dist[i]) * density[i]) for i in range(n)]
            centres = sorted(range(n), key=lambda i: (-score[i], i))[:c]
            assign = [min(range(c), key=lambda q: (float(delta[i, centres[q]]), q)) for i in range(n)]
            for q, ctr in enumerate(centres):
                assign[ctr] = q
            for q, ctr in enumerate(centres):
                members = [pts[i][1].double() for i in range(n) if assign[i] == q]
                items.append((pts[ctr][0], 1, (sum(members) / len(members)).to(dt)))
    items.sort(key=lambda it: (it[0], it[1]))
    return [s for s, _, _ in items], torch.stack([r for _, _, r in items]), lengths


CASES = [  # (F, N, D, ratio, selection, M, seed, drift, jump)
    (6, 16, 8, 0.25, "attn_div", 4, 0, 0.2, 0.2),
    (8, 25, 12, 0.15, "attn_div_v2", 2, 1, 0.1, 0.1),
    (8, 25, 12, 0.10, "attn_div", 1, 2, 0.05, 0.0),  # one static scene: heavy merging, soft threshold
    (5, 20, 6, 0.25, "attn_div_v2", 8, 3, 0.3, 0.3),  # more segments than frames allow: empty segments
    (10, 12, 8, 0.20, "attn_div_v2", 4, 4, 0.02, 0.1),
    (1, 25, 8, 0.25, "attn_div", 8, 5, 0.2, 0.2),  # a single frame
    (7, 16, 10, 0.25, "attn_div", 3, 6, 0.01, 0.0),
    (8, 16, 8, 0.5, "attn_div", 1, 7, 0.02, 0.0),  # contextual budget above the roots left: soft threshold
    (9, 16, 8, 0.5, "attn_div_v2", 2, 8, 0.05, 0.1),
]


@pytest.mark.parametrize("F, N, D, r, selection, M, seed, drift, jump", CASES)
def test_matches_plain_loop_transcription(F, N, D, r, selection, M, seed, drift, jump):
    X, a = video(F, N, D, seed=seed, drift=drift, jump=jump, quantum=1 / 256)
    slots, rows, lengths = plain_flashvid(X, a, r, selection=selection, M=M, draw=uniform_noise(seed))
    res = flashvid(X, None, None, r, attn=a, selection=selection, min_segment_num=M, seed=seed)
    assert res.segments == lengths
    assert res.index.tolist() == slots
    assert torch.allclose(res.embeds, rows, atol=1e-5, rtol=1e-5)


def test_plain_loop_cases_cover_the_odd_paths():
    """The cases above include soft thresholds, empty segments, repeated slots and single-frame segments."""
    soft = empty = repeated = single = 0
    for F, N, D, r, selection, M, seed, drift, jump in CASES:
        X, a = video(F, N, D, seed=seed, drift=drift, jump=jump, quantum=1 / 256)
        res = flashvid(X, None, None, r, attn=a, selection=selection, min_segment_num=M, seed=seed)
        soft += any("soft threshold" in n for n in res.notes)
        empty += 0 in res.segments
        repeated += any("repeated slot" in n for n in res.notes)
        single += 1 in res.segments
    assert soft and empty and repeated and single
