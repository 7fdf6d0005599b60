"""HoliTom's outer token merging (arXiv 2505.21334), with the semantics of the reference LLaVA-OneVision code.

Reference: cokeshao/HoliTom @ e9b2972, ``holitom/llava_arch.py``; docs fastvid-spec.md §3.2–3.8, §3.11, §4.2.
Pure tensor code: no transformers, no I/O. Input is one video's LLM-input embeddings, frame-major.

Pipeline (F frames of N tokens, T = F·N):

1. Per-position temporal similarity ``S[t, j] = cos(X[t, j], X[t+1, j])``.
2. Windows: the partition of the frames into runs ``[s, e]`` that maximises ``Σ |P(s,e)|·(e−s)``, where
   ``P(s,e)`` are the positions whose similarity stays ``> tau`` over the whole window (dynamic programming over
   frames; on equal totals the shorter window wins). ``Δ`` = that maximum = the tokens step 4 removes.
3. Retention rescale ``r' = min(r / ((T−Δ)/T), 1)``, so that about r·T tokens remain after step 5.
4. Temporal merge: in a window of W ≥ 2 frames each static position (j ∈ P) becomes one token, its mean over
   the window, attached to the window's first frame; the other (dynamic) positions stay in every frame.
5. Spatial merge. Dynamic: each frame keeps the ``ceil(n_d·r')`` dynamic tokens that receive the most
   attention, unchanged. Static: each window keeps ``round(n_s·r')`` density peaks (DPC-kNN, k = min(7, that
   count)); every other static token joins its nearest peak (Euclidean), and a peak with members becomes
   ``β·x + (1−β)·mean(members)``.
6. Layout (OneVision, "one_token"): window by window, its static tokens, then each of its frames' dynamic
   tokens, each group in spatial order. The LLM sees them at contiguous positions (re-indexed, not the original
   ones): ``PruneResult.compact`` is set, ``index`` is 0..K−1 and ``source`` holds each row's original slot.

Deviations from the reference, all deliberate:

* Deterministic: no density noise; every top-k breaks ties by the lowest index (see ``density.py``).
* Similarities are float32 (the reference's are fp16, so one within fp16 rounding of tau may fall
  differently); window means are rounded to the input dtype, as the reference's, and merges are blended in
  float32 and rounded once.
* Ratio 1.0 keeps every token unchanged (the reference would still merge the static tokens), as every method
  here does, so ``--ratio 1.0`` reproduces the stock model.
* Not implemented: contextual dynamic tokens (the reference's ``D``, 0 in all its scripts) and LLaVA-Video's
  per-row newlines. ``positions="original"`` is an addition: the same tokens at their original slots
  (static tokens at the window's first frame), sorted by slot, as FastVID lays them out.
* If every token would go (only possible for tiny inputs), one static token is kept, with a note.

Speed: one device→host wait (the (F−1, ·) table of static-position counts the DP needs) and one host→device
copy (the per-frame and per-window budgets); everything else is a fixed number of batched operations, whatever
the number of windows. The DP itself is a loop over frames on the host, O(F·min(F, max_window)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .density import bmm_fp32, density_peaks, mm_fp32, pairwise_sq_distances
from .result import PruneResult, check_embeds, check_number, check_ratio, keep_all, positive_int, share

POSITIONS = ("compact", "original")


# ----------------------------------------------------------------------------------------- arithmetic


def default_tau(ratio: float) -> float:
    """The similarity threshold of the reference scripts: 0.65 at r ≤ 0.10 (they use it at r = 0.10), else 0.8."""
    return 0.65 if ratio <= 0.10 else 0.8


def rescaled_ratio(ratio: float, total: int, delta: int) -> float:
    """``r' = min(r / ((T − Δ)/T), 1)``, written as the reference writes it (same float rounding)."""
    return min(ratio / ((total - delta) / total), 1.0)


def window_budget(n_tokens: int, n_static: int, size: int, rp: float) -> tuple[int, int]:
    """(static tokens kept, dynamic tokens kept per frame) of a window of ``size`` frames.

    ``round(n_s·r')`` (Python's round: halves to even) static tokens when ``size ≥ 2``, else none; and
    ``ceil(n_d·r')`` dynamic tokens in each frame, ``n_d = N − n_s``.
    """
    static = round(n_static * rp) if size >= 2 else 0
    return static, math.ceil((n_tokens - n_static) * rp)


def expected_kept_holitom(n_tokens: int, ratio: float, windows: list[tuple[int, int]],
                          n_static: list[int]) -> int:
    """Closed-form number of kept video tokens (spec §4.2), for ratio < 1, without the newline.

    ``windows``: the (first, last) frame of each window, covering 0..F−1 in order; ``n_static``: the static
    positions of each (0 for single frames). ``Σ_{W=1} ceil(N·r') + Σ_{W≥2} [round(n_s·r') + W·ceil(n_d·r')]``.
    """
    frames = sum(e - s + 1 for s, e in windows)
    delta = sum(n * (e - s) for (s, e), n in zip(windows, n_static))
    rp = rescaled_ratio(ratio, frames * n_tokens, delta)
    total = 0
    for (s, e), n in zip(windows, n_static):
        static, dynamic = window_budget(n_tokens, n, e - s + 1, rp)
        total += static + (e - s + 1) * dynamic
    return total


# ------------------------------------------------------------------------------- windows (steps 1–2)


def temporal_similarity(embeds: Tensor) -> Tensor:
    """(F, N, D) -> (F−1, N) float32: cosine of each token with the token at its position in the next frame.

    Dot products accumulate in float32 without float32 copies of the input (see ``bmm_fp32``); a zero vector
    has similarity 0.
    """
    F, N, D = embeds.shape
    if F < 2:
        return torch.zeros((0, N), dtype=torch.float32, device=embeds.device)
    x = embeds.reshape(F * N, 1, D)
    sq = bmm_fp32(x, x.transpose(1, 2)).view(F, N)
    dot = bmm_fp32(embeds[:-1].reshape(-1, 1, D), embeds[1:].reshape(-1, D, 1)).view(F - 1, N)
    return dot / (sq[:-1] * sq[1:]).sqrt_().clamp_min_(torch.finfo(torch.float32).tiny)


def static_run_lengths(similarity: Tensor, tau: float, cap: int) -> Tensor:
    """(F−1, N) similarities -> (F−1, N) int64: ``run[t, j]`` = how many consecutive transitions from t on
    have similarity ``> tau`` at position j, capped at ``cap``. Position j is static in window [s, e] iff
    ``run[s, j] ≥ e − s``."""
    steps = similarity.shape[0]
    t = torch.arange(steps, device=similarity.device)[:, None]
    breaks = torch.where(similarity > tau, steps, t)  # a transition that breaks the run: its own index
    next_break = breaks.flip(0).cummin(dim=0).values.flip(0)
    return (next_break - t).clamp_max_(cap)


def static_counts(run: Tensor, cap: int) -> Tensor:
    """(F−1, N) run lengths -> (F−1, cap+1) int32: ``C[s, L]`` = the number of positions static over the
    window [s, s+L] (``run[s, j] ≥ L``)."""
    hist = torch.zeros((run.shape[0], cap + 1), dtype=torch.int32, device=run.device)
    hist.scatter_add_(1, run, torch.ones_like(run, dtype=torch.int32))  # integer adds: order-independent
    return hist.flip(1).cumsum(dim=1, dtype=torch.int32).flip(1)


def best_windows(counts: np.ndarray, n_frames: int, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """The DP of spec §3.4 on the host: ``counts`` (F−1, cap+1) from ``static_counts`` -> (windows, Δ).

    ``best[i] = max(best[i−1], max over W = 2..min(i+1, max_window) of best[i−W] + G(i−W+1, i))`` with
    ``G(s, e) = C[s, e−s]·(e−s)``; only a strictly larger total replaces the current choice, trying the single
    frame first and then growing windows, so ties keep the shorter window. Windows are (first, last) frames.

    Speed: the gains of the windows ending at each frame are laid out once (row i, column W−2), so each frame
    costs a few numpy operations over the windows that have a static position at all (a longer one gains 0 and,
    ``best`` being non-decreasing, never wins).
    """
    cap = counts.shape[1] - 1 if n_frames > 1 else 0
    ends = np.arange(n_frames)[:, None]
    lengths = np.arange(1, cap + 1)[None, :]
    starts = ends - lengths
    ok = starts >= 0
    # ending[i, L−1] = G(i−L, i): windows ending at frame i, shortest first; static sets shrink as L grows
    ending = np.where(ok, counts[np.where(ok, starts, 0), lengths].astype(np.int64) * lengths, 0)
    reach = np.minimum((ending > 0).sum(axis=1), max_window - 1)
    best = np.zeros(n_frames + 1, dtype=np.int64)  # best[x] = the best total over frames 0..x−1
    first = list(range(n_frames))  # first frame of the window that ends at frame i (default: i alone)
    for i in range(n_frames):
        total = best[i]  # frame i alone
        longest = int(reach[i])
        if longest:
            cand = best[i - longest:i][::-1] + ending[i, :longest]  # over L = 1..longest: best[i−L] + G(i−L, i)
            j = int(cand.argmax())  # first maximum: the shortest window among equals
            if cand[j] > total:
                total, first[i] = cand[j], i - 1 - j
        best[i + 1] = total
    windows, i = [], n_frames - 1
    while i >= 0:
        windows.append((first[i], i))
        i = first[i] - 1
    return windows[::-1], int(best[n_frames])


def segment_windows(similarity: Tensor, tau: float, max_window: int = 1024) -> tuple[list[tuple[int, int]], int]:
    """HoliTom's windows from the (F−1, N) per-position similarities: ((first, last) frame of each window, Δ)."""
    n_frames = similarity.shape[0] + 1
    cap = max(min(n_frames - 1, max_window - 1), 0)
    counts = static_counts(static_run_lengths(similarity, tau, cap), cap).cpu().numpy()
    return best_windows(counts, n_frames, max_window)


def window_gains(similarity: Tensor, tau: float) -> Tensor:
    """(F−1, N) similarities -> (F, F) int64 ``G[s, e] = |P(s, e)|·(e − s)`` (0 for e ≤ s), on the CPU."""
    n_frames = similarity.shape[0] + 1
    gains = torch.zeros((n_frames, n_frames), dtype=torch.int64)
    if n_frames > 1:
        counts = static_counts(static_run_lengths(similarity, tau, n_frames - 1), n_frames - 1).cpu().long()
        s, L = torch.meshgrid(torch.arange(n_frames - 1), torch.arange(1, n_frames), indexing="ij")
        ok = s + L < n_frames
        gains[s[ok], (s + L)[ok]] = (counts[:, 1:] * L)[ok]
    return gains


# ------------------------------------------------------------------------------- spatial merge (step 5)


def _true_positions(mask: Tensor, count: int) -> Tensor:
    """Increasing indices of the True entries of the 1-D ``mask``, whose number ``count`` the caller knows
    (a stable sort instead of ``nonzero``, which would wait for the device)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def _ranks(scores: Tensor) -> Tensor:
    """Rank of every entry in its row, 0 = largest; ties by the lowest index. (B, M) -> (B, M) int64."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    columns = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, columns)


def select_dynamic(scores: Tensor, static: Tensor, keep: Tensor) -> Tensor:
    """Attention top-k over the dynamic positions of each frame: (F, N) bool of the kept tokens.

    ``scores`` (F, N) attention received (higher = keep; NaN counts as the lowest); ``static`` (F, N) bool,
    the positions merged temporally in that frame's window; ``keep`` (F,) int64, at most the dynamic count.
    """
    low, high = torch.finfo(torch.float32).min, torch.finfo(torch.float32).max
    s = torch.nan_to_num(scores.float(), nan=low, posinf=high, neginf=low).masked_fill_(static, float("-inf"))
    return _ranks(s) < keep[:, None]


def merge_static(x: Tensor, valid: Tensor, keep: Tensor, k: Tensor, k_max: int, beta: float,
                 n_max_kept: int) -> tuple[Tensor, Tensor, Tensor]:
    """DPC-kNN merge of each window's static tokens, all windows at once.

    ``x`` (B, M, D): the static tokens of B windows, padded to M (``valid`` (B, M) bool); ``keep`` (B,) int64
    peaks to keep per window (≤ its valid count) and ``n_max_kept`` ≥ their maximum; ``k`` (B,) density
    neighbours per window (≤ ``k_max``). Peaks are the top ``keep`` density-peak scores; every other valid token
    joins the peak at the smallest Euclidean distance (ties: the lowest index); a peak with members becomes
    ``beta·x_c + (1−beta)·mean(members)``, one without stays as it is.

    Returns ``(merged (B, C, D) float32, peak (B, C) int64 token index in x, ok (B, C) bool)``, C = n_max_kept,
    peaks in increasing index order; ``ok`` marks the real ones (the first ``keep[b]`` of each row).
    """
    B, M, D = x.shape
    d2 = pairwise_sq_distances(x).div_(float(D))
    _, _, score, dist = density_peaks(d2, k, valid, k_max=k_max)
    is_peak = _ranks(score) < keep[:, None]  # invalid tokens score -inf: never peaks
    C = n_max_kept
    peak = torch.sort((~is_peak).to(torch.uint8), dim=1, stable=True).indices[:, :C]  # peaks first, by index
    ok = torch.arange(C, device=x.device) < keep[:, None]
    to_peak = dist.gather(2, peak[:, None, :].expand(B, M, C)).masked_fill_(~ok[:, None, :], float("inf"))
    nearest = to_peak.argmin(dim=2)  # (B, M): first minimum = lowest-index peak
    member = valid & ~is_peak
    onehot = (nearest[:, None, :] == torch.arange(C, device=x.device)[None, :, None]) & member[:, None, :]
    sums = bmm_fp32(onehot.to(x.dtype), x)  # 0/1 weights are exact in any dtype
    counts = onehot.sum(dim=2, dtype=torch.float32)[..., None]
    own = x.gather(1, peak[..., None].expand(B, C, D)).float()
    blended = torch.lerp(sums.div_(counts.clamp_min(1.0)), own, beta)
    return torch.where(counts > 0, blended, own), peak, ok


# ----------------------------------------------------------------------------------------------- API


def _check_params(tau, beta, k, max_window, positions, ratio: float) -> tuple[float, float, int, int, str]:
    tau = default_tau(ratio) if tau is None else check_number("tau", tau)
    beta = share("beta", beta)
    k = positive_int("k (density neighbours)", k)
    max_window = positive_int("max_window", max_window)
    if positions not in POSITIONS:
        raise InvalidOptionError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    return tau, beta, k, max_window, positions


def _token_scores(attn: Tensor | None, saliency: Tensor | None, F: int, N: int) -> tuple[Tensor, list[str]]:
    """The per-token score that ranks dynamic tokens: attention received, else the saliency, with a note."""
    notes = []
    scores = attn
    if scores is None:
        if saliency is None:
            raise ValueError("holitom needs attn (attention received per token) or, failing that, saliency")
        scores = saliency
        notes.append("holitom: no last-layer vision attention available; dynamic tokens ranked by the saliency "
                     "score instead")
    name = "attn" if attn is not None else "saliency"
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (F, N):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{name} must have shape (frames, tokens) = {(F, N)}, got {shape}")
    return scores, notes


def _upload(values: list[int], device: torch.device) -> Tensor:
    """Host ints -> one int64 tensor on ``device`` (one copy, from pinned memory on CUDA)."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@torch.no_grad()
def holitom(
    embeds: Tensor,
    saliency: Tensor | None = None,
    frame_features: Tensor | None = None,
    ratio: float = 0.1,
    *,
    attn: Tensor | None = None,
    tau: float | None = None,
    beta: float = 0.6,
    k: int = 7,
    max_window: int = 1024,
    positions: str = "compact",
) -> PruneResult:
    """Prune one video's tokens with HoliTom's outer stages (module docstring; spec §3).

    ``embeds`` (F, N, D) LLM-input video embeddings, frame-major, row-major inside a frame, any float dtype;
    ``attn`` (F, N) mean attention each token receives in the last vision layer, pooled to the token grid
    (when None, ``saliency`` (F, N) ranks the dynamic tokens instead, with a note); ``frame_features`` is
    accepted for the common interface and ignored. ``ratio``: retention in (0, 1]; ``tau``: static
    similarity threshold (None: 0.65 at ratio ≤ 0.10, else 0.8, as the reference scripts); ``beta``: a
    peak's own weight; ``k``: density neighbours, the token itself included; ``max_window``: the longest
    window in frames; ``positions``: "compact" (the reference layout, re-indexed) or "original".

    Returns a ``PruneResult`` with ``expected_kept_holitom(N, ratio, windows, n_static)`` rows in the input
    dtype and device; ``segments`` are the window sizes, ``salient`` the dynamic tokens kept, ``context`` the
    static ones, ``merged`` marks the static rows. "compact": ``index`` = 0..K−1 in layout order, ``compact``
    set, ``source`` = each row's original slot ``f·N + n`` (a static token: its window's first frame).
    "original": ``index`` = those slots, sorted. ``InvalidOptionError`` for bad parameters, ``ValueError``
    for inconsistent shapes.
    """
    F, N, D = check_embeds(embeds)
    ratio = check_ratio(ratio)
    tau, beta, k, max_window, positions = _check_params(tau, beta, k, max_window, positions, ratio)
    scores, notes = _token_scores(attn, saliency, F, N)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    device = embeds.device
    if scores.device != device:
        scores = scores.to(device)

    # 1–3. Windows (the one wait for the host), then every budget on the host.
    cap = max(min(F - 1, max_window - 1), 0)
    run = counts = None
    if cap > 0:
        run = static_run_lengths(temporal_similarity(embeds), tau, cap)
        counts = static_counts(run, cap).cpu().numpy()
        windows, delta = best_windows(counts, F, max_window)
    else:  # one frame, or windows of one frame only
        windows, delta = [(f, f) for f in range(F)], 0
    rp = rescaled_ratio(ratio, F * N, delta)
    plan = _plan(windows, counts, N, rp, notes)
    return _merge_and_lay_out(embeds, scores, run, plan, windows, beta, k, positions, notes)


@dataclass
class _Plan:
    """Host-side budgets. Per frame: its window's first frame, the window's length − 1 and the dynamic tokens
    kept; per window that keeps static tokens: (first frame, size, static positions, static tokens kept)."""

    frame_start: list[int] = field(default_factory=list)
    frame_span: list[int] = field(default_factory=list)
    frame_keep: list[int] = field(default_factory=list)
    windows: list[tuple[int, int, int, int]] = field(default_factory=list)


def _plan(windows: list[tuple[int, int]], counts: np.ndarray | None, N: int, rp: float, notes: list[str]) -> _Plan:
    plan = _Plan()
    for s, e in windows:
        size = e - s + 1
        n_static = int(counts[s, size - 1]) if size > 1 else 0
        static, dynamic = window_budget(N, n_static, size, rp)
        if static:
            plan.windows.append((s, size, n_static, static))
        plan.frame_start += [s] * size
        plan.frame_span += [size - 1] * size
        plan.frame_keep += [dynamic] * size
    if not plan.windows and not any(plan.frame_keep):  # every token static, and every count rounded to 0
        s, e = next((s, e) for s, e in windows if e > s)
        plan.windows.append((s, e - s + 1, int(counts[s, e - s]), 1))
        notes.append("holitom: the budget rounded to 0 tokens; kept 1 static token")
    return plan


def _merge_and_lay_out(embeds: Tensor, scores: Tensor, run: Tensor | None, plan: _Plan,
                       windows: list[tuple[int, int]], beta: float, k: int, positions: str,
                       notes: list[str]) -> PruneResult:
    """Steps 4–6 on the device, from the host plan (one upload)."""
    F, N, D = embeds.shape
    device = embeds.device
    B = len(plan.windows)
    table = _upload(plan.frame_start + plan.frame_span + plan.frame_keep
                    + [v for w in plan.windows for v in (*w, min(k, w[3]))], device)
    frame_start, frame_span, frame_keep, per_window = table.split([F, F, F, 5 * B])

    if run is not None:  # positions merged temporally in each frame's window
        static = (frame_span > 0)[:, None] & (run.index_select(0, frame_start.clamp_max(F - 2))
                                              >= frame_span[:, None])
    else:
        static = torch.zeros((F, N), dtype=torch.bool, device=device)
    keep_dyn = select_dynamic(scores, static, frame_keep)
    if B:
        stat_slot, stat_rows = _static_tokens(embeds, run, per_window.view(B, 5), plan, beta, k)
    else:
        stat_slot = torch.zeros(0, dtype=torch.int64, device=device)
        stat_rows = embeds.new_zeros((0, D))
    out, source, is_merged = _lay_out(embeds, keep_dyn, sum(plan.frame_keep), stat_slot, stat_rows)

    sizes = [e - s + 1 for s, e in windows]
    n_dyn, n_stat = sum(plan.frame_keep), int(stat_slot.shape[0])
    if positions == "original":
        index, perm = torch.sort(source)
        return PruneResult(embeds=out.index_select(0, perm), index=index, segments=sizes, notes=notes,
                           merged=is_merged.index_select(0, perm), salient=n_dyn, context=n_stat)
    return PruneResult(embeds=out, index=torch.arange(out.shape[0], device=device), segments=sizes, notes=notes,
                       merged=is_merged, salient=n_dyn, context=n_stat, compact=True, source=source)


def _static_tokens(embeds: Tensor, run: Tensor, per_window: Tensor, plan: _Plan, beta: float,
                   k: int) -> tuple[Tensor, Tensor]:
    """Window means at the static positions, merged by density peaks: (slots (S,), rows (S, D)), S = the static
    tokens kept, window by window and in spatial order; a row's slot is at its window's first frame.

    ``per_window`` (B, 5) int64: first frame, size, static positions, static tokens kept, density neighbours
    (``min(k, static tokens kept)``, as the reference).
    """
    F, N, D = embeds.shape
    device = embeds.device
    B = per_window.shape[0]
    starts, sizes, n_static, keep, neighbours = per_window.unbind(1)
    M = max(w[2] for w in plan.windows)
    C = max(w[3] for w in plan.windows)
    t = torch.arange(F, device=device)
    in_window = (t >= starts[:, None]) & (t < (starts + sizes)[:, None])  # (B, F)
    # window sums of every position, one matmul (0/1 weights, float32 accumulation): (B, N, D)
    sums = mm_fp32(in_window.to(embeds.dtype), embeds.reshape(F, N * D)).view(B, N, D)
    is_static = run.index_select(0, starts) >= (sizes - 1)[:, None]
    pos = torch.sort((~is_static).to(torch.uint8), dim=1, stable=True).indices[:, :M]  # static positions first
    valid = torch.arange(M, device=device) < n_static[:, None]
    # the mean in the model dtype, as the reference (it merges fp16 means)
    means = sums.gather(1, pos[..., None].expand(B, M, D)).div_(sizes.view(B, 1, 1)).to(embeds.dtype)
    merged, peak, ok = merge_static(means, valid, keep, neighbours, min(k, C), beta, C)
    slot = starts[:, None] * N + pos.gather(1, peak)
    pick = _true_positions(ok.view(-1), sum(w[3] for w in plan.windows))
    return slot.view(-1).index_select(0, pick), merged.view(-1, D).index_select(0, pick).to(embeds.dtype)


def _lay_out(embeds: Tensor, keep_dyn: Tensor, n_dyn: int, stat_slot: Tensor,
             stat_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's order: frame by frame, a window's static tokens (at its first frame) before the frame's
    dynamic ones, each group in spatial order. Returns (rows (K, D), source slots (K,), merged (K,) bool)."""
    F, N, D = embeds.shape
    device = embeds.device
    grid_static = torch.zeros(F * N, dtype=torch.bool, device=device).index_fill_(0, stat_slot, True)
    cells = torch.cat([grid_static.view(F, N), keep_dyn], dim=1).view(-1)  # (F·2N): [static | dynamic] per frame
    row_of_cell = torch.cumsum(cells, dim=0) - 1
    K = n_dyn + stat_slot.shape[0]
    out = torch.empty((K, D), dtype=embeds.dtype, device=device)
    source = torch.empty(K, dtype=torch.int64, device=device)
    dyn_slot = _true_positions(keep_dyn.view(-1), n_dyn)
    dyn_rows = row_of_cell.index_select(0, dyn_slot + (dyn_slot // N + 1) * N)  # slot f·N+j -> cell f·2N+N+j
    out.index_copy_(0, dyn_rows, embeds.reshape(F * N, D).index_select(0, dyn_slot))
    source.index_copy_(0, dyn_rows, dyn_slot)
    stat_out = row_of_cell.index_select(0, stat_slot + (stat_slot // N) * N)  # slot f·N+j -> cell f·2N+j
    out.index_copy_(0, stat_out, stat_rows)
    source.index_copy_(0, stat_out, stat_slot)
    is_merged = torch.zeros(K, dtype=torch.bool, device=device).index_fill_(0, stat_out, True)
    return out, source, is_merged


# ------------------------------------------------------------------- inner stage arithmetic (spec §3.9)


def inner_keep(n_visual: int, drop_ratio: float) -> int:
    """Visual tokens kept from layer K on: ``round(L_vis·(1 − R))`` (Python round, halves to even)."""
    return round(n_visual * (1 - drop_ratio))


def sequential_merge(hidden: Tensor, kept: Tensor, target: Tensor) -> Tensor:
    """The inner stage's order-dependent merge, in closed form.

    ``hidden`` (V, D); ``kept`` (Kp,) int64 indices of the kept tokens; ``target`` (V,) int64: for every
    dropped token its kept target's position in ``kept`` (entries of kept tokens are ignored). The reference
    applies ``h_v ← (h_v + h_u)/2`` for the dropped u in increasing index order, which gives a target with
    sources u_1 < … < u_m the value ``h_v/2^m + Σ_i h_{u_i}/2^(m−i+1)``. Returns (Kp, D) in float32.
    """
    V = hidden.shape[0]
    dropped = torch.ones(V, dtype=torch.bool, device=hidden.device)
    dropped[kept] = False
    onehot = (target[None, :] == torch.arange(kept.numel(), device=hidden.device)[:, None]) & dropped[None, :]
    # sources at or after u with the same target, u included: u is halved once by each of them
    later = onehot.flip(1).cumsum(dim=1).flip(1)
    weights = torch.where(onehot, torch.exp2(-later.float()), 0.0)  # (Kp, V)
    own = torch.exp2(-onehot.sum(dim=1, dtype=torch.float32))[:, None]
    return own * hidden[kept].float() + weights @ hidden.float()


def llm_flops(n: int, hidden: int, ffn: int, layers: int, inner: tuple[int, float] | None = None) -> float:
    """HoliTom's FLOPs model of the LLM over n visual tokens (spec TV-H4): per layer
    ``4·n·d² + 2·n²·d + 2·n·d·m``; with ``inner = (K, R)`` the layers from K on see ``n·(1 − R)`` tokens."""
    def per_layer(tokens: float) -> float:
        return 4 * tokens * hidden**2 + 2 * tokens**2 * hidden + 2 * tokens * hidden * ffn

    if inner is None:
        return layers * per_layer(n)
    k, r = inner
    return k * per_layer(n) + (layers - k) * per_layer(n * (1 - r))


__all__ = [
    "best_windows",
    "default_tau",
    "expected_kept_holitom",
    "holitom",
    "inner_keep",
    "llm_flops",
    "merge_static",
    "rescaled_ratio",
    "segment_windows",
    "select_dynamic",
    "sequential_merge",
    "static_counts",
    "static_run_lengths",
    "temporal_similarity",
    "window_budget",
    "window_gains",
]
