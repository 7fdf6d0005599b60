"""FastVID Qwen variant: the vectorised ``fastvid_qwen`` against its pre-vectorisation implementation.

``reference_fastvid_qwen`` (and its private helpers) below is the plain-loop implementation that
``fastvid_cli/pruning/fastvid_qwen.py`` had before it was vectorised, copied unchanged; it is kept here as the
reference. The tests run both on many random inputs and compare every field of the result.

Exactness: the two agree bit for bit whenever their float arithmetic is exact (``exact_inputs``: small
integer embeddings whose tokens all have the norm 2, so that no matrix product rounds); these inputs are full
of exact ties, so they check every tie rule. On general float inputs the matrix products (Gram matrices,
cosines, merge sums) run as padded batches, which BLAS rounds differently from the reference's per-anchor
products (MKL's result for an entry depends on the shapes of the product, and for a batch on how it is split
between threads), so there the kept slots, the merged flags and every other field are compared exactly, the
salient rows (copies) exactly, and the merged rows to within float32 rounding.
"""

from __future__ import annotations


import pytest
import torch
from torch import Tensor

from fastvid_cli.pruning.density import dpc_scores, topk_lowest_index
from fastvid_cli.pruning.fastvid import _l2_normalize, check_params, dyseg_segments
from fastvid_cli.pruning.result import PruneResult, check_inputs, check_number, keep_all
from fastvid_cli.pruning.fastvid_qwen import fastvid_qwen, segment_budget

# ------------------------------------------------------------------------------------ the reference


def _ref_merge(x: Tensor, xn: Tensor, targets: Tensor, sources: Tensor, beta: float) -> Tensor:
    """Merged context tokens: each source joins its most cosine-similar target (ties: the earliest target).

    ``x``/``xn`` (M, D) tokens and their normalised copies; ``targets`` (q,), ``sources`` (n,) row indices.
    Returns (q, D) float32 ``w·x_c + (1−w)·mean(assigned)``, ``w = max(1/(n_c+1), beta)``, 1 with none assigned.
    """
    own = x.index_select(0, targets).float()
    if sources.numel() == 0:
        return own
    sim = xn.index_select(0, sources) @ xn.index_select(0, targets).T  # (n, q), input dtype as the reference
    assign = sim.argmax(dim=1)
    q = targets.numel()
    # a one-hot product sums each target's sources (a matmul: faster than index_add_ on both CPU and GPU)
    onehot = (assign[None, :] == torch.arange(q, device=x.device)[:, None]).to(torch.float32)  # (q, n)
    sums = onehot @ x.index_select(0, sources).float()
    counts = onehot.sum(dim=1, keepdim=True)
    w = torch.where(counts > 0, (counts + 1.0).reciprocal().clamp_min(beta), torch.ones_like(counts))
    return torch.lerp(sums / counts.clamp_min(1.0), own, w)


def _ref_true_indices(mask: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` True entries of a 1-D ``mask``, increasing (``nonzero`` without its device sync:
    the caller knows the count)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def _ref_salient_slots(saliency: Tensor, frame: int, count: int) -> Tensor:
    """Flat slots (in-frame indices, increasing) of the ``count`` most salient tokens of ``frame``."""
    return torch.sort(topk_lowest_index(saliency[frame], count)).values


def _ref_context_slots(x: Tensor, salient: Tensor, count: int, k: int) -> Tensor:
    """In-frame indices (increasing) of the ``count`` top density-peak tokens among the non-salient ones."""
    N = x.shape[0]
    free = torch.ones(N, dtype=torch.bool, device=x.device)
    free[salient] = False
    rest = _ref_true_indices(free, N - salient.numel())
    score = dpc_scores(x.index_select(0, rest)[None], min(k, rest.numel()))[2][0]
    return torch.sort(rest.index_select(0, topk_lowest_index(score, count))).values


@torch.no_grad()
def reference_fastvid_qwen(
    embeds: Tensor,
    saliency: Tensor,
    frame_features: Tensor,
    ratio: float = 0.27,
    c: int = 8,
    tau: float = 0.84,
    ignore: float = 0.95,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    k: int = 4,
) -> PruneResult:
    """The pre-vectorisation ``fastvid_qwen`` (a loop over segments, frames and anchors), kept as the reference.

    Prune one video's tokens with FastVID's Qwen variant.

    ``embeds`` (F, N, D): F temporal patches of N tokens; ``saliency`` (F, N) (higher = keep);
    ``frame_features`` (F, Dg) one global feature per patch. ``ignore``: adjacent similarity from which patches of
    a segment count as near-duplicates; the other arguments as in ``fastvid.fastvid``.
    Returns a ``PruneResult`` (kept rows in slot order, original flat slots ``f·N + n``).
    """
    F, N, D = check_inputs(embeds, saliency, frame_features)
    ratio, c, tau, d, p, beta, k = check_params(ratio, c, tau, d, p, beta, k)
    ignore = check_number("ignore", ignore)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    device = embeds.device
    saliency = saliency.to(device)
    notes: list[str] = []
    if int(N * ratio) == 0:
        notes.append(f"per-patch budget raised from 0 to 1 token: {N} tokens x ratio {ratio:g} < 1")
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} temporal patch{'es' if F != 1 else ''}")

    g = _l2_normalize(frame_features.to(device))
    similarities = (g[:-1] * g[1:]).sum(dim=1).tolist() if F > 1 else []
    sizes = dyseg_segments(similarities, min(c, F), tau)

    xn = _l2_normalize(embeds.reshape(F * N, D))
    flat = embeds.reshape(F * N, D)
    kept_slots: list[Tensor] = []
    kept_rows: list[Tensor] = []
    merged_flags: list[Tensor] = []
    anchors: list[tuple[int, int]] = []
    n_salient = n_context = 0
    start = 0
    for L in sizes:
        frames = range(start, start + L)
        salient_b, context_b = segment_budget(similarities[start:start + L - 1], N, ratio, d, p, ignore)
        salient = {f: _ref_salient_slots(saliency, f, salient_b[f - start]) for f in frames}
        seg_free = torch.ones(L * N, dtype=torch.bool, device=device)  # merge sources of this segment
        for f in frames:
            seg_free[(f - start) * N + salient[f]] = False
            kept_slots.append(f * N + salient[f])
            kept_rows.append(flat.index_select(0, f * N + salient[f]))
            merged_flags.append(torch.zeros(salient[f].numel(), dtype=torch.bool, device=device))
            n_salient += salient[f].numel()
        free_count = L * N - sum(salient_b)
        for f in frames:
            q = context_b[f - start]
            if q == 0:
                continue
            ctx = _ref_context_slots(embeds[f], salient[f], q, k)
            src = seg_free.clone()
            src[(f - start) * N + ctx] = False
            sources = start * N + _ref_true_indices(src, free_count - q)
            rows = _ref_merge(flat, xn, f * N + ctx, sources, beta).to(embeds.dtype)
            kept_slots.append(f * N + ctx)
            kept_rows.append(rows)
            merged_flags.append(torch.ones(q, dtype=torch.bool, device=device))
            anchors.append((f, q))
            n_context += q
        start += L

    slots = torch.cat(kept_slots)
    index, order = torch.sort(slots)
    kept = int(index.numel())
    notes.append(f"FastVID Qwen variant: kept {kept} of {F * N} video tokens ({100.0 * kept / (F * N):.1f}%) for "
                 f"ratio {ratio:g}: only the last patch of each near-duplicate run keeps tokens, context is capped "
                 f"at half a patch")
    return PruneResult(
        embeds=torch.cat(kept_rows).index_select(0, order),
        index=index,
        segments=sizes,
        notes=notes,
        merged=torch.cat(merged_flags).index_select(0, order),
        salient=n_salient,
        context=n_context,
        anchors=anchors,
        similarities=similarities,
    )



# ------------------------------------------------------------------------------------------- inputs


def frame_features(F: int, gen: torch.Generator, *, dup: float, jump: float, dim: int = 16) -> Tensor:
    """Per-patch features: runs of near-duplicates (cosine ≈ 1), slow drift, and occasional scene jumps."""
    g = torch.empty(F, dim, dtype=torch.float64)
    g[0] = torch.randn(dim, generator=gen, dtype=torch.float64)
    for i in range(1, F):
        u = torch.rand(1, generator=gen).item()
        if u < dup:
            g[i] = g[i - 1] + 1e-4 * torch.randn(dim, generator=gen, dtype=torch.float64)
        elif u < dup + jump:
            g[i] = torch.randn(dim, generator=gen, dtype=torch.float64)
        else:
            g[i] = g[i - 1] + 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64)
    return g.float()


def random_inputs(F, N, D, seed, *, dup=0.3, jump=0.2, tied_saliency=False, dtype=torch.float32):
    """Gaussian embeddings (near-duplicate patches where the features say so), saliency, features."""
    gen = torch.Generator().manual_seed(seed)
    g = frame_features(F, gen, dup=dup, jump=jump)
    x = torch.randn(F, N, D, generator=gen, dtype=torch.float64)
    for f in range(1, F):  # near-duplicate patches also have near-duplicate tokens
        if torch.dist(g[f], g[f - 1]) < 1e-2 * g[f].norm():
            x[f] = x[f - 1] + 1e-3 * torch.randn(N, D, generator=gen, dtype=torch.float64)
    if tied_saliency:
        sal = torch.randint(0, 4, (F, N), generator=gen).float()
    else:
        sal = torch.rand(F, N, generator=gen)
    return x.to(dtype), sal, g


def exact_inputs(F, N, D, seed, *, dup=0.3, jump=0.2, dtype=torch.float32):
    """Embeddings whose arithmetic is exact: every token has four ±1 entries (norm 2), so normalised tokens,
    cosines, squared distances and merge sums are all dyadic and no product rounds; many tokens repeat and
    the saliency is integer-valued, so there are exact ties everywhere. Duplicate patches are exact copies."""
    assert D >= 4
    gen = torch.Generator().manual_seed(seed)
    g = frame_features(F, gen, dup=dup, jump=jump)
    pool = torch.zeros(max(N // 2, 2), D)
    for row in pool:
        pos = torch.randperm(D, generator=gen)[:4]
        row[pos] = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
    x = pool[torch.randint(0, pool.shape[0], (F, N), generator=gen)]
    for f in range(1, F):
        if torch.dist(g[f], g[f - 1]) < 1e-2 * g[f].norm():
            x[f] = x[f - 1]
    sal = torch.randint(0, 3, (F, N), generator=gen).float()
    return x.to(dtype), sal, g


# --------------------------------------------------------------------------------------- comparison


def assert_same(x, sal, g, *, exact: bool, **params) -> PruneResult:
    ref = reference_fastvid_qwen(x, sal, g, **params)
    new = fastvid_qwen(x, sal, g, **params)
    assert torch.equal(new.index, ref.index)
    assert new.index.dtype == ref.index.dtype == torch.int64
    assert torch.equal(new.merged, ref.merged)
    assert new.merged.dtype == torch.bool
    assert (new.segments, new.notes, new.salient, new.context) == (ref.segments, ref.notes, ref.salient, ref.context)
    assert (new.anchors, new.similarities, new.budget) == (ref.anchors, ref.similarities, ref.budget)
    assert (new.compact, new.source) == (ref.compact, ref.source)
    assert new.embeds.dtype == ref.embeds.dtype and new.embeds.shape == ref.embeds.shape
    if exact:
        assert torch.equal(new.embeds, ref.embeds)
    else:
        kept = ~ref.merged
        assert torch.equal(new.embeds[kept], ref.embeds[kept])
        torch.testing.assert_close(new.embeds, ref.embeds, atol=1e-6, rtol=1e-6)
    return ref


def random_params(rng: torch.Generator) -> dict:
    def pick(values):
        return values[int(torch.randint(0, len(values), (1,), generator=rng))]

    return dict(ratio=pick([0.05, 0.1, 0.27, 0.5, 0.9]), c=pick([1, 2, 3, 4, 8, 12]),
                tau=pick([-1.0, 0.5, 0.84, 0.97]), ignore=pick([0.9, 0.95, 0.999, 1.01]),
                d=pick([0.0, 0.1, 0.4, 0.75, 1.0]), p=pick([1, 2, 3, 4, 7]), beta=pick([0.0, 0.3, 0.6, 1.0]),
                k=pick([1, 2, 4, 9]))


SHAPES = [(1, 4, 8), (1, 264, 16), (2, 9, 8), (3, 64, 32), (5, 4, 8), (6, 9, 64), (8, 64, 16), (13, 9, 8),
          (20, 64, 32), (26, 4, 16), (40, 9, 8), (40, 64, 16), (12, 264, 32), (40, 264, 8)]


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("F,N,D", SHAPES)
def test_same_as_reference_on_random_inputs(F, N, D):
    rng = torch.Generator().manual_seed(F * 1000 + N * 10 + D)
    for trial in range(4):
        params = random_params(rng)
        x, sal, g = random_inputs(F, N, D, seed=trial + 17 * F + N, tied_saliency=trial == 1)
        assert_same(x, sal, g, exact=False, **params)


@pytest.mark.parametrize("F,N,D", SHAPES)
def test_bit_identical_to_reference_when_the_arithmetic_is_exact(F, N, D):
    rng = torch.Generator().manual_seed(F * 7 + N * 3 + D)
    for trial in range(4):
        params = random_params(rng)
        x, sal, g = exact_inputs(F, N, D, seed=trial + 31 * F + N)
        assert_same(x, sal, g, exact=True, **params)


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.27, 0.5, 0.9])
def test_default_parameters_every_ratio(ratio):
    x, sal, g = random_inputs(24, 64, 32, seed=int(ratio * 100), dup=0.4)
    assert_same(x, sal, g, exact=False, ratio=ratio)
    x, sal, g = exact_inputs(24, 64, 32, seed=int(ratio * 100), dup=0.4)
    assert_same(x, sal, g, exact=True, ratio=ratio)


def test_near_duplicate_runs_collapse_like_the_reference():
    # one segment (c=1, no tau cut) made of runs of near-identical patches: only each run's last patch keeps tokens
    for seed in range(4):
        x, sal, g = random_inputs(30, 64, 16, seed=seed, dup=0.7, jump=0.0)
        ref = assert_same(x, sal, g, exact=False, ratio=0.27, c=1, tau=-1.0, ignore=0.95)
        assert ref.segments == [30] and ref.kept < 0.27 * 30 * 64
        x, sal, g = exact_inputs(30, 64, 16, seed=seed, dup=0.7, jump=0.0)
        assert_same(x, sal, g, exact=True, ratio=0.27, c=1, tau=-1.0, ignore=0.95, p=2)


def test_tied_saliency_and_repeated_tokens():
    for seed in range(3):
        x, sal, g = exact_inputs(16, 9, 8, seed=seed)
        assert_same(x, sal.clamp_max(0.0), g, exact=True, ratio=0.5, c=3)  # every saliency equal
        x[:, ::4] = 0.0  # zero tokens: zero cosines with every target
        assert_same(x, sal, g, exact=True, ratio=0.5, c=3, k=2)
        x, sal, g = random_inputs(16, 64, 8, seed=seed, tied_saliency=True)
        x[:, 1::2] = x[:, ::2]  # every token twice: ties in the densities and the cosines
        assert_same(x, sal, g, exact=False, ratio=0.27, c=4, k=2)


def test_single_patch_and_zero_context():
    x, sal, g = random_inputs(1, 264, 16, seed=0)
    ref = assert_same(x, sal, g, exact=False, ratio=0.27)
    assert ref.segments == [1] and ref.anchors == [(0, 28)] and ref.salient == 43  # R=71: C=int(28.4), S=43
    for N in (1, 2, 3):  # at most N//2 context tokens per patch: none at all for N=1 in segments of 2+ patches
        x, sal, g = exact_inputs(12, max(N, 4), 8, seed=N)
        x, sal = x[:, :N].contiguous(), sal[:, :N].contiguous()
        for c, tau in ((1, -1.0), (3, 0.84), (12, 0.5)):
            ref = assert_same(x, sal, g, exact=True, ratio=0.5, c=c, tau=tau)
            if N == 1 and c == 1:
                assert ref.context == 0 and ref.anchors == [] and not ref.merged.any()


def test_every_patch_its_own_segment():
    x, sal, g = random_inputs(10, 9, 8, seed=3)
    ref = assert_same(x, sal, g, exact=False, ratio=0.27, c=10, tau=2.0)
    assert ref.segments == [1] * 10
    x, sal, g = exact_inputs(10, 9, 8, seed=3)
    assert_same(x, sal, g, exact=True, ratio=0.1, c=10, tau=2.0)


def test_other_dtypes():
    x, sal, g = exact_inputs(12, 64, 16, seed=5)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        assert_same(x.to(dtype), sal, g, exact=True, ratio=0.27, c=3)
    x, sal, g = random_inputs(12, 64, 16, seed=5, dtype=torch.float64)
    ref = assert_same(x, sal, g, exact=False, ratio=0.27, c=3)
    assert ref.embeds.dtype == torch.float64


def test_ratio_one_keeps_everything():
    x, sal, g = random_inputs(4, 9, 8, seed=0)
    assert_same(x, sal, g, exact=True, ratio=1.0)


# ------------------------------------------------------------------------------- timing (not a test)

