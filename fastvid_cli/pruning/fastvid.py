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

Speed (host overhead dominates on a GPU): per call one device→host transfer and wait (the F−1 adjacent
similarities) and one host→device transfer (all the small index tables, packed in one buffer); a fixed
number of operations, whatever the number of segments, with all anchors merged together. Everything before
the wait does not depend on the segmentation; on CUDA it is captured as CUDA graphs the second time an
input shape is seen and replayed after that (``CUDA_GRAPHS``, ``release_cuda_graphs``).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .density import dpc_scores, mm_fp32
from .result import PruneResult, check_inputs, check_number, keep_all, positive_int, share


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


def check_params(ratio, c, tau, d, p, beta, k) -> tuple[float, int, float, float, int, float, int]:
    """FastVID's arguments, checked and converted (its Qwen variant takes the same ones)."""
    ratio = check_number("ratio", ratio)
    if not 0.0 < ratio <= 1.0:
        raise InvalidOptionError(f"ratio must be in (0, 1], got {ratio:g}")
    return (ratio, positive_int("c (minimum number of segments)", c), check_number("tau", tau),
            share("d (context share of the budget)", d), positive_int("p (anchor period)", p), share("beta", beta),
            positive_int("k (density neighbours)", k))


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


def _to_device(device: torch.device, data: bytes) -> Tensor:
    """Host bytes -> a uint8 tensor on ``device``: one non-blocking copy from pinned memory on CUDA."""
    host = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


# Small constant tensors, built once and never dropped (a CUDA graph may have captured them):
# (name, device, *sizes) -> tensor.
_CONSTANTS: dict[tuple, Tensor] = {}


def _row_offsets(device: torch.device, rows: int, width: int) -> Tensor:
    """(rows, 1) int64 ``[0, width, 2·width, …]``: adds row starts to per-row column indices."""
    key = ("rows", device, rows, width)
    value = _CONSTANTS.get(key)
    if value is None:
        with torch.inference_mode(False):  # a normal tensor, usable outside inference mode too
            value = _CONSTANTS[key] = torch.arange(0, rows * width, width, device=device)[:, None]
    return value


def _one_bytes(dtype: torch.dtype) -> bytes:
    """The bytes of the value 1 in ``dtype``."""
    key = ("one", dtype)
    value = _CONSTANTS.get(key)
    if value is None:
        value = _CONSTANTS[key] = bytes(torch.ones(1, dtype=dtype).view(torch.uint8).tolist())
    return value


def _first_half_ats(saliency: Tensor, frame_features: Tensor, s: int, with_rest: bool):
    """DySeg similarities and ATS: (sims (F−1,) or None, order (F, N), rest (F, M) or None).

    ``order``: each frame's flat slots ``f·N + n``, most salient first (ties: lowest index); ``rest``:
    its non-salient slots in increasing order.
    """
    F, N = saliency.shape
    sims = _adjacent_similarities(frame_features) if F > 1 else None
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
    order += _row_offsets(saliency.device, F, N)
    rest = torch.sort(order[:, s:], dim=1).values if with_rest else None
    return sims, order, rest


def _first_half_density(x_rest: Tensor, F: int, M: int, kk: int) -> tuple[Tensor, Tensor]:
    """Context candidates and normalised tokens: (cand (F, M), xn_rest (F·M, D)).

    ``cand``: rows of ``x_rest``, each frame's in selection order (density-peak score, ties: lowest index).
    """
    score = dpc_scores(x_rest.view(F, M, x_rest.shape[1]), kk)[2]
    cand = torch.sort(score, dim=1, descending=True, stable=True).indices
    cand += _row_offsets(x_rest.device, F, M)
    return cand, _l2_normalize(x_rest)


# ----------------------------------------------------------------------- CUDA graphs of the first half

_OWN_BY_MM_MAX = 1 << 22  # largest sources × targets for which the merge product also copies the targets

CUDA_GRAPHS = True  # on CUDA, replay the first half of a repeated input shape as CUDA graphs
_GRAPHS_KEPT = 2  # graphs are kept for this many input shapes (each holds its buffers on the GPU)
_graphs: OrderedDict[tuple, _FirstHalfGraphs | None] = OrderedDict()  # None: capture failed
_graph_seen: dict[tuple, int] = {}
_graph_lock = threading.Lock()


class _FirstHalfGraphs:
    """Everything ``fastvid`` does before its one wait for the host, for one input shape, as two CUDA graphs.

    That part (about 40 kernels) does not depend on the segmentation, so replaying it costs a few host
    operations instead of one per kernel. Graph 1 computes the similarities and ATS from static copies of
    the saliency and frame features; the gather of the non-salient tokens runs between the graphs, into a
    static buffer, so the embeddings need no copy; graph 2 computes the density scores and candidates from
    that buffer. The outputs are static tensors, overwritten by the next replay: ``lock`` is held from the
    replay until everything reading them is queued, and a key includes the stream, so later work on the
    same stream sees them intact.
    """

    def __init__(self, embeds: Tensor, saliency: Tensor, frame_features: Tensor, s: int, M: int, kk: int):
        F, N, D = embeds.shape
        device = embeds.device
        self.lock = threading.Lock()
        self.s, self.M, self.kk = s, M, kk
        self.saliency = torch.empty(saliency.shape, dtype=saliency.dtype, device=device)
        self.features = torch.empty(frame_features.shape, dtype=frame_features.dtype, device=device)
        self.x_rest = torch.empty((F * M, D), dtype=embeds.dtype, device=device) if kk else None
        flat = embeds.reshape(F * N, D)
        self._load(saliency, frame_features)
        # Warm up on a side stream, as torch.cuda.graphs asks, then capture.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._run_eager(flat)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph1 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph1, capture_error_mode="thread_local"):
            self.sims, self.order, self.rest = _first_half_ats(self.saliency, self.features, s, kk > 0)
        if kk:
            self.graph2 = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph2, pool=self.graph1.pool(), capture_error_mode="thread_local"):
                self.cand, self.xn_rest = _first_half_density(self.x_rest, F, M, kk)
        else:
            self.cand = self.xn_rest = None
        self.sims_host = torch.empty(self.sims.shape, dtype=self.sims.dtype, pin_memory=True) if F > 1 else None
        self.event = torch.cuda.Event()

    def _load(self, saliency: Tensor, frame_features: Tensor) -> None:
        self.saliency.copy_(saliency)
        if frame_features.shape[0] > 1:
            self.features.copy_(frame_features)

    def _run_eager(self, flat: Tensor) -> None:
        _, order, rest = _first_half_ats(self.saliency, self.features, self.s, self.kk > 0)
        if self.kk:
            torch.index_select(flat, 0, rest.view(-1), out=self.x_rest)
            _first_half_density(self.x_rest, order.shape[0], self.M, self.kk)

    def replay(self, saliency: Tensor, frame_features: Tensor, flat: Tensor) -> None:
        """Queue the first half for these inputs; the caller holds ``lock``."""
        self._load(saliency, frame_features)
        self.graph1.replay()
        if self.sims_host is not None:
            self.sims_host.copy_(self.sims, non_blocking=True)
            self.event.record()
        if self.kk:
            torch.index_select(flat, 0, self.rest.view(-1), out=self.x_rest)
            self.graph2.replay()


def _drop_graphs(key: tuple) -> None:
    """Forget the graphs of ``key`` once no call is using them and the GPU is done with their buffers."""
    graphs = _graphs.pop(key)
    if graphs is not None:
        with graphs.lock:
            torch.cuda.synchronize(key[0])


def release_cuda_graphs() -> None:
    """Drop the captured first-half graphs and their GPU buffers (they are rebuilt as shapes repeat)."""
    with _graph_lock:
        for key in list(_graphs):
            _drop_graphs(key)
        _graph_seen.clear()


def _graphs_for(embeds: Tensor, saliency: Tensor, frame_features: Tensor, s: int, M: int, kk: int):
    """The first-half graphs for this input shape, captured the second time the shape is seen; or None
    (not CUDA, switched off, inside someone else's capture, first sighting, or a capture that failed)."""
    if not CUDA_GRAPHS or embeds.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return None
    device = embeds.device
    key = (device, torch.cuda.current_stream(device).cuda_stream, tuple(embeds.shape), embeds.dtype,
           saliency.dtype, tuple(frame_features.shape), frame_features.dtype, s, kk)
    with _graph_lock:
        if key in _graphs:
            _graphs.move_to_end(key)
            return _graphs[key]
        seen = _graph_seen.get(key, 0) + 1
        if seen < 2:
            if len(_graph_seen) >= 256:
                _graph_seen.clear()
            _graph_seen[key] = seen
            return None
        _graph_seen.pop(key, None)
        try:
            with torch.inference_mode(False):  # static buffers must be normal tensors
                graphs = _FirstHalfGraphs(embeds, saliency, frame_features, s, M, kk)
        except Exception:  # some op or setup that cannot be captured: stay eager for this shape
            graphs = None
        _graphs[key] = graphs
        while sum(g is not None for g in _graphs.values()) > _GRAPHS_KEPT:
            _drop_graphs(next(k for k, g in _graphs.items() if g is not None))
        return graphs


# ----------------------------------------------------------------------------------------------- API


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
    F, N, D = check_inputs(embeds, saliency, frame_features)
    ratio, c, tau, d, p, beta, k = check_params(ratio, c, tau, d, p, beta, k)
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
    kk = min(k, M) if q > 0 else 0
    if kk < k and q > 0:
        notes.append(f"density neighbours k lowered from {k} to {kk}: only {M} non-salient tokens per frame")
    flat = embeds.reshape(F * N, D)

    # 1. Everything that does not depend on the segmentation, queued before the one wait for the host:
    # DySeg similarities (sent to the host), ATS, density scores and context candidates.
    graphs = _graphs_for(embeds, saliency, frame_features, s, M, kk)
    if graphs is None:
        sims, order, rest = _first_half_ats(saliency, frame_features, s, q > 0)
        if F > 1:
            sims_host, wait_for_sims = _host_copy_async(sims)
        x_rest = cand = xn_rest = None
        if q > 0:
            x_rest = flat.index_select(0, rest.view(-1))  # (F·M, D), row f·M + m
            cand, xn_rest = _first_half_density(x_rest, F, M, kk)
        return _second_half(embeds, flat, order, rest, x_rest, cand, xn_rest,
                            sims_host if F > 1 else None, wait_for_sims if F > 1 else None,
                            notes, c, tau, p, beta, R, s, q)
    with graphs.lock:  # held until everything that reads the graphs' outputs is queued
        graphs.replay(saliency, frame_features, flat)
        return _second_half(embeds, flat, graphs.order, graphs.rest, graphs.x_rest, graphs.cand, graphs.xn_rest,
                            graphs.sims_host, graphs.event.synchronize, notes, c, tau, p, beta, R, s, q)


def _second_half(embeds: Tensor, flat: Tensor, order: Tensor, rest: Tensor | None, x_rest: Tensor | None,
                 cand: Tensor | None, xn_rest: Tensor | None, sims_host: Tensor | None,
                 wait_for_sims: Callable[[], None] | None, notes: list[str],
                 c: int, tau: float, p: int, beta: float, R: int, s: int, q: int) -> PruneResult:
    """``fastvid`` after the first half: segmentation on the host, then the merge and the output."""
    F, N, D = embeds.shape
    M = N - s
    device = embeds.device

    # 2. Segmentation and anchor budgets, on the host.
    if sims_host is not None:
        wait_for_sims()
        similarities = sims_host.tolist()
    else:
        similarities = []
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} frame{'s' if F != 1 else ''}")
    sizes = dyseg_segments(similarities, min(c, F), tau)

    # Anchors (frame, context tokens kept) and the frames [lo, hi) whose non-salient tokens each one
    # merges: its whole segment, or its own frame alone where the budget is exactly q (as the reference).
    anchors: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    clamped: dict[int, list[int]] = {}
    start = 0
    for L in sizes:
        budget = context_budget(L, q, p)
        kept = min(budget, M)
        if budget > M:
            clamped.setdefault(budget, []).append(L)
        if kept > 0:
            for i in anchor_positions(L, p):
                anchors.append((start + i, kept))
                spans.append((start + i, start + i + 1) if budget == q else (start, start + L))
        start += L
    for budget, lengths in sorted(clamped.items()):
        notes.append(
            f"context tokens per anchor lowered from {budget} to {M} (only {M} non-salient tokens per frame) "
            f"in segments of {'/'.join(str(L) for L in sorted(set(lengths)))} frames"
        )

    Fs = F * s
    salient = order[:, :s]
    if not anchors:  # q == 0: salient tokens only, each frame's in increasing slot order
        index = torch.sort(salient, dim=1).values.view(-1)
        return PruneResult(
            embeds=flat.index_select(0, index), index=index, segments=sizes, notes=notes,
            merged=torch.zeros(Fs, dtype=torch.bool, device=device), salient=Fs, context=0,
            budget=(R, s, q), anchors=anchors, similarities=similarities,
        )

    # 3. Merge (DTM), all anchors at once: A anchors, at most K context tokens each, T in all. One
    # transfer carries, as int64, each anchor's K candidate positions in ``cand`` (padded with its first)
    # and then the T real ones, and each anchor's first target row; in the dtype of the embeddings, an
    # (A, F) table that is 1 where frame f is a source for anchor a; and which (A, K) columns are padding.
    A = len(anchors)
    K = max(b for _, b in anchors)
    AK = A * K
    padded = AK > sum(b for _, b in anchors)
    ints: list[int] = []
    real: list[int] = []
    firsts: list[int] = []
    pad = bytearray()
    T = 0
    for f, b in anchors:
        first = f * M
        ints.extend(range(first, first + b))
        real.extend(range(first, first + b))
        if b < K:
            ints.extend([first] * (K - b))
        if padded:
            pad += b"\0" * b + b"\1" * (K - b)
        firsts.append(T)
        T += b
    ints += real
    ints += firsts
    one = _one_bytes(embeds.dtype)
    zero = bytes(len(one))
    sources = b"".join(zero * lo + one * (hi - lo) + zero * (F - hi) for lo, hi in spans)
    n_int = 8 * len(ints)
    data = _to_device(device, array("q", ints).tobytes() + sources + pad)
    int_part, source_part, pad_part = data.split_with_sizes([n_int, len(sources), len(pad)])
    sel, firsts_d = int_part.view(torch.int64).split_with_sizes([AK + T, A])
    # x_rest rows of the targets: (A, K) padded, and the T real ones
    rows_p, rows_c = cand.view(-1).index_select(0, sel).split_with_sizes([AK, T])

    S = F * M
    sim = torch.mm(xn_rest, xn_rest.index_select(0, rows_p).T).view(S, A, K)  # input dtype, as the reference
    if padded:
        sim.masked_fill_(pad_part.view(torch.bool).view(A, K), float("-inf"))
    assign = sim.argmax(dim=2)  # (S, A): first maximum = earliest in selection order
    assign += firsts_d  # the target row of each (source, anchor) pair
    # Half precision with a small product: T more rows of the one-hot matrix pick each target's own token,
    # so the product below copies them too (exactly: 1·x in float32). Otherwise they are gathered.
    own_by_mm = embeds.dtype in (torch.float16, torch.bfloat16) and S * T <= _OWN_BY_MM_MAX
    onehot = embeds.new_zeros((2 * T if own_by_mm else T, S))  # (target, source)
    # one-hot values are exact in any dtype; a pair whose source frame is outside the anchor's span writes 0
    onehot.view(-1, F, M).scatter_(
        0, assign.view(F, M, A).permute(2, 0, 1), source_part.view(embeds.dtype).view(A, F, 1).expand(A, F, M)
    )
    if own_by_mm:
        members, own_pick = onehot.split_with_sizes([T, T])
        own_pick.scatter_(1, rows_c[:, None], 1.0)
        sums, own = mm_fp32(onehot, x_rest).split_with_sizes([T, T])  # float32
    else:
        members = onehot
        sums = mm_fp32(onehot, x_rest)
        own = x_rest.index_select(0, rows_c).float()
    counts = members.sum(dim=1, keepdim=True, dtype=torch.float32)  # n_c, (T, 1)
    w = (counts + 1.0).reciprocal_().clamp_min_(beta)
    # w·x_c + (1−w)·mean, written as one lerp
    merged_rows = torch.lerp(sums.div_(counts.clamp_min_(1.0)), own, w)

    # 4. Output: salient and merged tokens by slot.
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
