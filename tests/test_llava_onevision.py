"""Integration tests on a tiny random LLaVA-OneVision checkpoint loaded with from_pretrained from a folder."""

from __future__ import annotations

import pytest
import torch

from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions
from fastvid_cli.pruning.fastvid import expected_kept
from fastvid_cli.video import sample_frames

GREEDY = GenerationOptions(max_new_tokens=12)


@pytest.fixture(scope="module")
def clip(index_video):
    return sample_frames(str(index_video), 8)


def stock_generate(engine, clip, question, max_new_tokens=12):
    """The stock transformers path: expanded <video> run + pixel_values_videos through generate()."""
    a = engine.adapter
    pixels = a.preprocess(clip.frames)
    feats = a.encode(pixels)
    ids = a.full_input_ids(a.build_prompt(question), feats)
    with torch.inference_mode():
        out = a.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None],
                               max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1]:].tolist(), ids.shape[1]


def answer_ids(engine, report):
    return engine.adapter.tokenizer(report.answer, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("method", ["none", "fastvid"])
def test_keep_all_reproduces_stock_generate(engine, clip, index_video, method):
    ref_ids, full_len = stock_generate(engine, clip, "What happens in this video?")
    report = engine.ask(str(index_video), "What happens in this video?", clip=clip, sample_ms=1.0,
                        prune=PruneOptions(method=method, ratio=1.0), gen=GREEDY)
    ref_text = engine.adapter.tokenizer.decode(ref_ids, skip_special_tokens=True)
    assert report.answer == ref_text
    assert report.prompt_tokens_kept == report.prompt_tokens_total == full_len
    assert report.video_tokens_kept == report.video_tokens_total == 8 * 196


def test_generation_options_change_the_answer_only_when_they_should(engine, clip, index_video):
    a = engine.ask(str(index_video), "Q?", clip=clip, sample_ms=1.0, gen=GenerationOptions(max_new_tokens=5))
    b = engine.ask(str(index_video), "Q?", clip=clip, sample_ms=1.0, gen=GenerationOptions(max_new_tokens=5))
    assert a.answer == b.answer  # greedy is deterministic
    assert a.new_tokens == 5 and a.stop_reason == "max_new_tokens"
    s1 = engine.ask(str(index_video), "Q?", clip=clip, sample_ms=1.0,
                    gen=GenerationOptions(max_new_tokens=8, temperature=1.5, seed=3))
    s2 = engine.ask(str(index_video), "Q?", clip=clip, sample_ms=1.0,
                    gen=GenerationOptions(max_new_tokens=8, temperature=1.5, seed=3))
    assert s1.answer == s2.answer  # same seed, same sample


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.45])
def test_pruned_run_keeps_predicted_count(engine, clip, index_video, ratio):
    report = engine.ask(str(index_video), "How many?", clip=clip, sample_ms=1.0,
                        prune=PruneOptions(method="fastvid", ratio=ratio, params=dict(c=4)), gen=GREEDY)
    predicted = expected_kept(8, 196, ratio, 0.4, 4, report.segments)
    assert sum(report.segments) == 8 and len(report.segments) >= 4
    assert report.video_tokens_kept == predicted
    text = report.prompt_tokens_total - 8 * 196 - 1
    assert report.prompt_tokens_kept == text + predicted + 1  # + the newline token, never pruned
    assert report.video_tokens_kept < report.video_tokens_total * ratio + 1


def _spy_positions(model):
    """Record the position_ids the language model sees on every forward."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].detach().clone())

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_pruned_prompt_uses_original_positions_and_decodes_after_full_length(engine, clip):
    a = engine.adapter
    feats = a.encode(a.preprocess(clip.frames))
    from fastvid_cli.pruning.fastvid import fastvid

    result = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.1, c=4)
    prompt = a.build_prompt("Where?")
    asm = a.assemble(prompt, feats, result.embeds, result.index)
    v0 = prompt.prefix_ids.numel()
    n_suffix = prompt.suffix_ids.numel()
    expected = torch.cat([torch.arange(v0), v0 + result.index, torch.tensor([v0 + 8 * 196]),
                          v0 + 8 * 196 + 1 + torch.arange(n_suffix)])
    assert torch.equal(asm.position_ids[0], expected)
    assert asm.full_length == v0 + 8 * 196 + 1 + n_suffix
    seen, handle = _spy_positions(a.model)
    try:
        with torch.inference_mode():
            a.model.generate(inputs_embeds=asm.inputs_embeds, attention_mask=torch.ones(asm.inputs_embeds.shape[:2],
                             dtype=torch.long), position_ids=asm.position_ids, max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()
    assert torch.equal(seen[0][0], expected)  # prefill: original positions, gaps included
    assert [int(p[0, -1]) for p in seen[1:]] == [asm.full_length + i for i in range(3)]  # decode after Ltot


def test_pruned_generate_equals_manual_prefill_and_decode(engine, clip):
    """Greedy generate on the pruned prompt == prefill with original ids, then decode at Ltot, Ltot+1, ..."""
    from transformers import DynamicCache

    from fastvid_cli.decoding import with_cache

    from fastvid_cli.pruning.fastvid import fastvid

    a = engine.adapter
    feats = a.encode(a.preprocess(clip.frames))
    result = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.25, c=4)
    asm = a.assemble(a.build_prompt("Why?"), feats, result.embeds, result.index)
    with torch.inference_mode():
        out = a.model.generate(inputs_embeds=asm.inputs_embeds, attention_mask=torch.ones(asm.inputs_embeds.shape[:2],
                               dtype=torch.long), position_ids=asm.position_ids, max_new_tokens=6, do_sample=False)
        cache = DynamicCache(config=a.model.config)
        o = a.model(inputs_embeds=asm.inputs_embeds, position_ids=asm.position_ids, use_cache=True,
                    **with_cache(a.model, cache))
        tokens = [int(o.logits[0, -1].argmax())]
        for i in range(5):
            o = a.model(input_ids=torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[asm.full_length + i]]),
                        use_cache=True, **with_cache(a.model, cache))
            tokens.append(int(o.logits[0, -1].argmax()))
    assert out[0].tolist() == tokens


def test_features_match_stock_model_and_siglip_head(engine, clip, tiny_saliency):
    from transformers import SiglipVisionModel

    a = engine.adapter
    pixels = a.preprocess(clip.frames)
    feats = a.encode(pixels)
    with torch.inference_mode():
        stock = a.model.model.get_video_features(pixels[None], vision_feature_layer=-1,
                                                 vision_feature_select_strategy="full").pooler_output[0]
        assert torch.allclose(stock[: 8 * 196].view(8, 196, -1), feats.embeds, atol=1e-6)
        # the single trailing newline: appended by get_video_features from transformers 5.18 on, by the forward before
        newline = stock[-1] if stock.shape[0] == 8 * 196 + 1 else a.model.model.image_newline
        assert torch.allclose(newline, feats.extra_embeds[0], atol=1e-6)
        # FastVID's frame features are the SigLIP MAP head's pooled output on the LLaVA tower output.
        sig = SiglipVisionModel.from_pretrained(tiny_saliency).eval()
        tower = a.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
        pooled = sig.head(sig.post_layernorm(tower))
    assert torch.allclose(pooled, feats.frame_features, atol=1e-5)
    assert feats.saliency.shape == (8, 196)
    assert feats.saliency_source.startswith("siglip-head")
    assert torch.all(feats.saliency >= 0)


def test_encode_in_chunks_equals_one_pass(engine, clip):
    a = engine.adapter
    pixels = a.preprocess(clip.frames)
    whole, parts = a.encode(pixels), a.encode(pixels, chunk_frames=3)
    assert torch.allclose(whole.embeds, parts.embeds, atol=1e-6)
    assert torch.allclose(whole.saliency, parts.saliency, atol=1e-7)


def test_frames_encoded_while_decoding_give_the_same_features_and_answer(engine, index_video, monkeypatch):
    """The pipelined path (default on CUDA): frames are preprocessed and encoded in groups, in the order the
    decoders finish them, then put back in frame order: same features, same answer as encoding after sampling."""
    prune, gen = PruneOptions(ratio=0.25, params=dict(c=4)), GenerationOptions(max_new_tokens=6)
    monkeypatch.setattr(engine, "pipeline", False)
    plain = engine.session(str(index_video), frames=16, prune=prune)
    monkeypatch.setattr(engine, "pipeline", True)
    monkeypatch.setattr(engine, "PIPELINE_CHUNK", 3)
    groups = []
    real = engine.adapter.encode
    monkeypatch.setattr(engine.adapter, "encode", lambda px, *a, **k: groups.append(px.shape[0]) or real(px, *a, **k))
    piped = engine.session(str(index_video), frames=16, prune=prune)
    assert sum(groups) == 16 and len(groups) >= 2
    for name in ("embeds", "saliency", "frame_features", "attn_received"):
        assert torch.allclose(getattr(plain.feats, name), getattr(piped.feats, name), atol=1e-6), name
    assert piped.clip.indices == plain.clip.indices
    assert {"sample", "preprocess", "vision", "encode_after_sample"} <= set(piped.timings)
    assert piped.answer("What happens?", gen).answer == plain.answer("What happens?", gen).answer


def test_pipelining_is_off_on_the_cpu_and_for_families_that_encode_frames_together(engine, monkeypatch):
    assert engine.pipeline is None and not engine._pipelined()  # the tiny model runs on the CPU
    monkeypatch.setattr(engine, "pipeline", True)
    assert engine._pipelined()
    monkeypatch.setattr(type(engine.adapter), "frames_independent", False)
    assert not engine._pipelined()


def test_warm_up_resizes_encodes_prunes_and_decodes(engine, monkeypatch):
    import fastvid_cli.models.llava_onevision as ov

    sizes, pruned = [], []
    real_resize, real_prune = ov.resize_frames, engine.prune
    monkeypatch.setattr(ov, "resize_frames", lambda x, size: sizes.append(tuple(x.shape[-2:])) or real_resize(x, size))
    monkeypatch.setattr(engine, "prune", lambda *a, **k: pruned.append(a[1].method) or real_prune(*a, **k))
    engine.warmup()
    assert sizes and sizes[0] != (engine.adapter.image_size, engine.adapter.image_size)  # a real resize ran
    assert pruned == ["fastvid"] and engine.warmup_ms > 0


def test_fallback_saliency_when_head_unavailable(tiny_llava, clip, index_video):
    eng = Engine.load(str(tiny_llava), device="cpu", dtype="float32")  # default head: not cached, offline
    assert eng.adapter.saliency_head is None
    report = eng.ask(str(index_video), "What?", clip=clip, sample_ms=1.0, gen=GenerationOptions(max_new_tokens=2))
    assert report.saliency_source.startswith("fallback")
    assert any("fallback" in n for n in report.notes)
    feats = eng.adapter.encode(eng.adapter.preprocess(clip.frames))
    # mean attention received: a distribution over the 729 patches, pooled to the 14x14 grid
    assert torch.all(feats.saliency >= 0) and feats.frame_features.shape == (8, 32)


def test_preprocessing_uses_checkpoint_mean_std(tmp_path):
    from fastvid_cli.tiny import save_llava_checkpoint

    folder = save_llava_checkpoint(tmp_path / "m", patch_grid=5, mean_std=0.25)
    eng = Engine.load(str(folder), device="cpu", dtype="float32", saliency_model="fallback")
    frames = torch.full((2, 20, 30, 3), 200, dtype=torch.uint8)
    px = eng.adapter.preprocess(frames)
    assert px.shape == (2, 3, 70, 70)
    assert torch.allclose(px, torch.full_like(px, (200 / 255 - 0.25) / 0.25), atol=1e-5)


def test_report_numbers_are_consistent(engine, clip, index_video):
    r = engine.ask(str(index_video), "What?", clip=clip, sample_ms=3.0, gen=GenerationOptions(max_new_tokens=6))
    t = r.timings_ms
    for key in ("sample", "preprocess", "vision", "prune", "prefill", "ttft", "decode", "total"):
        assert t[key] >= 0
    assert t["ttft"] >= t["prefill"] and t["total"] >= t["ttft"]
    assert r.new_tokens == 6 and r.decode_tokens_per_s > 0
    assert r.prefill_speedup > 1 and r.prefill_speedup_measured is False
    assert r.frames == 8 and len(r.frame_timestamps) == 8
    b = engine.ask(str(index_video), "What?", clip=clip, sample_ms=3.0, gen=GenerationOptions(max_new_tokens=2),
                   baseline=True)
    assert b.prefill_speedup_measured is True and b.baseline_prefill_ms > 0 and b.prefill_speedup > 0


def test_session_with_shared_prefix_answers_like_separate_asks(engine, clip, index_video):
    """FastVID is query-agnostic: one session (prefix KV cache reused, cropped back) == one ask per question."""
    prune = PruneOptions(method="fastvid", ratio=0.25, params=dict(c=4))
    sess = engine.session(str(index_video), clip=clip, sample_ms=0.0, prune=prune)
    questions = ["What happens?", "What colour is the left half?", "Count the frames, please."]
    shared = [sess.answer(q, GREEDY, reuse_prefix=True) for q in questions]
    assert sess.prefix_cache is not None and sess.prefix_len > 0
    alone = [engine.ask(str(index_video), q, clip=clip, sample_ms=0.0, prune=prune, gen=GREEDY) for q in questions]
    assert [r.answer for r in shared] == [r.answer for r in alone]
    assert all("prefix_prefill" in r.timings_ms for r in shared)
    assert shared[1].video_tokens_kept == alone[1].video_tokens_kept


def _fake_hub_cache(repo: str, folder) -> None:
    """Lay `folder`'s files out as huggingface_hub's cache does for `repo` (refs/main -> snapshots/<sha>/...)."""
    import os
    import shutil

    root = os.path.join(os.environ["HF_HUB_CACHE"], "models--" + repo.replace("/", "--"))
    sha = "0" * 40
    snap = os.path.join(root, "snapshots", sha)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(sha)
    for name in os.listdir(folder):
        shutil.copy(os.path.join(folder, name), os.path.join(snap, name))


def test_default_saliency_head_comes_from_the_hub_cache_and_is_extracted_once(tiny_llava, tiny_saliency,
                                                                               monkeypatch, tmp_path):
    """The default head (google/siglip-so400m-patch14-384) is read from the HF cache offline: only the head tensors
    are extracted into fastvid's own cache, and later loads use that small file."""
    from fastvid_cli.models.siglip_head import DEFAULT_SALIENCY_MODEL, _extracted_path

    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "fv"))
    _fake_hub_cache(DEFAULT_SALIENCY_MODEL, tiny_saliency)
    try:
        eng = Engine.load(str(tiny_llava), device="cpu", dtype="float32")
        assert eng.adapter.saliency_source == f"siglip-head: {DEFAULT_SALIENCY_MODEL}"
        extracted = _extracted_path(DEFAULT_SALIENCY_MODEL)
        assert extracted.is_file() and extracted.stat().st_size < (tiny_saliency / "model.safetensors").stat().st_size
        from safetensors import safe_open

        with safe_open(str(extracted), framework="pt") as f:
            assert all(k.startswith(("head.", "post_layernorm.")) for k in f.keys())  # nothing else was kept
        ref = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))
        frames = torch.randint(0, 256, (4, 40, 60, 3), dtype=torch.uint8)
        a, b = eng.adapter, ref.adapter
        fa, fb = a.encode(a.preprocess(frames)), b.encode(b.preprocess(frames))
        assert torch.allclose(fa.saliency, fb.saliency) and torch.allclose(fa.frame_features, fb.frame_features)
        # a corrupt extracted copy is ignored and rebuilt from the hub cache
        extracted.write_bytes(b"not safetensors")
        again = Engine.load(str(tiny_llava), device="cpu", dtype="float32")
        assert again.adapter.saliency_head is not None and extracted.stat().st_size > 100
    finally:
        import os
        import shutil

        shutil.rmtree(os.path.join(os.environ["HF_HUB_CACHE"],
                                   "models--" + DEFAULT_SALIENCY_MODEL.replace("/", "--")), ignore_errors=True)


def test_auto_device_map_only_when_the_checkpoint_does_not_fit_one_gpu(tmp_path, monkeypatch):
    import json

    from fastvid_cli import engine as E
    from fastvid_cli.models import ModelRef

    folder = tmp_path / "big"
    folder.mkdir()
    ref = ModelRef(str(folder), None, True)

    def index(total: int) -> None:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                          "weight_map": {}}))

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (80 * 2**30, 80 * 2**30))
    index(145 * 2**30)  # a 72B in bf16: shard it over the GPUs
    assert E._auto_device_map(ref, torch.bfloat16) == "auto"
    index(16 * 2**30)  # a 7B fits one GPU: no sharding (faster, no pipeline hops)
    assert E._auto_device_map(ref, torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    index(145 * 2**30)  # nothing to shard over
    assert E._auto_device_map(ref, torch.bfloat16) is None
