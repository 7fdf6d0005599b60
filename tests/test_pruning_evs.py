"""EVS (fastvid_cli.pruning.evs): every test vector of vidcom2-evs-spec.md B7 (E1-E8), the count rule over a grid,
ratio 1.0, determinism and ties, dtypes, argument checks, and a plain-loop transcription compared with the
vectorised code."""

from __future__ import annotations

import math

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.evs import (
    dissimilarity,
    evs,
    evs_order,
    evs_retained_count,
    media_positions,
    original_positions,
    vllm_qwen25_positions,
)

# ------------------------------------------------------------------------------------------ helpers


def per_frame(index: torch.Tensor, F: int, N: int) -> list[int]:
    return torch.bincount(index // N, minlength=F).tolist()


def e2_video() -> torch.Tensor:
    """Spec E2: F=3, R=1, C=2, D=2: f0 [1,0],[0,1]; f1 [1,0],[1,1]; f2 [0,1],[1,1]."""
    return torch.tensor([[1, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 1]], dtype=torch.float32).view(3, 2, 2)


def e3_video() -> torch.Tensor:
    """Spec E3: f0 [1,0],[0,1]; f1 [1,0],[0,1]; f2 [0,1],[0,1]: d = [0, 0, 1, 0]."""
    return torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=torch.float32).view(3, 2, 2)


def e8_video() -> torch.Tensor:
    """Spec A7 V6 / B7 E8: a shared base, small noise, frame 5 distinct."""
    torch.manual_seed(0)
    base = torch.randn(1, 64)
    X = base + 0.1 * torch.randn(6272, 64)
    X[980:1176] += 2.0 * torch.randn(196, 64)
    return X.view(32, 196, 64)


def random_video(F, N, D, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(1, N, D, generator=gen) + torch.randn(F, N, D, generator=gen) * torch.rand(F, N, 1, generator=gen)
    return X.to(dtype)


def loop_reference(X: torch.Tensor, ratio: float) -> list[int]:
    """Spec B2 written out: every token's cosine to the same slot of the previous frame in Python doubles,
    frame 0 scored 255, a stable descending sort of the flat list, the first K, ascending."""
    F, N, D = X.shape
    rows = X.double().tolist()
    d = [255.0] * N
    for f in range(1, F):
        for n in range(N):
            a, b = rows[f][n], rows[f - 1][n]
            dot = sum(x * y for x, y in zip(a, b))
            na = max(math.sqrt(sum(x * x for x in a)), 1e-8)
            nb = max(math.sqrt(sum(y * y for y in b)), 1e-8)
            d.append(1 - dot / (na * nb))
    K = max(N, int(F * N * (1 - (1.0 - ratio))))
    order = sorted(range(F * N), key=lambda i: (-d[i], i))
    return sorted(order[:K])


# ------------------------------------------------------------------------------------ E1: counts


@pytest.mark.parametrize("N, F, q, K", [
    (256, 16, 0.75, 1024), (196, 16, 0.75, 784), (196, 32, 0.75, 1568),
    (256, 4, 0.9, 256),  # 102 < N: only frame 0
    (256, 2, 0.7, 256), (256, 3, 0.7, 256), (256, 4, 0.7, 307), (256, 64, 0.7, 4915), (100, 10, 0.7, 300),
    (50, 20, 0.9, 99),  # float: not 100
    (10, 1, 0.5, 10), (48, 4, 0.0, 192),
])
def test_e1_counts(N, F, q, K):
    assert evs_retained_count(N, F, q) == K


@pytest.mark.parametrize("N, F, q, K", [(196, 32, 0.75, 1568), (256, 4, 0.9, 256), (50, 20, 0.9, 99),
                                        (256, 64, 0.7, 4915), (10, 1, 0.5, 10)])
def test_e1_counts_through_evs(N, F, q, K):
    X = random_video(F, N, 4, seed=N + F)
    assert evs(X, None, None, 1.0 - q).kept == K


# ------------------------------------------------------------------------------------ E2: selection


def test_e2_dissimilarity_exact():
    d = dissimilarity(e2_video())
    expected = torch.tensor([0.0, 0.29289323, 1.0, 5.96e-08], dtype=torch.float32)  # as printed in the spec
    assert torch.allclose(d.view(-1), expected, rtol=1e-3, atol=0)
    assert float(d[0, 1]) == float(torch.tensor(1 - 0.5 ** 0.5, dtype=torch.float32))
    assert float(d[1, 1]) == 2.0 ** -24  # float rounding of 1 - cos([1,1],[1,1]), not 0
    assert float(d[0, 0]) == 0.0 and float(d[1, 0]) == 1.0


@pytest.mark.parametrize("q, K, kept", [(0.5, 3, [0, 1, 4]), (0.34, 3, [0, 1, 4]), (0.2, 4, [0, 1, 3, 4]),
                                        (0.1, 5, [0, 1, 3, 4, 5]), (0.9, 2, [0, 1]), (0.0, 6, [0, 1, 2, 3, 4, 5])])
def test_e2_selection(q, K, kept):
    X = e2_video()
    assert evs_retained_count(2, 3, q) == K
    assert sorted(evs_order(X)[:K].tolist()) == kept
    result = evs(X, None, None, 1.0 - q)
    assert result.kept == K
    assert result.index.tolist() == kept
    assert torch.equal(result.embeds, X.reshape(6, 2)[kept])


# ------------------------------------------------------------------------------------ E3: ties


def test_e3_ties_lowest_index():
    X = e3_video()
    assert dissimilarity(X).view(-1).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert evs_order(X).tolist() == [0, 1, 4, 2, 3, 5]  # the stable argsort order
    assert evs_retained_count(2, 3, 0.17) == 4  # int(4.98)
    result = evs(X, None, None, 1.0 - 0.17)
    assert result.index.tolist() == [0, 1, 2, 4]  # slot 2 wins the three-way tie with 3 and 5


# ------------------------------------------------------------------------------------ E4-E6: positions


def test_e6_media_positions():
    assert media_positions((3, 1, 2), 2, 1).tolist() == [[0, 0, 2, 2, 4, 4], [0] * 6, [0, 1] * 3]
    assert media_positions((3, 1, 2), 2, 0.5)[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert media_positions((3, 1, 2), 2, int(0.5))[0].tolist() == [0] * 6  # the Qwen2.5 EVS path's long() cast


def test_e4_qwen25_vllm_positions():
    # prompt [text, vision_start, V, V, V, vision_end, text, text], initial positions 0..7, kept [0, 1, 4] of E2
    table = media_positions((3, 1, 2), 2, 1)
    assert table[:, [0, 1, 4]].T.tolist() == [[0, 0, 0], [0, 0, 1], [4, 0, 0]]
    before = torch.arange(2).expand(3, 2)
    kept = evs(e2_video(), None, None, 0.5).index
    ids, delta = vllm_qwen25_positions(before, table[:, kept], 2, 3)
    assert ids.tolist() == [[0, 1, 2, 2, 6, 4, 5, 6], [0, 1, 2, 2, 2, 4, 5, 6], [0, 1, 2, 3, 2, 4, 5, 6]]
    assert delta == -1
    # nothing pruned: vision_end still lands at 4 (HF would put it at 2 + 4 + 1 = 7), delta -4
    ids, delta = vllm_qwen25_positions(before, table, 2, 3)
    assert ids[:, 8].tolist() == [4, 4, 4]
    assert delta == -4


def test_e5_qwen3_original_positions():
    # 2 patches, R=1, C=2, per patch [ts, ts, vision_start, V, V, vision_end], one text token before and after
    t = torch.tensor([0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 10, 12, 13])
    w = torch.arange(14)
    ids = torch.stack([t, torch.zeros(14, dtype=torch.long), w])
    keep = torch.ones(14, dtype=torch.bool)
    keep[10] = False  # the first video token of patch 1
    kept, delta = original_positions(ids, keep)
    assert kept[0].tolist() == [0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 12, 13]
    assert kept[2].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13]
    assert delta == 1


# ------------------------------------------------------------------------------------ E7, E8


@pytest.mark.parametrize("dtype, counts", [(torch.float32, [16, 7, 5, 4]), (torch.bfloat16, [16, 8, 4, 4])])
def test_e7_dtype(dtype, counts):
    torch.manual_seed(0)
    X = torch.randn(64, 32).view(4, 16, 32).to(dtype)  # grid (4, 8, 8), merge 2: N = 16
    result = evs(X, None, None, 0.5)
    assert result.kept == 32
    assert per_frame(result.index, 4, 16) == counts
    assert result.embeds.dtype == dtype


def test_e8_structured():
    result = evs(e8_video(), None, None, 0.25)
    assert result.kept == 1568
    assert per_frame(result.index, 32, 196) == [196, 27, 36, 34, 20, 196, 196, 39, 41, 34, 35, 39, 26, 30, 32, 28,
                                                33, 36, 42, 33, 34, 36, 33, 35, 39, 38, 32, 39, 32, 25, 35, 37]


# ------------------------------------------------------------------------------------ counts, edge cases


@pytest.mark.parametrize("F", [1, 2, 3, 8, 32])
@pytest.mark.parametrize("N", [1, 10, 196])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.15, 0.25, 0.3, 0.5, 0.99])
def test_count_grid(F, N, ratio):
    X = random_video(F, N, 8, seed=F * 7 + N)
    result = evs(X, None, None, ratio)
    K = max(N, int(F * N * (1 - (1.0 - ratio))))
    assert result.kept == K == evs_retained_count(N, F, 1.0 - ratio)
    counts = per_frame(result.index, F, N)
    assert counts[0] == N  # frame 0 always whole
    idx = result.index
    assert bool((idx[1:] > idx[:-1]).all())
    if K == N and F > 1:
        assert any("only frame 0" in n for n in result.notes)


def test_single_frame_keeps_everything():
    X = random_video(1, 196, 8)
    result = evs(X, None, None, 0.1)
    assert torch.equal(result.index, torch.arange(196))
    assert torch.equal(result.embeds, X.view(196, 8))


@pytest.mark.parametrize("F", [1, 4])
def test_ratio_one_is_identity(F):
    X = random_video(F, 20, 8)
    result = evs(X, None, None, 1.0)
    assert torch.equal(result.index, torch.arange(F * 20))
    assert torch.equal(result.embeds, X.reshape(-1, 8))
    assert result.notes == ["ratio 1.0: no pruning"]


def test_static_frame_can_lose_every_token():
    X = random_video(4, 10, 8, seed=3)
    X[2] = X[1]  # frame 2 repeats frame 1: d = 0 (or rounding) everywhere
    result = evs(X, None, None, 0.5)
    assert per_frame(result.index, 4, 10)[2] == 0


def test_zero_vector_counts_as_dissimilar():
    X = torch.ones(2, 3, 4)
    X[1, 1] = 0.0
    d = dissimilarity(X)
    assert d[0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert evs(X, None, None, 0.7).index.tolist() == [0, 1, 2, 4]  # K = int(4.2) = 4: frame 0 and the zero vector


# ------------------------------------------------------------------------------------ determinism, ties


def test_ties_go_to_the_lowest_slot():
    # axis-aligned tokens repeated exactly: every d of frames 1.. is exactly 0, a tie across all of them
    base = torch.eye(4).repeat(3, 1)[:10] * torch.arange(1, 11)[:, None]
    X = base.expand(5, 10, 4).contiguous()
    assert bool((dissimilarity(X) == 0).all())
    result = evs(X, None, None, 0.3)  # K = 15: frame 0 and the 5 lowest slots of frame 1
    assert result.index.tolist() == list(range(15))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_determinism_bit_identical(dtype):
    X = random_video(30, 196, 64, seed=9, dtype=dtype)
    first = evs(X, None, None, 0.15)
    view = torch.int16 if dtype == torch.bfloat16 else torch.int32
    for _ in range(2):
        again = evs(X.clone(), None, None, 0.15)
        assert torch.equal(again.index, first.index)
        assert torch.equal(again.embeds.view(view), first.embeds.view(view))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_are_input_rows(dtype):
    X = random_video(6, 49, 16, seed=4, dtype=dtype)
    result = evs(X, None, None, 0.25)
    assert result.embeds.dtype == dtype and result.index.dtype == torch.int64
    assert torch.equal(result.embeds, X.reshape(-1, 16)[result.index])
    assert not bool(result.merged.any()) and not result.compact and result.source is None


def test_score_features_and_ignored_inputs():
    X = random_video(6, 30, 16, seed=1)
    Z = random_video(6, 30, 48, seed=2)
    result = evs(X, torch.rand(6, 30), torch.randn(6, 3), 0.3, score_features=Z)
    assert torch.equal(result.index, evs(Z, None, None, 0.3).index)
    assert torch.equal(result.embeds, X.reshape(-1, 16)[result.index])


# ------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01, float("nan"), "0.25", None, True])
def test_invalid_ratio(ratio):
    with pytest.raises(InvalidOptionError) as err:
        evs(random_video(3, 4, 2), None, None, ratio)
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("embeds, score_features", [
    (torch.zeros(10, 4), None), (torch.zeros(2, 10, 4, dtype=torch.int64), None),
    (torch.zeros(2, 10, 4), torch.zeros(3, 10, 4)), (torch.zeros(2, 10, 4), torch.zeros(2, 10)),
])
def test_invalid_shapes(embeds, score_features):
    with pytest.raises(ValueError):
        evs(embeds, None, None, 0.25, score_features=score_features)


# ------------------------------------------------------------------------------------ plain-loop reference


@pytest.mark.parametrize("F, N, D, ratio, seed", [(5, 12, 8, 0.25, 0), (8, 9, 6, 0.1, 1), (3, 30, 4, 0.5, 2),
                                                  (12, 4, 16, 0.15, 3), (2, 25, 5, 0.7, 4), (16, 16, 3, 0.3, 5)])
def test_matches_plain_loop_reference(F, N, D, ratio, seed):
    X = random_video(F, N, D, seed=seed)
    assert evs(X, None, None, ratio).index.tolist() == loop_reference(X, ratio)
