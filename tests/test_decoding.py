"""The decode loops: the eager loop, the static-KV-cache decoder and the fused step (`--compile`) give the same
token stream.

On CPU the StaticDecoder and the FusedDecoder run their steps eagerly (graphs=False) with plain torch kernels:
same buffers, same cache copy, same position bookkeeping as on CUDA, where each step is a replayed graph and the
fused step uses Triton kernels (checked on the GPU by benchmarks/bench_decode.py).
"""

from __future__ import annotations

import pytest
import torch

from fastvid_cli import fast_decode
from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill
from fastvid_cli.fast_decode import FusedDecoder
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.pruning.fastvid import fastvid
from fastvid_cli.video import sample_frames


@pytest.fixture(scope="module")
def pruned(engine, index_video):
    """A FastVID-pruned prompt (positions with gaps) for the tiny model."""
    a = engine.adapter
    clip = sample_frames(str(index_video), 8)
    feats = a.encode(a.preprocess(clip.frames))
    result = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.25, c=4)
    return a.assemble(a.build_prompt("What happens?"), feats, result.embeds, result.index)


def run(fn, model, asm, s: Sampling):
    cache = new_cache(model)
    logits = prefill(model, asm.inputs_embeds, asm.position_ids, cache)
    return fn(model, logits, cache, asm.next_position, s), cache


def test_next_position_continues_after_the_unpruned_length(pruned):
    assert pruned.length < pruned.full_length  # something was pruned
    assert pruned.next_position.tolist() == [[pruned.full_length]]


def test_static_decoder_greedy_equals_eager_loop(engine, pruned):
    model = engine.model
    s = Sampling(max_new_tokens=20)
    eager, _ = run(decode, model, pruned, s)
    static = StaticDecoder(model, graphs=False)
    ours, dyn = run(static.decode, model, pruned, s)
    assert ours.token_ids == eager.token_ids
    assert len(ours.token_ids) == 20 and ours.stop_reason == "max_new_tokens"
    assert ours.mode == "static" and ours.fallback is None
    assert dyn.get_seq_length() == pruned.length  # the prefilled dynamic cache is only read


@pytest.mark.parametrize("decoder", [StaticDecoder, FusedDecoder])
def test_graph_decoders_sampling_with_a_seed_equals_eager_loop(engine, pruned, decoder):
    s = Sampling(max_new_tokens=12, temperature=1.3, top_p=0.9, seed=11)
    eager, _ = run(decode, engine.model, pruned, s)
    ours, _ = run(decoder(engine.model, graphs=False).decode, engine.model, pruned, s)
    assert ours.token_ids == eager.token_ids


def test_static_buffers_are_reused_and_grow_only_when_needed(engine, pruned):
    static = StaticDecoder(engine.model, graphs=False)
    run(static.decode, engine.model, pruned, Sampling(max_new_tokens=4))
    first = static.capacity
    assert first % StaticDecoder.BLOCK == 0 and first >= pruned.length + 4
    keys = static.cache.layers[0].keys
    run(static.decode, engine.model, pruned, Sampling(max_new_tokens=4))
    assert static.cache.layers[0].keys is keys  # same buffers: a CUDA graph captured on them stays valid
    long = first - pruned.length + 1  # one token more than fits
    res, _ = run(static.decode, engine.model, pruned, Sampling(max_new_tokens=long))
    assert static.capacity > first
    eager, _ = run(decode, engine.model, pruned, Sampling(max_new_tokens=long))
    assert res.token_ids == eager.token_ids  # still the same stream after growing


@pytest.mark.parametrize("decoder", [StaticDecoder, FusedDecoder])
def test_graph_decoders_after_a_shared_prefix_equal_a_fresh_prefill(engine, pruned, decoder):
    """The batch path: prefix KV cache prefilled once, question suffix on top, decode from there."""
    model, cut = engine.model, pruned.video_span[1]
    s = Sampling(max_new_tokens=8)
    fresh, _ = run(decode, model, pruned, s)
    cache = new_cache(model)
    prefill(model, pruned.inputs_embeds[:, :cut], pruned.position_ids[..., :cut], cache)
    logits = prefill(model, pruned.inputs_embeds[:, cut:], pruned.position_ids[..., cut:], cache)
    ours = decoder(model, graphs=False).decode(model, logits, cache, pruned.next_position, s)
    assert ours.token_ids == fresh.token_ids


def test_a_failing_static_step_falls_back_to_the_eager_loop(engine, pruned, monkeypatch):
    static = StaticDecoder(engine.model, graphs=False)

    def broken(*_a, **_k):
        raise RuntimeError("capture failed: operation not permitted when stream is capturing")

    monkeypatch.setattr(static, "load", broken)
    s = Sampling(max_new_tokens=6)
    eager, _ = run(decode, engine.model, pruned, s)
    ours, _ = run(static.decode, engine.model, pruned, s)
    assert ours.token_ids == eager.token_ids
    assert ours.mode == "eager" and "capture failed" in ours.fallback


def test_compile_on_cpu_says_it_decoded_eagerly(engine, index_video):
    explicit = engine.ask(str(index_video), "Q?", frames=8, prune=PruneOptions(ratio=0.25),
                          gen=GenerationOptions(max_new_tokens=4, compile=True))
    default = engine.ask(str(index_video), "Q?", frames=8, prune=PruneOptions(ratio=0.25),
                         gen=GenerationOptions(max_new_tokens=4))
    assert explicit.answer == default.answer
    assert explicit.decode_mode == default.decode_mode == "eager"
    assert any("--compile needs a CUDA device" in n for n in explicit.notes)
    assert not any("--compile" in n for n in default.notes)  # the default is silent where it cannot run


QUESTIONS = ["What happens?", "Which colour is the square at the very end of the clip?", "Why?",
             "Count the shapes that appear in the first half of the video, then tell me which one moves."]


@pytest.mark.parametrize("max_rows", [16, 3])
def test_batched_answers_equal_one_by_one_answers(engine, index_video, max_rows):
    """The batch path: several questions about one video decoded together (left-padded suffixes, each row at its
    own original positions) give exactly the answers of answering them one at a time."""
    prune = PruneOptions(ratio=0.25, params=dict(c=4))
    gen = GenerationOptions(max_new_tokens=10)
    sess = engine.session(str(index_video), frames=8, prune=prune)
    single = [sess.answer(q, gen).answer for q in QUESTIONS]
    batched = engine.session(str(index_video), frames=8, prune=prune).answer_many(QUESTIONS, gen, max_rows=max_rows)
    assert [r.answer for r in batched] == single
    # in batches of max_rows; a last batch of one row is answered alone (4 = 3 + 1)
    assert [r.decode_mode for r in batched] == (["batched x4"] * 4 if max_rows == 16 else ["batched x3"] * 3 + ["eager"])
    assert [r.question for r in batched] == QUESTIONS
    assert all(r.new_tokens == 10 and r.stop_reason == "max_new_tokens" for r in batched)


def test_batched_answers_stop_each_row_at_its_own_eos(engine, index_video, monkeypatch):
    """Rows end independently: a row whose eos comes early stops there while the others go on."""
    import fastvid_cli.decoders as decoders_mod
    import fastvid_cli.decoding as dec
    import fastvid_cli.session as sess_mod

    sess = engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)))
    gen = GenerationOptions(max_new_tokens=6)
    seen = {}

    def spy(*a, **k):
        res = dec.decode_rows(*a, **k)
        seen["ids"] = [r.token_ids for r in res]
        return res

    monkeypatch.setattr(decoders_mod, "decode_rows", spy)
    sess.answer_many(QUESTIONS[:3], gen)
    free = seen["ids"]
    eos = dec.eos_ids(engine.model) | {free[1][2]}  # row 1 now "ends" at its 3rd token (or earlier)
    monkeypatch.setattr(dec, "eos_ids", lambda _m: eos)
    monkeypatch.setattr(sess_mod, "eos_ids", lambda _m: eos)
    out = sess.answer_many(QUESTIONS[:3], gen)
    for row, r in zip(free, out):
        stop = next((i + 1 for i, t in enumerate(row) if t in eos), None)
        assert r.new_tokens == (stop or 6)
        assert r.stop_reason == ("eos" if stop else "max_new_tokens")
    assert out[1].new_tokens <= 3 and out[1].stop_reason == "eos"


def test_sampling_is_answered_one_by_one(engine, index_video):
    sess = engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)))
    out = sess.answer_many(QUESTIONS[:2], GenerationOptions(max_new_tokens=4, temperature=1.0, seed=1))
    assert [r.decode_mode for r in out] == ["eager", "eager"]


def test_long_prompts_decode_eagerly_even_with_compile(engine, index_video, monkeypatch):
    """Models the fused step does not cover: past StaticDecoder.MAX_TOKENS the graph decoder would be slower than
    eager, so the engine does not use it and, when --compile was asked for explicitly, says why."""
    monkeypatch.setattr(engine, "cuda", True)  # pretend: the length rule is checked before anything touches CUDA
    monkeypatch.setattr(fast_decode, "unsupported", lambda _m: "not a Qwen model")
    monkeypatch.setattr(StaticDecoder, "MAX_TOKENS", 64)
    r = engine.ask(str(index_video), "Q?", frames=8, prune=PruneOptions(ratio=0.25),
                   gen=GenerationOptions(max_new_tokens=3, compile=True))
    assert r.decode_mode == "eager" and r.new_tokens == 3
    assert any("longer than 64 tokens" in n for n in r.notes)


# ------------------------------------------------------------------------------------------ the fused step
def test_fused_step_greedy_equals_eager_loop_across_attention_spans(engine, pruned, monkeypatch):
    monkeypatch.setattr(FusedDecoder, "SPAN", 16)  # a 40-token answer crosses three spans
    s = Sampling(max_new_tokens=40)
    eager, _ = run(decode, engine.model, pruned, s)
    fused = FusedDecoder(engine.model, graphs=False)
    ours, dyn = run(fused.decode, engine.model, pruned, s)
    assert ours.token_ids == eager.token_ids and len(ours.token_ids) == 40
    assert ours.mode == "fused" and ours.fallback is None
    assert dyn.get_seq_length() == pruned.length  # the prefilled dynamic cache is only read
    assert fused.capacity >= pruned.length + 40 and fused.capacity % 16 == 0


def test_fused_buffers_keep_their_addresses_across_answers(engine, pruned):
    """Captured CUDA graphs read the buffers by address: answers of other lengths must refill them in place
    (a rotary table reallocated per answer once made a graph read freed memory)."""
    fused = FusedDecoder(engine.model, graphs=False)
    run(fused.decode, engine.model, pruned, Sampling(max_new_tokens=30))
    before = [t.data_ptr() for t in (fused.k, fused.v, fused.cos, fused.sin, fused.tok, fused.slot, fused.step)]
    for n in (5, 17, 30):
        run(fused.decode, engine.model, pruned, Sampling(max_new_tokens=n, temperature=1.0, seed=n))
        assert [t.data_ptr() for t in (fused.k, fused.v, fused.cos, fused.sin, fused.tok, fused.slot,
                                       fused.step)] == before


def test_fused_weights_are_views_that_leave_the_stock_forward_unchanged(engine, pruned):
    """q/k/v and gate/up become row views of one block per layer: same values, so the stock model computes
    exactly what it did; a second decoder on the same model finds the blocks instead of copying again."""
    model = engine.model
    with torch.inference_mode():
        before = model(inputs_embeds=pruned.inputs_embeds, position_ids=pruned.position_ids).logits
        first = FusedDecoder(model, graphs=False)
        after = model(inputs_embeds=pruned.inputs_embeds, position_ids=pruned.position_ids).logits
    assert torch.equal(before, after)
    attn = model.get_decoder().layers[0].self_attn
    block = first.layers[0].qkv_w
    assert attn.q_proj.weight.data_ptr() == block.data_ptr()
    assert attn.k_proj.weight.data_ptr() == block.data_ptr() + attn.q_proj.weight.numel() * block.element_size()
    assert torch.equal(block[: attn.q_proj.weight.shape[0]], attn.q_proj.weight)
    second = FusedDecoder(model, graphs=False)
    assert second.layers[0].qkv_w.data_ptr() == block.data_ptr()
    assert second.layers[0].gu_w.data_ptr() == first.layers[0].gu_w.data_ptr()


@pytest.mark.parametrize("fail_at", [0, 5])
def test_a_failing_fused_step_goes_on_eagerly_with_the_same_stream(engine, pruned, monkeypatch, fail_at):
    """A failure while loading the buffers (0) or in the middle of the answer (5: e.g. capturing a longer span)
    hands over to the eager loop, which continues from the tokens decoded so far."""
    fused = FusedDecoder(engine.model, graphs=False)
    real, calls = fused._step, []

    def flaky(span):
        calls.append(span)
        if len(calls) > fail_at:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real(span)

    monkeypatch.setattr(fused, "_step", flaky)
    s = Sampling(max_new_tokens=12)
    eager, _ = run(decode, engine.model, pruned, s)
    ours, _ = run(fused.decode, engine.model, pruned, s)
    assert ours.token_ids == eager.token_ids
    assert ours.mode == "eager" and "not permitted" in ours.fallback


def test_engine_uses_the_fused_step_without_a_length_limit(engine, index_video, monkeypatch):
    monkeypatch.setattr(engine, "cuda", True)
    monkeypatch.setattr(StaticDecoder, "MAX_TOKENS", 64)  # would stop the StaticDecoder; the fused step has spans
    monkeypatch.setitem(engine.decoders, "fused", FusedDecoder(engine.model, graphs=False))
    prune = PruneOptions(ratio=0.25)
    r = engine.ask(str(index_video), "Q?", frames=8, prune=prune, gen=GenerationOptions(max_new_tokens=6,
                                                                                          compile=True))
    eager = engine.ask(str(index_video), "Q?", frames=8, prune=prune, gen=GenerationOptions(max_new_tokens=6,
                                                                                              compile=False))
    assert r.decode_mode == "fused" and r.answer == eager.answer and r.new_tokens == 6
    assert not any("--compile" in n for n in r.notes)


def test_fused_step_says_which_models_it_cannot_run(engine, monkeypatch):
    assert fast_decode.unsupported(engine.model) is None  # LLaVA-OV's Qwen2 LLM
    monkeypatch.setattr(fast_decode, "LAYER_CLASSES", {"LlamaDecoderLayer"})
    assert "not Qwen2/Qwen3 dense layers" in fast_decode.unsupported(engine.model)
    monkeypatch.undo()
    layer = engine.model.get_decoder().layers[1]
    down = layer.mlp.down_proj
    down.bias = torch.nn.Parameter(torch.zeros(down.out_features))  # a bias the step would leave out
    try:
        assert "biases" in fast_decode.unsupported(engine.model)
    finally:
        down.bias = None
    monkeypatch.setattr(layer, "_hf_hook", object(), raising=False)
    assert "accelerate hooks" in fast_decode.unsupported(engine.model)
    monkeypatch.undo()
    assert fast_decode.unsupported(engine.model) is None


def test_ctrl_c_while_a_piece_is_printed_stops_cleanly(engine, index_video):
    """Ctrl-C can land inside the printing of a piece, not only while waiting for the next one: the answer keeps
    what was streamed, the decode thread has finished when answer() returns (an interpreter exiting under a
    running forward pass aborts), and the report says interrupted."""
    import threading

    printed = []

    def on_text(piece):
        printed.append(piece)
        if len(printed) == 3:
            raise KeyboardInterrupt

    sess = engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25))
    r = sess.answer("Tell me everything.", GenerationOptions(max_new_tokens=400), on_text=on_text)
    assert r.stop_reason == "interrupted" and r.new_tokens < 400
    assert r.answer.startswith("".join(printed)) and len(printed) >= 3
    assert not any(t.name == "fastvid-decode" and t.is_alive() for t in threading.enumerate())


# ------------------------------------------------------------------------------------------ logit margins
def test_logit_margin_is_the_chosen_logit_minus_the_best_other():
    from fastvid_cli.decoding import logit_margin

    logits = torch.tensor([1.0, 3.0, 2.0])
    assert logit_margin(logits, 1) == 1.0  # greedy: top-1 minus runner-up
    assert logit_margin(logits, 2) == -1.0 and logit_margin(logits, 0) == -2.0  # a sampled token below the best
    assert logit_margin(torch.tensor([2.0, 2.0, 0.0]), 1) == 0.0  # a tie either way
    assert logit_margin(torch.tensor([0.5, -1.0], dtype=torch.bfloat16), 0) == 1.5


def test_eager_margins_are_each_steps_top1_minus_runner_up(engine, pruned):
    """Greedy with Sampling.margins: one margin per token (eos included), equal to the gap between the two best
    logits of a teacher-forced forward over the prompt and the answer; off by default (None, nothing computed)."""
    model = engine.model
    plain, _ = run(decode, model, pruned, Sampling(max_new_tokens=8))
    res, _ = run(decode, model, pruned, Sampling(max_new_tokens=8, margins=True))
    assert plain.margins is None
    assert res.token_ids == plain.token_ids and len(res.margins) == len(res.token_ids) == 8
    ids = torch.tensor([res.token_ids[:-1]])
    embeds = torch.cat([pruned.inputs_embeds, model.get_input_embeddings()(ids)], dim=1)
    pos = torch.cat([pruned.position_ids, pruned.next_position + torch.arange(ids.shape[1])], dim=-1)
    with torch.inference_mode():
        logits = model(inputs_embeds=embeds, position_ids=pos).logits[0, pruned.length - 1:]
    top2 = logits.topk(2).values
    assert logits.argmax(-1).tolist() == res.token_ids
    assert res.margins == pytest.approx((top2[:, 0] - top2[:, 1]).tolist(), abs=1e-3)
    assert min(res.margins) >= 0


def test_sampled_margins_are_recorded_too(engine, pruned):
    s = Sampling(max_new_tokens=12, temperature=1.5, seed=3, margins=True)
    res, _ = run(decode, engine.model, pruned, s)
    assert len(res.margins) == len(res.token_ids)
    assert res.token_ids == run(decode, engine.model, pruned, Sampling(max_new_tokens=12, temperature=1.5,
                                                                        seed=3))[0].token_ids


def test_graph_decoders_leave_margins_unmeasured(engine, pruned):
    s = Sampling(max_new_tokens=4, margins=True)
    for decoder in (StaticDecoder(engine.model, graphs=False), FusedDecoder(engine.model, graphs=False)):
        assert run(decoder.decode, engine.model, pruned, s)[0].margins is None


def test_margins_requested_decode_eagerly_and_reach_the_report(engine, index_video, monkeypatch):
    """GenerationOptions.margins: the engine decodes with the eager loop even where --compile would take the fused
    step (saying so when --compile was explicit); Report.logit_margins then holds one margin per new token, a note
    gives the smallest, and to_dict has the key only when margins were asked for."""
    monkeypatch.setattr(engine, "cuda", True)
    monkeypatch.setitem(engine.decoders, "fused", FusedDecoder(engine.model, graphs=False))
    prune = PruneOptions(ratio=0.25)
    fused = engine.ask(str(index_video), "Q?", frames=8, prune=prune, gen=GenerationOptions(max_new_tokens=5))
    r = engine.ask(str(index_video), "Q?", frames=8, prune=prune,
                   gen=GenerationOptions(max_new_tokens=5, margins=True, compile=True))
    assert fused.decode_mode == "fused" and fused.logit_margins is None and "logit_margins" not in fused.to_dict()
    assert r.decode_mode == "eager" and r.answer == fused.answer
    assert len(r.logit_margins) == r.new_tokens == 5 and r.to_dict()["logit_margins"] == r.logit_margins
    assert any("decoded eagerly" in n for n in r.notes)
    assert any(n.startswith("logit margins") and f"min {min(r.logit_margins):.2f}" in n for n in r.notes)


def test_batched_margins_equal_one_by_one_margins(engine, index_video):
    prune = PruneOptions(ratio=0.25, params=dict(c=4))
    gen = GenerationOptions(max_new_tokens=6, margins=True)
    sess = engine.session(str(index_video), frames=8, prune=prune)
    single = [sess.answer(q, gen).logit_margins for q in QUESTIONS]
    batched = engine.session(str(index_video), frames=8, prune=prune).answer_many(QUESTIONS, gen)
    assert all(r.decode_mode.startswith("batched") for r in batched)
    for one, many in zip(single, batched):
        assert many.logit_margins == pytest.approx(one, abs=1e-3)
