"""FlashVID on Qwen2-VL / Qwen2.5-VL / Qwen3-VL (tiny random qwen_checkpoints): the layer-by-layer prefill on M-RoPE
rows (and Qwen3-VL's DeepStack) equals the stock forward when it keeps everything, the inner stage drops video
tokens from layer K on, the vision attention each merged token receives equals a naive eager recomputation, and
ask runs it end to end."""

from __future__ import annotations

import json

import pytest
import torch

from fastvid_cli import pruning
from fastvid_cli.decoding import Sampling, decode, new_cache
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.llm_stage import _deepstack_kept, prefill_with_stage
from fastvid_cli.models import qwen_vl as Q
from fastvid_cli.prefill import StagePrefill
from fastvid_cli.pruning.flashvid import FAMILY_VARIANTS
from fastvid_cli.pruning.flashvid_inner import InnerPrune, inner_keep_count
from fastvid_cli.video import sample_frames

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def clip(index_video):
    return sample_frames(str(index_video), Q.frame_plan(16))  # 8 temporal patches


def opts(ratio: float, **given) -> PruneOptions:
    return PruneOptions(method="flashvid", ratio=ratio, params=pruning.resolve_params("flashvid", "qwen", given))


# ------------------------------------------------------------------------------------------ the prefill
@pytest.mark.parametrize("kind", KINDS)
def test_stage_prefill_keeping_everything_is_the_stock_forward(qwen_engines, clip, kind):
    """A stage at layer 1 that keeps every video token (r_llm 1.0) runs the reduce path on the M-RoPE rows (and
    DeepStack) and gives the stock forward's logits; decoding after it gives stock generate's tokens."""
    eng = qwen_engines(kind)
    a, model = eng.adapter, eng.model
    pixels = a.preprocess_clip(clip)
    feats = a.encode(pixels)
    prompt = a.build_prompt("What happens in this video?")
    flat = feats.embeds.flatten(0, 1)
    asm = a.assemble(prompt, feats, flat, torch.arange(flat.shape[0]))
    inputs = a.generate_inputs(prompt, feats, pixels)
    with torch.inference_mode():
        stock = model(**inputs).logits[0, -1]
        ref = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    stage = InnerPrune(1, 1.0, tail=0)
    cache = new_cache(model)
    logits, info = prefill_with_stage(model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, stage,
                                      extra=asm.prefill_extra(), video_rows=asm.video_rows)
    assert info.visual_before == info.visual_after == 160 and info.length_after == asm.length
    assert torch.allclose(logits, stock, atol=1e-4, rtol=1e-4), (logits - stock).abs().max()
    assert decode(model, logits, cache, asm.next_position, Sampling(max_new_tokens=8)).token_ids == ref


@pytest.mark.parametrize("kind", KINDS)
def test_inner_stage_drops_video_tokens_from_layer_k(qwen_engines, clip, index_video, kind):
    """K=1, r_llm 0.3 on the 2-layer LLM: layer 1's cache is shorter by exactly the dropped video tokens (Qwen3-VL:
    its timestamps and frame separators stay), the note says both counts, and runs repeat exactly."""
    eng = qwen_engines(kind)
    sess = eng.session(str(index_video), clip=clip, sample_ms=1.0, prune=opts(0.25, inner="1,0.3"))
    assert isinstance(sess.inner, InnerPrune) and sess.inner.tail == 0 and not sess.result.compact
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=4))
    asm, stage = sess.prefill_input("What happens?")
    V = int(asm.video_rows.numel()) if asm.video_rows is not None else asm.video_span[1] - asm.video_span[0]
    after = inner_keep_count(V, 0.3)
    assert V == sess.result.kept == r.video_tokens_kept and r.params["inner"] == (1, 0.3)
    assert any(n.startswith(f"FlashVID inner prune before LLM layer 1: {after} of {V} ") for n in r.notes), r.notes
    assert not any("no last-layer vision attention" in n for n in r.notes)  # ADTS got the attention input
    done = StagePrefill(stage).run(eng.model, asm, eng.clock)
    assert [int(layer.keys.shape[-2]) for layer in done.cache.layers] == [asm.length, asm.length - (V - after)]
    again = eng.session(str(index_video), clip=clip, sample_ms=1.0, prune=opts(0.25, inner="1,0.3"))
    assert torch.equal(again.result.index, sess.result.index)
    assert again.answer("What happens?", GenerationOptions(max_new_tokens=4)).answer == r.answer


def test_deepstack_inputs_follow_the_kept_positions():
    mask = torch.tensor([[False, True, True, False, True, True]])
    embeds = [torch.arange(4.0)[:, None], 10 + torch.arange(4.0)[:, None]]
    out = _deepstack_kept({"visual_pos_masks": mask, "deepstack_visual_embeds": embeds}, torch.tensor([0, 2, 3, 5]))
    assert out["visual_pos_masks"].tolist() == [[False, True, False, True]]
    assert [e.flatten().tolist() for e in out["deepstack_visual_embeds"]] == [[1.0, 3.0], [11.0, 13.0]]


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_one_is_stock_generate(qwen_engines, clip, index_video, kind):
    eng = qwen_engines(kind)
    a = eng.adapter
    pixels = a.preprocess_clip(clip)
    feats = a.encode(pixels)
    prompt = a.build_prompt("What happens in this video?")
    inputs = a.generate_inputs(prompt, feats, pixels)
    with torch.inference_mode():
        ref = eng.model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    r = eng.ask(str(index_video), "What happens in this video?", clip=clip, sample_ms=1.0,
                prune=opts(1.0, inner="1,0.3"), gen=GenerationOptions(max_new_tokens=8))
    assert r.answer == a.tokenizer.decode(ref.tolist(), skip_special_tokens=True)
    assert r.video_tokens_kept == r.video_tokens_total and not any("inner prune" in n for n in r.notes)


# ------------------------------------------------------------------------------------------ vision attention
@pytest.mark.parametrize("kind", KINDS)
def test_attention_received_is_the_eager_attention_of_the_last_block(qwen_engines, kind, monkeypatch):
    """attn_received (T, N) equals the eager attention probabilities of the last vision block (recorded from the
    stock forward), averaged over heads and each group's queries, then over each merged token's 2x2 patches, in
    raster order; and it is only computed when read."""
    import importlib

    eng = qwen_engines(kind)
    a = eng.adapter
    torch.manual_seed(0)
    pixels = a.preprocess(torch.randint(0, 256, (16, 48, 64, 3), dtype=torch.uint8))
    feats = a.encode(pixels)
    assert isinstance(feats.__dict__["_attn_received"], Q.Deferred)  # not computed yet
    module = importlib.import_module(type(a.visual).__module__)
    last = a.visual.blocks[-1].attn
    probs = []
    eager = module.eager_attention_forward

    def recording(mod, *args, **kwargs):
        out, weights = eager(mod, *args, **kwargs)
        if mod is last:
            probs.append(weights[0])  # (heads, n, n) of one attention group
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", recording)
    monkeypatch.setattr(a.visual.config, "_attn_implementation", "eager")
    with torch.inference_mode():
        stock = a.visual(pixels.values, grid_thw=pixels.grid_thw).pooler_output
    monkeypatch.undo()
    received = torch.cat([p.float().mean(dim=(0, 1)) for p in probs])  # tower order, one per patch
    merged = received.view(-1, 4).mean(dim=1)
    T, N = feats.embeds.shape[:2]
    tower_rows = []
    hook = a.visual.merger.register_forward_hook(lambda m, i, o: tower_rows.append(o))
    try:
        with torch.inference_mode():
            a.visual(pixels.values, grid_thw=pixels.grid_thw)
    finally:
        hook.remove()
    where = torch.cdist(tower_rows[0].float(), stock.float()).argmin(dim=1)  # tower row -> raster row
    expected = torch.empty(T * N).index_copy_(0, where, merged).view(T, N)
    assert torch.allclose(feats.attn_received, expected, atol=1e-5), (feats.attn_received - expected).abs().max()
    # the last block attends within each temporal patch: its 4N patches' column means sum to 1, so N means of 4 to 1/4
    assert torch.allclose(feats.attn_received.sum(dim=1), torch.full((T,), 0.25), atol=1e-5)
    assert "_attn_received" in feats.__dict__ and isinstance(feats.__dict__["_attn_received"], torch.Tensor)


def test_attention_received_groups_of_different_sizes_and_batches():
    """Windows of unequal size (a windowed block) and the group batching give the per-group computation."""
    torch.manual_seed(1)

    class Attn(torch.nn.Module):
        num_heads = 2

        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

    attn = Attn()
    x = torch.randn(24, 8)
    cos, sin = torch.randn(24, 4).cos(), torch.randn(24, 4).sin()
    cu = [0, 4, 8, 16, 20, 24]
    got = Q.attention_received(attn, x, (cos, sin), torch.tensor(cu), 4, budget=2 * 2 * 4 * 4)
    parts = []
    for a, b in zip(cu, cu[1:]):
        qkv = attn.qkv(x[a:b]).reshape(b - a, 3, 2, 4)
        q, k = (Q._rotary(qkv[:, i], cos[a:b], sin[a:b]) for i in (0, 1))
        p = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / 2.0, dim=-1)
        parts.append(p.mean(dim=(0, 1)))
    assert torch.allclose(got, torch.cat(parts).view(-1, 4).mean(dim=1), atol=1e-6)


# ------------------------------------------------------------------------------------------ the registry, the CLI
def test_the_qwen_entry_runs_the_inner_stage_with_the_reference_settings():
    spec = pruning.spec_of("flashvid")
    qwen = spec.defaults_for("qwen")
    for key, value in FAMILY_VARIANTS["qwen2_5_vl"].items():
        assert qwen[key] == value, key
    assert qwen["inner"] == (20, 0.3) and qwen["expansion"] == 1.25
    stage = pruning.llm_stage("flashvid", "qwen", pruning.resolve_params("flashvid", "qwen", {}), ratio=0.25)
    assert isinstance(stage, InnerPrune) and (stage.layer, stage.llm_retention_ratio, stage.tail) == (20, 0.3, 0)
    assert pruning.llm_stage("flashvid", "qwen", {"inner": (1, 0.3)}, ratio=1.0) is None


def test_cli_ask_runs_flashvid_with_its_inner_stage(qwen_checkpoints, index_video):
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    args = ["ask", str(index_video), "What?", "--model", str(qwen_checkpoints("qwen2_5_vl")), "--device", "cpu",
            "--frames", "16", "--max-new-tokens", "3", "--no-cache", "--method", "flashvid", "--ratio", "0.25",
            "--flashvid-inner", "1,0.3"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    kept = data["video_tokens_kept"]
    assert data["method"] == "flashvid" and data["params"]["inner"] == [1, 0.3] and 0 < kept < 160
    note = f"FlashVID inner prune before LLM layer 1: {inner_keep_count(kept, 0.3)} of {kept} "
    assert any(n.startswith(note) for n in data["notes"]), data["notes"]
    res = CliRunner().invoke(app, args)  # the panel
    assert res.exit_code == 0, res.output
    assert "FlashVID inner prune before LLM layer 1" in " ".join(res.stderr.split())
