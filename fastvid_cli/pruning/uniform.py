"""Uniform spatial pooling: the simplest baseline to compare FastVID with at an equal number of tokens.

Pure tensor code: no transformers, no I/O. Each frame keeps exactly FastVID's per-frame budget
``R = max(int(N·r), 1)`` tokens, so both methods keep ``F·R`` video tokens for r < 1 (FastVID slightly fewer
when its anchor budgets round down; see ``expected_kept``).

Regions. A frame's N tokens form a square h×w grid (h = w = √N, row-major); a non-square N is taken as one row
of N tokens, so pooling becomes 1-D over the row-major order. The grid is split into exactly R rectangles as
evenly as possible (2-D adaptive average pooling cannot always give exactly R cells: R = 19 has no a×b ≤ 14×14
factorisation):

* ``a`` horizontal bands, ``a = round(√(R·h/w))`` (the count that makes regions closest to square), clamped to
  ``[ceil(R/w), min(h, R)]``; band i holds rows ``[⌊i·h/a⌋, ⌊(i+1)·h/a⌋)``;
* band i is cut into ``b_i = ⌊(i+1)·R/a⌋ − ⌊i·R/a⌋`` column ranges (⌊R/a⌋ or ⌈R/a⌉ ≤ w), column range j of
  a band holding columns ``[⌊j·w/b_i⌋, ⌊(j+1)·w/b_i⌋)``.

When R = a·b exactly (e.g. 14×14 at r = 0.25 → 49 = 7×7) this is adaptive average pooling to an a×b grid.

Each kept token is the mean of its region (accumulated in float32, returned in the input dtype) and takes the
slot of the region's centre token (rounded up-left), so positions stay original. Regions are ordered band by
band and left to right, and their centres are then strictly increasing in row-major order.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .density import bmm_fp32
from .result import PruneResult, check_embeds, check_ratio, keep_all, per_frame_budget


def grid_shape(n_tokens: int) -> tuple[int, int]:
    """(h, w) of a frame's token grid: square when N is a perfect square, else one row of N tokens."""
    side = math.isqrt(n_tokens)
    return (side, side) if side * side == n_tokens else (1, n_tokens)


@functools.lru_cache(maxsize=64)
def uniform_regions(h: int, w: int, R: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]:
    """The R regions of an h×w grid (see module doc) as (row0, row1, col0, col1) half-open rectangles, and the
    row-major slot of each region's centre token; both in region order (slots strictly increasing)."""
    if not 1 <= R <= h * w:
        raise ValueError(f"cannot split a {h}x{w} grid into {R} regions")
    a = round(math.sqrt(R * h / w))
    a = min(max(a, -(-R // w), 1), h, R)
    regions, slots = [], []
    for i in range(a):
        r0, r1 = (i * h) // a, ((i + 1) * h) // a
        b = ((i + 1) * R) // a - (i * R) // a
        for j in range(b):
            c0, c1 = (j * w) // b, ((j + 1) * w) // b
            regions.append((r0, r1, c0, c1))
            slots.append(((r0 + r1 - 1) // 2) * w + (c0 + c1 - 1) // 2)
    return tuple(regions), tuple(slots)


def _membership(h: int, w: int, R: int) -> tuple[Tensor, Tensor, Tensor]:
    """CPU tensors: one-hot (R, N) float32 region membership, region sizes (R, 1) float32, slots (R,) int64."""
    regions, slots = uniform_regions(h, w, R)
    onehot = torch.zeros((R, h, w), dtype=torch.float32)
    for k, (r0, r1, c0, c1) in enumerate(regions):
        onehot[k, r0:r1, c0:c1] = 1.0
    onehot = onehot.view(R, h * w)
    return onehot, onehot.sum(dim=1, keepdim=True), torch.tensor(slots, dtype=torch.int64)


@torch.no_grad()
def uniform(embeds: Tensor, saliency: Tensor | None = None, frame_features: Tensor | None = None,
            ratio: float = 0.1) -> PruneResult:
    """Average-pool each frame's token grid into R = max(int(N·r), 1) regions (see module doc).

    ``embeds`` (F, N, D) video embeddings, frame-major, row-major inside a frame; ``saliency`` and
    ``frame_features`` are accepted for the common interface and ignored. Returns a ``PruneResult`` with
    exactly F·R rows (F·N at ratio 1.0, unchanged), on the device and in the dtype of ``embeds``; ``index``
    holds each region's centre slot ``f·N + n``, strictly increasing; ``merged`` marks rows averaged over
    more than one token. ``InvalidOptionError`` for a ratio outside (0, 1].
    """
    F, N, D = check_embeds(embeds)
    ratio = check_ratio(ratio)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    R, notes = per_frame_budget(N, ratio)
    h, w = grid_shape(N)
    if h == 1 and N > 1:
        notes.append(f"{N} tokens per frame is not a square grid: pooled in 1-D over row-major order")
    device = embeds.device
    onehot, sizes, slots = _membership(h, w, R)
    # 0/1 weights are exact in any dtype: sums accumulate in float32 and are divided once, in float32.
    weights = onehot.to(device=device, dtype=embeds.dtype).expand(F, R, N)
    sums = bmm_fp32(weights, embeds)  # (F, R, D) float32
    pooled = (sums / sizes.to(device)).to(embeds.dtype).reshape(F * R, D)
    index = (slots.to(device)[None, :] + torch.arange(0, F * N, N, device=device)[:, None]).reshape(-1)
    merged = (sizes.view(R) > 1).to(device).repeat(F)
    # salient/context/budget/segments describe FastVID's selection: they stay at their empty defaults here.
    return PruneResult(embeds=pooled, index=index, notes=notes, merged=merged)
