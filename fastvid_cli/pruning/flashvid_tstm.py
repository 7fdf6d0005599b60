"""FlashVID's tree-based spatiotemporal merging (TSTM, flashvid-spec §2.5) and the small tensor helpers it shares
with the rest of ``flashvid.py``: per segment, each token links to its most similar token in the previous frame when
the similarity passes the threshold, and every tree of links becomes one token (its mean, at its root's slot).
Split out of flashvid.py to keep each file about one stage; ``flashvid`` re-exports every name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@functools.lru_cache(maxsize=64)
def in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: what the reference compares a tensor of that dtype with (torch casts a
    Python scalar to the tensor's dtype in a comparison)."""
    return float(torch.tensor(value, dtype=dtype)) if dtype != torch.float64 else float(value)


def _normalize(x: Tensor) -> Tensor:
    """x / ||x|| along the last dim in x's dtype, as the reference; a zero vector stays zero (not NaN)."""
    norm = x.norm(p=2, dim=-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def _add_rows(target: Tensor, index: Tensor, rows: Tensor) -> None:
    """``target[index[i]] += rows[i]``, deterministically, in the order of ``i`` for each target row:
    ``index_add_`` is serial on the CPU; on CUDA ``index_put_(accumulate=True)`` sorts the indices stably and adds
    each run of equal indices in order, one run serially (no atomics). So the time grows with the LONGEST run:
    callers give every row that should add nothing a target of its own (never one shared spare row, which made a
    run of thousands of rows and cost milliseconds on an H100)."""
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
    """A segmentation's per-frame and per-segment tables, on the device, built there from per-frame segment ids
    (no host round trip, fixed shapes: what a CUDA graph needs).

    Per frame (F,): ``seg`` int64 segment index (segments may be empty, so ids can skip), ``usable`` bool (in a
    TSTM segment and not its first frame), ``single`` bool (a single-frame segment), ``inv_size`` float32 1/F_s,
    ``size`` int64 F_s. Per segment slot (``n_segments`` of them, empty ones included): ``kpos`` int64 flat
    position, in the segment-grouped order, of the soft threshold's k-th largest similarity; ``lower`` B·F_s;
    ``tokens`` F_s·N; ``active`` bool (TSTM runs).
    """

    seg: Tensor
    usable: Tensor
    single: Tensor
    inv_size: Tensor
    size: Tensor
    kpos: Tensor
    lower: Tensor
    tokens: Tensor
    active: Tensor


def plan_from_ids(seg: Tensor, n_segments: int, budget: int, n_tokens: int, *, contextual: bool = True,
                  active: Tensor | None = None) -> SegmentPlan:
    """``SegmentPlan`` from ``seg`` (F,) int64 non-decreasing segment ids below ``n_segments`` (a host bound;
    unused ids are empty segments). TSTM runs in ``active`` segments (bool, one per id), by default those of
    ≥ 2 frames when ``contextual`` (a contextual budget S > 0)."""
    N, F = n_tokens, seg.numel()
    device = seg.device
    size_of = torch.zeros(n_segments, dtype=torch.int64, device=device).index_add_(0, seg, torch.ones_like(seg))
    start = torch.cumsum(size_of, dim=0) - size_of
    if active is None:
        active = (size_of >= 2) & contextual
    first = torch.ones(F, dtype=torch.bool, device=device)
    first[1:] = seg[1:] != seg[:-1]
    size = size_of.index_select(0, seg)
    # the soft threshold's k-th largest of F_s·N similarities, k = F_s·N − B·F_s (≥ 1 since B < N)
    k = (size_of * (N - budget)).clamp_min_(1)
    kpos = (start * N + k - 1).clamp_max_(max(F * N - 1, 0))
    return SegmentPlan(seg, active.index_select(0, seg) & ~first, size == 1, (1.0 / size.double()).float(), size,
                       kpos, budget * size_of, size_of * N, active)


def segment_plan(lengths: Sequence[int], active: Sequence[bool], budget: int, n_tokens: int,
                 device: torch.device) -> SegmentPlan:
    """``SegmentPlan`` of segments with these host ``lengths`` (zeros allowed), TSTM on where ``active``."""
    seg = torch.tensor([s for s, L in enumerate(lengths) for _ in range(L)], dtype=torch.int64).to(device)
    on = torch.tensor([bool(a) for a in active], dtype=torch.bool).to(device)
    return plan_from_ids(seg, len(lengths), budget, n_tokens, active=on)


def tstm_links(embeds: Tensor, kappa: Tensor, lengths: Sequence[int] | None, active: Sequence[bool] | None,
               budget: int, tau: float, plan: SegmentPlan | None = None, unit: Tensor | None = None) -> Trees:
    """TSTM's trees in every ``active`` segment at once (segments of ≥ 2 frames with a contextual budget).

    ``kappa`` (F, N) bool: False for ADTS tokens (they neither join nor anchor a tree); ``lengths``: segment
    lengths (summing to F; zeros allowed) and ``active``, or instead ``plan`` (``segment_plan`` /
    ``plan_from_ids``); ``budget``: B, so a segment's lower bound is ``B·F_s``; ``tau``: the temporal threshold,
    compared in the input dtype as the reference does; ``unit``: ``embeds`` normalised in its dtype, if already
    computed. Runs in the input dtype (the reference's similarities are bf16 for bf16 input, so the same ties
    and thresholds). No device->host wait; the number of operations depends on the shape alone.
    """
    F, N, _ = embeds.shape
    if budget >= N:
        raise ValueError(f"TSTM needs B < N (B={budget}, N={N}): no token could merge (the reference crashes)")
    device = embeds.device
    if plan is None:
        plan = segment_plan(lengths, active, budget, N, device)
    seg, usable = plan.seg, plan.usable

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
    per_seg = torch.zeros_like(plan.tokens).index_add_(0, seg, merged_above_tau)
    soft = (plan.tokens - per_seg < plan.lower) & plan.active
    order = torch.sort(sigma.view(-1), descending=True, stable=True).indices  # then grouped by segment, stably
    seg_of_token = seg[:, None].expand(F, N).reshape(-1)  # (no repeat_interleave: it may read the device)
    order = order.index_select(0, torch.sort(seg_of_token.index_select(0, order), stable=True).indices)
    kth_value = sigma.view(-1).index_select(0, order.index_select(0, plan.kpos)).float().clamp_min_(-1.0 + 1e-6)
    threshold = torch.where(soft, kth_value, tau_d)
    merge = (sig32 > threshold.index_select(0, seg)[:, None]) & usable[:, None]

    if F > 1:
        parent[1:] = torch.where(merge[1:], parent_prev, parent[1:])
    parent = parent.reshape(-1)
    children = torch.zeros(F * N, dtype=torch.int64, device=device).index_add_(0, parent, merge.view(-1).long())
    root = parent
    for _ in range(max(F - 2, 0).bit_length()):  # pointer jumping: chains have at most F − 1 links (fixed count)
        root = root.index_select(0, root)
    return Trees(sigma, merge, root, children, soft)


def root_values(embeds: Tensor, trees: Trees) -> Tensor:
    """(F, N, D) -> (F·N, D) in the input dtype: every tree root's ``subtree sum / (1 + direct children)``
    (float32 sums, rounded once to the input dtype); rows of merged tokens are meaningless. Fixed shapes, no
    device->host wait: every token adds into its root's row (a root into its own), so a row's additions are
    its tree's tokens in slot order, the root first, and the longest serial run on CUDA is the largest tree."""
    F, N, D = embeds.shape
    # -0.0 + x == x for every x (0.0 + −0.0 would not be): the sums equal the root's row plus its merged tokens
    values = torch.full((F * N, D), -0.0, dtype=torch.float32, device=embeds.device)
    _add_rows(values, trees.root, embeds.reshape(F * N, D).float())
    # divided in float32 and rounded on the store (as div then .to(), without a float32 result in between)
    return torch.div(values, (trees.children + 1).float()[:, None], out=torch.empty_like(embeds).view(F * N, D))


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
    values = root_values(segment, trees).view(F, N, -1)
    return [(values[t][cand[t]], cand[t].nonzero().view(-1)) for t in range(F)]


@dataclass(frozen=True)
class _Setup:
    """What the host knows before touching the data: shapes, budgets and the checked parameters (made by
    ``flashvid._setup``; read by every step of the pipeline, the DPC steps of ``flashvid_dpc`` included)."""

    F: int
    N: int
    D: int
    B: int
    A: int
    S: int
    selection: str
    tau: float
    theta: float  # in the embeddings' dtype, as the reference compares it
    min_segments: int
    complementary: bool
    segmented: bool  # DySeg runs (F > 1 and do_segment)
    exact_dpc: bool | None  # DPC distances: differences (True), Gram (False), decided on the device (None)

    @property
    def n_segments(self) -> int:  # a bound on segment ids: F − 1 cuts, and as many complementary repeats
        return max(2 * self.F - 1, 1)
