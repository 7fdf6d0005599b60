"""The prefill of a pruning method's LLM stage: the LLM driven layer by layer, the video span reduced before one
layer (HoliTom's inner merge: ``pruning/holitom_inner.py``; which method has one says its registry entry).

The model's own modules do all the work (its decoder layers, rotary embedding, final norm and LM head; nothing
in transformers is patched): layers 0..K-1 run on the whole prompt; then the last prompt token's attention at
layer K-1 (computed from that layer's own queries and keys, so it works with sdpa) goes with the video span's
hidden states entering layer K to the stage's ``reduce``, which says which span tokens stay and what they hold;
layers K.. run on the shorter sequence at the kept tokens' positions (with gaps). The KV cache ends up with
full-length layers below K and shorter ones from K on; decoding on it needs no special code: a one-token step
attends to everything each layer has (no mask), which is what every layer's cache holds.

Only for decoder-only LLMs with 1-D positions whose layers take ``position_embeddings`` (Qwen2: LLaVA-OneVision).
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


def _last_row_attention(layer, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(L,) attention of the last position over all positions in `layer`, averaged over heads (the layer's own
    q/k projections and rotary embedding; the last query sees every key, so no mask is involved)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # (1, L, D)
    L, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x[:, -1:]).view(1, 1, -1, hd).transpose(1, 2)  # (1, H, 1, hd)
    k = attn.k_proj(x).view(1, L, -1, hd).transpose(1, 2)  # (1, Hkv, L, hd)
    cos, sin = cos_sin
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scaling, dim=-1)  # (1, H, 1, L)
    return probs[0, :, 0].mean(0)


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
        raise InvalidOptionError(f"{stage.option} needs a decoder-only LLM with per-layer modules (Qwen2: "
                                 "LLaVA-OneVision); this model does not have them")
    if stage.layer >= len(layers):
        raise InvalidOptionError(f"{stage.option}: K must be below the LLM's {len(layers)} layers, got {stage.layer}")


@torch.inference_mode()
def prefill_with_stage(model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache,
                       video_span: tuple[int, int], stage: LLMStage) -> tuple[torch.Tensor, StageReport]:
    """Prefill (1,L,D) embeds at (1,L) positions into an EMPTY `cache`, reducing the video span with `stage` before
    its layer. Returns (last-token logits (V,), what the stage did)."""
    if position_ids.dim() != 2:
        raise InvalidOptionError(f"{stage.option} needs 1-D position ids; this model uses M-RoPE rows")
    check_supported(model, stage)
    lm = model.get_decoder()
    k = stage.layer
    p0, p1 = video_span
    n_vis = p1 - p0
    h, pos = inputs_embeds, position_ids
    cos_sin = lm.rotary_emb(h, pos)
    info = StageReport(stage.label, k, n_vis, n_vis, h.shape[1])
    att = None  # the last token's attention at layer k-1, set just before that layer runs
    for i, layer in enumerate(lm.layers):
        if i == k and n_vis > 1 and att is not None:
            kept, reduced = stage.reduce(h[0, p0:p1], att[p0:p1])
            h = torch.cat([h[:, :p0], reduced[None].to(h.dtype), h[:, p1:]], dim=1)
            pos = torch.cat([pos[:, :p0], pos[:, p0:p1][:, kept], pos[:, p1:]], dim=1)
            cos_sin = lm.rotary_emb(h, pos)
            info.visual_after, info.length_after = int(kept.numel()), h.shape[1]
        if i == k - 1:
            att = _last_row_attention(layer, h, cos_sin)
        h = layer(h, attention_mask=None, position_ids=pos, use_cache=True, position_embeddings=cos_sin,
                  **with_cache(layer, cache))
        if isinstance(h, tuple):  # older decoder layers return (hidden_states, ...)
            h = h[0]
    h = lm.norm(h[:, -1:])
    return model.get_output_embeddings()(h)[0, -1], info
