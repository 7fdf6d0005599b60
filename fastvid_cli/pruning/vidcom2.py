"""VidCom2 (Liu et al., EMNLP 2025, arXiv 2505.14454): keep each frame's most distinctive tokens, with larger
budgets for the more distinctive frames.

Reference: xuyang-liu16/VidCom2 @ 944a17d (``token_compressor/vidcom2/vidcom2.py``), and vLLM's port
(``vllm/multimodal/video_prune/vidcom2.py`` @ 0f17ee0) for ``variant="vllm"``; docs vidcom2-evs-spec.md, part A.
The code, not the paper's prose, defines the method. Pure tensor code: no transformers, no I/O. Input is one
video's LLM-input embeddings, frame-major; nothing is merged, kept rows are copies of input rows.

Pipeline (F frames of N tokens, D channels, retention r):

1. Channels: the ``max(1, int(D·channel_ratio))`` channels of LOWEST population variance over all F·N tokens,
   in ascending-variance order (the reference's comment calls them the least informative; they are kept on
   purpose).
2. Each token's selected channels are L2-normalised (``torch.nn.functional.normalize``). Centres, not
   re-normalised: g = mean over the whole video, c_f = mean over frame f.
3. ``K(d²) = Σ_a exp(−d² / 2a)`` over ``alphas`` (0.125 … 2), summed in that order. Video similarity
   ``v = K(|ŷ − g|²)``, frame similarity ``u = K(|ŷ − c_f|²)``; token redundancy ``s = v + u`` (low = kept).
4. Frame uniqueness ``φ_f = −mean_n v[f, n]``; weights ``p = softmax((φ − max φ) / temperature)``; scales
   ``min(1, r·(1 + p_f − mean p))`` (a redistribution: they add up to r·F before the clamp); budgets
   ``k_f = max(1, round(N·scale_f))`` (round half to even, as torch).
5. Frame f keeps its k_f tokens of smallest s. Output: the kept rows in ascending original slot order.

``variant="authors"`` (default) stops there: K = Σ k_f, which is NOT r·F·N in general (per-frame rounding and
the floor of one token move it; the result notes say by how much). ``variant="vllm"`` reproduces vLLM: the scale
uses ``1.0 − q`` with q = 1.0 − r (Python doubles), budgets are also capped at N, and a global reconcile then
makes the count exactly ``vllm_retained_count(N, F, q) = max(F, min(int(F·N·(1 − q)), F·N))``: surplus tokens
with the largest s are dropped from the kept ones, or missing ones with the smallest s added from the others.
That step can move tokens between frames and, in principle, leave a frame empty (kept, as in vLLM).

Every step runs in the input dtype with the torch operations of the reference in the same order (variance,
normalise, means, squared distances, exponentials, softmax, scale, rounding), so float32 inputs give the
reference's scores bit for bit and bf16/fp16 inputs give its budgets on the same device (bf16 changes them:
spec A7 V5). Nothing is upcast.

Deviations from the reference, all deliberate:

* Ties (exactly equal values: duplicated frames, black or padded regions, and in half precision many channel
  variances) go to the lowest index everywhere: channel choice, per-frame selection, vLLM's reconcile (the
  token with the lower slot is kept). The reference's ``torch.topk`` orders equal values in an unspecified,
  device-dependent way; ``ties="topk"`` calls it as the reference does (a loop over frames), for parity runs:
  e.g. bf16 inputs can tie on channel variances, and then only "topk" gives the reference's budgets (spec A7
  V5: K = 1576 there, 1584 with lowest-index ties).
* Ratio 1.0 keeps every token unchanged (the reference still prunes unless p is uniform), so ``--ratio 1.0``
  reproduces the stock model, as every method here does.
* One channel is kept when ``int(D·channel_ratio)`` is 0 (the reference fails for D = 1), with a note.

Positions. ``index`` holds the original slots ``f·N + n`` (``positions="original"``, the default). The
reference itself re-indexes on LLaVA-OneVision: it lays the kept tokens out contiguously, then ONE newline
token, and the LLM sees contiguous positions over the compressed prompt; ``positions="compact"`` returns that
layout (``compact`` set, ``index`` 0..K−1, ``source`` the original slots), which is what the spec recommends
there. On Qwen2/2.5/3-VL the reference (and vLLM) keep every token's ORIGINAL M-RoPE id, so use "original"
there (fastvid's M-RoPE adapters accept nothing else).

Proposed defaults per family (spec A5): LLaVA-OneVision: ratio 0.25 (0.15 also published), 32 frames,
positions "compact". Qwen2.5-VL / Qwen3-VL: ratio 0.25 (Qwen3-VL 0.35 also published), positions "original";
``variant="vllm"`` is vLLM's for Qwen3-VL, where vLLM scores on [merger | 3 DeepStack features] concatenated
on channels: pass that concatenation as ``score_features`` to reproduce it (the authors score the main
embeddings only, the default).

What a frame is: LLaVA-OneVision, one sampled frame (N = 196); Qwen-VL, one temporal patch of 2 sampled
frames (F = grid_t, N = grid_h/2 · grid_w/2), as both references use it.

Speed: a fixed number of batched operations, no loop over frames or tokens. ``variant="authors"`` waits once
for the host (the F budgets, which fix the output size); ``variant="vllm"`` never does (its count is known in
advance). ``ties="topk"`` waits once and loops over frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .result import PruneResult, check_embeds, check_number, check_ratio, keep_all

VARIANTS = ("authors", "vllm")
TIES = ("lowest", "topk")
POSITIONS = ("original", "compact")
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # the reference's 2**k for k = -3..1
TEMPERATURE = 0.01
CHANNEL_RATIO = 0.5


# ----------------------------------------------------------------------------------------- arithmetic


def pruning_rate(ratio: float) -> float:
    """vLLM's pruning rate q for fastvid's retention r: ``1.0 − r`` in Python doubles (r = 0.1 gives
    q = 0.9, and 1 − q = 0.09999999999999998, which vLLM's counts then truncate)."""
    return 1.0 - ratio


def vllm_retained_count(tokens_per_frame: int, frames: int, q: float) -> int:
    """Tokens vLLM's VidCom2 keeps at pruning rate q: ``max(F, min(int(F·N·(1 − q)), F·N))``."""
    total = tokens_per_frame * frames
    return max(frames, min(int(total * (1.0 - q)), total))


def channel_count(D: int, channel_ratio: float = CHANNEL_RATIO) -> int:
    """Channels scored: ``int(D·channel_ratio)``, raised to 1 (the reference has no floor)."""
    return max(1, int(D * channel_ratio))


def low_variance_channels(flat: Tensor, count: int, ties: str = "lowest") -> Tensor:
    """The ``count`` channels of ``flat`` (T, D) with the smallest population variance over the T rows, in
    ascending-variance order; equal variances: lowest channel first, or ``torch.topk``'s order (``ties="topk"``).
    (count,) int64."""
    variances = flat.var(dim=0, correction=0)
    if ties == "topk":
        return torch.topk(variances, count, largest=False).indices
    return torch.sort(variances, stable=True).indices[:count]


def gaussian_kernel(d2: Tensor, alphas: Sequence[float] = ALPHAS) -> Tensor:
    """``Σ_a exp(−d² / 2a)``, accumulated in the order of ``alphas``, in the dtype of ``d2``."""
    neg = -d2
    total = None
    for a in alphas:
        term = torch.exp(neg / (2 * a))
        total = term if total is None else total + term
    return total


def _sq_distances(x: Tensor, centre: Tensor, buf: Tensor) -> Tensor:
    """``((x − centre)²).sum(−1)``, written through ``buf`` (x's shape) to spare allocations."""
    torch.sub(x, centre, out=buf)
    return buf.square_().sum(dim=-1)


def gaussian_scores(x: Tensor, channels: int, alphas: Sequence[float] = ALPHAS,
                    ties: str = "lowest") -> tuple[Tensor, Tensor]:
    """VidCom2's similarities of every token of ``x`` (F, N, D) on its ``channels`` lowest-variance channels
    (``ties`` as in ``low_variance_channels``): ``(v, u)``, each (F, N) in x's dtype: to the video centre and
    to the own-frame centre."""
    F, N, D = x.shape
    flat = x.reshape(F * N, D)
    y = flat.index_select(1, low_variance_channels(flat, channels, ties)).view(F, N, channels)
    y = torch.nn.functional.normalize(y, dim=-1)
    video_centre = y.mean(dim=(0, 1), keepdim=True)
    frame_centre = y.mean(dim=1, keepdim=True)
    buf = torch.empty_like(y)
    v = gaussian_kernel(_sq_distances(y, video_centre, buf), alphas)
    u = gaussian_kernel(_sq_distances(y, frame_centre, buf), alphas)
    return v, u


def frame_scales(v: Tensor, base: float, temperature: float = TEMPERATURE) -> tuple[Tensor, Tensor]:
    """Per-frame retention from the video similarities ``v`` (F, N): ``(scales (F,), p (F,))``, with
    ``p = softmax((φ − max φ)/temperature)``, ``φ = −mean_n v`` and ``scale = min(1, base·(1 + p − mean p))``."""
    phi = -v.mean(dim=-1)
    p = torch.softmax((phi - phi.max()) / temperature, dim=0)
    return (base * (1 + p - p.mean())).clamp(max=1.0), p


def frame_budgets(scales: Tensor, tokens_per_frame: int) -> Tensor:
    """``k_f = round(N·scale_f)`` (half to even, in the scales' dtype) clamped to [1, N]. (F,) int64.

    The upper clamp is vLLM's; the reference has none, but its scales never exceed 1."""
    return (scales * tokens_per_frame).round().long().clamp(min=1, max=tokens_per_frame)


def frame_ranks(s: Tensor) -> Tensor:
    """(F, N) int64: the rank of each token's score within its frame, smallest first, ties by lowest slot."""
    F, N = s.shape
    order = torch.sort(s, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(N, device=s.device).expand(F, N))


def _first_k_slots(mask: Tensor, K: int) -> Tensor:
    """The K True positions of the flat bool ``mask``, ascending, without a device→host wait."""
    n = mask.numel()
    slots = torch.arange(n, device=mask.device)
    return torch.sort(torch.where(mask, slots, n)).values[:K]


def vllm_reconcile(s: Tensor, in_frame: Tensor, K: int) -> Tensor:
    """vLLM's step 5 on scores ``s`` (F, N) and the per-frame choice ``in_frame`` (F, N) bool: the K kept flat
    slots, ascending (K ≤ F·N).

    Tokens are ranked chosen-first, then by score, then by slot, and the first K stay: if too many were chosen,
    those with the largest scores go; if too few, the others with the smallest scores join."""
    flat_s = s.reshape(-1)
    by_score = torch.sort(flat_s, stable=True).indices
    chosen_first = torch.sort((~in_frame.reshape(-1)[by_score]).to(torch.uint8), stable=True).indices
    return torch.sort(by_score[chosen_first[:K]]).values


def topk_selection(s: Tensor, budgets: list[int], K: int | None = None) -> Tensor:
    """The reference's own selection, for ``ties="topk"``: per frame ``torch.topk(s[f], k_f, largest=False,
    sorted=False)`` (a loop over frames), then, when ``K`` is given, vLLM's reconcile to K tokens with
    ``torch.topk`` (drop the largest kept scores, or add the smallest others). Equal scores go wherever
    ``torch.topk`` puts them on this device. Returns the kept flat slots, ascending."""
    F, N = s.shape
    mask = torch.zeros((F, N), dtype=torch.bool, device=s.device)
    for f, k in enumerate(budgets):
        mask[f, torch.topk(s[f], k, largest=False, sorted=False).indices] = True
    flat_mask, flat_s = mask.view(-1), s.reshape(-1)
    current = sum(budgets)
    if K is not None and current > K:
        kept = flat_mask.nonzero().squeeze(1)
        flat_mask[kept[torch.topk(flat_s[kept], current - K, largest=True, sorted=False).indices]] = False
    elif K is not None and current < K:
        other = (~flat_mask).nonzero().squeeze(1)
        flat_mask[other[torch.topk(flat_s[other], K - current, largest=False, sorted=False).indices]] = True
    return flat_mask.nonzero().squeeze(1)


def llava_video_slots(keep: Tensor, grid: int) -> Tensor:
    """LLaVA-Video's layout of kept tokens (for a future LLaVA-Video adapter; spec A3.2, A8.5).

    ``keep`` (F, grid²) bool over the pooled tokens scored by VidCom2. Each frame occupies grid·(grid+1) slots
    (a newline after every row); the reference maps token n to ``(n // grid)·(grid+1) + n % grid`` and then
    appends ALL the frame's newline slots after its kept tokens (not interleaved). Returns the slots in that
    output order, (Σ kept + F·grid,) int64.
    """
    F, N = keep.shape
    if N != grid * grid:
        raise ValueError(f"keep must have grid² = {grid * grid} columns, got {N}")
    device = keep.device
    stride = grid * (grid + 1)
    n = torch.arange(N, device=device)
    start = torch.arange(0, F * stride, stride, device=device)[:, None]
    tokens = start + (n // grid) * (grid + 1) + n % grid
    newlines = start + torch.arange(grid, device=device) * (grid + 1) + grid
    valid = torch.cat([keep, torch.ones((F, grid), dtype=torch.bool, device=device)], dim=1)
    return torch.cat([tokens, newlines], dim=1)[valid]


# ------------------------------------------------------------------------------------------ validation


def _check_params(variant, positions, ties, temperature, channel_ratio,
                  alphas) -> tuple[float, float, tuple[float, ...]]:
    if variant not in VARIANTS:
        raise InvalidOptionError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if ties not in TIES:
        raise InvalidOptionError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    if positions not in POSITIONS:
        raise InvalidOptionError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    temperature = check_number("temperature", temperature)
    if not 0.0 < temperature < math.inf:
        raise InvalidOptionError(f"temperature must be a positive number, got {temperature:g}")
    channel_ratio = check_number("channel_ratio", channel_ratio)
    if not 0.0 < channel_ratio <= 1.0:
        raise InvalidOptionError(f"channel_ratio must be in (0, 1], got {channel_ratio:g}")
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence) or not alphas:
        raise InvalidOptionError(f"alphas must be a non-empty sequence of positive numbers, got {alphas!r}")
    values = tuple(check_number("alphas", a) for a in alphas)
    if not all(0.0 < a < math.inf for a in values):
        raise InvalidOptionError(f"alphas must all be positive numbers, got {alphas!r}")
    return temperature, channel_ratio, values


def check_score_features(score_features, F: int, N: int) -> None:
    """``score_features`` must be None or a float (F, N, Ds) tensor; ``ValueError`` otherwise."""
    if score_features is None:
        return
    if (not isinstance(score_features, Tensor) or score_features.dim() != 3
            or tuple(score_features.shape[:2]) != (F, N) or score_features.shape[2] < 1):
        shape = tuple(score_features.shape) if isinstance(score_features, Tensor) else type(score_features).__name__
        raise ValueError(f"score_features must have shape ({F}, {N}, dim), got {shape}")
    if not score_features.is_floating_point():
        raise ValueError(f"score_features must be a float tensor, got {score_features.dtype}")


# ----------------------------------------------------------------------------------------------- API


@torch.no_grad()
def vidcom2(
    embeds: Tensor,
    saliency: Tensor | None = None,
    frame_features: Tensor | None = None,
    ratio: float = 0.25,
    *,
    variant: str = "authors",
    positions: str = "original",
    ties: str = "lowest",
    temperature: float = TEMPERATURE,
    channel_ratio: float = CHANNEL_RATIO,
    alphas: Sequence[float] = ALPHAS,
    score_features: Tensor | None = None,
) -> PruneResult:
    """Prune one video's tokens with VidCom2 (module docstring; spec part A).

    ``embeds`` (F, N, D) LLM-input video embeddings, frame-major, any float dtype (F: frames for
    LLaVA-OneVision, temporal patches for Qwen-VL); ``saliency`` and ``frame_features`` are accepted for the
    common interface and ignored. ``ratio``: retention r in (0, 1]; ``variant``: "authors" (the reference,
    K = Σ k_f) or "vllm" (exactly ``vllm_retained_count(N, F, 1.0 − r)`` tokens); ``positions``: "original"
    (``index`` = kept slots) or "compact" (the reference's LLaVA-OneVision layout: ``index`` 0..K−1,
    ``compact`` set, ``source`` = kept slots); ``ties``: "lowest" (equal scores keep the lower slot) or
    "topk" (``torch.topk``'s order, as the reference); ``temperature``, ``channel_ratio``, ``alphas``: the
    reference's constants; ``score_features`` (F, N, Ds): score on these instead of ``embeds`` (vLLM's
    Qwen3-VL scores on the main embeddings and the DeepStack features concatenated), the kept rows still come
    from ``embeds``.

    Returns a ``PruneResult`` of K rows copied from ``embeds`` (its dtype and device) in ascending slot order;
    at ratio 1.0 every token, unchanged. ``InvalidOptionError`` for bad parameters, ``ValueError`` for
    inconsistent shapes.
    """
    F, N, D = check_embeds(embeds)
    ratio = check_ratio(ratio)
    temperature, channel_ratio, alphas = _check_params(variant, positions, ties, temperature, channel_ratio, alphas)
    check_score_features(score_features, F, N)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")

    device = embeds.device
    x = embeds if score_features is None else score_features.to(device)
    notes: list[str] = []
    if int(x.shape[2] * channel_ratio) == 0:
        notes.append(f"vidcom2: scored on 1 channel (int({x.shape[2]} x {channel_ratio:g}) is 0)")
    v, u = gaussian_scores(x, channel_count(x.shape[2], channel_ratio), alphas, ties)
    s = v + u
    vllm = variant == "vllm"
    base = 1.0 - pruning_rate(ratio) if vllm else ratio
    scales, p = frame_scales(v, base, temperature)
    budgets = frame_budgets(scales, N)
    K = vllm_retained_count(N, F, pruning_rate(ratio)) if vllm else None
    if vllm and ties == "lowest":  # K is known in advance: no wait for the host
        index = vllm_reconcile(s, frame_ranks(s) < budgets[:, None], K)
    else:
        host = torch.cat([budgets, p.argmax().view(1)]).tolist()  # the one wait for the host
        ks, top = host[:F], host[F]
        if ties == "topk":
            index = topk_selection(s, ks, K)
        else:
            index = _first_k_slots((frame_ranks(s) < budgets[:, None]).view(-1), sum(ks))
    if vllm:
        notes.append(f"vidcom2 (vllm): {K} of {F * N} tokens kept, per-frame budgets reconciled to that count")
    else:
        spread = f"{min(ks)}" if min(ks) == max(ks) else f"{min(ks)}-{max(ks)}, most for frame {top} ({ks[top]})"
        notes.append(f"vidcom2: {sum(ks)} of {F * N} tokens kept (r x F x N = {ratio * F * N:g}); "
                     f"per-frame budgets {spread}")
    rows = embeds.reshape(F * N, D).index_select(0, index)
    merged = torch.zeros(index.shape[0], dtype=torch.bool, device=device)
    if positions == "compact":
        return PruneResult(embeds=rows, index=torch.arange(index.shape[0], device=device), notes=notes,
                           merged=merged, salient=index.shape[0], compact=True, source=index)
    return PruneResult(embeds=rows, index=index, notes=notes, merged=merged, salient=index.shape[0])


__all__ = ["ALPHAS", "CHANNEL_RATIO", "POSITIONS", "TEMPERATURE", "TIES", "VARIANTS", "channel_count",
           "frame_budgets", "frame_ranks", "frame_scales", "gaussian_kernel", "gaussian_scores", "llava_video_slots",
           "low_variance_channels", "pruning_rate", "topk_selection", "vidcom2", "vllm_reconcile",
           "vllm_retained_count"]
