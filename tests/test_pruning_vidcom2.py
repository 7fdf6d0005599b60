"""VidCom2 (fastvid_cli.pruning.vidcom2): every test vector of vidcom2-evs-spec.md A7 (V1-V9) and A6, the vLLM
variant's exact count, ratio 1.0, determinism and ties, dtypes, argument checks, and a plain-loop transcription of
the algorithm compared with the vectorised code."""

from __future__ import annotations

import math

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.vidcom2 import (
    frame_budgets,
    frame_scales,
    gaussian_scores,
    llava_video_slots,
    low_variance_channels,
    pruning_rate,
    topk_selection,
    vidcom2,
    vllm_retained_count,
)

# ------------------------------------------------------------------------------------------ helpers


def per_frame(index: torch.Tensor, F: int, N: int) -> list[int]:
    return torch.bincount(index // N, minlength=F).tolist()


def budgets_for(v: torch.Tensor, ratio: float, N: int, variant: str = "authors") -> list[int]:
    base = 1.0 - pruning_rate(ratio) if variant == "vllm" else ratio
    return frame_budgets(frame_scales(v, base)[0], N).tolist()


def dominant_v(F: int) -> torch.Tensor:
    """(F, 1) video similarities whose frame 0 is far more distinctive than the others: p ~ one-hot."""
    v = torch.ones(F, 1)
    v[0] = 0.0
    return v


def sin_video() -> torch.Tensor:
    """Spec V4: X[f, n, d] = sin(1 + 7f + 3n + d), F=3, N=4, D=6, float32."""
    f = torch.arange(3)[:, None, None]
    n = torch.arange(4)[None, :, None]
    d = torch.arange(6)[None, None, :]
    return torch.sin((1 + 7 * f + 3 * n + d).to(torch.float32))


def v5_video() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(6272, 64).view(32, 196, 64)


def v6_video() -> torch.Tensor:
    torch.manual_seed(0)
    base = torch.randn(1, 64)
    X = base + 0.1 * torch.randn(6272, 64)
    X[980:1176] += 2.0 * torch.randn(196, 64)
    return X.view(32, 196, 64)


def v7_video() -> torch.Tensor:
    torch.manual_seed(1)
    one = torch.randn(10, 8)
    return one.repeat(4, 1).view(4, 10, 8)


def random_video(F, N, D, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    # a shared base and per-frame offsets of different sizes, so frame budgets differ
    base = torch.randn(1, 1, D, generator=gen)
    frames = torch.randn(F, 1, D, generator=gen) * torch.rand(F, 1, 1, generator=gen)
    X = base + frames + 0.5 * torch.randn(F, N, D, generator=gen)
    return X.to(dtype)


def loop_reference(X: torch.Tensor, ratio: float, variant: str = "authors") -> tuple[list[int], torch.Tensor]:
    """A plain transcription of spec A2 (and A4 for "vllm"): frames, tokens and channels handled one by one with
    Python loops and lists; float32 like the input. Ties: lowest index. Returns (kept slots, s (F, N))."""
    F, N, D = X.shape
    flat = X.reshape(F * N, D)
    # 1. population variance of every channel, the lowest-variance half in ascending order
    variances = []
    for c in range(D):
        col = flat[:, c]
        m = col.mean()
        variances.append(float(((col - m) ** 2).mean()))
    kc = max(1, int(D * 0.5))
    channels = sorted(range(D), key=lambda c: (variances[c], c))[:kc]
    Y = flat[:, channels].view(F, N, kc)
    # 2. unit vectors; 3. centres
    Yh = torch.stack([torch.stack([Y[f, n] / max(float(Y[f, n].norm()), 1e-12) for n in range(N)])
                      for f in range(F)])
    g = Yh.reshape(F * N, kc).mean(dim=0)
    centres = [Yh[f].mean(dim=0) for f in range(F)]

    def kernel(d2: float) -> float:
        return sum(math.exp(-d2 / (2 * a)) for a in (0.125, 0.25, 0.5, 1.0, 2.0))

    v = torch.zeros(F, N, dtype=torch.float64)
    s = torch.zeros(F, N, dtype=torch.float64)
    for f in range(F):
        for n in range(N):
            v[f, n] = kernel(float(((Yh[f, n] - g) ** 2).sum()))
            s[f, n] = v[f, n] + kernel(float(((Yh[f, n] - centres[f]) ** 2).sum()))
    # 6-9. frame weights, scales, budgets
    phi = [-float(v[f].mean()) for f in range(F)]
    top = max(phi)
    weights = [math.exp((x - top) / 0.01) for x in phi]
    p = [w / sum(weights) for w in weights]
    mean_p = sum(p) / F
    base = 1.0 - (1.0 - ratio) if variant == "vllm" else ratio
    budgets = []
    for f in range(F):
        scale = min(1.0, base * (1 + p[f] - mean_p))
        budgets.append(min(max(1, round(scale * N)), N))  # Python's round is half to even too
    # 10. per frame, the smallest s
    kept = []
    for f in range(F):
        local = sorted(range(N), key=lambda n: (float(s[f, n]), n))[:budgets[f]]
        kept += [f * N + n for n in local]
    if variant == "vllm":
        target = max(F, min(int(F * N * (1.0 - (1.0 - ratio))), F * N))
        score = {i: float(s[i // N, i % N]) for i in range(F * N)}
        chosen = set(kept)
        if len(kept) > target:
            keep_order = sorted(chosen, key=lambda i: (score[i], i))
            chosen = set(keep_order[:target])
        elif len(kept) < target:
            others = sorted((i for i in range(F * N) if i not in chosen), key=lambda i: (score[i], i))
            chosen |= set(others[:target - len(kept)])
        kept = list(chosen)
    return sorted(kept), s


# ------------------------------------------------------------------------------------ V1: uniform frames


@pytest.mark.parametrize("F, N, ratio, k, K", [
    (32, 196, 0.25, 49, 1568),
    (32, 196, 0.15, 29, 928),  # not 940
    (8, 196, 0.10, 20, 160),  # nominal 156.8
    (4, 10, 0.25, 2, 8),  # 2.5 rounds half to even
    (1, 196, 0.25, 49, 49),
])
def test_v1_budgets_uniform_frames(F, N, ratio, k, K):
    v = torch.ones(F, 3)  # all frames alike: p = 1/F
    assert budgets_for(v, ratio, N) == [k] * F
    # the same through the whole pipeline: one frame repeated F times
    X = torch.randn(1, N, 16, generator=torch.Generator().manual_seed(0)).repeat(F, 1, 1)
    result = vidcom2(X, None, None, ratio)
    assert result.kept == K
    assert per_frame(result.index, F, N) == [k] * F


def test_v1_scale_is_the_float32_ratio():
    scales, p = frame_scales(torch.ones(32, 196), 0.15)
    assert scales.dtype == torch.float32
    assert torch.equal(scales, torch.full((32,), 0.15, dtype=torch.float32))  # 0.15000000596...
    assert float(scales[0]) == pytest.approx(0.15000000596, abs=1e-11)
    assert torch.allclose(p, torch.full((32,), 1 / 32))


def test_v1_vllm_variant_counts():
    X = torch.randn(1, 10, 16, generator=torch.Generator().manual_seed(0)).repeat(4, 1, 1)
    assert vidcom2(X, None, None, 0.25, variant="vllm").kept == 10  # reconciled from 8 (V7's shape)
    X = torch.randn(1, 196, 16, generator=torch.Generator().manual_seed(0))
    assert vidcom2(X, None, None, 0.25, variant="vllm").kept == 49
    # budgets above the target (8 x 20 = 160 > int(156.8)): the reconcile drops the 4 largest scores
    X = torch.randn(1, 196, 16, generator=torch.Generator().manual_seed(0)).repeat(8, 1, 1)
    authors, vllm = vidcom2(X, None, None, 0.1), vidcom2(X, None, None, 0.1, variant="vllm")
    assert (authors.kept, vllm.kept) == (160, 156)
    assert set(vllm.index.tolist()) < set(authors.index.tolist())
    s = sum(gaussian_scores(X, 8))
    dropped = sorted(set(authors.index.tolist()) - set(vllm.index.tolist()))
    kept_max = float(s.view(-1)[vllm.index].max())
    assert all(float(s.view(-1)[i]) >= kept_max for i in dropped)
    # ties: the 8 frames are identical, so the dropped ones are the tied tokens of the highest slots
    assert per_frame(vllm.index, 8, 196) == [20] * 4 + [19] * 4


# ------------------------------------------------------------------------------------ V2: one dominant frame


@pytest.mark.parametrize("F, ratio, hi, lo, K", [
    (32, 0.25, 96, 47, 1553),
    (32, 0.15, 58, 28, 926),
    (32, 0.60, 196, 114, 3730),
    (32, 1.00, 196, 190, 6086),  # the reference still prunes at r = 1
    (8, 0.005, 2, 1, 9),  # the min-1 floor
])
def test_v2_budgets_one_dominant_frame(F, ratio, hi, lo, K):
    ks = budgets_for(dominant_v(F), ratio, 196)
    assert ks == [hi] + [lo] * (F - 1)
    assert sum(ks) == K


@pytest.mark.parametrize("ratio, hi, lo", [(0.25, 0.4921875, 0.2421875), (0.15, 0.29531252, 0.1453125),
                                           (0.60, 1.0, 0.58125), (1.00, 1.0, 0.96875)])
def test_v2_scales(ratio, hi, lo):
    scales, _ = frame_scales(dominant_v(32), ratio)
    assert float(scales[0]) == pytest.approx(hi, abs=1e-7)
    assert torch.allclose(scales[1:], torch.tensor(lo), rtol=0, atol=1e-7)
    if ratio == 0.25:  # exact binary fractions
        assert float(scales[0]) == 0.4921875 and bool((scales[1:] == 0.2421875).all())


def test_v2_scales_f8():
    scales, _ = frame_scales(dominant_v(8), 0.005)
    assert float(scales[0]) == pytest.approx(0.009375, abs=1e-9)
    assert float(scales[1]) == pytest.approx(0.004375, abs=1e-9)


def test_v2_ratio_one_keeps_everything_unlike_the_reference():
    X = v6_video()  # not uniform: the reference would keep 6086 of 6272 (as budgets_for says)
    result = vidcom2(X, None, None, 1.0)
    assert result.kept == 32 * 196
    assert any("ratio 1.0" in n for n in result.notes)


# ------------------------------------------------------------------------------------ V3: softmax temperature


def test_v3_softmax_temperature():
    v = torch.tensor([[0.0], [0.01], [0.02], [0.03]])  # phi = [0, -0.01, -0.02, -0.03]
    scales, p = frame_scales(v, 0.25)
    assert torch.allclose(p, torch.tensor([0.643914, 0.236883, 0.087144, 0.032059]), rtol=0, atol=2e-6)
    assert torch.allclose(scales, torch.tensor([0.348479, 0.246721, 0.209286, 0.195515]), rtol=0, atol=2e-6)
    assert torch.allclose(scales * 196, torch.tensor([68.30, 48.36, 41.02, 38.32]), rtol=0, atol=0.006)
    ks = frame_budgets(scales, 196).tolist()
    assert ks == [68, 48, 41, 38] and sum(ks) == 195


# ------------------------------------------------------------------------------------ V4: tiny selection


def test_v4_intermediate_values():
    X = sin_video()
    flat = X.reshape(12, 6)
    variances = flat.var(dim=0, correction=0)
    assert torch.allclose(variances, torch.tensor([0.699963, 0.438846, 0.346082, 0.684406, 0.495585, 0.314416]),
                          rtol=0, atol=1e-6)
    assert low_variance_channels(flat, 3).tolist() == [5, 2, 1]
    assert low_variance_channels(flat, 3, ties="topk").tolist() == [5, 2, 1]
    v, u = gaussian_scores(X, 3)
    expected_s = torch.tensor([[3.7183, 3.9433, 3.6539, 3.9964], [4.0084, 3.7036, 3.7274, 3.9928],
                               [3.9912, 3.6577, 3.9459, 3.7115]])
    assert torch.allclose(v + u, expected_s, rtol=0, atol=5e-5)
    assert torch.allclose(-v.mean(dim=1), torch.tensor([-1.915954, -1.924319, -1.915475]), rtol=0, atol=1e-6)
    for ratio, scales_expected, ks in [(0.5, [0.534767, 0.420594, 0.544640], [2, 2, 2]),
                                       (0.25, [0.267383, 0.210297, 0.272320], [1, 1, 1])]:
        scales, _ = frame_scales(v, ratio)
        assert torch.allclose(scales, torch.tensor(scales_expected), rtol=0, atol=1e-6)
        assert frame_budgets(scales, 4).tolist() == ks


@pytest.mark.parametrize("ties", ["lowest", "topk"])
@pytest.mark.parametrize("variant", ["authors", "vllm"])
@pytest.mark.parametrize("ratio, kept", [(0.5, [0, 2, 5, 6, 9, 11]), (0.25, [2, 5, 9])])
def test_v4_kept_sets(ratio, kept, variant, ties):
    X = sin_video()
    result = vidcom2(X, None, None, ratio, variant=variant, ties=ties)
    assert result.index.tolist() == kept
    assert torch.equal(result.embeds, X.reshape(12, 6)[kept])
    if variant == "vllm":  # targets 6 and 3 (q = 0.5 / 0.75, grid (3, 4, 4), merge 2)
        assert vllm_retained_count(4, 3, pruning_rate(ratio)) == len(kept)


# ------------------------------------------------------------------------------------ V5: LLaVA-OV-shaped random


V5_FIRST = [5, 6, 7, 8, 11, 12, 14, 18]


@pytest.mark.parametrize("ties", ["lowest", "topk"])
def test_v5_float32(ties):
    X = v5_video()
    result = vidcom2(X, None, None, 0.25, ties=ties)
    assert result.kept == 1568
    assert per_frame(result.index, 32, 196) == [49] * 32
    assert result.index[:8].tolist() == V5_FIRST
    vllm = vidcom2(X, None, None, 0.25, variant="vllm", ties=ties)  # q = 0.75, grid (32, 28, 28)
    assert torch.equal(vllm.index, result.index)


def test_v5_bf16_budgets_follow_torch_topk_ties():
    """bf16 variances tie (0.98046875 three times, 1.0 four times at the cut): the reference's torch.topk picks
    and orders the tied channels its own way, and only ties="topk" reproduces its K = 1576 (on this CPU)."""
    X = v5_video().to(torch.bfloat16)
    assert vidcom2(X, None, None, 0.25, ties="topk").kept == 1576
    # lowest-index ties choose another channel set: other bf16 sums, other budgets (documented deviation)
    result = vidcom2(X, None, None, 0.25)
    assert result.kept == 1584
    variances = X.reshape(-1, 64).var(dim=0, correction=0)
    cut = torch.sort(variances, stable=True).values[31]
    assert int((variances == cut).sum()) > 1  # the choice at the cut is a tie


@pytest.mark.parametrize("ties", ["lowest", "topk"])
def test_v5_fp16(ties):
    X = v5_video()
    result = vidcom2(X.to(torch.float16), None, None, 0.25, ties=ties)
    assert result.kept == 1568
    if ties == "topk":  # the reference's fp16 set differs from its float32 set
        assert not torch.equal(result.index, vidcom2(X, None, None, 0.25).index)


# ------------------------------------------------------------------------------------ V6: non-uniform budgets


def test_v6_structured():
    X = v6_video()
    v, _ = gaussian_scores(X, 32)
    assert torch.allclose(-v.mean(dim=1)[4:7], torch.tensor([-4.9112, -1.8161, -4.9090]), rtol=0, atol=6e-5)
    scales, _ = frame_scales(v, 0.25)
    assert float(scales[5]) == 0.4921875
    assert bool((scales[torch.arange(32) != 5] == 0.2421875).all())
    result = vidcom2(X, None, None, 0.25)
    assert per_frame(result.index, 32, 196) == [47] * 5 + [96] + [47] * 26
    assert result.kept == 1553
    assert any("1553 of 6272" in n and "frame 5 (96)" in n for n in result.notes)
    vllm = vidcom2(X, None, None, 0.25, variant="vllm")
    assert vllm.kept == 1568
    assert per_frame(vllm.index, 32, 196) == [47] * 5 + [111] + [47] * 26  # the 15 added all land in frame 5
    assert set(result.index.tolist()) <= set(vllm.index.tolist())


# ------------------------------------------------------------------------------------ V7: reconcile with ties


@pytest.mark.parametrize("ties", ["lowest", "topk"])
def test_v7_reconcile_with_ties(ties):
    X = v7_video()
    assert vidcom2(X, None, None, 0.25, ties=ties).index.tolist() == [1, 2, 11, 12, 21, 22, 31, 32]
    # vLLM adds 2 of the 4 tied slots {5, 15, 25, 35}: lowest-index ties and this CPU's topk agree on 5, 15
    assert vidcom2(X, None, None, 0.25, variant="vllm", ties=ties).index.tolist() == [1, 2, 5, 11, 12, 15, 21, 22,
                                                                                       31, 32]


# ------------------------------------------------------------------------------------ V8: vLLM count rule


@pytest.mark.parametrize("N, F, q, K", [(196, 32, 0.75, 1568), (196, 32, 0.85, 940), (256, 16, 0.75, 1024),
                                        (100, 10, 0.9, 99), (48, 4, 0.999, 4), (48, 4, 0.0, 192)])
def test_v8_vllm_count(N, F, q, K):
    assert vllm_retained_count(N, F, q) == K


def test_v8_ratio_to_rate_in_doubles():
    assert pruning_rate(0.1) == 0.9
    assert 1.0 - pruning_rate(0.1) == 0.09999999999999998
    assert vllm_retained_count(100, 10, pruning_rate(0.1)) == 99  # not 100
    X = torch.randn(10, 100, 8, generator=torch.Generator().manual_seed(3))
    assert vidcom2(X, None, None, 0.1, variant="vllm").kept == 99


# ------------------------------------------------------------------------------------ V9: LLaVA-Video mapper


def test_v9_llava_video_mapper():
    keep = torch.zeros(2, 4, dtype=torch.bool)
    keep[0, [0, 3]] = True
    keep[1, 1] = True
    assert llava_video_slots(keep, 2).tolist() == [0, 4, 2, 5, 7, 8, 11]
    with pytest.raises(ValueError):
        llava_video_slots(keep, 3)


# ------------------------------------------------------------------------------------ A6: ties


def test_a6_topk_tie_order_on_cpu_and_lowest_index_default():
    # the reference's per-frame call, on this CPU: 10 equal scores, k = 3 -> slots 6, 7, 8
    assert topk_selection(torch.zeros(1, 10), [3]).tolist() == [6, 7, 8]
    assert topk_selection(torch.tensor([[1.0, 0, 1, 0, 0, 1]]), [2]).tolist() == [1, 4]
    # the default rule: equal scores keep the lowest slots. A frame of identical tokens has equal scores.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(3, 1, 8, generator=gen).repeat(1, 10, 1)
    result = vidcom2(X, None, None, 0.3)
    ks = per_frame(result.index, 3, 10)
    assert result.index.tolist() == [f * 10 + n for f in range(3) for n in range(ks[f])]


def test_identical_frames_pick_identical_slots():
    X = random_video(1, 50, 16, seed=4).repeat(5, 1, 1)
    result = vidcom2(X, None, None, 0.2)
    local = (result.index % 50).view(5, -1)
    assert bool((local == local[0]).all())


# ------------------------------------------------------------------------------------ ratio 1.0, determinism


@pytest.mark.parametrize("kw", [{}, {"variant": "vllm"}, {"positions": "compact"}, {"ties": "topk"}])
def test_ratio_one_is_identity(kw):
    X = random_video(4, 20, 8)
    result = vidcom2(X, None, None, 1.0, **kw)
    assert torch.equal(result.index, torch.arange(80))
    assert torch.equal(result.embeds, X.reshape(80, 8))
    assert not result.compact
    assert result.notes == ["ratio 1.0: no pruning"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["authors", "vllm"])
def test_determinism_bit_identical(dtype, variant):
    X = random_video(16, 196, 64, seed=7, dtype=dtype)
    first = vidcom2(X, None, None, 0.15, variant=variant)
    for _ in range(2):
        again = vidcom2(X.clone(), None, None, 0.15, variant=variant)
        assert torch.equal(again.index, first.index)
        assert torch.equal(again.embeds.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           first.embeds.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
        assert again.notes == first.notes


def test_global_rng_untouched():
    state = torch.get_rng_state()
    vidcom2(random_video(4, 30, 8), None, None, 0.3)
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("F", [1, 2, 7, 32])
@pytest.mark.parametrize("N", [1, 10, 196])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.15, 0.25, 0.5, 0.99])
def test_vllm_count_grid(F, N, ratio):
    X = random_video(F, N, 12, seed=F * 1000 + N)
    result = vidcom2(X, None, None, ratio, variant="vllm")
    assert result.kept == max(F, min(int(F * N * (1.0 - (1.0 - ratio))), F * N))
    assert result.kept == vllm_retained_count(N, F, 1.0 - ratio)


@pytest.mark.parametrize("F", [1, 2, 7, 32])
@pytest.mark.parametrize("N", [1, 10, 196])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.15, 0.25, 0.5, 0.99])
def test_authors_count_grid(F, N, ratio):
    X = random_video(F, N, 12, seed=F * 1000 + N)
    result = vidcom2(X, None, None, ratio)
    v, _ = gaussian_scores(X, 6)
    ks = budgets_for(v, ratio, N)
    assert per_frame(result.index, F, N) == ks  # every frame keeps exactly its budget
    assert result.kept == sum(ks)
    assert all(1 <= k <= N for k in ks)
    # uniform frames: K = F * max(1, round(N r)) (away from exact halves)
    Xu = X[:1].repeat(F, 1, 1)
    nominal = N * float(torch.tensor(ratio, dtype=torch.float32))
    if abs(nominal - math.floor(nominal) - 0.5) > 1e-3:
        assert vidcom2(Xu, None, None, ratio).kept == F * max(1, round(nominal))


def test_one_token_per_frame_and_one_frame():
    X = random_video(5, 1, 8)
    assert vidcom2(X, None, None, 0.1).index.tolist() == list(range(5))  # the floor of one per frame
    X = random_video(1, 196, 8)
    assert vidcom2(X, None, None, 0.25).kept == 49


def test_one_channel():
    X = random_video(3, 10, 1)
    result = vidcom2(X, None, None, 0.5)
    assert result.kept == sum(per_frame(result.index, 3, 10))
    assert any("1 channel" in n for n in result.notes)


# ------------------------------------------------------------------------------------ output, dtypes, options


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["authors", "vllm"])
def test_rows_are_input_rows(dtype, variant):
    X = random_video(8, 49, 32, seed=2, dtype=dtype)
    result = vidcom2(X, None, None, 0.25, variant=variant)
    idx = result.index
    assert result.embeds.dtype == dtype and idx.dtype == torch.int64
    assert bool((idx[1:] > idx[:-1]).all())
    assert torch.equal(result.embeds, X.reshape(-1, 32)[idx])
    assert not bool(result.merged.any()) and result.merged.shape == idx.shape
    assert not result.compact and result.source is None


def test_compact_positions():
    X = random_video(8, 49, 32, seed=5)
    original = vidcom2(X, None, None, 0.25)
    compact = vidcom2(X, None, None, 0.25, positions="compact")
    assert compact.compact
    assert torch.equal(compact.index, torch.arange(original.kept))
    assert torch.equal(compact.source, original.index)
    assert torch.equal(compact.embeds, original.embeds)


def test_score_features_replace_the_scored_tensor():
    X = random_video(6, 30, 16, seed=1)
    Z = random_video(6, 30, 40, seed=2)  # e.g. [main | DeepStack] concatenated
    for variant in ("authors", "vllm"):
        result = vidcom2(X, None, None, 0.3, variant=variant, score_features=Z)
        assert torch.equal(result.index, vidcom2(Z, None, None, 0.3, variant=variant).index)
        assert torch.equal(result.embeds, X.reshape(-1, 16)[result.index])


def test_saliency_and_frame_features_are_ignored():
    X = random_video(4, 20, 8)
    a = vidcom2(X, torch.rand(4, 20), torch.randn(4, 5), 0.3)
    b = vidcom2(X, None, None, 0.3)
    assert torch.equal(a.index, b.index)


def test_parameters_change_the_scores():
    X = random_video(8, 49, 32, seed=6)
    default = vidcom2(X, None, None, 0.25)
    assert torch.equal(default.index, vidcom2(X, None, None, 0.25, temperature=0.01, channel_ratio=0.5,
                                              alphas=(0.125, 0.25, 0.5, 1, 2)).index)
    assert not torch.equal(default.index, vidcom2(X, None, None, 0.25, channel_ratio=1.0).index)


@pytest.mark.parametrize("kw", [
    dict(ratio=0.0), dict(ratio=-0.1), dict(ratio=1.5), dict(ratio=float("nan")), dict(ratio="0.2"),
    dict(ratio=True), dict(variant="reference"), dict(variant=None), dict(positions="orig"), dict(ties="random"),
    dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=float("inf")), dict(temperature="x"),
    dict(channel_ratio=0.0), dict(channel_ratio=1.5), dict(alphas=()), dict(alphas=(0.5, 0.0)),
    dict(alphas=(-1.0,)), dict(alphas="abc"), dict(alphas=(float("nan"),)), dict(alphas=0.5),
])
def test_invalid_options(kw):
    X = random_video(2, 10, 4)
    kw = {"ratio": 0.25, **kw}
    with pytest.raises(InvalidOptionError) as err:
        vidcom2(X, None, None, **kw)
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("embeds, score_features", [
    (torch.zeros(10, 4), None), (torch.zeros(2, 10, 4, dtype=torch.int64), None), (torch.zeros(0, 10, 4), None),
    (torch.zeros(2, 10, 4), torch.zeros(2, 9, 4)), (torch.zeros(2, 10, 4), torch.zeros(20, 4)),
    (torch.zeros(2, 10, 4), torch.zeros(2, 10, 4, dtype=torch.int32)),
])
def test_invalid_shapes(embeds, score_features):
    with pytest.raises(ValueError):
        vidcom2(embeds, None, None, 0.25, score_features=score_features)


# ------------------------------------------------------------------------------------ plain-loop reference


@pytest.mark.parametrize("variant", ["authors", "vllm"])
@pytest.mark.parametrize("F, N, D, ratio, seed", [(6, 16, 10, 0.25, 0), (5, 12, 7, 0.1, 1), (8, 9, 16, 0.5, 2),
                                                  (3, 25, 6, 0.15, 3), (1, 20, 8, 0.3, 4), (10, 4, 5, 0.6, 5)])
def test_matches_plain_loop_reference(F, N, D, ratio, seed, variant):
    X = random_video(F, N, D, seed=seed)
    kept, s = loop_reference(X, ratio, variant)
    v, u = gaussian_scores(X, max(1, D // 2))
    assert torch.allclose((v + u).double(), s, rtol=0, atol=1e-5)
    result = vidcom2(X, None, None, ratio, variant=variant)
    assert result.index.tolist() == kept
