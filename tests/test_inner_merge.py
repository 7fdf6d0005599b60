"""HoliTom's inner-LLM stage (--holitom-inner K,R): a layer-by-layer prefill with the model's own modules
(fastvid_cli.llm_stage) that runs the stage of pruning/holitom_inner.py."""

from __future__ import annotations

import pytest
import torch

from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.llm_stage import _last_row_attention, prefill_with_stage
from fastvid_cli.pruning.holitom import holitom
from fastvid_cli.pruning.holitom import inner_keep
from fastvid_cli.pruning.holitom_inner import InnerMerge, parse_inner
from fastvid_cli.video import sample_frames


@pytest.fixture(scope="module")
def asm(engine, index_video):
    a = engine.adapter
    feats = a.encode(a.preprocess(sample_frames(str(index_video), 4).frames))
    res = holitom(feats.embeds, feats.saliency, feats.frame_features, 0.25, attn=feats.attn_received)
    return a.assemble(a.build_prompt("What happens?"), feats, res.embeds, res.index).reindexed()


def n_layers(engine) -> int:
    return len(engine.model.get_decoder().layers)


def prefill_inner(model, inputs_embeds, position_ids, cache, video_span, k, drop_ratio):
    """The prefill with HoliTom's inner merge before layer k (--holitom-inner k,drop_ratio)."""
    return prefill_with_stage(model, inputs_embeds, position_ids, cache, video_span, InnerMerge(k, drop_ratio))


def test_parse_inner():
    assert parse_inner("18,0.5") == (18, 0.5)
    for bad in ("18", "0,0.5", "3,1.0", "3,0", "a,b"):
        with pytest.raises(InvalidOptionError):
            parse_inner(bad)


def test_without_dropping_it_is_the_plain_prefill(engine, asm):
    """R so small that every video token is kept: the layer-by-layer prefill equals the model's own forward."""
    model = engine.model
    ref_cache, cache = new_cache(model), new_cache(model)
    ref = prefill(model, asm.inputs_embeds, asm.position_ids, ref_cache)
    n_vis = asm.video_span[1] - asm.video_span[0]
    assert inner_keep(n_vis, 1e-6) == n_vis
    ours, info = prefill_inner(model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, 1, 1e-6)
    assert info.visual_after == n_vis
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(ref_cache.layers, cache.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5)


def test_layers_from_k_hold_the_merged_sequence(engine, asm):
    model = engine.model
    k = n_layers(engine) - 1
    cache = new_cache(model)
    _, info = prefill_inner(model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, k, 0.5)
    n_vis = asm.video_span[1] - asm.video_span[0]
    assert info.visual_before == n_vis and info.visual_after == round(n_vis * 0.5)
    lengths = [int(layer.keys.shape[-2]) for layer in cache.layers]
    assert lengths[:k] == [asm.length] * k
    assert lengths[k:] == [asm.length - (n_vis - info.visual_after)] * (len(lengths) - k)
    assert StaticDecoder.unsupported(model, cache) is not None  # uneven layers: the eager loop decodes


def test_decoding_after_the_merge_is_the_stock_step(engine, asm):
    """Each one-token step attends to all its layer holds, so the eager loop (model forward, no mask) continues
    the merged prompt exactly like a manual layer loop would; tokens come out and positions continue at L."""
    model = engine.model
    k = n_layers(engine) - 1
    cache = new_cache(model)
    logits, _ = prefill_inner(model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, k, 0.5)
    res = decode(model, logits, cache, asm.next_position, Sampling(max_new_tokens=5))
    assert len(res.token_ids) == 5
    lengths = {int(layer.keys.shape[-2]) for layer in cache.layers}
    assert len(lengths) == 2  # still uneven, each layer grew by the 4 fed tokens


def test_selection_attention_is_the_layers_own(engine, asm):
    """The last token's attention, computed from the layer's q/k, equals what an eager forward returns."""
    model = engine.model
    lm = model.get_decoder()
    h = asm.inputs_embeds
    pe = lm.rotary_emb(h, asm.position_ids)
    ours = _last_row_attention(lm.layers[0], h, pe)
    impl = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        out = lm(inputs_embeds=h, position_ids=asm.position_ids, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
    ref = out.attentions[0][0, :, -1].mean(0)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_engine_answers_with_the_inner_stage(engine, index_video):
    k = n_layers(engine) - 1
    prune = PruneOptions(method="holitom", ratio=0.25, params={"inner": [k, 0.5]})
    sess = engine.session(str(index_video), frames=4, prune=prune)
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=3))
    assert r.new_tokens == 3 and r.decode_mode == "eager"
    outer = engine.session_from_features(str(index_video), sess.clip, sess.feats,
                                         PruneOptions(method="holitom", ratio=0.25)).answer(
        "What happens?", GenerationOptions(max_new_tokens=1))
    assert r.prefill_speedup > outer.prefill_speedup  # the estimate counts the shorter layers from K on
    assert any(f"before LLM layer {k}" in n for n in r.notes)
    many = sess.answer_many(["What happens?", "Why?"], GenerationOptions(max_new_tokens=3))
    assert many[0].answer == r.answer  # no batching, no shared prefix: the same answer
    with pytest.raises(InvalidOptionError, match="below the LLM"):
        engine.session(str(index_video), frames=4,
                       prune=PruneOptions(method="holitom", ratio=0.25, params={"inner": [99, 0.5]}))


# ------------------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def cli_base(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu", "--frames", "4"]


def run_cli(*args):
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def inner_note(notes) -> bool:
    return any("HoliTom inner merge before LLM layer 1" in n for n in notes)


def test_cli_ask_and_compare_with_holitom_inner(cli_base, index_video):
    import json

    res = run_cli("ask", index_video, "What happens?", *cli_base, "--max-new-tokens", "2", "--no-cache",
                  "--method", "holitom", "--ratio", "0.25", "--holitom-inner", "1,0.5", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert inner_note(data["notes"]) and data["params"]["inner"] == [1, 0.5]
    res = run_cli("compare", index_video, "What happens?", *cli_base, "--max-new-tokens", "2", "--repeat", "1",
                  "--no-cache", "--method", "holitom", "--method", "fastvid", "--ratio", "0.25",
                  "--holitom-inner", "1,0.5", "--json")
    assert res.exit_code == 0, res.stderr
    rows = {r["method"]: r for r in json.loads(res.stdout)["rows"]}
    assert set(rows) == {"none", "holitom", "fastvid"}
    for bad, msg in ((["--method", "fastvid", "--holitom-inner", "1,0.5"], "applies to --method holitom"),
                     (["--method", "holitom", "--holitom-inner", "1;0.5"], "must be K,R")):
        res = run_cli("ask", index_video, "Q?", *cli_base, "--no-cache", *bad)
        assert res.exit_code == 2 and msg in res.stderr


def test_cli_batch_and_eval_with_holitom_inner(cli_base, index_video, tmp_path):
    import json
    import shutil

    shutil.copy(index_video, tmp_path / "a.mp4")
    csv = tmp_path / "q.csv"
    csv.write_text("id,video,question\nr1,a.mp4,What happens?\nr2,a.mp4,Why?\n")
    out = tmp_path / "out.jsonl"
    args = ["batch", csv, *cli_base, "--max-new-tokens", "2", "--method", "holitom", "--ratio", "0.25", "-o", out]
    res = run_cli(*args, "--holitom-inner", "1,0.5")
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] == "ok" and inner_note(r["notes"]) for r in recs)
    assert {r["settings"]["params"]["inner"] == [1, 0.5] for r in recs} == {True}
    res = run_cli(*args)  # without the inner stage: other settings, so the rows are answered again
    assert res.exit_code == 0 and len(out.read_text().splitlines()) == 4
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "video": "a.mp4", "question": f"Which colour ({i})?",
                                         "options": ["red", "green", "blue", "yellow"], "answer": "A"}) + "\n"
                             for i in range(2)))
    res = run_cli("eval", bench, *cli_base, "--max-new-tokens", "2", "--method", "holitom", "--ratio", "0.25",
                  "--holitom-inner", "1,0.5", "-o", tmp_path / "res.jsonl", "--json")
    assert res.exit_code == 0, res.output
    settings = {s["setting"]: s for s in json.loads(res.stdout)["settings"]}
    assert settings["holitom@0.25"]["params"]["inner"] == [1, 0.5] and settings["holitom@0.25"]["errors"] == 0
