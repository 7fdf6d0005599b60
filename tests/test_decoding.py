"""The decode loops: the eager loop and the static-KV-cache decoder (`--compile`) give the same token stream.

On CPU the StaticDecoder runs its step eagerly (graphs=False): same buffers, same cache copy, same position
bookkeeping as on CUDA, where each step is a replayed graph (checked on the GPU by benchmarks/gpu_checks.py).
"""

from __future__ import annotations

import pytest

from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill
from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions
from fastvid_cli.pruning import fastvid
from fastvid_cli.video import sample_frames


@pytest.fixture(scope="module")
def engine(tiny_llava, tiny_saliency):
    return Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))


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


def test_static_decoder_sampling_with_a_seed_equals_eager_loop(engine, pruned):
    s = Sampling(max_new_tokens=10, temperature=1.3, top_p=0.9, seed=11)
    eager, _ = run(decode, engine.model, pruned, s)
    ours, _ = run(StaticDecoder(engine.model, graphs=False).decode, engine.model, pruned, s)
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


def test_static_decoder_after_a_shared_prefix_equals_a_fresh_prefill(engine, pruned):
    """The batch path: prefix KV cache prefilled once, question suffix on top, decode from there."""
    model, cut = engine.model, pruned.video_span[1]
    s = Sampling(max_new_tokens=8)
    fresh, _ = run(decode, model, pruned, s)
    cache = new_cache(model)
    prefill(model, pruned.inputs_embeds[:, :cut], pruned.position_ids[..., :cut], cache)
    logits = prefill(model, pruned.inputs_embeds[:, cut:], pruned.position_ids[..., cut:], cache)
    ours = StaticDecoder(model, graphs=False).decode(model, logits, cache, pruned.next_position, s)
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
    assert all(r.decode_mode.startswith("batched") for r in batched)
    assert [r.question for r in batched] == QUESTIONS
    assert all(r.new_tokens == 10 and r.stop_reason == "max_new_tokens" for r in batched)


def test_batched_answers_stop_each_row_at_its_own_eos(engine, index_video, monkeypatch):
    """Rows end independently: a row whose eos comes early stops there while the others go on."""
    import fastvid_cli.decoding as dec
    import fastvid_cli.engine as eng_mod

    sess = engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)))
    gen = GenerationOptions(max_new_tokens=6)
    seen = {}

    def spy(*a, **k):
        res, t = dec.decode_batch(*a, **k)
        seen["ids"] = [r.token_ids for r in res]
        return res, t

    monkeypatch.setattr(eng_mod, "decode_batch", spy)
    sess.answer_many(QUESTIONS[:3], gen)
    free = seen["ids"]
    eos = dec.eos_ids(engine.model) | {free[1][2]}  # row 1 now "ends" at its 3rd token (or earlier)
    monkeypatch.setattr(dec, "eos_ids", lambda _m: eos)
    monkeypatch.setattr(eng_mod, "eos_ids", lambda _m: eos)
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
    """Past StaticDecoder.MAX_TOKENS the graph decoder would be slower than eager: the engine does not use it and,
    when --compile was asked for explicitly, says why."""
    monkeypatch.setattr(engine, "cuda", True)  # pretend: the length rule is checked before anything touches CUDA
    monkeypatch.setattr(StaticDecoder, "MAX_TOKENS", 64)
    r = engine.ask(str(index_video), "Q?", frames=8, prune=PruneOptions(ratio=0.25),
                   gen=GenerationOptions(max_new_tokens=3, compile=True))
    assert r.decode_mode == "eager" and r.new_tokens == 3
    assert any("longer than 64 tokens" in n for n in r.notes)
