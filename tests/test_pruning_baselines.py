"""Baseline pruning methods: uniform spatial pooling and seeded random keeping, at FastVID's per-frame budget."""

from __future__ import annotations

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning import DEFAULTS, REGISTRY, get_method, method_names
from fastvid_cli.pruning.random_keep import random_keep
from fastvid_cli.pruning.uniform import uniform
from fastvid_cli.pruning.uniform import grid_shape, uniform_regions

BASELINES = [uniform, random_keep]


def inputs(F=3, N=196, D=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(F, N, D, generator=gen).to(dtype)
    return X, torch.rand(F, N, generator=gen), torch.randn(F, 5, generator=gen)


def check_invariants(result, X, R):
    F, N, D = X.shape
    assert result.kept == F * R
    assert result.embeds.shape == (F * R, D) and result.embeds.dtype == X.dtype
    idx = result.index
    assert idx.dtype == torch.int64
    assert bool((idx[1:] > idx[:-1]).all()), "index must be strictly increasing"
    assert 0 <= int(idx.min()) and int(idx.max()) < F * N
    # exactly R kept tokens in every frame
    assert torch.bincount(idx // N, minlength=F).tolist() == [R] * F


# ------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("method", BASELINES, ids=["uniform", "random"])
@pytest.mark.parametrize("N, ratio", [(196, 0.1), (196, 0.25), (196, 0.5), (196, 0.999), (16, 0.3), (16, 0.01),
                                      (49, 0.2), (10, 0.35), (1, 0.5)])
def test_counts_and_index_invariants(method, N, ratio):
    X, A, g = inputs(F=4, N=N)
    R = max(1, int(N * ratio))
    result = method(X, A, g, ratio)
    check_invariants(result, X, R)
    if int(N * ratio) == 0:
        assert any("raised from 0 to 1" in n for n in result.notes)


@pytest.mark.parametrize("h, w", [(14, 14), (4, 4), (7, 7), (1, 10), (3, 5)])
def test_regions_partition_the_grid(h, w):
    for R in range(1, h * w + 1):
        regions, slots = uniform_regions(h, w, R)
        assert len(regions) == len(slots) == R
        cover = torch.zeros(h, w, dtype=torch.int64)
        for r0, r1, c0, c1 in regions:
            assert r1 > r0 and c1 > c0
            cover[r0:r1, c0:c1] += 1
        assert bool((cover == 1).all()), f"R={R}: regions must tile the grid exactly once"
        assert list(slots) == sorted(set(slots))
        for (r0, r1, c0, c1), s in zip(regions, slots):  # each slot lies inside its own region
            assert r0 <= s // w < r1 and c0 <= s % w < c1
        sizes = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in regions]
        assert max(sizes) <= 2 * min(sizes) + 2 * max(h, w), "regions should be about even"


def test_regions_are_adaptive_pooling_when_the_budget_factorises():
    # 14x14 at ratio 0.25: R = 49 = 7x7 blocks of 2x2
    regions, slots = uniform_regions(14, 14, 49)
    assert regions == tuple((2 * i, 2 * i + 2, 2 * j, 2 * j + 2) for i in range(7) for j in range(7))
    assert slots == tuple(2 * i * 14 + 2 * j for i in range(7) for j in range(7))


def test_grid_shape():
    assert grid_shape(196) == (14, 14)
    assert grid_shape(16) == (4, 4)
    assert grid_shape(10) == (1, 10)  # not a square: 1-D pooling over row-major order


# ------------------------------------------------------------------------------------------- uniform values
def test_uniform_pooled_values_by_hand():
    # 2 frames of a 4x4 grid, D = 2: token n of frame f is (n + 100 f, -n)
    n = torch.arange(16, dtype=torch.float32)
    X = torch.stack([torch.stack([n + 100 * f, -n], dim=1) for f in range(2)])
    # R = int(16 * 0.25) = 4: 2x2 blocks; block means of the indices are 2.5, 4.5, 10.5, 12.5
    result = uniform(X, None, None, 0.25)
    means = [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]
    expected = torch.tensor([[m + 100 * f, -m] for f in range(2) for m in means])
    assert torch.allclose(result.embeds, expected)
    assert result.index.tolist() == [0, 2, 8, 10, 16, 18, 24, 26]  # centre (rounded up-left) of each block
    assert result.merged.tolist() == [True] * 8
    # R = int(16 * 0.2) = 3: two bands of 2 rows; the top band whole, the bottom one split in two
    result = uniform(X[:1], None, None, 0.2)
    means = [sum(range(8)) / 8, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]
    assert torch.allclose(result.embeds[:, 0], torch.tensor(means))
    assert result.index.tolist() == [1, 8, 10]


def test_uniform_one_token_per_frame_is_the_frame_mean():
    X, A, g = inputs(F=3, N=196)
    result = uniform(X, A, g, 0.001)
    assert torch.allclose(result.embeds, X.mean(dim=1), atol=1e-6)
    assert result.index.tolist() == [6 * 14 + 6 + f * 196 for f in range(3)]


def test_uniform_non_square_pools_1d():
    X = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    result = uniform(X, None, None, 0.3)  # R = 3 chunks: [0,3) [3,6) [6,10)
    assert result.embeds.view(-1).tolist() == [1.0, 4.0, 7.5]
    assert result.index.tolist() == [1, 4, 7]
    assert any("1-D" in note for note in result.notes)


def test_uniform_half_precision_accumulates_in_float32():
    X, A, g = inputs(F=2, N=196, dtype=torch.float32)
    ref = uniform(X, A, g, 0.1)
    half = uniform(X.bfloat16(), A, g, 0.1)
    assert half.embeds.dtype == torch.bfloat16
    assert torch.equal(half.index, ref.index)
    assert torch.allclose(half.embeds.float(), ref.embeds, atol=3e-2)


# ------------------------------------------------------------------------------------------- random
def test_random_is_seeded_and_leaves_the_global_rng_alone():
    X, A, g = inputs(F=4, N=196)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = random_keep(X, A, g, 0.1, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # the global RNG does not matter
    b = random_keep(X, A, g, 0.1, seed=0)
    assert torch.equal(a.index, b.index) and torch.equal(a.embeds, b.embeds)
    c = random_keep(X, A, g, 0.1, seed=1)
    assert not torch.equal(a.index, c.index)
    check_invariants(c, X, 19)
    # kept rows are the input tokens, unchanged
    assert torch.equal(a.embeds, X.reshape(-1, 8)[a.index])
    assert not bool(a.merged.any())


def test_random_does_not_follow_saliency():
    X, A, g = inputs(F=2, N=196)
    assert torch.equal(random_keep(X, A, g, 0.25).index, random_keep(X, torch.rand(2, 196), g, 0.25).index)


# ------------------------------------------------------------------------------------------- shared rules
@pytest.mark.parametrize("method", BASELINES, ids=["uniform", "random"])
def test_deterministic(method):
    X, A, g = inputs(F=5, N=196, seed=3)
    a, b = method(X, A, g, 0.15), method(X.clone(), A.clone(), g.clone(), 0.15)
    assert torch.equal(a.index, b.index) and torch.equal(a.embeds, b.embeds)


@pytest.mark.parametrize("method", BASELINES, ids=["uniform", "random"])
def test_ratio_one_passes_everything_through(method):
    X, A, g = inputs(F=3, N=196)
    result = method(X, A, g, 1.0)
    assert torch.equal(result.embeds, X.reshape(-1, 8))
    assert result.index.tolist() == list(range(3 * 196))


@pytest.mark.parametrize("method", BASELINES, ids=["uniform", "random"])
@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), "0.5", None, True])
def test_invalid_ratio_raises(method, ratio):
    X, A, g = inputs(F=2, N=16)
    with pytest.raises(InvalidOptionError, match="ratio"):
        method(X, A, g, ratio)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_invalid_seed_raises(seed):
    X, A, g = inputs(F=2, N=16)
    with pytest.raises(InvalidOptionError, match="seed"):
        random_keep(X, A, g, 0.5, seed=seed)


@pytest.mark.parametrize("method", BASELINES, ids=["uniform", "random"])
def test_bad_shapes_raise_value_error(method):
    with pytest.raises(ValueError, match="embeds"):
        method(torch.zeros(16, 4), None, None, 0.5)


# ------------------------------------------------------------------------------------------- registry
def test_registry_knows_the_baselines():
    assert method_names() == list(REGISTRY)
    assert {"fastvid", "none", "uniform", "random"} <= set(method_names())
    assert get_method("uniform") is uniform and get_method("random") is random_keep
    assert DEFAULTS["uniform"] == {"ratio": 0.1}
    assert DEFAULTS["random"] == {"ratio": 0.1, "seed": 0}
    X, A, g = inputs(F=2, N=196)
    for name in ("uniform", "random"):
        params = {k: v for k, v in DEFAULTS[name].items() if k != "ratio"}
        assert get_method(name)(X, A, g, DEFAULTS[name]["ratio"], **params).kept == 2 * 19
    with pytest.raises(InvalidOptionError) as info:
        get_method("tome")
    assert "uniform" in info.value.one_line() and "random" in info.value.one_line()


def test_engine_prunes_with_a_baseline(tiny_llava, tiny_saliency, index_video):
    """The engine looks methods up by name: a baseline answers like FastVID, with F*R video tokens kept."""
    from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions

    engine = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))
    for name in ("uniform", "random"):
        sess = engine.session(str(index_video), frames=4, prune=PruneOptions(method=name, ratio=0.25))
        report = sess.answer("What is shown?", GenerationOptions(max_new_tokens=2))
        assert report.method == name and report.video_tokens_kept == 4 * 49
        assert report.video_tokens_total == 4 * 196 and report.new_tokens >= 1
