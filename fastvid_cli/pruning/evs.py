"""EVS (Efficient Video Sampling, NVIDIA, arXiv 2510.14624) as vLLM implements it: drop the tokens that changed
least since the same slot of the previous frame.

Reference: vllm-project/vllm @ d750efb, ``vllm/multimodal/video_prune/evs.py`` (``compute_retention_mask``,
``compute_retained_tokens_count``; SGLang's core is the same); docs vidcom2-evs-spec.md, part B. The paper's
RGB-patch description differs; the vLLM code on embeddings defines the method here. Pure tensor code: no
transformers, no I/O; nothing is merged, kept rows are copies of input rows.

What the F axis is. Frame f is compared with frame f−1 slot by slot, so the axis must be the model's temporal
token unit: on Qwen2/2.5/3-VL a temporal PATCH (2 sampled frames; F = grid_t, N = grid_h/2 · grid_w/2 merged
tokens, raster order), exactly as vLLM uses it; on LLaVA-OneVision one sampled frame (N = 196) — a fastvid
extension, EVS exists for no LLaVA model upstream.

Algorithm (retention r; vLLM's pruning rate q = 1.0 − r in Python doubles):

1. ``d[f, n] = 1 − cos(x[f, n], x[f−1, n])`` for f ≥ 1 (``torch.nn.functional.cosine_similarity``, in the
   input dtype; a zero vector gives cos 0).
2. K = ``evs_retained_count(N, F, q) = max(N, int(F·N·(1 − q)))``.
3. Frame 0 is kept whole (vLLM gives it the score 255, above any real d ∈ [0, 2]); the other K − N tokens are
   the largest d over frames 1..F−1, one global choice, ties to the lowest flat slot (vLLM's stable argsort).
4. Output: the kept rows in ascending slot order.

Consequences kept as in vLLM: if F·N·(1 − q) < N only frame 0 survives (noted); F = 1 keeps everything; a
static frame can lose every token. Computing d in bf16 creates many exact ties, so bf16 and float32 inputs can
keep different sets (spec B7 E7); the tie rule makes both deterministic. Only difference from vLLM: a NaN d
(only from NaN/inf inputs) ranks below frame 0 here, above it there.

Positions: the ORIGINAL ones (``index`` = kept slots), on every family. That is vLLM's on Qwen3-VL and, for the
video tokens, on Qwen2.5-VL; there vLLM also re-bases the text after the video (a quirk, ``vllm_qwen25_positions``
reproduces it for a possible adapter option; not the default). Defaults: ratio 0.25 (vLLM's rate 0.75) on every
family. vLLM's Qwen3-VL scores on [merger | 3 DeepStack features] concatenated on channels: pass that as
``score_features`` to reproduce it.

Speed: two batched kernels and one sort of (F−1)·N scores; the count is known in advance, so no wait for the
host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .result import PruneResult, check_embeds, check_ratio, keep_all
from .vidcom2 import check_score_features, pruning_rate


def evs_retained_count(tokens_per_frame: int, frames: int, q: float) -> int:
    """Tokens vLLM's EVS keeps at pruning rate q: ``max(N, int(F·N·(1 − q)))`` (frame 0 is always whole)."""
    return max(tokens_per_frame, int(tokens_per_frame * frames * (1 - q)))


def dissimilarity(x: Tensor) -> Tensor:
    """(F, N, D) -> (F−1, N): ``1 − cos(x[f, n], x[f−1, n])`` for frames 1..F−1, in x's dtype."""
    return 1 - torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=-1)


def evs_order(x: Tensor) -> Tensor:
    """Every flat slot of ``x`` (F, N, D) in EVS's keep order: frame 0's in slot order, then the others by
    decreasing dissimilarity, ties by the lowest slot. (F·N,) int64; EVS keeps the first K."""
    F, N, _ = x.shape
    rest = torch.sort(dissimilarity(x).reshape(-1), descending=True, stable=True).indices
    return torch.cat([torch.arange(N, device=x.device), rest + N])


@torch.no_grad()
def evs(
    embeds: Tensor,
    saliency: Tensor | None = None,
    frame_features: Tensor | None = None,
    ratio: float = 0.25,
    *,
    score_features: Tensor | None = None,
) -> PruneResult:
    """Prune one video's tokens with vLLM's EVS (module docstring; spec part B).

    ``embeds`` (F, N, D) LLM-input video embeddings, frame-major, any float dtype; F counts the model's temporal
    token units (Qwen-VL: temporal patches of 2 frames; LLaVA-OneVision: frames). ``saliency`` and
    ``frame_features`` are accepted for the common interface and ignored. ``ratio``: retention r in (0, 1];
    ``score_features`` (F, N, Ds): compare these instead of ``embeds`` (vLLM's Qwen3-VL: main and DeepStack
    features concatenated); the kept rows still come from ``embeds``.

    Returns a ``PruneResult`` of exactly ``evs_retained_count(N, F, 1.0 − r)`` rows copied from ``embeds`` (its
    dtype and device), ``index`` = their original slots, ascending; at ratio 1.0 every token, unchanged.
    ``InvalidOptionError`` for a ratio outside (0, 1], ``ValueError`` for inconsistent shapes.
    """
    F, N, D = check_embeds(embeds)
    ratio = check_ratio(ratio)
    check_score_features(score_features, F, N)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    K = evs_retained_count(N, F, pruning_rate(ratio))
    if K >= F * N:  # one frame, or a rate that keeps everything
        return keep_all(embeds, note=f"evs: all {F * N} tokens kept ({F} frame{'s' if F != 1 else ''})")
    device = embeds.device
    x = embeds if score_features is None else score_features.to(device)
    rest = torch.sort(dissimilarity(x).reshape(-1), descending=True, stable=True).indices[:K - N]
    index = torch.cat([torch.arange(N, device=device), torch.sort(rest).values + N])
    notes = [f"evs: {K} of {F * N} tokens kept, frame 0 whole"]
    if K == N:
        notes.append(f"evs: only frame 0 kept (int({F * N} x {1 - pruning_rate(ratio):g}) <= {N} tokens per frame)")
    return PruneResult(embeds=embeds.reshape(F * N, D).index_select(0, index), index=index, notes=notes,
                       merged=torch.zeros(K, dtype=torch.bool, device=device), salient=K)


# --------------------------------------------------------------------- positions (vLLM's, for reference)


def media_positions(grid: tuple[int, int, int], tokens_per_second: float = 2.0,
                    seconds_per_grid: float = 1.0) -> Tensor:
    """Qwen2.5-VL's M-RoPE offsets of a video's tokens as vLLM's EVS path builds them (3, T·R·C) int64, for the
    merged grid (T, R, C): t = trunc(t·tokens_per_second·seconds_per_grid) (float32 product, as torch
    computes it), h = row, w = column, raster order. vLLM's Qwen2.5 EVS path passes ``seconds_per_grid``
    already truncated to an integer (0.5 s becomes 0), as HF ``get_rope_index`` does."""
    T, R, C = grid
    t = torch.arange(T).view(-1, 1).expand(-1, R * C).mul(tokens_per_second * seconds_per_grid).long()
    h = torch.arange(R).view(1, -1, 1).expand(T, -1, C)
    w = torch.arange(C).view(1, 1, -1).expand(T, R, -1)
    return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)])


def vllm_qwen25_positions(before: Tensor, kept_offsets: Tensor, width: int, n_after: int) -> tuple[Tensor, int]:
    """vLLM's Qwen2.5-VL positions after EVS (spec B4.1), for an optional ``positions="vllm-evs"`` adapter mode.

    ``before`` (3, P): the prompt's ids up to and including <|vision_start|>; ``kept_offsets`` (3, K): the kept
    tokens' rows of ``media_positions``; ``width``: the merged grid width C; ``n_after``: tokens after the video
    (<|vision_end|> first). With base = last id of <|vision_start|> + 1, kept tokens get offset + base and the
    j-th token after the video (j = 0, 1, …) gets base + C + j on all three rows: the kept video tokens keep
    their original ids but the text after them does not (unpruned: base + max(t, R−1, C−1) + 1), even when
    nothing is pruned. Returns (ids (3, P + K + n_after), rope delta = max id + 1 − length).
    """
    base = before[-1, -1] + 1
    after = (base + width + torch.arange(n_after)).expand(3, n_after)
    ids = torch.cat([before, kept_offsets + base, after], dim=1)
    return ids, int(ids.max()) + 1 - ids.shape[1]


def original_positions(ids: Tensor, keep: Tensor) -> tuple[Tensor, int]:
    """fastvid's rule on every family (and vLLM's on Qwen3-VL, spec B4.2): the unpruned prompt's ids (3, L)
    restricted to the kept columns ``keep`` (L,) bool; decoding continues after the unpruned maximum.
    Returns (ids (3, L'), rope delta = max id + 1 − L')."""
    kept = ids[:, keep]
    return kept, int(kept.max()) + 1 - kept.shape[1]


__all__ = ["dissimilarity", "evs", "evs_order", "evs_retained_count", "media_positions", "original_positions",
           "vllm_qwen25_positions"]
