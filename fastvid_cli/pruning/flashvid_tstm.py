"""FlashVID's tree-based spatiotemporal merging (TSTM, flashvid-spec §2.5) and the small tensor helpers it shares
with the rest of ``flashvid.py``: per segment, each token links to its most similar token in the previous frame when
the similarity passes the threshold, and every tree of links becomes one token (its mean, at its root's slot).
Split out of flashvid.py to keep each file about one stage; ``flashvid`` re-exports every name.
"""

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
