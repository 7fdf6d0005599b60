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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .density import bmm_fp32, dpc_scores, topk_lowest_index


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


def _ints_to_device(device: torch.device, *lists: list[int]) -> list[Tensor]:
    """Several small host int lists -> int64 tensors on ``device``, in one (non-blocking) transfer."""
    lengths = [len(values) for values in lists]
    if not any(lengths):
        return [torch.empty(0, dtype=torch.int64, device=device) for _ in lists]
    host = torch.tensor([v for values in lists for v in values], dtype=torch.int64)
    if device.type == "cuda":
        dev = host.pin_memory().to(device, non_blocking=True)
    else:
        dev = host.to(device)
    return list(dev.split(lengths))


def _merge(x: Tensor, xn: Tensor, targets: Tensor, col_ok: Tensor | None, pair_ok: Tensor | None, beta: float) -> Tensor:
    """Density-based token merging (DTM) for a batch of groups of source tokens.

    ``x``/``xn``: (G, S, D) sources and their L2-normalised copies (input dtype). ``targets``: (G, A, K)
    int64, for each of A anchors the rows of its K context tokens among the S sources, in selection order
    (a similarity tie goes to the earlier one, like argmax in the reference). ``col_ok``: (A, K) bool,
    which of the K columns are real (anchors with fewer than K tokens), or None for all. ``pair_ok``:
    (G, S, A) bool, whether source s merges into anchor a at all, or None for all.

    Every source is assigned, independently for each anchor, to that anchor's most cosine-similar context
    token; each context token c then becomes ``w·x_c + (1−w)·mean(assigned)``, ``w = max(1/(n_c+1), beta)``.
    Returns (G, A·K, D) float32; rows of unused columns are meaningless.
    """
    G, S, D = x.shape
    A, K = targets.shape[1:]
    gather_idx = targets.reshape(G, A * K, 1).expand(G, A * K, D)
    sim = torch.bmm(xn, xn.gather(1, gather_idx).transpose(1, 2)).view(G, S, A, K)
    if col_ok is not None:
        sim = sim.masked_fill(~col_ok, float("-inf"))
    assign = sim.argmax(dim=-1)  # (G, S, A): first maximum, as torch documents
    rows = assign + torch.arange(0, A * K, K, device=x.device)  # flat target of each (source, anchor)
    onehot = x.new_zeros((G, A * K, S))  # (target, source); one-hot values are exact in any dtype
    if pair_ok is None:
        onehot.scatter_(1, rows.transpose(1, 2), 1.0)
    else:  # (source, anchor) pairs never collide, so writing zeros for the excluded ones is safe
        onehot.scatter_(1, rows.transpose(1, 2), pair_ok.transpose(1, 2).to(x.dtype))
    counts = onehot.sum(dim=-1, dtype=torch.float32)[..., None]  # n_c, (G, A·K, 1)
    sums = bmm_fp32(onehot, x)  # (G, A·K, D)
    own = x.gather(1, gather_idx).float()
    w = (counts + 1.0).reciprocal_().clamp_min_(beta)
    # w·x_c + (1−w)·mean, written as one lerp
    return torch.lerp(sums.div_(counts.clamp_min(1.0)), own, w)


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
    saliency = saliency.to(device)
    frame_features = frame_features.to(device)
    notes: list[str] = []

    R, s, q = frame_budget(N, ratio, d)
    if int(N * ratio) == 0:
        notes.append(f"per-frame budget raised from 0 to 1 token: {N} tokens x ratio {ratio:g} < 1")
    M = N - s  # non-salient tokens per frame (≥ q, and ≥ 1 since R < N)

    # 1. DySeg similarities, sent to the host while the density work below runs on the device.
    if F > 1:
        sims_host, wait_for_sims = _host_copy_async(_adjacent_similarities(frame_features))

    # 2. ATS and density scores: they do not depend on the segmentation.
    frames = torch.arange(F, device=device)
    by_saliency = topk_lowest_index(saliency, N, dim=1)  # (F, N), most salient first
    salient_idx = by_saliency[:, :s]
    rest_idx = torch.sort(by_saliency[:, s:], dim=1).values  # (F, M), increasing token index
    if q > 0:
        x_rest = embeds[frames[:, None], rest_idx]  # (F, M, D)
        kk = min(k, M)
        if kk < k:
            notes.append(f"density neighbours k lowered from {k} to {kk}: only {M} non-salient tokens per frame")
        _, _, score = dpc_scores(x_rest, kk)
        by_score = topk_lowest_index(score, M, dim=1)  # (F, M), context candidates in selection order

    # 3. Segmentation and anchor budgets, on the host.
    if F > 1:
        wait_for_sims()
        similarities = [float(v) for v in sims_host.tolist()]
    else:
        similarities = []
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} frame{'s' if F != 1 else ''}")
    sizes = dyseg_segments(similarities, min(c, F), tau)

    single: list[int] = []  # anchors whose budget is exactly q: merged within their own frame (as the reference)
    multi: list[tuple[int, int, int, int]] = []  # (frame, budget, first frame, end frame) of the segment
    anchors: list[tuple[int, int]] = []
    clamped: dict[int, list[int]] = {}
    start = 0
    for L in sizes:
        budget = context_budget(L, q, p)
        kept = min(budget, M)
        if budget > M:
            clamped.setdefault(budget, []).append(L)
        if kept > 0:
            for j in anchor_positions(L, p):
                anchors.append((start + j, kept))
                if budget == q:
                    single.append(start + j)
                else:
                    multi.append((start + j, kept, start, start + L))
        start += L
    for budget, lengths in sorted(clamped.items()):
        notes.append(
            f"context tokens per anchor lowered from {budget} to {M} (only {M} non-salient tokens per frame) "
            f"in segments of {'/'.join(str(L) for L in sorted(set(lengths)))} frames"
        )

    # 4. Merge (DTM). Index lists travel to the device in one transfer.
    k_max = max((b for _, b, _, _ in multi), default=0)
    select = [a * k_max + j for a, (_, b, _, _) in enumerate(multi) for j in range(b)]
    single_t, multi_f, multi_b, multi_lo, multi_hi, select_t = _ints_to_device(
        device, single, [m[0] for m in multi], [m[1] for m in multi], [m[2] for m in multi],
        [m[3] for m in multi], select,
    )
    out_rows = [embeds[frames[:, None], salient_idx].reshape(F * s, D)]
    out_slots = [(frames[:, None] * N + salient_idx).reshape(-1)]
    n_context = 0
    if single or multi:
        xn_rest = _l2_normalize(x_rest)
    if single:
        whole = len(single) == F
        xs = x_rest if whole else x_rest.index_select(0, single_t)
        xns = xn_rest if whole else xn_rest.index_select(0, single_t)
        targets = by_score.index_select(0, single_t)[:, :q]  # (Fs, q)
        y = _merge(xs, xns, targets[:, None, :], None, None, beta)  # (Fs, q, D)
        out_rows.append(y.reshape(-1, D).to(embeds.dtype))
        out_slots.append((single_t[:, None] * N + rest_idx.index_select(0, single_t).gather(1, targets)).reshape(-1))
        n_context += len(single) * q
    if multi:
        # All multi-frame anchors at once: sources are the frames spanned by those segments, and a
        # (source, anchor) pair counts only inside the anchor's own segment.
        lo, hi = min(m[2] for m in multi), max(m[3] for m in multi)
        xs = x_rest[lo:hi].reshape(1, (hi - lo) * M, D)
        xns = xn_rest[lo:hi].reshape(1, (hi - lo) * M, D)
        local = by_score.index_select(0, multi_f)[:, :k_max]  # (A, k_max), into the anchor's frame
        targets = (multi_f - lo)[:, None] * M + local  # rows among the sources
        col_ok = torch.arange(k_max, device=device)[None, :] < multi_b[:, None]
        source_frame = torch.arange(lo, hi, device=device)[:, None]
        pair_ok = (source_frame >= multi_lo[None, :]) & (source_frame < multi_hi[None, :])  # (frames, A)
        pair_ok = pair_ok[:, None, :].expand(hi - lo, M, len(multi)).reshape(1, (hi - lo) * M, len(multi))
        y = _merge(xs, xns, targets[None], col_ok, pair_ok, beta)[0]  # (A·k_max, D)
        out_rows.append(y.index_select(0, select_t).to(embeds.dtype))
        slots = multi_f[:, None] * N + rest_idx.index_select(0, multi_f).gather(1, local)
        out_slots.append(slots.reshape(-1).index_select(0, select_t))
        n_context += len(select)

    slots = torch.cat(out_slots)
    order = torch.argsort(slots)
    merged = torch.zeros(slots.shape[0], dtype=torch.bool, device=device)
    merged[F * s:] = True
    return PruneResult(
        embeds=torch.cat(out_rows).index_select(0, order),
        index=slots.index_select(0, order),
        segments=sizes,
        notes=notes,
        merged=merged.index_select(0, order),
        salient=F * s,
        context=n_context,
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
