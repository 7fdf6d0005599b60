"""FlashVID's inner-LLM stage and retention accounting (fastvid_cli.pruning.flashvid_inner): spec TV6, the §2.10
numbers, and a TV8-style run on a tiny random Qwen2 decoder driven layer by layer with these functions (the way
the engine's prefill will call them)."""

from __future__ import annotations

import math

import pytest
import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning.flashvid_inner import (
    INNER_DEFAULTS,
    balanced_expansion,
    check_inner,
    inner_keep_count,
    inner_keep_indices,
    last_query_attention,
    prune_sequence,
    retention_plan,
    select_visual,
    visual_scores,
)

# --------------------------------------------------------------------------------------------- TV6

TV6 = torch.tensor([[.30, .05, .10, .02, .20, .03, .05, .05, .10, .10],
                    [.20, .05, .02, .12, .18, .01, .07, .15, .10, .10]])


def test_tv6_scores_and_kept_positions():
    assert inner_keep_count(5, 0.4) == 2  # ceil(2.0)
    assert visual_scores(TV6, (2, 5)).tolist() == pytest.approx([.06, .07, .19, .02, .06])
    assert inner_keep_indices(10, (2, 5), TV6, 0.4).tolist() == [0, 1, 3, 4, 7, 8, 9]


def test_tv6_equal_attention_keeps_the_lowest_positions():
    """The reference kept slots 4 and 6 on CPU (torch.topk's tie order); here ties go to the lowest position."""
    flat = torch.full((2, 10), 0.1)
    assert inner_keep_indices(10, (2, 5), flat, 0.4).tolist() == [0, 1, 2, 3, 7, 8, 9]


def test_visual_mask_and_head_mean_input():
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 3, 4, 5, 6]] = True
    by_mask = inner_keep_indices(10, mask, TV6, 0.4)
    assert torch.equal(by_mask, inner_keep_indices(10, (2, 5), TV6, 0.4))
    assert torch.equal(by_mask, inner_keep_indices(10, (2, 5), TV6.mean(dim=0), 0.4))
    gaps = torch.zeros(10, dtype=torch.bool)
    gaps[[1, 4, 8]] = True  # Qwen3-VL: kept video tokens need not be contiguous
    assert inner_keep_indices(10, gaps, TV6, 0.5).tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9]  # ceil(1.5): 4 and 8


def test_bf16_scores_tie_to_the_lowest_index():
    s = torch.tensor([0.1, 0.3, 0.3, 0.2, 0.3], dtype=torch.bfloat16)
    assert select_visual(s, 2).tolist() == [1, 2]
    assert select_visual(s, 0).tolist() == []
    with pytest.raises(ValueError):
        select_visual(s, 6)


def test_bad_visual_ranges():
    with pytest.raises(ValueError):
        inner_keep_indices(10, (8, 5), TV6, 0.4)
    with pytest.raises(ValueError):
        inner_keep_indices(10, torch.ones(9, dtype=torch.bool), TV6, 0.4)
    with pytest.raises(ValueError):
        inner_keep_indices(12, (2, 5), TV6, 0.4)


# ------------------------------------------------------------------------------------------- §2.10


@pytest.mark.parametrize("ratio, B, V, inner, average", [
    (0.10, 25, 800, 240, 10.20), (0.15, 37, 1184, 356, 15.11), (0.20, 49, 1568, 471, 20.00),
    (0.25, 62, 1984, 596, 25.31)])
def test_retention_llava_onevision(ratio, B, V, inner, average):
    st = INNER_DEFAULTS["llava_onevision"]
    plan = retention_plan(32, 196, ratio, layers=st.layers, pruning_layer=st.pruning_layer,
                          llm_retention_ratio=st.llm_retention_ratio)
    assert plan.budget[0] == B and plan.min_pre_llm == V and plan.total == 6272
    counts = plan.for_kept(V)
    assert counts["pre_llm"] == V and counts["from_layer_k"] == inner
    assert round(100 * counts["layer_average_ratio"], 2) == average
    if ratio == 0.10:
        assert counts["layer_average"] == 640 and round(100 * V / 6272, 2) == 12.76


@pytest.mark.parametrize("ratio, B, inner", [(0.10, 22, 442), (0.15, 32, 634), (0.20, 43, 845), (0.25, 53, 1037)])
def test_retention_llava_video_counts_the_newlines(ratio, B, inner):
    st = INNER_DEFAULTS["llava_video"]
    plan = retention_plan(64, 169, ratio, layers=st.layers, pruning_layer=st.pruning_layer,
                          llm_retention_ratio=st.llm_retention_ratio, extra_visual=64 * st.newlines_per_frame)
    assert plan.budget[0] == B and plan.total == 10880
    counts = plan.for_kept(plan.min_pre_llm)
    assert counts["pre_llm"] == 64 * B + 64 and counts["from_layer_k"] == inner
    if ratio == 0.10:
        assert round(100 * counts["layer_average_ratio"], 2) == 10.82


@pytest.mark.parametrize("family, inner, averages", [
    ("qwen2_5_vl", [154, 231, 308, 384], [10.00, 15.00, 20.01, 25.00]),
    ("qwen3_vl", [52, 77, 103, 128], [10.00, 15.00, 20.00, 25.00])])
def test_retention_qwen(family, inner, averages):
    st = INNER_DEFAULTS[family]
    got_inner, got_avg = [], []
    for ratio, B, A in zip((0.10, 0.15, 0.20, 0.25), (32, 48, 64, 80), (23, 34, 45, 56)):
        plan = retention_plan(16, 256, ratio, layers=st.layers, pruning_layer=st.pruning_layer,
                              llm_retention_ratio=st.llm_retention_ratio)
        assert plan.budget[:2] == (B, A) and plan.min_pre_llm == 16 * B
        counts = plan.for_kept(plan.min_pre_llm)
        got_inner.append(counts["from_layer_k"])
        got_avg.append(round(100 * counts["layer_average_ratio"], 2))
    assert got_inner == inner and got_avg == averages


def test_expansion_balances_the_layer_average():
    for st in INNER_DEFAULTS.values():
        assert balanced_expansion(st.layers, st.pruning_layer, st.llm_retention_ratio) == pytest.approx(1.25)
    assert balanced_expansion(28, 28, 0.3) == 1.0


def test_inner_stage_off():
    """K >= L: nothing pruned inside the LLM (the expansion still applies); ratio 1.0: nothing pruned at all."""
    plan = retention_plan(32, 196, 0.10, layers=28, pruning_layer=28, llm_retention_ratio=0.3)
    assert not plan.active and plan.for_kept(800)["from_layer_k"] == 800 and plan.layer_average(800) == 800
    full = retention_plan(32, 196, 1.0, layers=28, pruning_layer=20, llm_retention_ratio=0.3)
    assert not full.active and full.budget == (196, 196, 0)
    assert full.for_kept(6272)["layer_average_ratio"] == 1.0


def test_budget_covering_a_frame_is_refused():
    with pytest.raises(InvalidOptionError):
        retention_plan(32, 196, 0.85, layers=28, pruning_layer=20, llm_retention_ratio=0.3)


@pytest.mark.parametrize("k, r", [(0, 0.3), (-1, 0.3), (2.5, 0.3), (True, 0.3), (20, 0.0), (20, 1.5), (20, "x")])
def test_invalid_inner_settings(k, r):
    with pytest.raises(InvalidOptionError):
        check_inner(k, r)
    with pytest.raises(InvalidOptionError):
        retention_plan(8, 16, 0.1, layers=28, pruning_layer=k, llm_retention_ratio=r)


def test_ceil_is_the_float_expression():
    assert inner_keep_count(1280, 0.3) == 384 and inner_keep_count(512, 0.3) == 154
    assert all(inner_keep_count(v, 0.3) == math.ceil(v * 3 / 10) for v in range(5000))


# ----------------------------------------------------------------------------------- tensor helpers


def test_last_query_attention_gqa_and_dtype():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=gen)
    k = torch.randn(2, 11, 8, generator=gen)
    probs = last_query_attention(q, k, 8 ** -0.5)
    assert probs.shape == (4, 11) and torch.allclose(probs.sum(dim=1), torch.ones(4))
    manual = torch.softmax((q[1] @ k[0].T) * 8 ** -0.5, dim=0)  # head 1 reads key head 0 (repeat_kv)
    assert torch.allclose(probs[1], manual, atol=1e-6)
    manual = torch.softmax((q[3] @ k[1].T) * 8 ** -0.5, dim=0)
    assert torch.allclose(probs[3], manual, atol=1e-6)
    assert last_query_attention(q.bfloat16(), k.bfloat16(), 8 ** -0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        last_query_attention(q, torch.randn(3, 11, 8), 1.0)


def test_prune_sequence_slices_every_row():
    keep = torch.tensor([0, 2, 5])
    h = torch.arange(2 * 6 * 3).view(2, 6, 3).float()
    pos = torch.arange(4 * 6).view(4, 1, 6)  # 4 rows of M-RoPE-style ids
    cos, sin = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    h2, pos2, (cos2, sin2), cp = prune_sequence(keep, h, pos, (cos, sin), torch.arange(10, 16))
    assert torch.equal(h2, h[:, [0, 2, 5]]) and torch.equal(pos2, pos[..., [0, 2, 5]])
    assert torch.equal(cos2, cos[:, [0, 2, 5]]) and torch.equal(sin2, sin[:, [0, 2, 5]])
    assert cp.tolist() == [10, 12, 15]
    assert prune_sequence(keep, h)[1:] == (None, None, None)


# ------------------------------------------------------------------------- TV8: a real (tiny) decoder


def tiny_qwen2(impl: str):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                   intermediate_size=128, vocab_size=50, max_position_embeddings=128)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return transformers.Qwen2Model(cfg).eval()


def layer_qk(layer, h, cos_sin):
    """The last position's query and all keys of `layer` (after RoPE), for last_query_attention."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(h)
    L, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, L, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, L, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    return q[0, :, -1], k[0], attn.scaling


def flashvid_prefill(model, embeds, visual, k_layer, r_llm):
    """What the engine's prefill will do (flashvid_inner module docstring), with the model's own modules."""
    from fastvid_cli.decoding import new_cache, with_cache

    cache = new_cache(model)
    L = embeds.shape[1]
    pos = torch.arange(L)[None]
    h, cos_sin = embeds, model.rotary_emb(embeds, pos)
    cp = torch.arange(L)
    keep = None
    for i, layer in enumerate(model.layers):
        if i == k_layer:
            keep = inner_keep_indices(L, visual, probs, r_llm)
            h, pos, cos_sin, cp = prune_sequence(keep, h, pos, cos_sin, cp)
        if i == k_layer - 1:
            probs = last_query_attention(*layer_qk(layer, h, cos_sin))
        n = h.shape[1]
        mask = torch.full((n, n), -torch.inf).triu(1)[None, None]  # plain causal over the compacted sequence
        h = layer(h, attention_mask=mask, position_ids=pos, use_cache=True, position_embeddings=cos_sin,
                  cache_position=cp, **with_cache(layer, cache))
        if isinstance(h, tuple):
            h = h[0]
    return model.norm(h), keep, [int(layer.keys.shape[-2]) for layer in cache.layers], probs


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_tv8_tiny_decoder(impl):
    model = tiny_qwen2(impl)
    embeds = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(1))
    out, keep, lengths, probs = flashvid_prefill(model, embeds, (3, 10), 2, 0.3)
    assert lengths == [20, 20, 13, 13]  # 20 − 10 + ceil(3.0)
    # the last row of layer 1's own attention (eager, full forward) gives the same probabilities and choice
    eager = tiny_qwen2("eager")
    full = eager(inputs_embeds=embeds, output_attentions=True)
    row = full.attentions[1][0, :, -1, :]
    assert torch.allclose(probs, row, atol=1e-6)
    expected = sorted(list(range(3)) + list(range(13, 20))
                      + (3 + torch.topk(row.mean(dim=0)[3:13], 3).indices).tolist())
    assert keep.tolist() == expected
    # layers 0..1 ran on the full sequence: with nothing pruned the run is the model's own forward
    same, keep_all, lengths_all, _ = flashvid_prefill(model, embeds, (3, 10), 2, 1.0)
    assert lengths_all == [20] * 4 and keep_all.tolist() == list(range(20))
    assert torch.allclose(same, model(inputs_embeds=embeds).last_hidden_state, atol=1e-5)
    # and the pruned run equals the unpruned layers 2.. fed the kept rows of layer 1's output by hand
    hidden = model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[2]
    pos = keep[None]
    h, cos_sin = hidden[:, keep], model.rotary_emb(hidden, pos)
    for layer in model.layers[2:]:
        n = h.shape[1]
        mask = torch.full((n, n), -torch.inf).triu(1)[None, None]
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        h = h[0] if isinstance(h, tuple) else h
    assert torch.allclose(out, model.norm(h), atol=1e-5)
