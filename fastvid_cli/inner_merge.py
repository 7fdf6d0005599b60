"""HoliTom's inner-LLM stage: a prefill driven layer by layer that merges half the video tokens before layer K.

The model's own modules do all the work (its decoder layers, rotary embedding, final norm and LM head; nothing
in transformers is patched): layers 0..K-1 run on the whole prompt; then the last prompt token's attention at
layer K-1 (computed from that layer's own queries and keys, so it works with sdpa) picks the ``round(L_vis·(1-R))``
video tokens to keep, every other video token is merged into its most similar kept token (cosine of the hidden
states entering layer K, merged pairwise in index order: fastvid-spec.md §3.9, TV-H3), and layers K.. run on the
shorter sequence at the kept tokens' positions (with gaps). The KV cache ends up with full-length layers below K
and shorter ones from K on; decoding on it needs no special code: a one-token step attends to everything each
layer has (no mask), which is what every layer's cache holds.

Only for decoder-only LLMs with 1-D positions whose layers take ``position_embeddings`` (Qwen2: LLaVA-OneVision).
Not replicated: the reference's eager layer K-1 without a causal mask (spec §"HoliTom" 2, an inferred bug); here
layer K-1 is causal like every other layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvid_cli.decoding import with_cache
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.holitom import inner_keep, sequential_merge


@dataclass
class InnerMerge:
    """What the inner stage did to one prompt."""

    layer: int  # K
    drop_ratio: float  # R
    visual_before: int  # L_vis
    visual_after: int  # kept from layer K on
    length_after: int  # sequence length of layers >= K


def parse_inner(text: str) -> tuple[int, float]:
    """'K,R' -> (K, R) with K >= 1 and 0 < R < 1; InvalidOptionError otherwise."""
    try:
        k_text, r_text = str(text).split(",")
        k, r = int(k_text), float(r_text)
    except ValueError:
        raise InvalidOptionError(f"--holitom-inner must be K,R (a layer and a drop ratio, e.g. 18,0.5), got {text!r}")
    if k < 1 or not 0 < r < 1:
        raise InvalidOptionError(f"--holitom-inner K,R needs K >= 1 and 0 < R < 1, got {text!r}")
    return k, r


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


def check_supported(model, k: int) -> None:
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "flash_attention_2", "flash_attention_3"):
        # the layers run without an explicit mask (causal by default in these kernels); eager would need one
        raise InvalidOptionError(f"--holitom-inner runs with sdpa or flash attention, not {impl}",
                                 "use --attn-implementation sdpa")
    lm = model.get_decoder()
    layers = getattr(lm, "layers", None)
    if layers is None or not hasattr(lm, "rotary_emb") or not hasattr(layers[0], "self_attn"):
        raise InvalidOptionError("--holitom-inner needs a decoder-only LLM with per-layer modules (Qwen2: "
                                 "LLaVA-OneVision); this model does not have them")
    if k >= len(layers):
        raise InvalidOptionError(f"--holitom-inner: K must be below the LLM's {len(layers)} layers, got {k}")


@torch.inference_mode()
def prefill_inner(model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache,
                  video_span: tuple[int, int], k: int, drop_ratio: float) -> tuple[torch.Tensor, InnerMerge]:
    """Prefill (1,L,D) embeds at (1,L) positions into an EMPTY `cache`, merging the video span's tokens before
    layer `k`. Returns (last-token logits (V,), what was merged)."""
    if position_ids.dim() != 2:
        raise InvalidOptionError("--holitom-inner needs 1-D position ids; this model uses M-RoPE rows")
    check_supported(model, k)
    lm = model.get_decoder()
    p0, p1 = video_span
    n_vis = p1 - p0
    h, pos = inputs_embeds, position_ids
    cos_sin = lm.rotary_emb(h, pos)
    info = InnerMerge(k, drop_ratio, n_vis, n_vis, h.shape[1])
    att = None  # the last token's attention at layer k-1, set just before that layer runs
    for i, layer in enumerate(lm.layers):
        if i == k and n_vis > 1 and att is not None:
            keep_n = max(1, min(n_vis, inner_keep(n_vis, drop_ratio)))
            # ties: the lower index first (a stable sort of the negated scores)
            kept = torch.sort(-att[p0:p1], stable=True).indices[:keep_n].sort().values
            vis = h[0, p0:p1]
            unit = torch.nn.functional.normalize(vis.float(), dim=-1)
            target = (unit @ unit[kept].T).argmax(dim=1)  # (L_vis,) position in `kept` of each token's target
            merged = sequential_merge(vis, kept, target).to(h.dtype)
            h = torch.cat([h[:, :p0], merged[None], h[:, p1:]], dim=1)
            pos = torch.cat([pos[:, :p0], pos[:, p0:p1][:, kept], pos[:, p1:]], dim=1)
            cos_sin = lm.rotary_emb(h, pos)
            info.visual_after, info.length_after = keep_n, h.shape[1]
        if i == k - 1:
            att = _last_row_attention(layer, h, cos_sin)
        h = layer(h, attention_mask=None, position_ids=pos, use_cache=True, position_embeddings=cos_sin,
                  **with_cache(layer, cache))
        if isinstance(h, tuple):  # older decoder layers return (hidden_states, ...)
            h = h[0]
    h = lm.norm(h[:, -1:])
    return model.get_output_embeddings()(h)[0, -1], info
