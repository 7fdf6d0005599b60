"""The fused B-row decode step (fast_decode.FusedRowsDecoder): several answers about one video decoded together
give, row by row, the token streams of decoding each answer alone with the one-answer fused step.

On CPU the step runs without CUDA graphs (graphs=False) with the plain torch kernels: same buffers, same left-padded
layout, per-row rotary tables and masks, row buckets and spans as on CUDA (where benchmarks/bench_batched_decode.py
checks the graphed step with Triton kernels). Equal greedy streams are asserted together with the reason they are
equal: at every step, each row's logits differ from the one-answer step's by far less than half the gap between
that step's best and second-best token, so no rounding could have flipped a pick.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from fastvid_cli import fast_decode
from fastvid_cli.decoding import Sampling, decode_rows, new_cache, prefill, prefill_rows
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.fast_decode import FusedDecoder, FusedRowsDecoder
from fastvid_cli.pruning.fastvid import fastvid
from fastvid_cli.video import sample_frames

QUESTIONS = ["What happens?", "Which colour is the square at the very end of the clip?", "Why?",
             "Count the shapes that appear in the first half of the video, then tell me which one moves.",
             "Where does the circle go?"]


@pytest.fixture(scope="module")
def prompts(engine, index_video):
    """The questions' FastVID-pruned prompts for the tiny model (same video prefix, suffixes of different lengths).
    The random tiny model answers every question alike, so each suffix gets its own noise: the rows then decode
    different streams, and a step that mixed rows up would show."""
    a = engine.adapter
    feats = a.encode(a.preprocess(sample_frames(str(index_video), 8).frames))
    result = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.25, c=4)
    g = torch.Generator().manual_seed(0)
    out = []
    for q in QUESTIONS:
        asm = a.assemble(a.build_prompt(q), feats, result.embeds, result.index)
        e, cut = asm.inputs_embeds.detach().clone(), asm.video_span[1]
        e[:, cut:] += torch.randn(e[:, cut:].shape, generator=g) * float(e.std()) * 4
        out.append(dataclasses.replace(asm, inputs_embeds=e))
    return out


def _prefix(model, asm):
    cut = asm.video_span[1]
    cache = new_cache(model)
    prefill(model, asm.inputs_embeds[:, :cut], asm.position_ids[..., :cut], cache)
    return cache, cut


def _rows(model, asms):
    """The batched prefill of `asms` on their shared prefix (what VideoSession.answer_many runs)."""
    cache, cut = _prefix(model, asms[0])
    return prefill_rows(model, cache, [a.inputs_embeds[:, cut:] for a in asms],
                        [a.position_ids[..., cut:] for a in asms])


def _recording(decoder, log: list):
    """Record the logits each step of `decoder` returns (a copy), keeping its behaviour."""
    real = decoder._step

    def step(*args):
        logits = real(*args)
        log.append(logits.detach().float().clone())
        return logits

    decoder._step = step
    return decoder


def _alone(model, asm, s: Sampling):
    """(result, logits of every step: the prefill's, then each fused step's) of one answer alone, as `answer` does
    it: shared prefix cache, this question's suffix prefilled on it, the one-answer fused step."""
    cache, cut = _prefix(model, asm)
    first = prefill(model, asm.inputs_embeds[:, cut:], asm.position_ids[..., cut:], cache)
    log = [first.float().view(1, -1)]
    res = _recording(FusedDecoder(model, graphs=False), log).decode(model, first, cache, asm.next_position, s)
    return res, [x[0] for x in log]


def assert_rows_equal_alone(model, asms, s: Sampling, rows_decoder=None, min_steps: int = 1):
    """Decode `asms` together and each alone; assert equal streams and that every greedy pick was decided by a
    margin larger than twice the logit difference between the two computations (so equal by arithmetic, not by
    luck). Returns the batched results."""
    pre = _rows(model, asms)
    log = [pre.logits.float()]
    dec = _recording(rows_decoder or FusedRowsDecoder(model, graphs=False), log)
    rows = dec.decode(model, pre, [s] * len(asms))
    for b, (asm, got) in enumerate(zip(asms, rows)):
        ref, ref_logits = _alone(model, asm, s)
        assert got.token_ids == ref.token_ids, b
        assert got.stop_reason == ref.stop_reason
        assert len(got.token_ids) >= min_steps
        for t, want in enumerate(ref_logits[:len(ref.token_ids)]):
            diff = (log[t][b] - want).abs().max().item()
            top2 = want.topk(2).values
            margin = (top2[0] - top2[1]).item()
            assert margin > 2 * diff, (b, t, margin, diff)
            assert diff < 1e-3, (b, t, diff)  # float32: the batched and the one-row computations agree closely
    return rows


def test_rows_greedy_equal_each_answer_alone_across_spans(engine, prompts, monkeypatch):
    monkeypatch.setattr(FusedRowsDecoder, "SPAN", 16)  # a 40-token answer crosses three attention spans
    monkeypatch.setattr(FusedDecoder, "SPAN", 16)
    s = Sampling(max_new_tokens=40)
    rows = assert_rows_equal_alone(engine.model, prompts, s, min_steps=40)
    assert {r.mode for r in rows} == {"batched fused x5"} and all(r.fallback is None for r in rows)
    assert len({len(a.inputs_embeds[0]) for a in prompts}) > 1  # the questions differ in length (padding masked)
    assert len({tuple(r.token_ids) for r in rows}) == len(rows)  # and every row has its own stream


def test_rows_equal_the_eager_batched_loop(engine, prompts):
    pre = _rows(engine.model, prompts[:4])
    s = [Sampling(max_new_tokens=12)] * 4
    fused = FusedRowsDecoder(engine.model, graphs=False).decode(engine.model, pre, s)
    assert pre.cache.get_seq_length() == pre.prefix_len + pre.width  # the batched prefill's cache is only read
    eager = decode_rows(engine.model, pre, s)
    assert [r.token_ids for r in fused] == [r.token_ids for r in eager]


def test_row_buckets_grow_and_keep_buffer_addresses(engine, prompts):
    """3 rows run in the graph of 4 (a spare row computes on stale buffers, unread); 2 rows reuse the same buffers
    (captured graphs read them by address); 5 rows grow them to 8, and every answer stays that of its row alone."""
    model = engine.model
    dec = FusedRowsDecoder(model, graphs=False)
    s = Sampling(max_new_tokens=6)
    assert_rows_equal_alone(model, prompts[:3], s, rows_decoder=dec)
    assert dec.rows == 4 and [FusedRowsDecoder.bucket(n) for n in (1, 2, 3, 5, 10, 16)] == [1, 2, 4, 8, 12, 16]
    addresses = [t.data_ptr() for t in (dec.k, dec.v, dec.cos, dec.sin, dec.tok, dec.slot, dec.step, dec.holes)]
    dec._step = dec.__class__._step.__get__(dec)  # drop the recorder before the next call wraps it again
    assert_rows_equal_alone(model, prompts[3:], s, rows_decoder=dec)
    assert [t.data_ptr() for t in (dec.k, dec.v, dec.cos, dec.sin, dec.tok, dec.slot, dec.step,
                                   dec.holes)] == addresses
    dec._step = dec.__class__._step.__get__(dec)
    assert_rows_equal_alone(model, prompts, s, rows_decoder=dec)
    assert dec.rows == 8


def test_each_row_samples_with_its_own_seed_and_stops_on_its_own(engine, prompts, monkeypatch):
    """Rows with different Sampling (greedy, two seeds, top-p), max_new_tokens, an eos met early and a stop event:
    each row's stream and stop reason are those of its answer alone."""
    model = engine.model
    samplings = [Sampling(max_new_tokens=14), Sampling(max_new_tokens=14, temperature=1.3, top_p=0.9, seed=11),
                 Sampling(max_new_tokens=5, temperature=0.8, seed=2), Sampling(max_new_tokens=14),
                 Sampling(max_new_tokens=9)]
    alone = [_alone(model, a, s)[0] for a, s in zip(prompts, samplings)]
    # row 3 now "ends" early (the others may too), on a token that row 4 does not give in its first three
    eos = {next(t for t in alone[3].token_ids[1:6] if t not in alone[4].token_ids[:3])}
    monkeypatch.setattr(fast_decode, "eos_ids", lambda _m: eos)
    monkeypatch.setattr("fastvid_cli.decoding.eos_ids", lambda _m: eos)
    alone = [_alone(model, a, s)[0] for a, s in zip(prompts, samplings)]
    stop = threading.Event()
    seen = []

    def on_token(b, token, _t):
        seen.append((b, token))
        if b == 4 and sum(1 for r, _ in seen if r == 4) == 3:
            stop.set()  # row 4's client goes away after its 3rd token

    pre = _rows(model, prompts)
    rows = FusedRowsDecoder(model, graphs=False).decode(model, pre, samplings, on_token=on_token,
                                                        stops=[None, None, None, None, stop])
    for b in range(4):
        assert rows[b].token_ids == alone[b].token_ids and rows[b].stop_reason == alone[b].stop_reason, b
    assert rows[2].stop_reason in ("max_new_tokens", "eos") and len(rows[2].token_ids) <= 5
    assert rows[3].stop_reason == "eos" and len(rows[3].token_ids) <= 6
    assert rows[4].stop_reason == "interrupted" and rows[4].token_ids == alone[4].token_ids[:3]
    assert rows[1].token_ids != rows[0].token_ids  # sampled, not greedy
    assert [t for b, t in seen if b == 1] == rows[1].token_ids  # streamed as decoded


@pytest.mark.parametrize("fail_at", [0, 4])
def test_a_failing_rows_step_goes_on_with_the_eager_batched_loop(engine, prompts, fail_at):
    """A failure while filling the buffers (0) or mid-answer (4: e.g. capturing a longer span) hands over to the
    eager batched loop, which takes over from the tokens decoded so far: the same streams."""
    model = engine.model
    s = [Sampling(max_new_tokens=10)] * 3
    pre = _rows(model, prompts[:3])
    want = decode_rows(model, pre, s)
    dec = FusedRowsDecoder(model, graphs=False)
    real, calls = dec._step, []

    def flaky(*args):
        calls.append(args)
        if len(calls) > fail_at:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real(*args)

    dec._step = flaky
    if fail_at == 0:
        dec.load = lambda *_a: flaky()
    got = dec.decode(model, _rows(model, prompts[:3]), s)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert all(r.mode == "batched x3" and "not permitted" in r.fallback for r in got)
    assert dec.k is None  # the buffers are rebuilt on the next load


# ------------------------------------------------------------------------------------------ through the engine
def test_answer_many_takes_the_rows_step_where_one_answer_takes_the_fused_step(engine, index_video, monkeypatch):
    monkeypatch.setattr(engine, "cuda", True)  # pretend: the decoders run eagerly on the CPU (graphs=False)
    monkeypatch.setitem(engine.decoders, "fused", FusedDecoder(engine.model, graphs=False))
    monkeypatch.setitem(engine.decoders, "fused-rows", FusedRowsDecoder(engine.model, graphs=False))
    prune = PruneOptions(ratio=0.25, params=dict(c=4))
    gen = GenerationOptions(max_new_tokens=10)
    sess = engine.session(str(index_video), frames=8, prune=prune)
    single = [sess.answer(q, gen) for q in QUESTIONS[:4]]
    batched = engine.session(str(index_video), frames=8, prune=prune).answer_many(QUESTIONS[:4], gen, max_rows=3)
    assert {r.decode_mode for r in single} == {"fused"}
    assert [r.decode_mode for r in batched] == ["batched fused x3"] * 3 + ["fused"]  # the last one alone
    assert [r.answer for r in batched] == [r.answer for r in single]
    assert not any("--compile" in n for r in batched for n in r.notes)
    # margins are measured by the eager batched loop, and other models have no batched graph step
    m = engine.session(str(index_video), frames=8, prune=prune).answer_many(
        QUESTIONS[:2], GenerationOptions(max_new_tokens=4, margins=True, compile=True))
    assert [r.decode_mode for r in m] == ["batched x2"] * 2 and all(len(r.logit_margins) == 4 for r in m)
    assert any("logit margins are measured by the eager loop" in n for n in m[0].notes)
    monkeypatch.setattr(fast_decode, "unsupported", lambda _m: "not a Qwen model")
    monkeypatch.delitem(engine.decoders, "fused")
    other = engine.session(str(index_video), frames=8, prune=prune).answer_many(
        QUESTIONS[:2], GenerationOptions(max_new_tokens=4, compile=True))
    assert [r.decode_mode for r in other] == ["batched x2"] * 2
    assert any("needs a Qwen2/Qwen3 dense LLM; decoded with the eager batched loop" in n for n in other[0].notes)


def test_a_failed_rows_decoder_is_not_tried_again(engine, index_video, monkeypatch):
    monkeypatch.setattr(engine, "cuda", True)
    dec = FusedRowsDecoder(engine.model, graphs=False)
    monkeypatch.setattr(dec, "load", lambda *_a: (_ for _ in ()).throw(RuntimeError("capture failed")))
    monkeypatch.setitem(engine.decoders, "fused-rows", dec)
    monkeypatch.setattr(engine.decoding, "broken", {})
    sess = engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)))
    gen = GenerationOptions(max_new_tokens=5)
    first = sess.answer_many(QUESTIONS[:2], gen)
    again = sess.answer_many(QUESTIONS[:2], gen)
    assert [r.answer for r in first] == [r.answer for r in again]
    assert first[0].decode_mode == again[0].decode_mode == "batched x2"
    assert any("batched fused decode step failed (RuntimeError: capture failed)" in n for n in first[0].notes)
    assert engine.decoders["fused-rows"] is None and "fused-rows" in engine.broken


# ------------------------------------------------------------------------------------------ the demo model
def test_demo_model_rows_equal_each_answer_alone():
    """The shipped demo model (trained weights, so real margins), the README clip, several of its questions with
    suffixes of different lengths: batched rows == each answer alone, token for token, every pick by a margin."""
    from demo_example import DEMO_CLIP

    from fastvid_cli.engine import Engine

    engine = Engine.load("demo", device="cpu", dtype="float32")
    a = engine.adapter
    sess = engine.session(str(DEMO_CLIP), prune=PruneOptions(ratio=0.25))
    questions = ["What colour is the diamond? Answer the question using a single word or phrase.",
                 "How many shapes appear in the video?", "What shape is red?",
                 "Which shape appears first? Answer the question using a single word or phrase."]
    asms = [a.assemble(a.build_prompt(q), sess.feats, sess.result.embeds, sess.result.index) for q in questions]
    rows = assert_rows_equal_alone(engine.model, asms, Sampling(max_new_tokens=16))
    assert all(r.token_ids for r in rows)
