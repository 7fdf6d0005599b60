"""FlashVID's pre-LLM token compression (ICLR 2026, arXiv 2602.08024), with the semantics of the reference code.

Reference: Fanziyang-v/FlashVID @ 1d37422 (``flashvid/utils.py``, ``flashvid/token_selection.py``); docs
flashvid-spec.md §2.2–2.8, §7. Pure tensor code: no transformers, no I/O. Input is one video's LLM-input embeddings,
frame-major; a "frame" is one sampled frame on LLaVA and one temporal patch (two sampled frames) on Qwen-VL.
This module: the budgets, DySeg, ADTS, the argument checks and the fixed-shape device pipeline that chains the
steps; TSTM's trees are in ``flashvid_tstm.py``, the contextual DPC-kNN clustering (step 5) and its noise in
``flashvid_dpc.py`` (public names re-exported here), CUDA-graph replay in ``graphed.py``.

Pipeline (F frames of N tokens, D channels; ``g = t·N + n`` is the flat slot of token n of frame t):

1. Budget per frame (§2.2, float expression as the reference): ``B = ceil(N·r·e)``, ``A = ceil(B·alpha)`` ADTS
   tokens, ``S = B − A`` contextual tokens (pooled per segment as ``S·F_s``).
2. DySeg (§2.3): cosine of adjacent frames' mean tokens; cut where it is below ``segment_threshold``; when that
   gives fewer than ``min_segment_num`` segments, also cut at the lowest remaining similarities (repeats allowed,
   so a segment can be empty).
3. ADTS (§2.4): in every frame, A tokens by a greedy max-min selection on the cosine-distance matrix whose
   columns are scaled by the attention each token receives (``attn_div``; ``attn_div_v2`` also by its raw dot
   product with the segment's mean token, and does not exclude picked tokens, so it can pick one twice).
4. TSTM (§2.5, segments of ≥ 2 frames): every non-ADTS token links to its most similar non-ADTS token of the
   previous frame; links above ``temporal_threshold`` (or, when that leaves fewer than ``B·F_s`` roots, above a
   soft threshold) form trees; each root becomes ``subtree sum / (1 + direct children)`` (the reference's count).
5. Contextual DPC-kNN (§2.6): each frame's roots (a single-frame segment: all N tokens, ADTS picks included) are
   clustered into ``ceil(n_t·S·F_s / Σ n_t)`` cluster means, ``k = min(clusters, 7)``; a cluster takes its
   centre's slot.
6. Output (§2.7): ADTS tokens and contextual tokens, stably sorted by slot (ADTS first on a repeated slot).

Per-family variants (``FAMILY_VARIANTS``; the inner-LLM stage is in ``flashvid_inner.py``):

=================  ===============  ===============  ==============  ==============================================
family             ``selection``    min_segment_num  ``positions``   ``duplicates``
=================  ===============  ===============  ==============  ==============================================
llava_onevision    attn_div_v2      8                compact         distinct (raw ADTS token + cluster mean)
llava_video        attn_div_v2      8                compact         distinct
qwen2_5_vl         attn_div         4                original        last (both copies = the contextual value)
qwen3_vl           attn_div         4                original        last
=================  ===============  ===============  ==============  ==============================================

Positions (§2.8): ``PruneResult.index`` always holds each row's original slot, non-decreasing (NOT strictly: a
slot can repeat; this departs from the strictly increasing ``index`` of the other methods, and, for "compact",
from ``index`` = 0..K−1: the engine's assemble-then-``reindexed()`` path gives the same positions either way). LLaVA (``positions="compact"``, ``compact`` set, ``source`` = the same slots): the LLM sees the
rows at contiguous positions 0..L'−1 over the whole new sequence and decoding continues at L'; LLaVA-OneVision adds
one newline after the video (outside the inner-prune range), LLaVA-Video one newline after each frame's rows
(``slot // N`` is the frame; inside the range). Qwen-VL (``positions="original"``): each row takes the original
M-RoPE position of its slot, so two rows with the same slot share a position; decoding continues with the
unpruned prompt's positions; Qwen3-VL also drops every vision_start/vision_end token.

Deviations from the reference, all deliberate:

* Deterministic: ties go to the lowest index everywhere the reference's order is undefined (complementary cuts,
  ``attn`` selection, DPC centres, the final sort, which is stable). The DPC density noise (the only random number
  in FlashVID) comes from a seeded generator of its own, ``seed``, or from ``noise`` (injectable); never from the
  global RNG. Centre ties are real: with k = 1 every density is 1 + 1e−6·u, and float32 rounds neighbouring u to
  the same number (spec TV7 at r = 0.10: the reference's torch.topk took index 24 or 23, this takes 22).
* Sums (tree roots, cluster means) accumulate in float32 and are rounded once to the input dtype; the reference
  rounds partial sums in the model dtype. ADTS's relevance (v2) uses the segment's mean token
  ``<x, mean_c m_c>`` instead of ``mean_c <x, m_c>`` (equal up to rounding). Cosine distances for half-precision
  input come from a float32-accumulated Gram matrix; DPC distances of more than 25 points from a Gram matrix (as
  torch.cdist, whose own rounding differs). These change a kept slot only at near-ties.
* Zero-norm vectors normalise to zero instead of NaN. The input is never modified (the reference's TSTM writes
  into it).
* Arguments the reference crashes on are refused with ``InvalidOptionError``: a budget ``B ≥ N`` (ratio ·
  expansion ≥ 1, below ratio 1.0) and ``temporal_threshold ≥ 1``.

Speed (issue #15): after the argument checks, every step runs on the input's device with shapes fixed by
(F, N, D) and the budgets: DySeg's segments are per-frame ids computed there, ADTS is a fixed loop of A − 1 steps
over all frames at once (three or four ops a step), TSTM's trees and DPC's candidate lists are (F, N) masks, and
DPC-kNN clusters every frame on its N token positions with the non-candidates masked. No step waits for the
device, and the number of operations does not depend on the data, so on a GPU the whole chain is captured once
per shape and setting as a CUDA graph and replayed (``graphed.py``; eager elsewhere). The host reads the device
once, at the end (kept count, segment cuts, similarities and the counts for the notes, in one copy), then gathers
the kept rows. An injected ``noise`` function adds one read (the DPC call sizes) and runs eagerly. The two
row sums (TSTM's trees, DPC's clusters) are one accumulating ``index_put_`` each, in which every token that adds
nothing targets a row of its own: CUDA adds a run of equal indices serially, and the single spare row they once
shared made runs of thousands of rows (4 ms of TSTM and 3 ms of DPC on an H100 at 32x196).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .density import bmm_fp32
from . import graphed
from .flashvid_dpc import (_CDIST_EXACT_MAX, _context_plan, _context_step, _drawn_stream, _seeded_stream, dpc_batch,
                           dpc_centres, dpc_peaks, seeded_draws, uniform_noise)
from .flashvid_tstm import (SegmentPlan, Trees, _normalize, _Setup, in_dtype, plan_from_ids, root_values,
                            segment_plan, tstm, tstm_links)
from .result import PruneResult, check_embeds, check_number, check_ratio, keep_all, positive_int, share

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
                centre: Tensor | None = None, unit: Tensor | None = None, wide: Tensor | None = None) -> Tensor:
    """Token selection in every frame at once (spec §2.4): (F, N, D), (F, N) -> (F, count) int64 token indices,
    ascending in each row (``attn_div_v2`` may repeat one).

    ``scores``: attention each token receives; ``centre`` (F, D) float32, only for ``attn_div_v2``: the mean token
    of each frame's segment; ``unit``: optional, ``embeds`` normalised (see ``cosine_distances``); ``wide``:
    optional, ``embeds.float()`` if the caller made it (``attn_div_v2``: not made again).
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
        wide = embeds.float() if wide is None else wide
        relevance = torch.bmm(wide, centre.float()[:, :, None])  # (F, N, 1): raw dot products
        W.mul_(relevance.view(F, 1, N))
    exclude = selection != "attn_div_v2"
    picks = torch.empty((count, F), dtype=torch.int64, device=device)  # row i: the i-th pick of every frame
    first = torch.topk(W, k=2, dim=1, largest=False).values[:, 1, :]  # second-smallest of every column
    torch.argmax(first, dim=1, out=picks[0])  # first maximum: lowest index
    if count > 1:
        # a fixed number of steps (count − 1), each three or four ops over all frames at once, no host wait
        by_frame = picks.T  # (F, count) view
        best = W.gather(1, picks[0].view(F, 1, 1).expand(F, 1, N)).view(F, N)  # running minimum, picked rows
        row = torch.empty((F, 1, N), dtype=W.dtype, device=device)
        for i in range(1, count):
            if exclude:  # every picked column to −1 (again: a minimum below −1 may have replaced an earlier −1)
                best.scatter_(1, by_frame[:, :i], -1.0)
            pick = picks[i]
            torch.argmax(best, dim=1, out=pick)
            if i + 1 < count:
                torch.minimum(best, torch.gather(W, 1, pick.view(F, 1, 1).expand(F, 1, N), out=row).view(F, N),
                              out=best)
    return torch.sort(picks.T.contiguous(), dim=1).values


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


# ------------------------------------------------------------------- the pipeline as fixed-shape steps
#
# Every step below runs on the input's device with shapes fixed by (F, N, D) and the budgets: no device->host
# wait, and a number of operations that does not depend on the data (segments are per-frame ids, candidate
# lists are (F, N) masks, DPC runs on every frame's N token positions with the non-candidates masked). So the
# whole chain is one CUDA graph on a GPU (``graphed.py``); the host reads everything it needs (segment
# lengths, kept count, notes) in ONE copy at the end.


def _setup(F: int, N: int, D: int, dtype: torch.dtype, p: dict) -> _Setup:
    B, A, S = flashvid_budget(N, p["ratio"], p["expansion"], p["alpha"])
    if B >= N:
        raise InvalidOptionError(
            f"flashvid: ratio {p['ratio']:g} x expansion {p['expansion']:g} keeps all {N} tokens of a frame "
            f"(budget {B}); use a lower ratio, or 1.0 for no pruning")
    # the reference's cdist subtracts when its largest DPC set has at most 25 points: a segment's first frame
    # has >= N − A candidates and runs DPC whenever any frame does, so only N − A <= 25 < N is undecided here
    exact = True if N <= _CDIST_EXACT_MAX else (False if N - A > _CDIST_EXACT_MAX else None)
    return _Setup(F, N, D, B, A, S, p["selection"], p["tau"], in_dtype(p["theta"], dtype), p["min_segment_num"],
                  p["complementary"], F > 1 and p["do_segment"], exact)


def _segment_ids(embeds: Tensor, cfg: _Setup) -> tuple[Tensor, Tensor, Tensor]:
    """DySeg on the device (``dyseg_lengths``' rule): ``(similarities (F−1,) float64, cuts (F−1,) int64 how many
    cuts after frame i (0, 1 or 2: a complementary cut can repeat a threshold cut), seg (F,) int64 ids)``."""
    F, device = cfg.F, embeds.device
    if not cfg.segmented:
        sims = torch.zeros(max(F - 1, 0), dtype=torch.float64, device=device)
        cuts = torch.zeros(max(F - 1, 0), dtype=torch.int64, device=device)
        return sims, cuts, torch.zeros(F, dtype=torch.int64, device=device)
    sims = transition_similarities(embeds).float().double()  # the host's float values, compared in double
    below = sims < cfg.theta
    cuts = below.long()
    if cfg.complementary:
        # the min(need, F − 1) smallest similarities, threshold cuts counted as 1.0, NaN last, ties: lowest index
        need = ((cfg.min_segments - 1) - cuts.sum()).clamp(0, F - 1)
        filled = torch.where(below, 1.0, torch.where(sims.isnan(), math.inf, sims))
        order = torch.sort(filled, stable=True).indices
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(F - 1, device=device))
        cuts = cuts + (rank < need).long()
    seg = torch.cat([cuts.new_zeros(1), torch.cumsum(cuts, dim=0)])
    return sims, cuts, seg


def _adts_step(embeds: Tensor, scores: Tensor, plan: SegmentPlan, cfg: _Setup,
               unit: Tensor | None) -> tuple[Tensor, Tensor]:
    """ADTS picks (F, A) int64 (ascending per frame) and the keep mask kappa (F, N) (False at the picks)."""
    F, N = cfg.F, cfg.N
    picks = torch.zeros((F, 0), dtype=torch.int64, device=embeds.device)
    if cfg.A:
        centre = wide = None
        if cfg.selection == "attn_div_v2":
            # each frame's segment mean of the per-frame mean tokens (float32): one (F, F) averaging product
            same = (plan.seg[:, None] == plan.seg[None, :]).float().mul_(plan.inv_size[:, None])
            wide = embeds.float()  # one float32 copy for the means and the relevance
            centre = same @ wide.mean(dim=1)
        picks = adts_select(embeds, scores, cfg.A, cfg.selection, centre, unit, wide)
    kappa = torch.ones((F, N), dtype=torch.bool, device=embeds.device)
    return picks, kappa.scatter_(1, picks, False)


def _device_pipeline(embeds: Tensor, scores: Tensor, stream: Tensor | None, cfg: _Setup,
                     draw: Callable | None = None, mark: Callable[[str], None] | None = None) -> dict[str, Tensor]:
    """DySeg, ADTS, TSTM, DPC and the slot sort, on the device with fixed shapes (module comment above).
    ``stream``: the DPC noise, one number per candidate in DPC call order (≥ F·N numbers); with ``draw``
    instead, the stream is drawn per DPC call after one host read of the call sizes (parity tests).
    ``mark(phase)``: called at the end of each phase (benchmarks time them)."""
    F, N, A = cfg.F, cfg.N, cfg.A
    device = embeds.device
    mark = mark or (lambda phase: None)
    sims, cuts, seg = _segment_ids(embeds, cfg)
    plan = plan_from_ids(seg, cfg.n_segments, cfg.B, N, contextual=cfg.S > 0)
    mark("segmentation")
    # the tokens normalised in their dtype (TSTM); for float32 input ADTS's too, so computed once
    shared = A and cfg.selection != "attn" and embeds.dtype == torch.float32
    unit = _normalize(embeds) if (cfg.S and F > 1) or shared else None
    picks, kappa = _adts_step(embeds, scores, plan, cfg, unit)
    adts_slots = (picks + torch.arange(0, F * N, N, device=device)[:, None]).reshape(-1)
    mark("adts")
    if cfg.S:
        trees = tstm_links(embeds, kappa, None, None, cfg.B, cfg.tau, plan, unit)
        values = root_values(embeds, trees)
        ctx = _context_plan(trees, kappa, plan, cfg)
        mark("tstm")
        if draw is not None:
            stream = _drawn_stream(draw, ctx, F * N, device)
        is_context, ctx_rows = _context_step(values, ctx, stream, cfg)
        soft = trees.soft.sum()
        mark("dpc")
    else:
        is_context = torch.zeros((F, N), dtype=torch.bool, device=device)
        ctx_rows, soft = embeds.reshape(F * N, -1), torch.zeros((), dtype=torch.int64, device=device)
    # ADTS rows first, then contextual ones at their slots (non-context positions sort last): a stable sort
    keys = torch.cat([adts_slots, torch.where(is_context.view(-1), torch.arange(F * N, device=device), F * N)])
    index, perm = torch.sort(keys, stable=True)
    n_context = is_context.sum()
    repeated = ((index[1:] == index[:-1]) & (index[1:] < F * N)).sum()
    counts = torch.stack([n_context, repeated, soft]).double()
    mark("sort")
    return dict(index=index, perm=perm, adts_slots=adts_slots, ctx_rows=ctx_rows,
                host=torch.cat([counts, cuts.double(), sims]))


def _run_pipeline(embeds: Tensor, scores: Tensor, cfg: _Setup, p: dict, notes: list[str]) -> PruneResult:
    """The device pipeline, then ``_result``: one CUDA graph per shape and setting on a GPU (``graphed.py``),
    else eager."""
    finish = lambda out: _result(embeds, out, cfg, p, notes)  # noqa: E731
    if p["noise"] is not None:
        return finish(_device_pipeline(embeds, scores, None, cfg, draw=p["noise"]))
    stream = _seeded_stream(p["seed"], cfg.F * cfg.N, embeds.device)
    key = ("flashvid", cfg, embeds.dtype, scores.dtype)
    return graphed.run(key, _device_pipeline, (embeds, scores, stream), (cfg,), consume=finish)


def _result(embeds: Tensor, out: dict[str, Tensor], cfg: _Setup, p: dict, notes: list[str]) -> PruneResult:
    """The one host read (counts, cuts, similarities), then the kept rows gathered in slot order."""
    F, N, A = cfg.F, cfg.N, cfg.A
    host = out["host"].tolist()  # the only device->host wait of the default path
    n_context, repeated, soft = (int(v) for v in host[:3])
    cuts = [int(v) for v in host[3:3 + max(F - 1, 0)]]
    similarities = host[3 + max(F - 1, 0):] if cfg.segmented else []
    lengths = _lengths_from_cuts(cuts)
    if 0 in lengths:
        notes.append(f"flashvid: {lengths.count(0)} empty segment(s) from repeated complementary cuts (as the "
                     f"reference)")
    if soft:
        notes.append(f"flashvid: TSTM soft threshold used in {soft} segment(s) (merging above {p['tau']:g} left "
                     f"fewer than B x frames tokens)")
    n_adts = F * A
    K = n_adts + n_context
    index, perm = out["index"][:K].clone(), out["perm"][:K]
    ctx = out["ctx_rows"].index_select(0, (perm - n_adts).clamp_min(0))
    if n_adts:
        from_adts = perm < n_adts
        adts = embeds.reshape(F * N, -1).index_select(0, out["adts_slots"].index_select(0, perm.clamp_max(n_adts - 1)))
        rows = torch.where(from_adts[:, None], adts, ctx)
    else:
        rows = ctx
    if repeated:
        rule = "both vectors kept" if p["duplicates"] == "distinct" else "every copy takes the contextual value"
        notes.append(f"flashvid: {repeated} repeated slot(s) ({rule}; they share a position)")
        if p["duplicates"] == "last":
            rows = rows.index_select(0, torch.searchsorted(index, index, right=True) - 1)
    compact = p["positions"] == "compact"
    return PruneResult(embeds=rows, index=index, segments=lengths, notes=notes, merged=perm >= n_adts,
                       salient=n_adts, context=n_context, budget=(cfg.B, A, cfg.S), similarities=similarities,
                       compact=compact, source=index if compact else None)


def _lengths_from_cuts(cuts: Sequence[int]) -> list[int]:
    """Segment lengths (zeros for repeated cuts) from how many cuts follow each frame but the last."""
    bounds = [-1] + [i for i, c in enumerate(cuts) for _ in range(c)] + [len(cuts)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


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
    cfg = _setup(F, N, D, embeds.dtype, p)
    if scores.device != embeds.device:
        scores = scores.to(embeds.device)
    return _run_pipeline(embeds, scores, cfg, p, notes)


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
    "dpc_centres",
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
    "root_values",
    "plan_from_ids",
    "tstm",
    "tstm_links",
    "uniform_noise",
]
