"""Frozen copy of fastvid_cli/pruning/flashvid.py + flashvid_tstm.py as of 7baf70a (before issue #15s
sync-free rewrite): the reference that tests/test_pruning_flashvid_speed.py compares the new code with, index for
index. Not imported by the package; do not edit (it is the old behaviour by definition)."""

# ruff: noqa
from __future__ import annotations


from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: what the reference compares a tensor of that dtype with (torch casts a
    Python scalar to the tensor's dtype in a comparison)."""
    return float(torch.tensor(value, dtype=dtype)) if dtype != torch.float64 else float(value)


def _normalize(x: Tensor) -> Tensor:
    """x / ||x|| along the last dim in x's dtype, as the reference; a zero vector stays zero (not NaN)."""
    norm = x.norm(p=2, dim=-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def _true_positions(mask: Tensor, count: int) -> Tensor:
    """Increasing indices of the True entries of the 1-D ``mask``, of which the caller knows there are ``count``
    (a stable sort, without the device wait of ``nonzero``)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def _add_rows(target: Tensor, index: Tensor, rows: Tensor) -> None:
    """``target[index[i]] += rows[i]``, deterministically: ``index_add_`` is serial on the CPU; on CUDA
    ``index_put_(accumulate=True)`` sorts the indices and adds each group in order (no atomics)."""
    if target.device.type == "cpu":
        target.index_add_(0, index, rows)
    else:
        target.index_put_((index,), rows, accumulate=True)


@dataclass
class Trees:
    """TSTM's links for every frame (spec §2.5). Tensors on the input's device.

    ``sigma`` (F, N) input dtype: similarity to the best anchor in the previous frame (−1: first frame of a
    segment, ADTS token, or a segment without TSTM); ``merge`` (F, N) bool: the token joins its anchor's tree;
    ``root`` (F·N,) int64: the flat slot of the root of each token's tree (itself for a root); ``children``
    (F·N,) int64: direct children of each token; ``soft`` (segments,) bool: the soft threshold was used.
    """

    sigma: Tensor
    merge: Tensor
    root: Tensor
    children: Tensor
    soft: Tensor


@dataclass
class SegmentPlan:
    """A segmentation's per-frame and per-segment tables, on the device (built with one upload).

    Per frame (F,): ``seg`` int64 segment index, ``usable`` bool (in a TSTM segment and not its first frame),
    ``single`` bool (a single-frame segment), ``inv_size`` float32 1/F_s. Per segment: ``kpos`` int64 flat
    position, in the segment-grouped order, of the soft threshold's k-th largest similarity; ``lower`` B·F_s;
    ``tokens`` F_s·N; ``active`` bool (TSTM runs).
    """

    lengths: list[int]
    active_list: list[bool]
    seg: Tensor
    usable: Tensor
    single: Tensor
    inv_size: Tensor
    kpos: Tensor
    lower: Tensor
    tokens: Tensor
    active: Tensor


def segment_plan(lengths: Sequence[int], active: Sequence[bool], budget: int, n_tokens: int,
                 device: torch.device) -> SegmentPlan:
    """``SegmentPlan`` of segments with these ``lengths`` (zeros allowed), TSTM on where ``active``, budget B."""
    N = n_tokens
    F = sum(lengths)
    seg, usable, single, start, kpos = [], [], [], 0, []
    for s, (L, on) in enumerate(zip(lengths, active)):
        seg += [s] * L
        usable += [0] + [int(bool(on))] * (L - 1) if L else []
        single += [int(L == 1)] * L
        k = max(L * N - budget * L, 1)  # k of the soft threshold's top-k (≥ 1 since B < N)
        kpos.append(min(start * N + k - 1, max(F * N - 1, 0)))
        start += L
    lower = [budget * L for L in lengths]
    tokens = [L * N for L in lengths]
    ints, floats = _upload(device, seg + usable + single + kpos + lower + tokens + [int(bool(a)) for a in active],
                           [1.0 / L for L in lengths for _ in range(L)])
    n = len(lengths)
    seg_t, usable_t, single_t, kpos_t, lower_t, tokens_t, active_t = ints.split([F, F, F, n, n, n, n])
    return SegmentPlan(list(lengths), [bool(a) for a in active], seg_t, usable_t.bool(), single_t.bool(), floats,
                       kpos_t, lower_t, tokens_t, active_t.bool())


def tstm_links(embeds: Tensor, kappa: Tensor, lengths: Sequence[int], active: Sequence[bool], budget: int,
               tau: float, plan: SegmentPlan | None = None, unit: Tensor | None = None) -> Trees:
    """TSTM's trees in every ``active`` segment at once (segments of ≥ 2 frames with a contextual budget).

    ``kappa`` (F, N) bool: False for ADTS tokens (they neither join nor anchor a tree); ``lengths``: segment
    lengths (summing to F; zeros allowed); ``budget``: B, so a segment's lower bound is ``B·F_s``; ``tau``: the
    temporal threshold, compared in the input dtype as the reference does; ``plan``: ``segment_plan`` of the
    same arguments, if already built; ``unit``: ``embeds`` normalised in its dtype, if already computed. Runs in
    the input dtype (the reference's similarities are bf16 for bf16 input, so the same ties and thresholds).
    """
    F, N, _ = embeds.shape
    if budget >= N:
        raise ValueError(f"TSTM needs B < N (B={budget}, N={N}): no token could merge (the reference crashes)")
    device = embeds.device
    if plan is None:
        plan = segment_plan(lengths, active, budget, N, device)
    seg, usable, n_seg = plan.seg, plan.usable, len(lengths)

    sigma = torch.full((F, N), -1.0, dtype=embeds.dtype, device=device)
    parent = torch.arange(F * N, device=device).view(F, N)
    if F > 1:
        xn = unit if unit is not None else _normalize(embeds)
        sim = torch.bmm(xn[1:], xn[:-1].transpose(1, 2))  # (F−1, N, N) [t−1, n, m] = <x̂[t,n], x̂[t−1,m]>
        sim.masked_fill_(~kappa[1:, :, None], -1.0)
        sim.masked_fill_(~kappa[:-1, None, :], -1.0)
        best, anchor = sim.max(dim=2)  # first maximum
        sigma[1:] = torch.where(usable[1:, None], best, sigma[1:])
        parent_prev = anchor + torch.arange(0, (F - 1) * N, N, device=device)[:, None]
    tau_d = in_dtype(tau, embeds.dtype)
    sig32 = sigma.float()

    # soft threshold: the kth largest sigma of each segment, if merging above tau leaves fewer roots than B·F_s
    merged_above_tau = (sig32 > tau_d).sum(dim=1)
    per_seg = torch.zeros(n_seg, dtype=torch.int64, device=device).index_add_(0, seg, merged_above_tau)
    soft = (plan.tokens - per_seg < plan.lower) & plan.active
    order = torch.sort(sigma.view(-1), descending=True, stable=True).indices  # then grouped by segment, stably
    order = order.index_select(0, torch.sort(seg.repeat_interleave(N).index_select(0, order), stable=True).indices)
    kth_value = sigma.view(-1).index_select(0, order.index_select(0, plan.kpos)).float().clamp_min_(-1.0 + 1e-6)
    threshold = torch.where(soft, kth_value, tau_d)
    merge = (sig32 > threshold.index_select(0, seg)[:, None]) & usable[:, None]

    if F > 1:
        parent[1:] = torch.where(merge[1:], parent_prev, parent[1:])
    parent = parent.reshape(-1)
    children = torch.zeros(F * N, dtype=torch.int64, device=device).index_add_(0, parent, merge.view(-1).long())
    root = parent
    longest = max((L for L, a in zip(lengths, active) if a), default=1)
    for _ in range(max(longest - 2, 0).bit_length()):  # pointer jumping: chains have at most F_s − 1 links
        root = root.index_select(0, root)
    return Trees(sigma, merge, root, children, soft)


def tree_values(embeds: Tensor, trees: Trees, cand: Tensor, n_cand: int, n_merged: int) -> tuple[Tensor, Tensor]:
    """Values of the candidate tokens (``cand`` (F, N) bool, ``n_cand`` of them) after TSTM:
    ``subtree sum / (1 + direct children)`` (float32 sums, rounded once to the input dtype).

    Returns ``(slots (n_cand,) int64 ascending, values (n_cand, D) input dtype)``. ``n_merged`` is the number
    of True entries of ``trees.merge``; every merged token's root must be a candidate.
    """
    F, N, D = embeds.shape
    flat = embeds.reshape(F * N, D)
    cand_flat = cand.view(-1)
    slots = _true_positions(cand_flat, n_cand)
    if n_cand == F * N:  # nothing merged (every token a candidate): the tokens themselves
        return slots, flat
    values = flat.index_select(0, slots).float()
    if n_merged:
        merged = _true_positions(trees.merge.view(-1), n_merged)
        rank = torch.cumsum(cand_flat, dim=0) - 1  # position of each candidate in `slots`
        roots = rank.index_select(0, trees.root.index_select(0, merged))
        _add_rows(values, roots, flat.index_select(0, merged).float())
        values.div_((trees.children.index_select(0, slots) + 1).float()[:, None])
    return slots, values.to(embeds.dtype)


def tstm(segment: Tensor, kappa: Tensor, lower_bound: int, tau: float) -> list[tuple[Tensor, Tensor]]:
    """TSTM on one segment (F_s ≥ 2 frames), as the reference's ``spatiotemporal_compression``: for each frame,
    ``(values (n_t, D), local token indices (n_t,))`` of its tree roots that are not ADTS tokens.

    ``lower_bound`` must be a multiple of F_s (it is ``B·F_s``). For tests and inspection; ``flashvid`` runs the
    same code on all segments at once.
    """
    F, N, _ = segment.shape
    if lower_bound % F:
        raise ValueError(f"lower_bound {lower_bound} is not B·F_s for {F} frames")
    trees = tstm_links(segment, kappa, [F], [True], lower_bound // F, tau)
    cand = ~trees.merge & kappa
    counts = cand.sum(dim=1).tolist()
    slots, values = tree_values(segment, trees, cand, sum(counts), int(trees.merge.sum()))
    out, start = [], 0
    for n in counts:
        out.append((values[start:start + n], slots[start:start + n] % N))
        start += n
    return out


def _upload(device: torch.device, ints: list[int], floats: list[float] | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Host ints (and float32 numbers) -> (int64 tensor, float32 tensor) on ``device`` in one copy."""
    f32 = floats if isinstance(floats, Tensor) else torch.tensor(floats or [], dtype=torch.float32)
    data = array("q", ints).tobytes() + f32.to(torch.float32).contiguous().numpy().tobytes()
    host = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    if device.type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    else:
        host = host.to(device)
    a, b = host.split([8 * len(ints), host.numel() - 8 * len(ints)])
    return a.view(torch.int64), b.view(torch.float32)



import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.density import bmm_fp32, pairwise_sq_distances
from fastvid_cli.pruning.result import PruneResult, check_embeds, check_number, check_ratio, keep_all, positive_int, share

SELECTIONS = ("attn_div_v2", "attn_div", "attn", "div")  # v2 (LLaVA), v1 (Qwen), and the two ablations
POSITIONS = ("compact", "original")
DUPLICATES = ("distinct", "last")

# The reference scripts' settings per model family (spec §0, §7.17); the inner stage's are in flashvid_inner.py.
FAMILY_VARIANTS: dict[str, dict[str, object]] = {
    "llava_onevision": dict(selection="attn_div_v2", min_segment_num=8, positions="compact", duplicates="distinct"),
    "llava_video": dict(selection="attn_div_v2", min_segment_num=8, positions="compact", duplicates="distinct"),
    "qwen2_5_vl": dict(selection="attn_div", min_segment_num=4, positions="original", duplicates="last"),
    "qwen3_vl": dict(selection="attn_div", min_segment_num=4, positions="original", duplicates="last"),
}

DPC_MAX_NEIGHBOURS = 7  # k = min(clusters, 7)
_NOISE_SCALE = 1e-6
_CDIST_EXACT_MAX = 25  # torch.cdist computes differences (not a Gram matrix) up to this many points, as the reference


# ----------------------------------------------------------------------------------------- arithmetic


def flashvid_budget(n_tokens: int, ratio: float, expansion: float = 1.25, alpha: float = 0.7) -> tuple[int, int, int]:
    """Per-frame ``(B, A, S)``: ``B = ceil(N·r·e)``, ``A = ceil(B·alpha)``, ``S = B − A``.

    Evaluated as the reference's Python float expression, left to right (spec TV1: N=192, r=0.1 gives B=25).
    """
    B = math.ceil(n_tokens * ratio * expansion)
    A = math.ceil(B * alpha)
    return B, A, B - A


def min_kept(n_frames: int, n_tokens: int, ratio: float, expansion: float = 1.25, alpha: float = 0.7) -> int:
    """The least number of rows ``flashvid`` returns: ``F·B`` (per-frame ceilings add up to about F more)."""
    return n_frames * flashvid_budget(n_tokens, ratio, expansion, alpha)[0]


def dyseg_lengths(similarities: Sequence[float], threshold: float, min_segments: int,
                  complementary: bool = True) -> list[int]:
    """DySeg segment lengths (zeros possible) from the F−1 adjacent-frame similarities (spec §2.3).

    Cuts at every ``s_i < threshold``; if that gives fewer than ``min_segments`` segments and ``complementary``,
    also at the ``min(need, F−1)`` smallest similarities after setting the cut ones to 1.0 (ties: lowest index),
    keeping repeated cuts. A cut at i separates frame i from frame i+1. NaN never cuts and is chosen last.
    """
    n = len(similarities)
    cuts = [i for i, s in enumerate(similarities) if s < threshold]
    if len(cuts) + 1 < min_segments and complementary:
        need = min_segments - (len(cuts) + 1)
        filled = [1.0 if s < threshold else (math.inf if s != s else s) for s in similarities]
        extra = sorted(range(n), key=lambda i: (filled[i], i))[: min(need, n)]
        cuts = sorted(cuts + extra)
    bounds = [-1, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


# ------------------------------------------------------------------------------------------ tensor ops


def transition_similarities(embeds: Tensor) -> Tensor:
    """(F, N, D) -> (F−1,) in the input dtype: cosine of adjacent frames' mean tokens (the reference's DySeg)."""
    m = _normalize(embeds.mean(dim=1))
    return (m[:-1] * m[1:]).sum(dim=-1)


def cosine_distances(embeds: Tensor, unit: Tensor | None = None) -> Tensor:
    """(F, N, D) -> (F, N, N) float32 ``1 − cos`` between the tokens of each frame.

    Float32 input: normalise, then a float32 product (the reference's arithmetic). Half precision: a Gram matrix
    with float32 accumulation (products of half-precision values are exact in float32), scaled by the norms; no
    float32 copy of the input. ``unit``: ``embeds`` already normalised (float32 input only), to share it.
    """
    if embeds.dtype in (torch.float16, torch.bfloat16):
        gram = bmm_fp32(embeds, embeds.transpose(1, 2))
        inv = torch.diagonal(gram, dim1=1, dim2=2).sqrt().clamp_min_(torch.finfo(torch.float32).tiny).reciprocal_()
        return 1.0 - gram.mul_(inv[:, :, None]).mul_(inv[:, None, :])
    x = unit if unit is not None and embeds.dtype == torch.float32 else _normalize(embeds.float())
    return 1.0 - torch.bmm(x, x.transpose(1, 2))


def adts_select(embeds: Tensor, scores: Tensor, count: int, selection: str = "attn_div_v2",
                centre: Tensor | None = None, unit: Tensor | None = None) -> Tensor:
    """Token selection in every frame at once (spec §2.4): (F, N, D), (F, N) -> (F, count) int64 token indices,
    ascending in each row (``attn_div_v2`` may repeat one).

    ``scores``: attention each token receives; ``centre`` (F, D) float32, only for ``attn_div_v2``: the mean token
    of each frame's segment; ``unit``: optional, ``embeds`` normalised (see ``cosine_distances``).
    ``attn_div``: ``W = (1 − cos) · (a·1e6)`` by column; the first pick maximises the second-smallest entry of
    its column, every next one the minimum over the picked rows, picked columns set to −1. ``attn_div_v2``:
    columns also scaled by ``<x_j, centre>``, and picked columns are not excluded. ``div``: as ``attn_div``
    without weights; ``attn``: the ``count`` highest scores. Ties: the lowest index.
    """
    F, N, _ = embeds.shape
    device = embeds.device
    if count == 0:
        return torch.zeros((F, 0), dtype=torch.int64, device=device)
    if selection == "attn":
        order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
        return torch.sort(order[:, :count], dim=1).values
    W = cosine_distances(embeds, unit)
    if selection != "div":
        W.mul_((scores.float() * 1e6)[:, None, :])
    if selection == "attn_div_v2":
        if centre is None:
            raise ValueError("attn_div_v2 needs the segment centre of every frame")
        relevance = torch.bmm(embeds.float(), centre.float()[:, :, None])  # (F, N, 1): raw dot products
        W.mul_(relevance.view(F, 1, N))
    exclude = selection != "attn_div_v2"
    offsets = torch.arange(0, F * N, N, device=device)
    rows = W.view(F * N, N)
    picks = torch.empty((count, F), dtype=torch.int64, device=device)  # row i: the i-th pick of every frame
    first = torch.topk(W, k=2, dim=1, largest=False).values[:, 1, :]  # second-smallest of every column
    torch.argmax(first, dim=1, out=picks[0])  # first maximum: lowest index
    if count > 1:
        by_frame = picks.T  # (F, count) view
        at = torch.add(picks[0], offsets)
        best = rows.index_select(0, at)  # running minimum over the picked rows
        row = torch.empty_like(best)
        for i in range(1, count):
            if exclude:  # every picked column to −1 (again: a minimum below −1 may have replaced an earlier −1)
                best.scatter_(1, by_frame[:, :i], -1.0)
            pick = picks[i]
            torch.argmax(best, dim=1, out=pick)
            if i + 1 < count:
                torch.add(pick, offsets, out=at)
                torch.minimum(best, torch.index_select(rows, 0, at, out=row), out=best)
    return torch.sort(picks.T.contiguous(), dim=1).values


# ----------------------------------------------------------------------------------------------- DPC


def dpc_peaks(points: Tensor, valid: Tensor, neighbours: Tensor, noise: Tensor, *,
              max_neighbours: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FlashVID's DPC-kNN scores (spec §2.6) of B independent point sets at once, padded to P points.

    ``points`` (B, P, D) any float dtype; ``valid`` (B, P) bool (the first n_b of each row); ``neighbours`` (B,)
    int64 k_b ≤ n_b, ``max_neighbours`` ≥ their maximum; ``noise`` (B, P) float32 u in [0, 1) (the reference's
    ``rand_like``). With ``δ = ||y_i − y_j|| / sqrt(D)`` (float32): density ``exp(−mean of the k smallest δ²)
    + 1e−6·u``; distance to the nearest strictly denser point, else the largest δ of the set; score
    ``distance·density``. Returns ``(δ (B, P, P), density, distance, score)``, the last three (B, P) with −inf
    density and score at padding.
    """
    B, P, D = points.shape
    device = points.device
    if P <= _CDIST_EXACT_MAX:  # the reference's torch.cdist subtracts below 26 points (bit-identical there)
        x = points.float()
        delta = torch.cdist(x, x) / math.sqrt(D)
    else:
        delta = pairwise_sq_distances(points).sqrt_().div_(math.sqrt(D))
    pair_ok = valid[:, :, None] & valid[:, None, :]
    kk = min(max_neighbours, P)
    knn = torch.topk(delta.masked_fill(~valid[:, None, :], math.inf), k=kk, dim=-1, largest=False).values
    take = torch.arange(kk, device=device) < neighbours[:, None, None]
    # the reference's mean(−δ²) over exactly k values (sum, then divide: CPU torch.mean); extra zeros add nothing
    density = ((-(knn ** 2)).where(take, 0.0).sum(dim=-1) / neighbours[:, None].float()).exp()
    density = (density + noise * _NOISE_SCALE).masked_fill_(~valid, -math.inf)
    largest = delta.masked_fill(~pair_ok, -math.inf).amax(dim=(1, 2))
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is strictly denser than i
    dist = torch.where(denser, delta, largest[:, None, None]).amin(dim=-1)
    score = (dist * density).masked_fill_(~valid, -math.inf)
    return delta, density, dist, score


def dpc_batch(points: Tensor, valid: Tensor, clusters: Tensor, neighbours: Tensor, noise: Tensor, *,
              max_clusters: int, max_neighbours: int) -> tuple[Tensor, Tensor, Tensor]:
    """FlashVID's DPC-kNN clustering of B padded point sets (``dpc_peaks`` for the arguments): ``clusters`` (B,)
    int64 c_b ≥ 1, ``max_clusters`` ≥ their maximum.

    Centres: the c highest scores, best first (ties: lowest index); each point joins its nearest centre (ties: the
    better-scored one), each centre its own cluster. Returns ``(centres (B, C) int64, member (B, C, P) bool,
    centre_ok (B, C) bool)``, C = ``max_clusters``.
    """
    B, P, _ = points.shape
    device = points.device
    delta, _, _, score = dpc_peaks(points, valid, neighbours, noise, max_neighbours=max_neighbours)
    C = max_clusters
    centres = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :C]
    centre_ok = torch.arange(C, device=device) < clusters[:, None]
    to_centre = delta.gather(2, centres[:, None, :].expand(B, P, C)).masked_fill_(~centre_ok[:, None, :], math.inf)
    assign = torch.cat([to_centre.argmin(dim=-1), torch.zeros((B, 1), dtype=torch.int64, device=device)], dim=1)
    spare = torch.full_like(centres, P)  # unused centre columns write into the spare column P
    assign.scatter_(1, torch.where(centre_ok, centres, spare), torch.arange(C, device=device).expand(B, C))
    member = (assign[:, None, :P] == torch.arange(C, device=device)[None, :, None]) & valid[:, None, :]
    member &= centre_ok[:, :, None]
    return centres, member, centre_ok


def uniform_noise(seed: int) -> Callable[[int], Tensor]:
    """Density noise as the reference draws it: one ``torch.rand(n)`` per DPC call, here from a CPU generator
    seeded with ``seed`` (with the reference's global RNG seeded the same, on the CPU, the same numbers)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda n: torch.rand(n, generator=gen)


def seeded_draws(seed: int, sizes: Sequence[int]) -> list[Tensor]:
    """``uniform_noise(seed)`` called once per size, drawn as ONE ``torch.rand(Σ sizes)`` and split: the CPU
    generator gives a long draw the same numbers as consecutive short ones (tested), for a fraction of the
    calls. ``flashvid``'s default noise."""
    gen = torch.Generator().manual_seed(seed)
    return list(torch.rand(sum(sizes), generator=gen).split(list(sizes))) if sizes else []


# ------------------------------------------------------------------------------------------ validation


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidOptionError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def check_params(ratio, expansion, alpha, temporal_threshold, segment_threshold, min_segment_num, complementary,
                 do_segment, selection, positions, duplicates, seed, noise) -> dict:
    """The arguments of ``flashvid`` checked and normalised; ``InvalidOptionError`` with a one-line message."""
    ratio = check_ratio(ratio)
    expansion = check_number("expansion", expansion)
    if not 0.0 < expansion < math.inf:
        raise InvalidOptionError(f"expansion must be a positive number, got {expansion:g}")
    alpha = share("alpha (ADTS share of the budget)", alpha)
    tau = check_number("temporal_threshold", temporal_threshold)
    if not -1.0 <= tau < 1.0:  # at 1 the reference divides by zero (spec §7.9); below −1 it links first frames
        raise InvalidOptionError(f"temporal_threshold must be in [-1, 1), got {tau:g}")
    theta = check_number("segment_threshold", segment_threshold)
    min_segment_num = positive_int("min_segment_num", min_segment_num)
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        raise InvalidOptionError(f"seed must be an integer, got {seed!r}")
    if noise is not None and not callable(noise):
        raise InvalidOptionError(f"noise must be a function n -> n uniform numbers, got {type(noise).__name__}")
    return dict(ratio=ratio, expansion=expansion, alpha=alpha, tau=tau, theta=theta, min_segment_num=min_segment_num,
                complementary=_flag("complementary", complementary), do_segment=_flag("do_segment", do_segment),
                selection=_choice("selection", selection, SELECTIONS),
                positions=_choice("positions", positions, POSITIONS),
                duplicates=_choice("duplicates", duplicates, DUPLICATES), seed=int(seed), noise=noise)


def _scores(attn: Tensor | None, saliency: Tensor | None, F: int, N: int, notes: list[str]) -> Tensor:
    """FlashVID's per-token attention: ``attn`` (mean attention received in the last vision layer), else the
    saliency, with a note (a different signal: a documented deviation, spec §3)."""
    scores = attn
    if scores is None:
        if saliency is None:
            raise ValueError("flashvid needs attn (attention each token receives) or, failing that, saliency")
        scores = saliency
        notes.append("flashvid: no last-layer vision attention available; ADTS weighted by the saliency instead")
    name = "attn" if attn is not None else "saliency"
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (F, N):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{name} must have shape (frames, tokens) = {(F, N)}, got {shape}")
    return scores


# ----------------------------------------------------------------------------------------------- API


@torch.no_grad()
def flashvid(
    embeds: Tensor,
    saliency: Tensor | None = None,
    frame_features: Tensor | None = None,
    ratio: float = 0.1,
    *,
    attn: Tensor | None = None,
    expansion: float = 1.25,
    alpha: float = 0.7,
    temporal_threshold: float = 0.8,
    segment_threshold: float = 0.9,
    min_segment_num: int = 8,
    complementary: bool = True,
    do_segment: bool = True,
    selection: str = "attn_div_v2",
    positions: str = "compact",
    duplicates: str = "distinct",
    seed: int = 0,
    noise: Callable[[int], Tensor | Sequence[float]] | None = None,
) -> PruneResult:
    """FlashVID's pre-LLM compression of one video (module docstring; spec §2.2–2.8).

    ``embeds`` (F, N, D) LLM-input video embeddings, frame-major (Qwen: temporal patches), any float dtype;
    ``attn`` (F, N) the mean attention each token receives in the vision tower's last used layer (spec §3);
    without it ``saliency`` (F, N) stands in, with a note. ``frame_features`` is accepted for the common
    interface and ignored (DySeg uses the mean token of each frame). ``ratio``: FlashVID's average retention
    over the LLM's layers, in (0, 1] (with ``expansion`` 1.25 the pre-LLM budget is 1.25·ratio; see
    ``flashvid_inner.retention_plan``); ratio 1.0 keeps everything. ``expansion``, ``alpha``,
    ``temporal_threshold``, ``segment_threshold``, ``min_segment_num``, ``complementary``, ``do_segment``,
    ``selection``: the reference's parameters, defaults as its LLaVA scripts (Qwen: ``FAMILY_VARIANTS``).
    ``positions``: "compact" (LLaVA) or "original" (Qwen), sets ``PruneResult.compact``; ``duplicates``:
    "distinct" (LLaVA: a repeated slot keeps both vectors) or "last" (Qwen: every copy gets the last one's
    value, the contextual token). ``seed``: the DPC density noise's generator; ``noise``: instead, a function
    ``n -> n numbers in [0, 1)`` called once per DPC call in the reference's call order (parity tests).

    Returns a ``PruneResult``: ``embeds`` (K, D) in the input dtype and device, K ≥ ``min_kept``; ``index`` (K,)
    int64 each row's original slot ``t·N + n``, non-decreasing (a repeated slot: the ADTS row first);
    ``source`` = ``index`` when ``compact``; ``merged`` marks the contextual rows; ``salient`` = F·A ADTS rows,
    ``context`` the rest; ``budget`` = (B, A, S); ``segments`` the DySeg lengths (zeros kept). Raises
    ``InvalidOptionError`` for bad parameters (also ``B ≥ N``), ``ValueError`` for inconsistent shapes.
    """
    F, N, D = check_embeds(embeds)
    p = check_params(ratio, expansion, alpha, temporal_threshold, segment_threshold, min_segment_num, complementary,
                     do_segment, selection, positions, duplicates, seed, noise)
    notes: list[str] = []
    scores = _scores(attn, saliency, F, N, notes)
    if p["ratio"] == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    B, A, S = flashvid_budget(N, p["ratio"], p["expansion"], p["alpha"])
    if B >= N:
        raise InvalidOptionError(
            f"flashvid: ratio {p['ratio']:g} x expansion {p['expansion']:g} keeps all {N} tokens of a frame "
            f"(budget {B}); use a lower ratio, or 1.0 for no pruning")
    device, dtype = embeds.device, embeds.dtype
    if scores.device != device:
        scores = scores.to(device)
    flat = embeds.reshape(F * N, D)
    draw = p["noise"]  # None: seeded_draws(seed, …), the same numbers as uniform_noise(seed)

    # 1. DySeg (the first wait for the host), in the input dtype as the reference.
    similarities: list[float] = []
    lengths = [F]
    if F > 1 and p["do_segment"]:
        similarities = transition_similarities(embeds).float().tolist()
        lengths = dyseg_lengths(similarities, in_dtype(p["theta"], dtype), p["min_segment_num"], p["complementary"])
    if 0 in lengths:
        notes.append(f"flashvid: {lengths.count(0)} empty segment(s) from repeated complementary cuts (as the "
                     f"reference)")

    # 2. ADTS in every frame (the segment centres only matter to attn_div_v2).
    plan = segment_plan(lengths, [L >= 2 and S > 0 for L in lengths], B, N, device)
    # the tokens normalised in their dtype (TSTM); for float32 input ADTS's too, so computed once
    shared = A and p["selection"] != "attn" and dtype == torch.float32
    unit = _normalize(embeds) if (S and any(plan.active_list)) or shared else None
    picks = torch.zeros((F, 0), dtype=torch.int64, device=device)
    if A:
        centre = None
        if p["selection"] == "attn_div_v2":
            # each frame's segment mean of the per-frame mean tokens (float32): one (F, F) averaging product
            same = (plan.seg[:, None] == plan.seg[None, :]).float().mul_(plan.inv_size[:, None])
            centre = same @ embeds.float().mean(dim=1)
        picks = adts_select(embeds, scores, A, p["selection"], centre, unit)
    kappa = torch.ones((F, N), dtype=torch.bool, device=device)
    kappa.scatter_(1, picks, False)

    # 3. TSTM in segments of >= 2 frames (S > 0); single-frame segments offer all their tokens to DPC.
    ctx_slots = torch.zeros(0, dtype=torch.int64, device=device)
    ctx_rows = embeds.new_zeros((0, D))
    if S:
        trees = tstm_links(embeds, kappa, lengths, plan.active_list, B, p["tau"], plan, unit)
        cand = (~trees.merge & kappa) | plan.single[:, None]
        stats = torch.cat([cand.sum(dim=1), trees.merge.sum().view(1), trees.soft.long()]).tolist()  # 2nd wait
        per_frame, n_merged, soft = stats[:F], stats[F], stats[F + 1:]
        if any(soft):
            notes.append(f"flashvid: TSTM soft threshold used in {sum(soft)} segment(s) (merging above "
                         f"{p['tau']:g} left fewer than B x frames tokens)")
        n_cand = sum(per_frame)
        cand_slots, cand_rows = tree_values(embeds, trees, cand, n_cand, n_merged)

        # 4. Contextual budget per segment, DPC plan and noise on the host (the reference's call order).
        dpc, noise_parts = [], []  # dpc: (candidate offset, n, clusters, neighbours, noise offset) per call
        passing = [0] * F  # frames whose candidates are all kept (contextual share >= 1)
        n_pass = offset = frame = n_noise = 0
        for L in lengths:
            seg_frames = range(frame, frame + L)
            frame += L
            total = sum(per_frame[t] for t in seg_frames)
            if not total:  # an empty segment (a segment's first frame always has N − A > 0 candidates)
                continue
            rho = (S * L) / total
            for t in seg_frames:
                n = per_frame[t]
                c = math.ceil(n * rho)
                if c > 0 and rho < 1.0:
                    if draw is not None:
                        u = torch.as_tensor(draw(n), dtype=torch.float32).reshape(-1).cpu()
                        if u.numel() != n:
                            raise ValueError(f"noise({n}) returned {u.numel()} numbers")
                        noise_parts.append(u)
                    dpc.append((offset, n, c, min(c, DPC_MAX_NEIGHBOURS), n_noise))
                    n_noise += n
                elif n:
                    passing[t] = 1
                    n_pass += n
                offset += n

        nb = len(dpc)
        if draw is None:
            noise_parts = seeded_draws(p["seed"], [d[1] for d in dpc])
        ints, noise = _upload(device, [v for d in dpc for v in d] + passing,
                              torch.cat(noise_parts) if noise_parts else None)
        table, passing_t = ints.split([5 * nb, F])
        parts_slots, parts_rows = [], []
        if dpc:
            P = max(d[1] for d in dpc)
            C = max(d[2] for d in dpc)
            offs, counts, clusters, neighbours, noise_offs = table.view(nb, 5).unbind(1)
            col = torch.arange(P, device=device)
            valid = col < counts[:, None]
            idx = torch.where(valid, offs[:, None] + col, 0)  # (nb, P) rows of the candidate list
            if n_cand == nb * P and all(d[1] == P for d in dpc):  # every candidate, P per frame: no gather
                points = cand_rows.view(nb, P, D)
            else:
                points = cand_rows.index_select(0, idx.view(-1)).view(nb, P, D)
            u = noise.index_select(0, torch.where(valid, noise_offs[:, None] + col, 0).view(-1)).view(nb, P)
            centres, member, centre_ok = dpc_batch(points, valid, clusters, neighbours, u.masked_fill_(~valid, 0.0),
                                                  max_clusters=C, max_neighbours=max(d[3] for d in dpc))
            sums = bmm_fp32(member.to(dtype), points)  # (nb, C, D) float32
            means = sums.div_(member.sum(dim=-1, dtype=torch.float32).clamp_min_(1.0)[..., None]).to(dtype)
            keep = _true_positions(centre_ok.view(-1), sum(d[2] for d in dpc))
            parts_slots.append(cand_slots.index_select(0, idx.gather(1, centres).view(-1).index_select(0, keep)))
            parts_rows.append(means.view(nb * C, D).index_select(0, keep))
        if n_pass:
            rows = _true_positions(passing_t.bool().index_select(0, cand_slots // N), n_pass)
            parts_slots.append(cand_slots.index_select(0, rows))
            parts_rows.append(cand_rows.index_select(0, rows))
        if parts_slots:
            ctx_slots, ctx_rows = torch.cat(parts_slots), torch.cat(parts_rows)

    # 5. Assembly: ADTS rows first, then contextual ones; a stable sort by slot.
    adts_slots = (picks + torch.arange(0, F * N, N, device=device)[:, None]).reshape(-1)
    slots = torch.cat([adts_slots, ctx_slots])
    rows = torch.cat([flat.index_select(0, adts_slots), ctx_rows])
    index, perm = torch.sort(slots, stable=True)
    out = rows.index_select(0, perm)
    n_adts = adts_slots.numel()
    repeated = int((index[1:] == index[:-1]).sum())  # the last wait for the device (for the note alone)
    if repeated:
        rule = "both vectors kept" if p["duplicates"] == "distinct" else "every copy takes the contextual value"
        notes.append(f"flashvid: {repeated} repeated slot(s) ({rule}; they share a position)")
        if p["duplicates"] == "last":
            out = out.index_select(0, torch.searchsorted(index, index, right=True) - 1)
    compact = p["positions"] == "compact"
    return PruneResult(
        embeds=out,
        index=index,
        segments=list(lengths),
        notes=notes,
        merged=perm >= n_adts,
        salient=n_adts,
        context=int(ctx_slots.numel()),
        budget=(B, A, S),
        similarities=similarities,
        compact=compact,
        source=index if compact else None,
    )


def prune_flashvid(embeds: Tensor, saliency: Tensor | None, frame_features: Tensor | None, ratio: float = 0.1,
                   **params) -> tuple[Tensor, Tensor]:
    """FlashVID: (F, N, D) -> (kept embeds (K, D), kept slots (K,) int64, non-decreasing). Same arguments as
    ``flashvid``, which also reports the segmentation and notes."""
    result = flashvid(embeds, saliency, frame_features, ratio, **params)
    return result.embeds, result.index


__all__ = [
    "DUPLICATES",
    "FAMILY_VARIANTS",
    "POSITIONS",
    "SELECTIONS",
    "Trees",
    "adts_select",
    "check_params",
    "cosine_distances",
    "dpc_batch",
    "dpc_peaks",
    "dyseg_lengths",
    "flashvid",
    "flashvid_budget",
    "in_dtype",
    "min_kept",
    "prune_flashvid",
    "seeded_draws",
    "segment_plan",
    "SegmentPlan",
    "transition_similarities",
    "tree_values",
    "tstm",
    "tstm_links",
    "uniform_noise",
]
