"""FastVID token pruning (arXiv 2503.11187), with the semantics of the reference LLaVA-OneVision code.

Reference: LunarShen/FastVID @ a40a109, "parallel" OV version; see docs fastvid-spec.md §2.3–2.10, §2.14.
Pure tensor code: no transformers, no I/O. Input is one video's LLM-input embeddings, frame-major.

Pipeline (F frames of N tokens, D channels):

1. DySeg: cosine of adjacent L2-normalised frame features; cut after the ``c−1`` least similar
   transitions and after every transition with similarity ``< tau``.
2. Per-frame budget ``R = int(N·r)``: ``q = int(R·d)`` context tokens, ``s = R − q`` salient ones.
3. Anchor frames: in each segment of L frames, the last frame and then every p-th one going backwards;
   each anchor gets ``floor(q·L / ceil(L/p))`` context tokens.
4. ATS: the ``s`` most salient tokens of every frame are kept as they are.
5. DPC-kNN density-peak score of each frame's other tokens; an anchor's context tokens are its top scores.
6. DTM: every non-salient token of the segment (of the frame alone, for anchors whose budget is exactly q)
   is assigned to its most cosine-similar context token of each anchor; the context token becomes
   ``w·x_c + (1−w)·mean(assigned)``, ``w = max(1/(n_c+1), beta)``, and keeps its own slot.
7. Output: kept tokens in original order, with their original flat slots ``f·N + n``.

Deviations from the reference, all deliberate:

* Deterministic: no density noise; every top-k breaks ties by the lowest index (see ``density.py``).
* Arguments the reference crashes on are adapted and reported in ``PruneResult.notes``: fewer frames
  than ``c``, a zero per-frame budget, a context budget above the non-salient tokens of a frame.
* Zero-norm vectors are normalised to zero instead of NaN.
* Merge sums are accumulated and blended in float32; the reference rounds them to the model dtype.

Speed: one device→host transfer (the F−1 adjacent similarities, overlapped with the density computation)
and one host→device transfer of small index lists; the rest is batched over frames and anchors.
"""

from __future__ import annotations

import math
import numbers
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .density import dpc_scores, mm_fp32


@dataclass
class PruneResult:
    """The tokens a pruning method keeps, and how it chose them.

    ``embeds`` (K, D) in the input dtype and on the input device; ``index`` (K,) int64, the original flat
    slot ``f·N + n`` of each kept row, strictly increasing.
    """

    embeds: Tensor
    index: Tensor
    segments: list[int] = field(default_factory=list)  # DySeg segment sizes, in order; [] for no pruning
    notes: list[str] = field(default_factory=list)  # adaptations of the arguments, human-readable
    merged: Tensor | None = None  # (K,) bool: True where the row is a merged context token
    salient: int = 0  # kept salient (ATS) tokens
    context: int = 0  # kept merged context (DTM) tokens
    budget: tuple[int, int, int] | None = None  # per frame (R, s, q)
    anchors: list[tuple[int, int]] = field(default_factory=list)  # (anchor frame, context tokens kept)
    similarities: list[float] = field(default_factory=list)  # DySeg adjacent-frame cosines (F−1)

    @property
    def kept(self) -> int:
        return int(self.index.shape[0])


# ----------------------------------------------------------------------------------------- arithmetic


def frame_budget(n_tokens: int, ratio: float, d: float) -> tuple[int, int, int]:
    """Per-frame ``(R, s, q)``: ``R = int(N·r)`` (raised to 1 if 0), ``q = int(R·d)``, ``s = R − q``."""
    R = max(int(n_tokens * ratio), 1)
    q = int(R * d)
    return R, R - q, q


def anchor_positions(length: int, p: int) -> list[int]:
    """In-segment indices of the anchor frames of a segment: the last, then every p-th going backwards."""
    return [j for j in range(length) if (length - 1 - j) % p == 0]


def context_budget(length: int, q: int, p: int) -> int:
    """Context tokens of each anchor of a segment of ``length`` frames: ``floor(q·L / ceil(L/p))``."""
    return (q * length) // -(-length // p)


def dyseg_segments(similarities: list[float], c: int, tau: float) -> list[int]:
    """DySeg segment sizes from the F−1 adjacent-frame similarities.

    Cuts after the ``c−1`` lowest similarities (ties: lowest index) and after every one ``< tau`` (NaN
    counts as a cut). ``c−1`` is capped at the number of transitions.
    """
    n = len(similarities)
    key = [(-math.inf if s != s else s) for s in similarities]
    lowest = sorted(range(n), key=lambda i: (key[i], i))[: max(min(c - 1, n), 0)]
    below = [i for i in range(n) if not similarities[i] >= tau]
    bounds = [-1, *sorted(set(lowest) | set(below)), n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def expected_kept(F: int, N: int, ratio: float, d: float, p: int, segment_sizes: list[int]) -> int:
    """Closed-form number of kept video tokens (spec §4.1), with the same clamps as ``fastvid``.

    ``F·s + Σ_segments ceil(L/p) · min(floor(q·L / ceil(L/p)), N − s)``; ``F·N`` at ratio 1.
    """
    if sum(segment_sizes) != F or any(L < 1 for L in segment_sizes):
        raise ValueError(f"segment sizes {segment_sizes} do not partition {F} frames")
    if ratio >= 1.0:
        return F * N
    _, s, q = frame_budget(N, ratio, d)
    total = F * s
    for L in segment_sizes:
        total += -(-L // p) * min(context_budget(L, q, p), N - s)
    return total


# ------------------------------------------------------------------------------------------ validation


def _number(name: str, value, *, integer: bool = False):
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise InvalidOptionError(f"{name} must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    if value != value:
        raise InvalidOptionError(f"{name} must be a number, got NaN")
    return value


def _check_params(ratio, c, tau, d, p, beta, k) -> tuple[float, int, float, float, int, float, int]:
    ratio = _number("ratio", ratio)
    if not 0.0 < ratio <= 1.0:
        raise InvalidOptionError(f"ratio must be in (0, 1], got {ratio:g}")
    c = _number("c", c, integer=True)
    if c < 1:
        raise InvalidOptionError(f"c (minimum number of segments) must be at least 1, got {c}")
    tau = _number("tau", tau)
    d = _number("d", d)
    if not 0.0 <= d <= 1.0:
        raise InvalidOptionError(f"d (context share of the budget) must be in [0, 1], got {d:g}")
    p = _number("p", p, integer=True)
    if p < 1:
        raise InvalidOptionError(f"p (anchor period) must be at least 1, got {p}")
    beta = _number("beta", beta)
    if not 0.0 <= beta <= 1.0:
        raise InvalidOptionError(f"beta must be in [0, 1], got {beta:g}")
    k = _number("k", k, integer=True)
    if k < 1:
        raise InvalidOptionError(f"k (density neighbours) must be at least 1, got {k}")
    return ratio, c, tau, d, p, beta, k


def _check_shapes(embeds: Tensor, saliency: Tensor, frame_features: Tensor) -> tuple[int, int, int]:
    if not isinstance(embeds, Tensor) or embeds.dim() != 3:
        shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
        raise ValueError(f"embeds must have shape (frames, tokens, dim), got {shape}")
    F, N, D = embeds.shape
    if F < 1 or N < 1 or D < 1:
        raise ValueError(f"embeds must be non-empty, got shape {tuple(embeds.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"embeds must be a float tensor, got {embeds.dtype}")
    if not isinstance(saliency, Tensor) or tuple(saliency.shape) != (F, N):
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must have shape (frames, tokens) = {(F, N)}, got {shape}")
    if not isinstance(frame_features, Tensor) or frame_features.dim() != 2 or frame_features.shape[0] != F:
        shape = tuple(frame_features.shape) if isinstance(frame_features, Tensor) else type(frame_features).__name__
        raise ValueError(f"frame_features must have shape ({F}, dim), got {shape}")
    if frame_features.shape[1] < 1:
        raise ValueError("frame_features must have at least one channel")
    return F, N, D


# ------------------------------------------------------------------------------------------ tensor ops


def _l2_normalize(x: Tensor) -> Tensor:
    """x / ||x|| along the last dim, in x's dtype (as the reference does); zero vectors stay zero."""
    norm = x.norm(dim=-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def _adjacent_similarities(frame_features: Tensor) -> Tensor:
    g = frame_features if frame_features.is_floating_point() else frame_features.float()
    g = _l2_normalize(g)
    return (g[:-1] * g[1:]).sum(dim=1)


def _host_copy_async(t: Tensor) -> tuple[Tensor, Callable[[], None]]:
    """Start copying ``t`` to the host; returns the host tensor and a function that waits for it.

    On CUDA the copy goes to pinned memory behind an event, so work queued after it keeps the GPU busy
    while the host waits for this small tensor alone.
    """
    if t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(t.device))
        return host, event.synchronize
    return t.cpu(), lambda: None


def _to_device(device: torch.device, ints: list[int], flags: bytes) -> tuple[Tensor, Tensor]:
    """Small host int64 values and bool flags -> (ints (n,), flags (m,)) on ``device``, in one transfer.

    Both are packed into one byte buffer (int64 first, so the int64 view is aligned) that travels as one
    non-blocking copy from pinned memory; the device tensors are views into it.
    """
    n = len(ints)
    host = torch.frombuffer(bytearray(array("q", ints).tobytes() + flags), dtype=torch.uint8)
    if device.type == "cuda":
        dev = host.pin_memory().to(device, non_blocking=True)
    else:
        dev = host.to(device)
    head, tail = dev.split_with_sizes([8 * n, len(flags)])
    return head.view(torch.int64), tail.view(torch.bool)


# Small constant device tensors, built once per key: (name, device, *sizes) -> tensor.
_CONSTANTS: dict[tuple, Tensor] = {}


def _constant(key: tuple, make: Callable[[], Tensor]) -> Tensor:
    value = _CONSTANTS.get(key)
    if value is None:
        if len(_CONSTANTS) >= 64:
            _CONSTANTS.clear()
        value = _CONSTANTS[key] = make()
    return value


def _row_offsets(device: torch.device, rows: int, width: int) -> Tensor:
    """(rows, 1) int64 ``[0, width, 2·width, …]``: adds row starts to per-row column indices."""
    return _constant(("rows", device, rows, width), lambda: torch.arange(0, rows * width, width, device=device)[:, None])


def _blend_table(device: torch.device, beta: float, n_max: int) -> Tensor:
    """(≥ n_max+1, 2) float32, row n = ``[max(n, 1), max(1/(n+1), beta)]``: the divisor of the mean and the
    own weight of a context token that absorbed n tokens (the same float32 arithmetic as computing them
    from the counts directly)."""
    key = ("blend", device, beta)
    table = _CONSTANTS.get(key)
    if table is None or table.shape[0] <= n_max:
        size = max(1024, 1 << n_max.bit_length())
        n = torch.arange(size, device=device, dtype=torch.float32)[:, None]
        table = torch.cat([n.clamp_min(1.0), (n + 1.0).reciprocal_().clamp_min_(beta)], dim=1)
        if len(_CONSTANTS) >= 64:
            _CONSTANTS.clear()
        _CONSTANTS[key] = table
    return table


# ----------------------------------------------------------------------------------------------- API


def keep_all(embeds: Tensor, saliency: Tensor | None = None, frame_features: Tensor | None = None,
             ratio: float = 1.0, *, note: str | None = None, **_params) -> PruneResult:
    """Method "none": keep every token unchanged. (F, N, D) -> PruneResult with index = arange(F·N)."""
    if not isinstance(embeds, Tensor) or embeds.dim() != 3:
        shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
        raise ValueError(f"embeds must have shape (frames, tokens, dim), got {shape}")
    F, N, D = embeds.shape
    index = torch.arange(F * N, device=embeds.device)
    return PruneResult(
        embeds=embeds.reshape(F * N, D),
        index=index,
        notes=[note] if note else [],
        merged=torch.zeros(F * N, dtype=torch.bool, device=embeds.device),
        salient=F * N,
    )


@torch.no_grad()
def fastvid(
    embeds: Tensor,
    saliency: Tensor,
    frame_features: Tensor,
    ratio: float = 0.1,
    c: int = 8,
    tau: float = 0.9,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    k: int = 4,
) -> PruneResult:
    """Prune one video's tokens with FastVID.

    ``embeds`` (F, N, D) LLM-input video embeddings, frame-major, any float dtype; ``saliency`` (F, N)
    per-token saliency (higher = keep); ``frame_features`` (F, Dg) one global feature per frame.
    ``ratio``: per-frame retention in (0, 1]; ``c``, ``tau``: DySeg; ``d``: context share of the budget;
    ``p``: anchor period; ``beta``: lower bound of a context token's own weight; ``k``: density
    neighbours, the token itself included.

    Returns a ``PruneResult`` with K = ``expected_kept(F, N, ratio, d, p, result.segments)`` rows, on the
    device and in the dtype of ``embeds``. Raises ``InvalidOptionError`` for out-of-range parameters and
    ``ValueError`` for inconsistent shapes.
    """
    F, N, D = _check_shapes(embeds, saliency, frame_features)
    ratio, c, tau, d, p, beta, k = _check_params(ratio, c, tau, d, p, beta, k)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")

    device = embeds.device
    if saliency.device != device:
        saliency = saliency.to(device)
    if frame_features.device != device:
        frame_features = frame_features.to(device)
    notes: list[str] = []

    R, s, q = frame_budget(N, ratio, d)
    if int(N * ratio) == 0:
        notes.append(f"per-frame budget raised from 0 to 1 token: {N} tokens x ratio {ratio:g} < 1")
    M = N - s  # non-salient tokens per frame (≥ q, and ≥ 1 since R < N)
    flat = embeds.reshape(F * N, D)

    # 1. DySeg similarities, sent to the host while the work below runs on the device.
    if F > 1:
        sims_host, wait_for_sims = _host_copy_async(_adjacent_similarities(frame_features))

    # 2. Everything that does not depend on the segmentation, queued before the one wait for the host.
    # ATS: flat slots f·N + n of each frame's tokens, most salient first (ties: lowest index).
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
    order += _row_offsets(device, F, N)
    salient, rest = order.split_with_sizes([s, M], dim=1)
    if q > 0:
        rest = torch.sort(rest, dim=1).values  # (F, M) non-salient slots, increasing
        x_rest = flat.index_select(0, rest.view(-1))  # (F·M, D), row f·M + m
        kk = min(k, M)
        if kk < k:
            notes.append(f"density neighbours k lowered from {k} to {kk}: only {M} non-salient tokens per frame")
        score = dpc_scores(x_rest.view(F, M, D), kk)[2]
        # rows of x_rest, each frame's context candidates in selection order (ties: lowest index)
        cand = torch.sort(score, dim=1, descending=True, stable=True).indices
        cand += _row_offsets(device, F, M)
        xn_rest = _l2_normalize(x_rest)

    # 3. Segmentation and anchor budgets, on the host.
    if F > 1:
        wait_for_sims()
        similarities = sims_host.tolist()
    else:
        similarities = []
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} frame{'s' if F != 1 else ''}")
    sizes = dyseg_segments(similarities, min(c, F), tau)

    # Anchors: (frame, context tokens kept, group). A multi-frame anchor merges the non-salient tokens of
    # its whole segment (group = segment number); an anchor whose budget is exactly q merges within its own
    # frame only, as the reference does (group = n_segments + frame). Every frame gets the group it
    # belongs to as a source of tokens.
    anchors: list[tuple[int, int]] = []
    anchor_group: list[int] = []
    frame_group: list[int] = []
    clamped: dict[int, list[int]] = {}
    n_seg = len(sizes)
    start = 0
    for j, L in enumerate(sizes):
        budget = context_budget(L, q, p)
        kept = min(budget, M)
        if budget > M:
            clamped.setdefault(budget, []).append(L)
        if budget == q:
            frame_group.extend(range(n_seg + start, n_seg + start + L))
        else:
            frame_group.extend([j] * L)
        if kept > 0:
            for i in anchor_positions(L, p):
                anchors.append((start + i, kept))
                anchor_group.append(n_seg + start + i if budget == q else j)
        start += L
    for budget, lengths in sorted(clamped.items()):
        notes.append(
            f"context tokens per anchor lowered from {budget} to {M} (only {M} non-salient tokens per frame) "
            f"in segments of {'/'.join(str(L) for L in sorted(set(lengths)))} frames"
        )

    Fs = F * s
    if not anchors:  # q == 0: salient tokens only, each frame's in increasing slot order
        index = torch.sort(salient, dim=1).values.view(-1)
        return PruneResult(
            embeds=flat.index_select(0, index), index=index, segments=sizes, notes=notes,
            merged=torch.zeros(Fs, dtype=torch.bool, device=device), salient=Fs, context=0,
            budget=(R, s, q), anchors=anchors, similarities=similarities,
        )

    # 4. Merge (DTM), all anchors at once. A = anchors, K = most context tokens of one anchor, T = all
    # context tokens. Host lists, in one transfer: for each anchor its K candidate positions (padded with
    # its first) and then the T real ones, as indices into cand; the group of each frame and anchor; the
    # first target row of each anchor; and which of the (A, K) columns are padding.
    A = len(anchors)
    K = max(b for _, b in anchors)
    ints: list[int] = []
    pad = bytearray()
    firsts: list[int] = []
    T = 0
    for f, b in anchors:
        first = f * M
        ints.extend(range(first, first + b))
        if b < K:
            ints.extend([first] * (K - b))
            pad += b"\0" * b + b"\1" * (K - b)
        else:
            pad += b"\0" * K
        firsts.append(T)
        T += b
    for f, b in anchors:
        ints.extend(range(f * M, f * M + b))
    ints += frame_group
    ints += anchor_group
    ints += firsts
    own_by_mm = embeds.dtype in (torch.float16, torch.bfloat16)  # exact: 1.0 · x in float32
    dump = 2 * T if own_by_mm else T  # first row of the (K rows) dump for excluded (source, anchor) pairs
    U, pad_dev = _to_device(device, ints, bytes(pad) if K * A > T else b"")
    AK = A * K
    sel, frame_group_d, anchor_group_d, firsts_d = U.split_with_sizes([AK + T, F, A, A])
    # x_rest rows of the targets: (A, K) padded, and the T real ones
    rows_p, rows_c = cand.view(-1).index_select(0, sel).split_with_sizes([AK, T])

    S = F * M
    sim = torch.mm(xn_rest, xn_rest.index_select(0, rows_p).T).view(S, A, K)  # input dtype, as the reference
    if K * A > T:
        sim.masked_fill_(pad_dev.view(A, K), float("-inf"))
    assign = sim.argmax(dim=2)  # (S, A): first maximum = earliest in selection order
    # onehot row of each (source, anchor) pair: the anchor's first row + the chosen column, or the dump
    base = torch.where(frame_group_d[:, None] == anchor_group_d, firsts_d, dump)  # (F, A)
    assign.view(F, M, A).add_(base[:, None, :])
    onehot = embeds.new_zeros((dump + K, S))  # (target, source); one-hot values are exact in any dtype
    onehot.scatter_(0, assign.T, 1.0)
    if own_by_mm:  # rows T..2T pick each target's own token, so the product below also copies them
        members, own_pick, _ = onehot.split_with_sizes([T, T, K])
        own_pick.scatter_(1, rows_c[:, None], 1.0)
        sums, own = mm_fp32(onehot[: 2 * T], x_rest).split_with_sizes([T, T])  # float32
    else:
        members = onehot[:T]
        sums = mm_fp32(members, x_rest)
        own = x_rest.index_select(0, rows_c).float()
    counts = members.sum(dim=1, dtype=torch.int64)  # n_c
    # (T, 1) each: max(n, 1) and w = max(1/(n+1), beta)
    divisor, w = _blend_table(device, beta, S).index_select(0, counts).split_with_sizes([1, 1], dim=1)
    merged_rows = torch.lerp(sums.div_(divisor), own, w)  # w·x_c + (1−w)·mean, written as one lerp

    # 5. Output: salient and merged tokens by slot.
    K_out = Fs + T
    slots = torch.empty(K_out, dtype=torch.int64, device=device)
    rows_out = torch.empty((K_out, D), dtype=embeds.dtype, device=device)
    slots_s, slots_c = slots.split_with_sizes([Fs, T])
    rows_s, rows_c_out = rows_out.split_with_sizes([Fs, T])
    if s:
        slots_s.view(F, s).copy_(salient)
        torch.index_select(flat, 0, slots_s, out=rows_s)
    torch.index_select(rest.view(-1), 0, rows_c, out=slots_c)
    rows_c_out.copy_(merged_rows)
    index, perm = torch.sort(slots)
    return PruneResult(
        embeds=rows_out.index_select(0, perm),
        index=index,
        segments=sizes,
        notes=notes,
        merged=perm >= Fs,
        salient=Fs,
        context=T,
        budget=(R, s, q),
        anchors=anchors,
        similarities=similarities,
    )


def prune_fastvid(
    embeds: Tensor,
    saliency: Tensor,
    frame_features: Tensor,
    ratio: float = 0.1,
    c: int = 8,
    tau: float = 0.9,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    k: int = 4,
) -> tuple[Tensor, Tensor]:
    """FastVID: (F, N, D) embeddings -> (kept_embeds (K, D), kept_index (K,) int64, strictly increasing).

    Same arguments as ``fastvid``, which also reports the segmentation and notes.
    """
    result = fastvid(embeds, saliency, frame_features, ratio=ratio, c=c, tau=tau, d=d, p=p, beta=beta, k=k)
    return result.embeds, result.index
