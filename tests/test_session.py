"""A session's answer, piece by piece: the three prefills agree, an out-of-memory error on the decode thread
reaches the caller as ours, and the timings come in the order `ask --json` has always printed them."""

from __future__ import annotations

import threading

import pytest
import torch

from fastvid_cli.decoding import cache_length
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.errors import OutOfMemoryError
from fastvid_cli.prefill import PlainPrefill, PrefixPrefill, StagePrefill, prefill_for, prefill_prefix
from fastvid_cli.pruning.holitom import holitom
from fastvid_cli.pruning.holitom_inner import inner_stage
from fastvid_cli.video import sample_frames

STAGES = ["sample", "preprocess", "vision", "prune"]


@pytest.fixture(scope="module")
def session(engine, index_video):
    return engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)))


def test_the_prefills_agree_and_the_shared_prefix_is_given_back(engine, session):
    _, asm = session._assemble("What happens?", None)
    plain = PlainPrefill().run(engine.model, asm, engine.clock)
    cache, cut, ms = prefill_prefix(engine.model, asm, engine.clock)
    assert cut == asm.video_span[1] and cache_length(cache) == cut and ms > 0
    shared = PrefixPrefill(cache, cut)
    on_prefix = shared.run(engine.model, asm, engine.clock)
    assert on_prefix.cache is cache and cache_length(cache) == asm.length
    assert torch.allclose(on_prefix.logits, plain.logits, atol=1e-4)
    shared.release(cache)
    assert cache_length(cache) == cut  # ready for the next question
    assert isinstance(prefill_for(None), PlainPrefill) and isinstance(prefill_for((1, 0.5)), StagePrefill)


def test_the_llm_stage_prefill_says_what_it_merged(engine, index_video):
    a = engine.adapter
    feats = a.encode(a.preprocess(sample_frames(str(index_video), 4).frames))
    res = holitom(feats.embeds, feats.saliency, feats.frame_features, 0.25, attn=feats.attn_received)
    asm = a.assemble(a.build_prompt("What happens?"), feats, res.embeds, res.index).reindexed()
    done = StagePrefill(inner_stage((1, 0.5))).run(engine.model, asm, engine.clock)
    n_vis = asm.video_span[1] - asm.video_span[0]
    assert done.stage.layer == 1 and done.stage.visual_before == n_vis
    assert done.note == (f"HoliTom inner merge before LLM layer 1: {done.stage.visual_after} of {n_vis} video-span "
                         f"tokens kept from there on ({done.stage.length_after} of {asm.length} prompt tokens in "
                         "layers 1+)")
    assert PlainPrefill().run(engine.model, asm, engine.clock).note is None


def test_out_of_memory_while_decoding_is_our_error(engine, session, monkeypatch):
    def boom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "decode", boom)
    with pytest.raises(OutOfMemoryError, match="while generating") as e:
        session.answer("What happens?", GenerationOptions(max_new_tokens=2))
    assert "--max-new-tokens" in e.value.one_line()
    assert not any(t.name == "fastvid-decode" and t.is_alive() for t in threading.enumerate())
    assert cache_length(session.prefix_cache) == session.prefix_len  # cropped back even so


def test_timings_come_in_their_order(engine, session, index_video):
    gen = GenerationOptions(max_new_tokens=3)
    first = session.answer("What happens?", gen)  # makes the prefix cache: the answer continues it
    assert list(first.timings_ms) == [*STAGES, "prefix_prefill", "prefill", "ttft", "decode", "total"]
    alone = session.answer("What happens?", gen, reuse_prefix=False)
    assert list(alone.timings_ms) == [*STAGES, "prefill", "ttft", "decode", "total"]
    assert alone.answer == first.answer and alone.decode_tokens_per_s > 0
    many = session.answer_many(["What happens?", "Why?"], gen)
    assert [list(r.timings_ms) for r in many] == [list(first.timings_ms)] * 2
    clip, ms = engine.sample(str(index_video), 8)
    asked = engine.ask(str(index_video), "What happens?", clip=clip, sample_ms=ms, sample_wait_ms=2.0, gen=gen,
                       prune=PruneOptions(ratio=0.25, params=dict(c=4)))
    assert list(asked.timings_ms) == [*STAGES, "prefill", "ttft", "decode", "total", "sample_wait"]
    assert asked.timings_ms["sample_wait"] == 2.0 and asked.timings_ms["ttft"] >= 2.0


def test_questions_about_different_videos_decode_together_with_the_answers_alone(engine, session, index_video):
    from fastvid_cli.session import Ask, answer_across

    # other sessions: other prompt lengths (other ratios, frame counts), so the rows are left-padded unequally
    others = [engine.session(str(index_video), frames=6, prune=PruneOptions(ratio=0.5, params=dict(c=3))),
              engine.session(str(index_video), frames=8, prune=PruneOptions(ratio=0.1, params=dict(c=4)))]
    sessions = [session, *others, session]
    questions = ["What happens?", "Why is it so?", "Describe the colours in detail please.", "What comes last?"]
    gen = GenerationOptions(max_new_tokens=12)
    alone = [s.answer(q, gen) for s, q in zip(sessions, questions)]
    assert len({r.prompt_tokens_kept for r in alone}) > 1  # rows of different lengths
    pieces: list[list[str]] = [[] for _ in questions]
    got = answer_across([Ask(s, q, on_text=pieces[i].append) for i, (s, q) in enumerate(zip(sessions, questions))],
                        gen)
    for i, (r, a) in enumerate(zip(got, alone)):
        assert r.answer == a.answer and "".join(pieces[i]) == a.answer
        assert r.new_tokens == a.new_tokens and r.stop_reason == a.stop_reason
        assert r.decode_mode.startswith("batched x4"), r.decode_mode
        assert r.timings_ms["ttft"] > 0 and r.video_tokens_kept == a.video_tokens_kept
    # the shared prefix caches were given back to their prefix length
    assert cache_length(session.prefix_cache) == session.prefix_len


def test_a_question_whose_prefill_fails_fails_alone(engine, session, index_video, monkeypatch):
    from fastvid_cli import prefill as prefill_mod
    from fastvid_cli.session import Ask, answer_across

    other = engine.session(str(index_video), frames=6, prune=PruneOptions(ratio=0.5, params=dict(c=3)))
    gen = GenerationOptions(max_new_tokens=8)
    alone = [s.answer(q, gen) for s, q in ((session, "What happens?"), (other, "Why?"))]
    real = prefill_mod.PrefixPrefill.run
    calls = []

    def failing_second(self, model, asm, clock):
        calls.append(asm.length)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("no memory")
        return real(self, model, asm, clock)

    monkeypatch.setattr(prefill_mod.PrefixPrefill, "run", failing_second)
    got = answer_across([Ask(session, "What happens?"), Ask(session, "Bad one?"), Ask(other, "Why?")], gen)
    assert isinstance(got[1], OutOfMemoryError)
    assert [got[0].answer, got[2].answer] == [a.answer for a in alone]
    assert got[0].decode_mode.startswith("batched x2") and got[2].decode_mode.startswith("batched x2")
    assert cache_length(session.prefix_cache) == session.prefix_len
