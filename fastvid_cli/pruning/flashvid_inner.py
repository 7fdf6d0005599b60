"""FlashVID's inner-LLM stage (spec §2.9) and its retention accounting (§2.10), as pure tensor functions.

Reference: Fanziyang-v/FlashVID @ 1d37422, ``flashvid/utils.py`` ``fastv_prune`` and the patched decoder loops
(``modeling_qwen2.py``, ``modeling_qwen2_5_vl.py``, ``modeling_qwen3_vl.py``). Always on in the reference: a
FastV-style prune before decoder layer K keeps the ``ceil(r_llm·V)`` visual tokens that the last prompt token
attends to most at layer K−1, and every non-visual token. No transformers import here; the functions take the
tensors a layer-by-layer prefill (like ``fastvid_cli/llm_stage.py``) already has.

Per family (``INNER_DEFAULTS``; the reference scripts' values):

=================  =======  ========  ======  ===========================================================
family             K        r_llm     layers  visual positions scored at layer K−1
=================  =======  ========  ======  ===========================================================
llava_onevision    20       0.3       28      [start, start + V), V = pre-LLM rows; the one newline after
                                              the video is outside, so always kept
llava_video        20       0.3       28      [start, start + V + F): the per-frame newlines are inside
                                              (prunable)
qwen2_5_vl         20       0.3       28      [first video token, + V)
qwen3_vl           28       0.1       36      mask of the kept video tokens (vision_start/end dropped)
=================  =======  ========  ======  ===========================================================

Prefill integration (what the engine's prefill must do; batch 1, one video, prefill only, never on decode steps):

* Input: the pre-compressed prompt of length L' as ``flashvid`` and the family adapter build it (§2.8):
  ``inputs_embeds`` (1, L', D); position ids: LLaVA ``arange(L')`` (compact, one row), Qwen the ORIGINAL M-RoPE ids
  of every kept token (3 rows; 4 with the text row where transformers builds it, §7.12) with a merged token at its
  representative slot; the visual positions as a range ``(start, length)`` or an (L',) bool mask (table above).
* Layers 0..K−2 run on the whole sequence, as usual (cos/sin from the rotary embedding of those position ids).
* Layer K−1: before (or while) running it, take its attention input ``input_layernorm(h)``, the query of the
  LAST position and the keys of ALL L' positions after the q/k projections, q/k-norm (Qwen3) and RoPE, and call
  ``last_query_attention(q_last (H, hd), keys (Hkv, L', hd), layer.self_attn.scaling)`` -> (H, L') probabilities in the
  model dtype (logits in the model dtype, softmax in float32, then cast, as the reference). Then run the layer.
* ``keep = inner_keep_indices(L', visual, probs, r_llm)``: (L'',) int64 ascending, every non-visual position plus
  the ``inner_keep_count(V, r_llm)`` best visual ones.
* ``prune_sequence(keep, hidden, position_ids, (cos, sin), cache_position)``: slice the layer-(K−1) OUTPUT hidden
  states, every row of the position ids, cos/sin and the cache positions with ``keep``. Positions are NOT
  re-indexed. Layers K..L−1 run on the L'' tokens with a plain causal mask over them (FA2 semantics; an SDPA /
  eager mask built from the gapped cache_position would not be causal, §7.14).
* KV cache: layers < K hold L' entries, layers ≥ K hold L''. Decoding: position ids continue after the
  PRE-inner-prune sequence (LLaVA: L', L'+1, …; Qwen: the unpruned prompt's positions via rope_deltas) and each
  step attends to whatever each layer's cache holds, with no mask.
* ``K ≥ layers`` disables the stage (nothing is pruned inside the LLM; the expansion still applies, §7.22);
  ``K = 0`` is refused (layer K−1 must exist). Ratio 1.0 (no pruning) runs no inner stage either.
* The query is the LAST prompt token (the end of the assistant header), not the question text (§7.15). So the
  pruned set depends on the whole prompt: a cached video-prefix KV (the engine's shared prefix) stays valid for
  layers < K only; layers ≥ K must be recomputed per question. Batch size 1, one video: refuse anything else.
* Qwen3-VL: DeepStack features (first layers) are indexed by the kept slots (a merged token takes its
  representative slot's, not a merge), with ``visual_pos_masks`` gathered like the sequence. A repeated slot is
  two sequence positions with the same position ids; both are scored and either may be dropped.
* Report both counts: ``RetentionPlan`` gives the pre-LLM rows (V, plus LLaVA-Video's newlines) and the visual
  tokens kept from layer K on, and the layer average that ``--ratio`` stands for.

In fastvid: the registry entry ``flashvid`` builds ``InnerPrune`` with ``inner_stage`` (``--flashvid-inner K,R``, on
by default with the LLaVA-OneVision settings), and ``fastvid_cli/llm_stage.py`` runs it: the generic layer-by-layer
prefill does the steps above for 1-D positions and M-RoPE rows (its scores are float32 head means of float32 probabilities, not bf16).
K at or past the loaded LLM's depth turns it off (``off_past_depth``), ratio 1.0 builds none. On Qwen-VL
(``qwen_inner_stage``, ``flashvid_qwen``) the same prefill runs it on the M-RoPE rows, with the Qwen2.5-VL
reference's K,R (20,0.3) by default; the Qwen3-VL reference used 28,0.1 (give ``--flashvid-inner 28,0.1``).

Deviation: top-k ties go to the lowest position (the reference's ``torch.topk`` order is undefined; with bf16
scores ties are common, §7.15).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .flashvid import FAMILY_VARIANTS, flashvid, flashvid_budget
from .result import PruneResult


@dataclass(frozen=True)
class InnerStage:
    """The inner stage's settings for one model family (reference scripts)."""

    pruning_layer: int  # K: layers K.. run on the pruned sequence; scores come from layer K−1
    llm_retention_ratio: float  # r_llm: share of the visual tokens kept from layer K on
    layers: int  # decoder layers of the reference checkpoint (the engine uses the loaded model's count)
    newlines_per_frame: int = 0  # visual positions besides the pre-LLM rows: LLaVA-Video's per-frame newline


INNER_DEFAULTS: dict[str, InnerStage] = {
    "llava_onevision": InnerStage(20, 0.3, 28),
    "llava_video": InnerStage(20, 0.3, 28, newlines_per_frame=1),
    "qwen2_5_vl": InnerStage(20, 0.3, 28),
    "qwen3_vl": InnerStage(28, 0.1, 36),
}


# ----------------------------------------------------------------------------------------- arithmetic


def check_inner(pruning_layer, llm_retention_ratio, layers=None) -> tuple[int, float]:
    """(K, r_llm) checked: K ≥ 1 (layer K−1 gives the scores), 0 < r_llm ≤ 1; ``InvalidOptionError`` otherwise."""
    if not isinstance(pruning_layer, numbers.Integral) or isinstance(pruning_layer, bool) or pruning_layer < 1:
        raise InvalidOptionError(f"pruning_layer must be an integer >= 1, got {pruning_layer!r}")
    ok = isinstance(llm_retention_ratio, numbers.Real) and not isinstance(llm_retention_ratio, bool)
    if not ok or not 0.0 < float(llm_retention_ratio) <= 1.0:
        raise InvalidOptionError(f"llm_retention_ratio must be in (0, 1], got {llm_retention_ratio!r}")
    if layers is not None and (not isinstance(layers, numbers.Integral) or layers < 1):
        raise InvalidOptionError(f"layers must be a positive integer, got {layers!r}")
    return int(pruning_layer), float(llm_retention_ratio)


def inner_keep_count(n_visual: int, llm_retention_ratio: float) -> int:
    """Visual tokens kept from layer K on: ``ceil(V·r_llm)``, the reference's float expression."""
    return min(math.ceil(n_visual * llm_retention_ratio), n_visual)


def balanced_expansion(layers: int, pruning_layer: int, llm_retention_ratio: float) -> float:
    """The expansion e for which the layer-averaged retention equals the ratio (ceilings aside):
    ``L / (K + (L − K)·r_llm)``; 1.25 for both (28, 20, 0.3) and (36, 28, 0.1), the reference's constant."""
    if pruning_layer >= layers:
        return 1.0
    return layers / (pruning_layer + (layers - pruning_layer) * llm_retention_ratio)


@dataclass(frozen=True)
class RetentionPlan:
    """How ``--ratio`` splits between the pre-LLM compression and the inner stage (spec §2.10).

    ``ratio`` is FlashVID's average retention over the LLM's layers: each frame keeps ``B = ceil(N·r·e)`` tokens
    before the LLM (at least ``F·B`` rows in all, ``min_pre_llm``), layers 0..K−1 see all V of them (plus F
    newlines on LLaVA-Video), layers K..L−1 ``ceil(r_llm·V)``. Use ``for_kept(V)`` with the actual row count.
    """

    frames: int
    tokens_per_frame: int
    ratio: float
    budget: tuple[int, int, int]  # per frame (B, A, S)
    layers: int
    pruning_layer: int
    llm_retention_ratio: float
    extra_visual: int = 0  # newlines inside the visual range (LLaVA-Video: F)

    @property
    def min_pre_llm(self) -> int:
        return self.frames * self.budget[0]

    @property
    def total(self) -> int:
        """Visual tokens without pruning (the newlines counted where they are in the range)."""
        return self.frames * self.tokens_per_frame + self.extra_visual

    @property
    def active(self) -> bool:
        """Whether the inner stage prunes anything: K below the layer count and a ratio below 1."""
        return self.pruning_layer < self.layers and self.ratio < 1.0

    def visual_before(self, kept: int) -> int:
        """Visual positions layers 0..K−1 see: the pre-LLM rows plus the newlines in the range."""
        return kept + self.extra_visual

    def visual_after(self, kept: int) -> int:
        """Visual positions layers K.. see."""
        v = self.visual_before(kept)
        return inner_keep_count(v, self.llm_retention_ratio) if self.active else v

    def layer_average(self, kept: int) -> float:
        """Visual tokens per LLM layer, averaged over the layers."""
        K = min(self.pruning_layer, self.layers) if self.active else self.layers
        return (K * self.visual_before(kept) + (self.layers - K) * self.visual_after(kept)) / self.layers

    def for_kept(self, kept: int) -> dict[str, float]:
        """The counts the panel shows, for ``kept`` pre-LLM rows: before, after layer K, and the layer average
        (as a count and as a share of ``total``)."""
        avg = self.layer_average(kept)
        return dict(pre_llm=self.visual_before(kept), from_layer_k=self.visual_after(kept), layer_average=avg,
                    layer_average_ratio=avg / self.total)


def retention_plan(frames: int, tokens_per_frame: int, ratio: float, *, layers: int, pruning_layer: int,
                   llm_retention_ratio: float, expansion: float = 1.25, alpha: float = 0.7,
                   extra_visual: int = 0) -> RetentionPlan:
    """``RetentionPlan`` for a video of F frames (Qwen: temporal patches) of N tokens. At ratio 1.0 nothing is
    pruned (budget (N, N, 0), no inner stage); a ratio whose budget covers a whole frame below 1.0 is refused, as
    ``flashvid`` refuses it."""
    pruning_layer, llm_retention_ratio = check_inner(pruning_layer, llm_retention_ratio, layers)
    budget = (tokens_per_frame, tokens_per_frame, 0) if ratio >= 1.0 else \
        flashvid_budget(tokens_per_frame, ratio, expansion, alpha)
    if ratio < 1.0 and budget[0] >= tokens_per_frame:
        raise InvalidOptionError(f"flashvid: ratio {ratio:g} x expansion {expansion:g} keeps all {tokens_per_frame} "
                                 f"tokens of a frame (budget {budget[0]}); use a lower ratio, or 1.0 for no pruning")
    return RetentionPlan(frames, tokens_per_frame, ratio, budget, layers, pruning_layer, llm_retention_ratio,
                         extra_visual)


# ------------------------------------------------------------------------------------------ tensor ops


def last_query_attention(query: Tensor, keys: Tensor, scaling: float) -> Tensor:
    """Attention probabilities of the last prompt token over all positions, as the reference computes them.

    ``query`` (H, hd): the last position's query after projection, q-norm (Qwen3) and RoPE; ``keys`` (Hkv, L, hd)
    after k-norm and RoPE (grouped-query heads: H a multiple of Hkv, head h reads key head ``h // (H/Hkv)``);
    ``scaling``: the layer's ``1/sqrt(head_dim)``. Logits in the model dtype, softmax in float32, result cast to
    the model dtype (``modeling_qwen2.py:202-207``). Returns (H, L).
    """
    H, hd = query.shape
    Hkv, L, hd_k = keys.shape
    if hd != hd_k or H % Hkv:
        raise ValueError(f"query (H={H}, hd={hd}) does not fit keys (Hkv={Hkv}, hd={hd_k})")
    k = keys.repeat_interleave(H // Hkv, dim=0) if H != Hkv else keys
    logits = torch.matmul(query[:, None, :], k.transpose(1, 2)) * scaling  # (H, 1, L), model dtype
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)[:, 0, :]


def _visual_mask(seq_len: int, visual, device: torch.device) -> Tensor:
    """(L,) bool from a ``(start, length)`` range or an (L,) bool mask."""
    if isinstance(visual, Tensor):
        if visual.dtype != torch.bool or tuple(visual.shape) != (seq_len,):
            raise ValueError(f"visual mask must be a bool tensor of shape ({seq_len},), got {visual.dtype} "
                             f"{tuple(visual.shape)}")
        return visual.to(device)
    start, length = (int(v) for v in visual)
    if start < 0 or length < 0 or start + length > seq_len:
        raise ValueError(f"visual range ({start}, {length}) is outside a sequence of {seq_len}")
    mask = torch.zeros(seq_len, dtype=torch.bool, device=device)
    mask[start:start + length] = True
    return mask


def visual_scores(probs: Tensor, visual, seq_len: int | None = None) -> Tensor:
    """(H, L) probabilities -> (V,) mean over heads (in their dtype: bf16 in the reference runs) at the visual
    positions, in sequence order. ``visual``: ``(start, length)`` or an (L,) bool mask."""
    L = probs.shape[-1] if seq_len is None else seq_len
    return probs.mean(dim=0)[_visual_mask(L, visual, probs.device)]


def select_visual(scores: Tensor, keep: int) -> Tensor:
    """Indices (ascending) of the ``keep`` highest ``scores`` (V,); ties: the lowest index."""
    if not 0 <= keep <= scores.shape[0]:
        raise ValueError(f"cannot keep {keep} of {scores.shape[0]} visual tokens")
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return torch.sort(order).values


def inner_keep_indices(seq_len: int, visual, probs: Tensor, llm_retention_ratio: float) -> Tensor:
    """Sequence positions that layers K.. keep: every non-visual one and the ``ceil(V·r_llm)`` visual ones with
    the highest head-mean attention from the last prompt token. ``probs``: (H, L) from ``last_query_attention``
    (or (L,) scores already averaged over heads). Returns (L'',) int64, ascending."""
    mask = _visual_mask(seq_len, visual, probs.device)
    row = probs if probs.dim() == 1 else probs.mean(dim=0)
    if row.shape[0] != seq_len:
        raise ValueError(f"attention covers {row.shape[0]} positions, the sequence has {seq_len}")
    positions = torch.arange(seq_len, device=probs.device)
    vis = positions[mask]
    picked = vis[select_visual(row[mask], inner_keep_count(int(vis.numel()), llm_retention_ratio))]
    keep = torch.cat([positions[~mask], picked])
    return torch.sort(keep).values


def prune_sequence(keep: Tensor, hidden_states: Tensor, position_ids: Tensor | None = None,
                   position_embeddings: tuple[Tensor, Tensor] | None = None,
                   cache_position: Tensor | None = None) -> tuple:
    """Everything indexed by sequence position, cut to ``keep`` (from ``inner_keep_indices``):

    ``hidden_states`` (B, L, D) -> (B, L'', D); ``position_ids`` (…, L) (any number of rows) -> (…, L'');
    ``position_embeddings`` (cos, sin), each (…, L, d) -> (…, L'', d); ``cache_position`` (L,) -> (L'',).
    Missing inputs come back as None. Returns ``(hidden, position_ids, (cos, sin), cache_position)``.
    """
    keep = keep.to(hidden_states.device)
    hidden = hidden_states.index_select(1, keep)
    pos = position_ids.index_select(-1, keep.to(position_ids.device)) if position_ids is not None else None
    pe = None
    if position_embeddings is not None:
        cos, sin = position_embeddings
        pe = (cos.index_select(-2, keep.to(cos.device)), sin.index_select(-2, keep.to(sin.device)))
    cp = cache_position.index_select(0, keep.to(cache_position.device)) if cache_position is not None else None
    return hidden, pos, pe, cp


# ------------------------------------------------------------------------------------------ the registry's stage


def parse_inner(value, option: str = "--flashvid-inner") -> tuple[int, float] | None:
    """'K,R' (or an already parsed (K, R)) -> (K, r_llm) checked as ``check_inner``; "off" (or None) -> None: no
    inner stage. ``InvalidOptionError`` naming ``option`` otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "no")):
        return None
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    try:
        k_text, r_text = text.split(",")
        k, r = int(k_text), float(r_text)
    except ValueError:
        raise InvalidOptionError(f"{option} must be K,R (a layer and the share of video tokens kept from it on, "
                                 f"e.g. 20,0.3) or off, got {text!r}") from None
    try:
        return check_inner(k, r)
    except InvalidOptionError as e:
        raise InvalidOptionError(f"{option} K,R needs K >= 1 and 0 < R <= 1, got {text!r}") from e


@dataclass(frozen=True)
class InnerPrune:
    """FlashVID's inner stage as the layer-by-layer prefill runs it (the ``LLMStage`` contract of
    ``pruning.result``): before LLM layer K, keep the ``ceil(V·r_llm)`` video tokens the last prompt token attends
    to most at layer K−1 and drop the others (no merge: the kept ones go on unchanged). Ties: the lowest index.

    ``tail``: positions at the end of the video span that are outside FlashVID's visual range and always kept
    (LLaVA-OneVision's newline after the video, spec §2.8), so V is the span less them."""

    layer: int  # K
    llm_retention_ratio: float  # r_llm
    tail: int = 0
    option: str = "--flashvid-inner"
    label: str = "FlashVID inner prune"
    # K at or past the loaded LLM's depth turns the stage off instead of being refused (the reference's behaviour,
    # spec §7.22: a smaller model than the reference's runs FlashVID's pre-LLM part alone)
    off_past_depth: bool = True

    def reduce(self, hidden: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """``hidden`` (S, D) the video span's hidden states entering layer K, ``attention`` (S,) the last prompt
        token's attention over them at layer K−1 -> (kept (S',) int64 increasing span indices, their hidden states
        unchanged)."""
        span = hidden.shape[0]
        tail = min(self.tail, span)
        n_vis = span - tail
        picked = select_visual(attention[:n_vis], inner_keep_count(n_vis, self.llm_retention_ratio))
        kept = torch.cat([picked.to(torch.int64), torch.arange(n_vis, span, device=picked.device)])
        return kept, hidden.index_select(0, kept.to(hidden.device))


def inner_stage(inner, option: str = "--flashvid-inner", ratio: float | None = None) -> InnerPrune | None:
    """The stage on LLaVA-OneVision (its one newline after the video stays outside the visual range) for the
    parameter value ``inner`` ("K,R", (K, R), or None/"off": none). At ratio 1.0 nothing is pruned, inside the LLM
    either (spec §2.9)."""
    parsed = parse_inner(inner, option)
    if parsed is None or (ratio is not None and ratio >= 1.0):
        return None
    return InnerPrune(*parsed, tail=1, option=option)


def qwen_inner_stage(inner, option: str = "--flashvid-inner", ratio: float | None = None) -> InnerPrune | None:
    """The stage on Qwen-VL: the visual positions are the video tokens alone (Qwen2/2.5-VL: the whole video span;
    Qwen3-VL: the span less its timestamps and frame separators, which the prompt names), nothing after them
    (``tail`` 0); the layer-by-layer prefill cuts the M-RoPE rows and the DeepStack features with the sequence.
    ``inner`` and ``ratio`` as for ``inner_stage``."""
    parsed = parse_inner(inner, option)
    if parsed is None or (ratio is not None and ratio >= 1.0):
        return None
    return InnerPrune(*parsed, tail=0, option=option)


# FlashVID's Qwen-VL variant: the reference's Qwen2.5-VL settings (v1 ADTS, 4 segments, original M-RoPE positions,
# repeated slots as identical copies); the expansion (1.25) and the inner stage are the method's own defaults
QWEN_DEFAULTS = dict(FAMILY_VARIANTS["qwen2_5_vl"])


@functools.wraps(flashvid)  # flashvid's signature, for the registry's checks
def flashvid_qwen(*args, **kwargs) -> PruneResult:
    """``flashvid`` with the Qwen-VL settings (``QWEN_DEFAULTS``) for what the caller leaves out."""
    return flashvid(*args, **{**QWEN_DEFAULTS, **kwargs})


__all__ = [
    "INNER_DEFAULTS",
    "InnerPrune",
    "InnerStage",
    "QWEN_DEFAULTS",
    "RetentionPlan",
    "balanced_expansion",
    "check_inner",
    "flashvid_qwen",
    "inner_keep_count",
    "inner_keep_indices",
    "inner_stage",
    "last_query_attention",
    "parse_inner",
    "prune_sequence",
    "qwen_inner_stage",
    "retention_plan",
    "select_visual",
    "visual_scores",
]
