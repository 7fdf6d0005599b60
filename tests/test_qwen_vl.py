"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (tiny random checkpoints loaded with from_pretrained from a folder):
sampling contract, preprocessing layout, stock-equivalence at ratio 1.0, original 3-D positions after pruning,
Qwen3-VL DeepStack, FastVID's Qwen variant (TV-F8) and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from fastvid_cli import fast_decode
from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.fast_decode import FusedDecoder
from fastvid_cli.errors import InvalidOptionError, VideoDecodeError
from fastvid_cli.models import qwen_vl as Q
from fastvid_cli.pruning.fastvid_qwen import duplicate_runs, fastvid_qwen, segment_budget
from fastvid_cli.video import sample_frames

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def clip(index_video):
    """16 of the 48 frames (24 fps) picked by Qwen's rule: 8 temporal patches."""
    return sample_frames(str(index_video), Q.frame_plan(16))


def encoded(engine, clip):
    a = engine.adapter
    pixels = a.preprocess_clip(clip)
    return pixels, a.encode(pixels)


def our_tokens(engine, asm, n: int, *, static: bool = False, fused: bool = False) -> list[int]:
    """Greedy tokens from our prefill + the eager loop, the static-cache decoder or the fused step (both without
    CUDA graphs, as on CPU)."""
    model = engine.model
    cache = new_cache(model)
    logits = prefill(model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra())
    s = Sampling(max_new_tokens=n)
    if static:
        return StaticDecoder(model, graphs=False).decode(model, logits, cache, asm.next_position, s).token_ids
    if fused:
        return FusedDecoder(model, graphs=False).decode(model, logits, cache, asm.next_position, s).token_ids
    return decode(model, logits, cache, asm.next_position, s).token_ids


def stock_tokens(engine, prompt, feats, pixels, n: int) -> list[int]:
    """transformers' own path: the processor-shaped input ids + pixel_values_videos through generate()."""
    inputs = engine.adapter.generate_inputs(prompt, feats, pixels)
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


# ------------------------------------------------------------------------------------------ sampling contract
@pytest.mark.parametrize("total,rate,fps,expected", [
    (300, 30.0, 2.0, 20),  # 10 s at 2 fps
    (24, 24.0, 2.0, 4),  # 1 s: 2 frames, raised to the minimum of 4
    (30000, 30.0, 2.0, 768),  # 1000 s: capped at 768
    (301, 30.0, 1.0, 10),  # 10.03 s at 1 fps: floored to the temporal patch
    (3, 30.0, 2.0, 2),  # shorter than the minimum: what it has, even
    (1, 30.0, 2.0, 1),
    (300, None, 2.0, 24),  # no rate in the container: taken as 24 fps
])
def test_frame_count_follows_qwen_fps_rule(total, rate, fps, expected):
    plan = Q.frame_plan(fps=fps)
    assert plan.count(total, rate) == expected
    idx = plan(total, rate)
    assert len(idx) == expected and idx[0] == 0 and (total == 1 or idx[-1] == total - 1)
    # qwen-vl-utils' indices: torch.linspace(0, total-1, n) (float32) rounded half to even; exact for short clips
    exact = [i * (total - 1) / max(expected - 1, 1) for i in range(expected)]
    assert all(abs(a - b) <= 0.5 + 1e-3 * total / 1000 for a, b in zip(idx, exact))
    if total <= 1000:
        assert idx == [round(e) for e in exact]


@pytest.mark.parametrize("frames,expected", [(16, 16), (7, 8), (5, 4), (1, 2), (1000, 300)])
def test_frame_count_given_is_rounded_to_the_temporal_patch(frames, expected):
    assert Q.frame_plan(frames).count(300, 30.0) == expected


def test_frames_and_fps_exclude_each_other_and_fps_must_be_positive():
    with pytest.raises(InvalidOptionError):
        Q.frame_plan(8, 2.0)
    with pytest.raises(InvalidOptionError):
        Q.frame_plan(fps=0.0)


def test_clip_sampled_by_plan(index_video):
    clip = sample_frames(str(index_video), Q.frame_plan())  # 2 s at 24 fps: 4 frames (the minimum)
    assert clip.indices == [0, 16, 31, 47] and clip.requested == 4 and clip.frames.shape[0] == 4


# ------------------------------------------------------------------------------------------ frame size
def test_smart_resize_keeps_multiples_and_the_budget():
    assert Q.frame_size(720, 1280, 20, 28) == (728, 1288)  # 26x46 merged tokens per patch, within budget
    h, w = Q.frame_size(720, 1280, 768, 28)  # 10 min at 2 fps: 384 patches of 4x8 = 12288 tokens (spec §1)
    assert (h, w) == (112, 224)
    h, w = Q.frame_size(360, 640, 8, 32)
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - 640 / 360) < 0.2
    h, w = Q.frame_size(48, 64, 16, 28)  # tiny frames are scaled up to the per-frame minimum (16 tokens)
    assert h * w >= 16 * 28 * 28 and h % 28 == 0 and w % 28 == 0
    with pytest.raises(VideoDecodeError):
        Q.frame_size(10, 2100, 4, 28)


# ------------------------------------------------------------------------------------------ preprocessing
def test_patchify_layout_matches_the_hf_processor_order():
    """Row r = (t, bh, bw, mh, mw) in C order, column = (c, tt, py, px): derived from the index arithmetic of
    video_processing_qwen2_vl.patchify's view (.., t, tps, C, gh/m, m, p, gw/m, m, p) + permute
    (0, 1, 4, 7, 5, 8, 3, 2, 6, 9), independently of our reshape."""
    T, C, H, W, p, m, tps = 3, 3, 56, 84, 14, 2, 2
    t = torch.arange(T).view(T, 1, 1, 1)
    c = torch.arange(C).view(1, C, 1, 1)
    y = torch.arange(H).view(1, 1, H, 1)
    x = torch.arange(W).view(1, 1, 1, W)
    frames = (((t * 10 + c) * 100 + y) * 1000 + x).double()  # every value says where it came from
    values, grid = Q.patchify(frames, p, m, tps)
    gt, gh, gw = grid
    assert grid == (2, 4, 6) and values.shape == (2 * 4 * 6, C * tps * p * p)
    for r in (0, 1, 5, 7, 23, 30, 47):
        for col in (0, 195, 196, 600, 1175):
            mw, rest = r % m, r // m
            mh, rest = rest % m, rest // m
            bw, rest = rest % (gw // m), rest // (gw // m)
            bh, tg = rest % (gh // m), rest // (gh // m)
            px, rest = col % p, col // p
            py, rest = rest % p, rest // p
            tt, cc = rest % tps, rest // tps
            frame = min(tg * tps + tt, T - 1)  # the odd last frame is repeated
            yy, xx = (bh * m + mh) * p + py, (bw * m + mw) * p + px
            assert values[r, col].item() == ((frame * 10 + cc) * 100 + yy) * 1000 + xx


def test_fused_normalisation_is_the_processor_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4)).float()
    out = Q.normalize_fused(x, Q.CLIP_MEAN_STD[0], Q.CLIP_MEAN_STD[1])
    mean = torch.tensor(Q.CLIP_MEAN_STD[0]).view(1, 3, 1, 1)
    std = torch.tensor(Q.CLIP_MEAN_STD[1]).view(1, 3, 1, 1)
    assert torch.allclose(out, (x / 255 - mean) / std, atol=1e-5)


def test_preprocess_shapes_and_temporal_meta(qwen_engines, clip):
    a = qwen_engines("qwen2_5_vl").adapter
    px = a.preprocess_clip(clip)
    assert px.grid == (8, 8, 10) and px.values.shape == (8 * 8 * 10, 3 * 2 * 14 * 14)
    assert px.meta["sample_fps"] == pytest.approx(16 / 48 * 24)  # qwen-vl-utils' sample_fps
    assert px.meta["second_per_grid_ts"] == pytest.approx(2 / 8)
    a3 = qwen_engines("qwen3_vl").adapter
    px3 = a3.preprocess_clip(clip)
    assert px3.values.shape[1] == 3 * 2 * 16 * 16 and px3.grid[1] % 2 == 0
    idx = clip.indices
    assert px3.meta["timestamps"] == pytest.approx([(idx[i] + idx[i + 1]) / 2 / 24 for i in range(0, 16, 2)])
    odd = a.preprocess(clip.frames[:3])  # an odd count: the last frame repeated, as the processor does
    assert odd.grid[0] == 2


def test_grid_timestamps_pad_like_the_processor():
    assert Q.grid_timestamps([0, 6, 12], 6.0) == [0.5, 2.0]


@pytest.mark.parametrize("kind", KINDS + ("qwen3_vl_moe",))
def test_warm_up_runs_every_stage(qwen_engines, kind, monkeypatch):
    """Engine.warmup (run at load on CUDA) passes through resize, vision, the family's default pruning, prefill
    and decoding, so the first real question pays no one-time kernel loading."""
    eng = qwen_engines(kind)
    seen = []
    real = eng.prune
    monkeypatch.setattr(eng, "prune", lambda *a, **k: seen.append(a[1].method) or real(*a, **k))
    eng.warmup()
    assert seen == ["fastvid"] and eng.warmup_ms > 0


# ------------------------------------------------------------------------------------------ stock equivalence
@pytest.mark.parametrize("kind", KINDS + ("qwen3_vl_moe",))
def test_ratio_one_reproduces_stock_generate_token_for_token(qwen_engines, clip, index_video, kind):
    eng = qwen_engines(kind)
    a = eng.adapter
    pixels, feats = encoded(eng, clip)
    prompt = a.build_prompt("What happens in this video?")
    ref = stock_tokens(eng, prompt, feats, pixels, 12)
    flat = feats.embeds.flatten(0, 1)
    asm = a.assemble(prompt, feats, flat, torch.arange(flat.shape[0]))
    assert asm.length == asm.full_length == a.full_input_ids(prompt, feats).shape[1]
    assert our_tokens(eng, asm, 12) == ref
    assert our_tokens(eng, asm, 12, static=True) == ref  # the CUDA-graph decoder's step, run eagerly
    if kind == "qwen3_vl_moe":  # experts: the fused step leaves this model to the StaticDecoder
        assert "not Qwen2/Qwen3 dense layers" in fast_decode.unsupported(eng.model)
    else:
        assert our_tokens(eng, asm, 12, fused=True) == ref  # the fused step (torch kernels, no graph)
    report = eng.ask(str(index_video), "What happens in this video?", clip=clip, sample_ms=1.0,
                     prune=PruneOptions(method="none", ratio=1.0), gen=GenerationOptions(max_new_tokens=12))
    assert report.answer == a.tokenizer.decode(ref, skip_special_tokens=True)
    assert report.video_tokens_total == report.video_tokens_kept == 8 * 20


def test_qwen3_prompt_is_the_processors_timestamp_layout(qwen_engines, clip):
    a = qwen_engines("qwen3_vl").adapter
    _, feats = encoded(qwen_engines("qwen3_vl"), clip)
    prompt = a.build_prompt("Q?")
    text = a.tokenizer.decode(a.full_input_ids(prompt, feats)[0])
    stamps = feats.meta["timestamps"]
    # the template's outer <|vision_start|>…<|vision_end|> stays; each patch is "<t seconds>" + its own block
    block = "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * 20 + "<|vision_end|>" for t in stamps)
    assert "<|vision_start|>" + block + "<|vision_end|>" in text


# ------------------------------------------------------------------------------------------ pruned positions
def _positions_seen(model):
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].detach().clone())

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_pruned_run_keeps_original_3d_positions(qwen_engines, clip, kind):
    eng = qwen_engines(kind)
    a = eng.adapter
    _, feats = encoded(eng, clip)
    result = fastvid_qwen(feats.embeds, feats.saliency, feats.frame_features, 0.27, c=4)
    prompt = a.build_prompt("Where?")
    asm = a.assemble(prompt, feats, result.embeds, result.index)
    ids = a.full_input_ids(prompt, feats)
    full = a.full_positions(ids, feats)  # (3, 1, L) from the model's get_rope_index
    video = (ids[0] == a.video_token_id).nonzero().flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[video] = False
    keep[video[result.index]] = True
    assert torch.equal(asm.position_ids[1:], full[:, :, keep])
    assert torch.equal(asm.position_ids[0, 0], torch.arange(asm.length))
    assert asm.full_length == ids.shape[1] and asm.length == ids.shape[1] - video.numel() + result.kept
    # decoding continues after the UNPRUNED prompt: the stock model's next T/H/W position is max + 1
    assert asm.next_position[1:].flatten().tolist() == [int(full.max()) + 1] * 3
    seen, handle = _positions_seen(eng.model)
    try:
        ours = our_tokens(eng, asm, 5)
    finally:
        handle.remove()
    assert torch.equal(seen[0], asm.position_ids)
    assert [p[1:].flatten().tolist() for p in seen[1:]] == [[int(full.max()) + 1 + i] * 3 for i in range(4)]
    # transformers' generate with the same embeddings and ids decodes the same tokens
    with torch.inference_mode():
        out = eng.model.generate(inputs_embeds=asm.inputs_embeds, position_ids=asm.position_ids,
                                 attention_mask=torch.ones((1, asm.length), dtype=torch.long), max_new_tokens=5,
                                 do_sample=False)
    assert out[0].tolist() == ours
    assert our_tokens(eng, asm, 5, static=True) == ours  # the static-cache decoder continues the same way
    assert our_tokens(eng, asm, 5, fused=True) == ours  # so does the fused step (rotary from the M-RoPE column)


def test_qwen3_deepstack_is_pruned_with_the_same_indices(qwen_engines, clip):
    """The kept tokens' DeepStack features reach the LLM at exactly their rows; the result equals transformers'
    own hook for pre-computed encoder outputs (mm_encoder_outputs, >= 5.18) with the same pruned features."""
    import inspect

    from transformers.modeling_outputs import BaseModelOutputWithPooling

    eng = qwen_engines("qwen3_vl")
    a = eng.adapter
    _, feats = encoded(eng, clip)
    assert len(feats.side_embeds) == 2 and feats.side_embeds[0].shape == feats.embeds.shape
    result = fastvid_qwen(feats.embeds, feats.saliency, feats.frame_features, 0.27, c=4)
    prompt = a.build_prompt("Which?")
    asm = a.assemble(prompt, feats, result.embeds, result.index)
    extra = asm.prefill_extra()
    mask = extra["visual_pos_masks"][0]
    assert int(mask.sum()) == result.kept
    for side, got in zip(feats.side_embeds, extra["deepstack_visual_embeds"]):
        assert torch.equal(got, side.flatten(0, 1)[result.index])
    assert torch.equal(asm.inputs_embeds[0, mask], result.embeds)
    assert asm.prefill_extra(asm.video_span[1]) is None  # nothing visual after the span (shared-prefix split)
    ours = our_tokens(eng, asm, 6)
    assert our_tokens(eng, asm, 6, static=True) == ours  # the static-cache decoder continues the same way
    assert our_tokens(eng, asm, 6, fused=True) == ours
    with torch.inference_mode():  # without DeepStack the model computes something else
        cache = new_cache(eng.model)
        plain = prefill(eng.model, asm.inputs_embeds, asm.position_ids, cache)
        cache = new_cache(eng.model)
        deep = prefill(eng.model, asm.inputs_embeds, asm.position_ids, cache, extra)
    assert not torch.allclose(plain, deep)
    if "mm_encoder_outputs" not in inspect.signature(eng.model.forward).parameters:
        pytest.skip("transformers < 5.18 has no mm_encoder_outputs")
    ids = a.full_input_ids(prompt, feats)
    video = (ids[0] == a.video_token_id).nonzero().flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[video] = False
    keep[video[result.index]] = True
    enc = BaseModelOutputWithPooling(pooler_output=(result.embeds,))
    enc.deepstack_features = [(d.flatten(0, 1)[result.index],) for d in feats.side_embeds]
    with torch.inference_mode():
        out = eng.model.generate(input_ids=ids[:, keep], attention_mask=torch.ones_like(ids[:, keep]),
                                 mm_encoder_outputs={"video": enc}, position_ids=asm.position_ids,
                                 max_new_tokens=6, do_sample=False)
    assert out[0, int(keep.sum()):].tolist() == ours


def test_shared_prefix_session_answers_like_separate_asks(qwen_engines, clip, index_video):
    eng = qwen_engines("qwen3_vl")
    prune = PruneOptions(method="fastvid", ratio=0.27, params=dict(c=4))
    gen = GenerationOptions(max_new_tokens=6)
    sess = eng.session(str(index_video), clip=clip, sample_ms=0.0, prune=prune)
    questions = ["What happens?", "Count them."]
    shared = [sess.answer(q, gen, reuse_prefix=True) for q in questions]
    assert sess.prefix_cache is not None
    alone = [eng.ask(str(index_video), q, clip=clip, sample_ms=0.0, prune=prune, gen=gen) for q in questions]
    assert [r.answer for r in shared] == [r.answer for r in alone]


# ------------------------------------------------------------------------------------------ FastVID inputs
@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_saliency_uses_the_last_blocks_own_queries_and_keys(qwen_engines, kind):
    """Our q/k of the last vision block (input caught by a pre-hook, rotary applied by us) reproduce that block's
    attention output; the saliency is a distribution over each patch's tokens; features are the stock ones."""
    eng = qwen_engines(kind)
    a = eng.adapter
    torch.manual_seed(0)  # noise frames: every merged token differs, so rows can be matched below
    pixels = a.preprocess(torch.randint(0, 256, (16, 48, 64, 3), dtype=torch.uint8))
    feats = a.encode(pixels)
    attn = a.visual.blocks[-1].attn
    tap, outs = Q._AttentionTap(attn), []
    handle = attn.register_forward_hook(lambda m, i, o: outs.append(o))
    try:
        with torch.inference_mode():
            stock = a.visual(pixels.values, grid_thw=pixels.grid_thw).pooler_output
    finally:
        tap.close()
        handle.remove()
    S = tap.x.shape[0]
    per = S // 8  # the last block attends within each temporal patch
    with torch.inference_mode():
        qkv = attn.qkv(tap.x).reshape(S, 3, attn.num_heads, -1)
        q, k = (Q._rotary(qkv[:, i].float(), *tap.rope) for i in (0, 1))
        v = qkv[:, 2].float()
        probs = [torch.softmax(torch.einsum("shd,uhd->hsu", q[i:i + per], k[i:i + per]) * q.shape[-1] ** -0.5, -1)
                 for i in range(0, S, per)]
        out = torch.cat([torch.einsum("hsu,uhd->shd", p, v[i * per:(i + 1) * per]) for i, p in enumerate(probs)])
        assert torch.allclose(attn.proj(out.reshape(S, -1)), outs[0], atol=1e-5)
    assert torch.allclose(stock.view(8, 20, -1), feats.embeds, atol=1e-6)
    assert torch.allclose(feats.frame_features, feats.embeds.mean(dim=1))
    assert torch.allclose(feats.saliency.sum(dim=1), torch.ones(8), atol=1e-5)
    # each score sits at its token's raster slot: find where the merger's rows (tower order, windowed for
    # Qwen2.5-VL) land in the stock output, and compare with the scores computed in tower order
    merged = []
    hook = a.visual.merger.register_forward_hook(lambda m, i, o: merged.append(o))
    try:
        with torch.inference_mode():
            a.visual(pixels.values, grid_thw=pixels.grid_thw)
    finally:
        hook.remove()
    where = torch.cdist(merged[0].float(), stock.float()).argmin(dim=1)  # tower row -> raster row
    with torch.inference_mode():
        tower_scores = Q.pooled_query_attention(attn, tap.x, tap.rope, 8, 4).flatten()
    assert torch.allclose(feats.saliency.flatten()[where], tower_scores, atol=1e-6)
    if kind == "qwen2_5_vl":
        assert not torch.equal(where, torch.arange(where.numel()))  # the windowed order really differs


def test_window_order_is_qwen2_5s(qwen_engines):
    from transformers.vision_utils import get_vision_window_index

    for t, gh, gw in [(1, 8, 10), (3, 4, 6), (2, 10, 4)]:
        ref, _ = get_vision_window_index(torch.tensor([[t, gh, gw]]), spatial_merge_size=2, window_size=56,
                                         patch_size=14)
        assert torch.equal(Q.window_order(t, gh // 2, gw // 2, 2), ref)


# ------------------------------------------------------------------------------------------ FastVID Qwen variant
def test_tv_f8_run_collapse():
    """fastvid-spec §5 TV-F8 (§2.12 worked example): N=300, r=0.27, L=6 -> runs [3,3], 442 tokens, not 486."""
    sims = [0.97, 0.99, 0.93, 0.96, 0.98]
    assert duplicate_runs(sims, 0.95) == [3, 3]
    salient, context = segment_budget(sims, 300, 0.27, 0.4, 4, 0.95)
    assert salient == [0, 0, 146, 0, 0, 146] and context == [0, 0, 0, 0, 0, 150]
    assert sum(salient) + sum(context) == 442


def test_segment_budget_single_patch_and_spreads():
    assert segment_budget([], 300, 0.27, 0.4, 4, 0.95) == ([49], [32])  # R=81: C=int(32.4), S=49
    # no duplicates, L=6: six runs; S=292 spread 49,49,49,49,48,48; anchors: run 5 and run 1, C=194 -> 97+97
    salient, context = segment_budget([0.9] * 5, 300, 0.27, 0.4, 4, 0.95)
    assert salient == [49, 49, 49, 49, 48, 48] and context == [0, 97, 0, 0, 0, 97]


def test_fastvid_qwen_keeps_budgeted_tokens_and_collapses_duplicates():
    torch.manual_seed(0)
    F, N, D = 6, 40, 16
    base = torch.randn(N, D)
    x = torch.stack([base + 0.001 * torch.randn(N, D) if f < 3 else torch.randn(N, D) for f in range(F)])
    sal = torch.rand(F, N)
    g = x.mean(dim=1)
    r = fastvid_qwen(x, sal, g, ratio=0.25, c=1, tau=-1.0, ignore=0.95)  # one segment
    assert r.segments == [6]
    sims = r.similarities
    salient, context = segment_budget(sims, N, 0.25, 0.4, 4, 0.95)
    assert r.kept == sum(salient) + sum(context)
    frames = (r.index // N).tolist()
    assert 0 not in frames and 1 not in frames  # the near-duplicate patches 0 and 1 are dropped for patch 2
    assert torch.all(r.index[1:] > r.index[:-1])
    for f in range(F):  # salient tokens are the most salient of their patch, kept as they are
        if salient[f]:
            top = set(torch.topk(sal[f], salient[f]).indices.tolist())
            own = [i % N for i, m in zip(r.index.tolist(), r.merged.tolist()) if i // N == f and not m]
            assert set(own) == top
    assert torch.equal(fastvid_qwen(x, sal, g, ratio=1.0).index, torch.arange(F * N))
    assert any("kept" in n for n in r.notes)


def test_engine_uses_the_qwen_variant_and_reports_actual_retention(qwen_engines, clip, index_video):
    eng = qwen_engines("qwen2_5_vl")
    report = eng.ask(str(index_video), "What?", clip=clip, sample_ms=1.0,
                     prune=PruneOptions(method="fastvid", ratio=0.27, params=dict(c=4, ignore=0.95)),
                     gen=GenerationOptions(max_new_tokens=3))
    assert report.video_tokens_total == 160 and 0 < report.video_tokens_kept <= 8 * int(20 * 0.27)
    assert any("FastVID Qwen variant" in n and f"{report.video_tokens_kept} of 160" in n for n in report.notes)
    assert eng.defaults["tau"] == 0.84 and eng.defaults["ignore"] == 0.95 and eng.defaults["ratio"] == 0.27


def test_feature_cache_keeps_deepstack_and_timing(qwen_engines, index_video, tmp_path):
    from fastvid_cli.feature_cache import FeatureCache

    eng = qwen_engines("qwen3_vl")
    cache = FeatureCache(tmp_path / "fc")
    prune = PruneOptions(method="none", ratio=1.0)
    first = eng.session(str(index_video), prune=prune, feature_cache=cache)
    again = eng.session(str(index_video), prune=prune, feature_cache=cache)
    assert (first.cache_status, again.cache_status) == ("miss", "hit")
    assert again.feats.meta == first.feats.meta and len(again.feats.side_embeds) == 2
    assert torch.equal(again.feats.side_embeds[1], first.feats.side_embeds[1])
    other = eng.session(str(index_video), prune=prune, feature_cache=cache, fps=1.0)  # another plan: a miss
    assert other.cache_status == "miss"


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def test_cli_ask_fps_and_frames(runner, qwen_checkpoints, index_video):
    from fastvid_cli.cli import app

    args = ["--model", str(qwen_checkpoints("qwen2_5_vl")), "--device", "cpu", "--max-new-tokens", "4", "--no-cache"]
    res = runner.invoke(app, ["ask", str(index_video), "What?", *args, "--json", "--fps", "4"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["frames"] == 8 and data["frame_indices"] == [0, 7, 13, 20, 27, 34, 40, 47]  # 2 s at 4 fps
    assert data["ratio"] == 0.27 and data["params"]["ignore"] == 0.95 and data["params"]["tau"] == 0.84
    res = runner.invoke(app, ["ask", str(index_video), "What?", *args, "--json", "--frames", "6", "--baseline",
                              "--system", "Be brief."])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["frames"] == 6 and data["prefill_speedup_measured"] is True and data["baseline_prefill_ms"] > 0
    res = runner.invoke(app, ["ask", str(index_video), "What?", *args, "--frames", "6", "--fps", "2"])
    assert res.exit_code == 2 and "exclude" in res.stderr


def test_cli_fps_and_ignore_are_qwen_only(runner, tiny_llava, index_video):
    from fastvid_cli.cli import app

    base = ["--model", str(tiny_llava), "--device", "cpu", "--no-cache", "--saliency-model", "fallback"]
    res = runner.invoke(app, ["ask", str(index_video), "Q?", *base, "--fps", "2"])
    assert res.exit_code == 2 and "--fps" in res.stderr


def test_cli_compare_and_batch(runner, qwen_checkpoints, index_video, tmp_path):
    from fastvid_cli.cli import app

    model = str(qwen_checkpoints("qwen3_vl"))
    res = runner.invoke(app, ["compare", str(index_video), "What?", "--model", model, "--device", "cpu",
                              "--frames", "8", "--ratio", "0.5", "--ratio", "0.27", "--repeat", "1",
                              "--max-new-tokens", "3", "--no-cache", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert [(r["method"], r["ratio"]) for r in rows] == [("none", 1.0), ("fastvid", 0.5), ("fastvid", 0.27)]
    assert rows[0]["video_tokens_total"] == 4 * 20 and rows[2]["video_tokens_kept"] < rows[1]["video_tokens_kept"]
    csv = tmp_path / "q.csv"
    csv.write_text(f"id,video,question,frames\na,{index_video},What?,\nb,{index_video},Why?,\nc,{index_video},How?,6\n")
    out = tmp_path / "a.jsonl"
    res = runner.invoke(app, ["batch", str(csv), "--model", model, "--device", "cpu", "--max-new-tokens", "3",
                              "--fps", "3", "--output", str(out)])
    assert res.exit_code == 0, res.stderr
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {r["status"] for r in recs.values()} == {"ok"}
    assert recs["a"]["frames"] == recs["b"]["frames"] == 6 and recs["a"]["settings"]["fps"] == 3.0  # 2 s at 3 fps
    assert recs["c"]["frames"] == 6 and "fps" not in recs["c"]["settings"]


def test_eval_samples_by_rate_and_keeps_the_qwen_params(qwen_engines, index_video, tmp_path):
    from fastvid_cli import evaluate as E

    eng = qwen_engines("qwen2_5_vl")
    bench = tmp_path / "bench.jsonl"
    rows = [{"id": f"q{i}", "video": str(index_video), "question": "Which colour?", "options": ["red", "green"],
             "answer": "A"} for i in range(2)]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = E.EvalConfig(bench=bench, output=tmp_path / "out.jsonl", model=str(eng.model_source), fps=4.0,
                       methods=["fastvid"], ratios=[0.27], reference=False, max_new_tokens=2)
    result = E.run_eval(cfg, engine=eng)
    assert (result.answered, result.failed) == (2, 0)
    recs = [json.loads(line) for line in cfg.output_path.read_text().splitlines()]
    assert {r["frames_used"] for r in recs} == {8}  # 2 s at 4 fps
    assert {r["params"]["ignore"] for r in recs} == {0.95}


def test_holitom_orig_runs_on_m_rope_models_and_holitom_says_why_not(qwen_engines, clip, index_video):
    """Re-indexed HoliTom needs 1-D positions (one-line error on Qwen); holitom-orig keeps original M-RoPE columns."""
    from fastvid_cli.errors import InvalidOptionError

    eng = qwen_engines("qwen2_5_vl")
    gen = GenerationOptions(max_new_tokens=3)
    r = eng.ask(str(index_video), "What happens?", clip=clip, sample_ms=0.0,
                prune=PruneOptions(method="holitom-orig", ratio=0.25), gen=gen)
    assert r.method == "holitom-orig" and 0 < r.video_tokens_kept < r.video_tokens_total and r.new_tokens == 3
    with pytest.raises(InvalidOptionError, match="1-D position ids"):
        eng.ask(str(index_video), "What happens?", clip=clip, sample_ms=0.0,
                prune=PruneOptions(method="holitom", ratio=0.25), gen=gen)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_batched_answers_equal_one_by_one_on_m_rope_models(qwen_engines, clip, index_video, kind):
    """`batch` decodes a video's questions together on Qwen too (M-RoPE rows, Qwen3-VL's DeepStack in the shared
    prefix): the same answers as one at a time."""
    eng = qwen_engines(kind)
    prune = PruneOptions(method="fastvid", ratio=0.27, params=dict(c=4))
    gen = GenerationOptions(max_new_tokens=6)
    questions = ["What happens?", "Which colour is the last shape that appears on the left?", "Count them."]
    sess = eng.session(str(index_video), clip=clip, sample_ms=0.0, prune=prune)
    single = [sess.answer(q, gen).answer for q in questions]
    batched = sess.answer_many(questions, gen)
    assert [r.answer for r in batched] == single
    assert {r.decode_mode for r in batched} == {"batched x3"}


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_answers_about_different_videos_decode_together_on_m_rope_models(qwen_engines, clip, index_video, kind):
    """Questions about different sessions (other pruning, so other prompt lengths and M-RoPE columns) decode as the
    left-padded rows of one batch (session.answer_across): the same answers as one at a time."""
    from fastvid_cli.session import Ask, answer_across

    eng = qwen_engines(kind)
    gen = GenerationOptions(max_new_tokens=6)
    sessions = [eng.session(str(index_video), clip=clip, sample_ms=0.0,
                            prune=PruneOptions(method="fastvid", ratio=r, params=dict(c=4))) for r in (0.27, 0.6)]
    questions = ["Which colour is the last shape that appears on the left?", "Count them."]
    single = [s.answer(q, gen) for s, q in zip(sessions, questions)]
    assert single[0].prompt_tokens_kept != single[1].prompt_tokens_kept
    got = answer_across([Ask(s, q) for s, q in zip(sessions, questions)], gen)
    assert [r.answer for r in got] == [r.answer for r in single]
    assert {r.decode_mode for r in got} == {"batched x2"}


def test_chosen_frames_get_their_own_times_as_qwen2_5_temporal_ids(qwen_engines, clip):
    """--select's frames are not evenly spaced: on Qwen2.5-VL each temporal patch's M-RoPE temporal id is its own
    start time x tokens_per_second (the stock ids, int(t x second_per_grid_ts x tokens_per_second), are that time
    for evenly spaced frames); the spatial rows and the text around the video keep the model's own ids."""
    import dataclasses

    eng = qwen_engines("qwen2_5_vl")
    a = eng.adapter
    prompt = a.build_prompt("Where?")
    tps = float(eng.model.config.vision_config.tokens_per_second)

    def positions(c):
        _, feats = encoded(eng, c)
        ids = a.full_input_ids(prompt, feats)
        return ids, a.full_positions(ids, feats), feats

    even = dataclasses.replace(clip, indices=list(range(0, 48, 3)))  # 16 frames every 3rd: the stock spacing exactly
    ids, stock, f0 = positions(even)
    assert "temporal_ids" not in f0.meta
    _, same, f1 = positions(dataclasses.replace(even, chosen_from=48))
    assert len(f1.meta["temporal_ids"]) == 8 and torch.equal(same, stock)

    idx = [0, 1, 2, 3, 4, 5, 6, 7, 30, 31, 32, 33, 40, 41, 46, 47]  # a chosen cluster early, then a few late
    _, got, _ = positions(dataclasses.replace(clip, indices=idx, chosen_from=48))
    video = (ids[0] == a.video_token_id).nonzero().flatten()
    per = video.numel() // 8
    start = int(stock[0, 0, video[0]])
    want = [start + int(idx[2 * t] / 24 * tps) for t in range(8)]
    assert got[0, 0, video].view(8, per)[:, 0].tolist() == want
    assert torch.equal(got[0, 0, video].view(8, per), got[0, 0, video].view(8, per)[:, :1].expand(8, per))
    assert want != stock[0, 0, video].view(8, per)[:, 0].tolist()  # the case really differs from even spacing
    rest = torch.ones(ids.shape[1], dtype=torch.bool)
    rest[video] = False
    assert torch.equal(got[1:], stock[1:]) and torch.equal(got[0, 0, rest], stock[0, 0, rest])
