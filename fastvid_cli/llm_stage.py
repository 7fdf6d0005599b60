"""The prefill of a pruning method's LLM stage: the LLM driven layer by layer, the video span reduced before one
layer (HoliTom's inner merge: ``pruning/holitom_inner.py``; FlashVID's inner prune: ``pruning/flashvid_inner.py``;
which method has one says its registry entry).

The model's own modules do all the work (its decoder layers, rotary embedding, final norm and LM head; nothing
in transformers is patched): layers 0..K-1 run on the whole prompt; then the last prompt token's attention at
layer K-1 (computed from that layer's own queries and keys, so it works with sdpa) goes with the video span's
hidden states entering layer K to the stage's ``reduce``, which says which span tokens stay and what they hold;
layers K.. run on the shorter sequence at the kept tokens' positions (with gaps). The KV cache ends up with
full-length layers below K and shorter ones from K on; decoding on it needs no special code: a one-token step
attends to everything each layer has (no mask), which is what every layer's cache holds.

Decoder-only LLMs whose layers take ``position_embeddings``: Qwen2 (LLaVA-OneVision; 1-D positions) and the
Qwen2-VL / Qwen2.5-VL / Qwen3-VL text models (M-RoPE: the prompt's 3 or 4 position rows go to the model's own
rotary embedding, and are cut with the sequence; decoding continues after the last prompt column, as without a
stage). Qwen3-VL's DeepStack features are added after their layers as the stock text model does; a stage before
or among those layers cuts them to the video tokens that stay. The video tokens are the prompt's video span, or
the positions the prompt names inside it (Qwen3-VL's span also holds timestamps and frame separators, which stay).
Not replicated: the HoliTom reference's eager layer K-1 without a causal mask (spec §"HoliTom" 2, an inferred
bug); here layer K-1 is causal like every other layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvid_cli.decoding import with_cache
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.result import LLMStage


@dataclass
class StageReport:
    """What the stage did to one prompt."""

    label: str  # the stage's name, for people
    layer: int  # K
    visual_before: int  # L_vis
    visual_after: int  # kept from layer K on
    length_after: int  # sequence length of layers >= K

    def note(self, length: int) -> str:
        """The answer's note about it; `length` the prompt length the prefill started from."""
        return (f"{self.label} before LLM layer {self.layer}: {self.visual_after} of {self.visual_before} "
                f"video-span tokens kept from there on ({self.length_after} of {length} prompt tokens in layers "
                f"{self.layer}+)")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as every decoder layer here applies it (rotate-half): x (1, H, L, hd), cos/sin (1, L, hd).
    M-RoPE needs nothing more: the model's rotary embedding already mixed its T/H/W rows into cos/sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _last_row_attention(layer, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(L,) attention of the last position over all positions in `layer`, averaged over heads (the layer's own
    q/k projections, q/k norms where it has them (Qwen3), and rotary embedding; the last query sees every key, so
    no mask is involved)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # (1, L, D)
    L, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x[:, -1:]).view(1, 1, -1, hd)
    k = attn.k_proj(x).view(1, L, -1, hd)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # stock modules: Qwen3 has them
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    cos, sin = cos_sin
    q = _rotate(q.transpose(1, 2), cos[:, -1:], sin[:, -1:])  # (1, H, 1, hd)
    k = _rotate(k.transpose(1, 2), cos, sin)  # (1, Hkv, L, hd)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scaling, dim=-1)  # (1, H, 1, L)
    return probs[0, :, 0].mean(0)


def rope_rows(position_ids: torch.Tensor) -> torch.Tensor:
    """What the LLM's rotary embedding takes from `position_ids`: (1, L) 1-D ids as they are; M-RoPE ids (3, 1, L),
    or (4, 1, L) with the text row first (which only the stock forward's mask uses), as their three T/H/W rows."""
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[1:]
    return position_ids


def check_supported(model, stage: LLMStage) -> None:
    """InvalidOptionError (naming the stage's option) unless `model` can run `stage`."""
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "flash_attention_2", "flash_attention_3"):
        # the layers run without an explicit mask (causal by default in these kernels); eager would need one
        raise InvalidOptionError(f"{stage.option} runs with sdpa or flash attention, not {impl}",
                                 "use --attn-implementation sdpa")
    lm = model.get_decoder()
    layers = getattr(lm, "layers", None)
    if layers is None or not hasattr(lm, "rotary_emb") or not hasattr(layers[0], "self_attn"):
        raise InvalidOptionError(f"{stage.option} needs a decoder-only LLM with per-layer modules (Qwen2 of "
                                 "LLaVA-OneVision, the Qwen-VL text models); this model does not have them")
    if stage.layer >= len(layers):
        raise InvalidOptionError(f"{stage.option}: K must be below the LLM's {len(layers)} layers, got {stage.layer}")


def fit_stage(model, stage: LLMStage) -> tuple[LLMStage | None, str | None]:
    """`stage` as it runs on `model`: (the stage, None), or (None, a note for the answers) when its layer is at or
    past the LLM's depth and the stage says that turns it off (``off_past_depth``, e.g. FlashVID's reference
    settings on a shallower model); check_supported's InvalidOptionError otherwise."""
    layers = getattr(model.get_decoder(), "layers", None)
    if getattr(stage, "off_past_depth", False) and layers is not None and stage.layer >= len(layers):
        return None, (f"{stage.label} off: {stage.option} K={stage.layer} is not below the LLM's {len(layers)} "
                      "layers, so every layer sees all the tokens kept before the LLM")
    check_supported(model, stage)
    return stage, None


def _deepstack(lm, h: torch.Tensor, i: int, extra: dict | None) -> torch.Tensor:
    """After decoder layer `i`: the DeepStack visual features of that layer added at the visual positions, as the
    stock Qwen3-VL text model does (its own `_deepstack_process`); `h` unchanged for other layers and models."""
    if not extra or extra.get("deepstack_visual_embeds") is None or i >= len(extra["deepstack_visual_embeds"]):
        return h
    return lm._deepstack_process(h, extra["visual_pos_masks"], extra["deepstack_visual_embeds"][i])


def _deepstack_kept(extra: dict | None, keep: torch.Tensor) -> dict | None:
    """`extra` for the sequence cut to positions `keep` (ascending): the visual mask cut alike, and each DeepStack
    tensor to the rows of the visual positions that stay."""
    if not extra or extra.get("visual_pos_masks") is None:
        return extra
    mask = extra["visual_pos_masks"]  # (1, L): row j of each DeepStack tensor belongs to its j-th True
    row = torch.cumsum(mask[0].long(), 0) - 1
    kept_mask = mask[0, keep]
    rows = row[keep][kept_mask]
    embeds = [e.index_select(0, rows.to(e.device)) for e in extra["deepstack_visual_embeds"]]
    return {**extra, "visual_pos_masks": kept_mask[None], "deepstack_visual_embeds": embeds}


@torch.inference_mode()
def prefill_with_stage(model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache,
                       video_span: tuple[int, int], stage: LLMStage, *, extra: dict | None = None,
                       video_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, StageReport]:
    """Prefill (1,L,D) embeds at `position_ids` ((1,L), or M-RoPE rows (3 or 4,1,L)) into an EMPTY `cache`,
    reducing the video tokens with `stage` before its layer. Returns (last-token logits (V,), what the stage did).

    The video tokens are the span [start, end), or `video_rows` ((V,) ascending sequence positions inside it) when
    the span also holds other tokens (Qwen3-VL's timestamps and frame separators, which always stay). `extra`: the
    prompt's further LLM inputs (Assembled.prefill_extra(): Qwen3-VL's `visual_pos_masks` and
    `deepstack_visual_embeds`); the DeepStack features are added after their layers as the stock model does, and
    from layer K on only at the video tokens that stay."""
    check_supported(model, stage)
    lm = model.get_decoder()
    k = stage.layer
    p0, p1 = video_span
    dev = inputs_embeds.device
    vis = torch.arange(p0, p1, device=dev) if video_rows is None else video_rows.to(dev, torch.long)
    n_vis = int(vis.numel())
    h, pos = inputs_embeds, position_ids
    cos_sin = lm.rotary_emb(h, rope_rows(pos))
    info = StageReport(stage.label, k, n_vis, n_vis, h.shape[1])
    att = None  # the last token's attention at layer k-1, set just before that layer runs
    for i, layer in enumerate(lm.layers):
        if i == k and n_vis > 1 and att is not None:
            kept, reduced = stage.reduce(h[0, vis], att[vis])
            stay = torch.ones(h.shape[1], dtype=torch.bool, device=dev)
            stay[vis] = False
            stay[vis[kept.to(dev)]] = True
            keep = stay.nonzero().flatten()
            h = h.index_put((torch.zeros_like(kept, device=dev), vis[kept.to(dev)]), reduced.to(h.dtype))
            h = h.index_select(1, keep)
            pos = pos.index_select(-1, keep.to(pos.device))
            extra = _deepstack_kept(extra, keep)
            cos_sin = lm.rotary_emb(h, rope_rows(pos))
            info.visual_after, info.length_after = int(kept.numel()), h.shape[1]
        if i == k - 1:
            att = _last_row_attention(layer, h, cos_sin)
        # no position ids to the layer: only flash attention reads them, and gapped ids would look like packed
        # sequences to it; the rotary embedding (cos_sin) carries the positions
        h = layer(h, attention_mask=None, position_ids=None, use_cache=True, position_embeddings=cos_sin,
                  **with_cache(layer, cache))
        if isinstance(h, tuple):  # older decoder layers return (hidden_states, ...)
            h = h[0]
        h = _deepstack(lm, h, i, extra)
    h = lm.norm(h[:, -1:])
    return model.get_output_embeddings()(h)[0, -1], info
