"""FlashVID registered (--method flashvid): its entry agrees with the reference tables of pruning/flashvid*.py, its
inner-LLM prune runs as the entry's LLM stage (keep the last prompt token's top video tokens, drop the rest), and
ask / compare run it end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fastvid_cli import pruning
from fastvid_cli.decoding import new_cache
from fastvid_cli.engine import GenerationOptions, PruneOptions
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.prefill import StagePrefill
from fastvid_cli.pruning.flashvid import FAMILY_VARIANTS, flashvid
from fastvid_cli.pruning.flashvid_inner import (INNER_DEFAULTS, QWEN_DEFAULTS, InnerPrune, flashvid_qwen,
                                                inner_keep_count, parse_inner)

from demo_example import DEMO_CLIP, QUESTION


def test_the_entry_has_the_reference_settings():
    spec = pruning.spec_of("flashvid")
    llava, qwen = spec.defaults_for("llava"), spec.defaults_for("qwen")
    for key, value in FAMILY_VARIANTS["llava_onevision"].items():
        assert llava[key] == value, key
    inner = INNER_DEFAULTS["llava_onevision"]
    assert llava["inner"] == (inner.pruning_layer, inner.llm_retention_ratio) and llava["expansion"] == 1.25
    for key, value in FAMILY_VARIANTS["qwen2_5_vl"].items():
        assert qwen[key] == value, key
    assert qwen["inner"] == (20, 0.3) and qwen["expansion"] == 1.25  # the Qwen2.5-VL reference's inner stage
    assert spec.positions_for("llava") == "compact" and spec.positions_for("qwen") == "original"
    assert spec.needs_attention and not spec.uses_saliency
    assert pruning.resolve_params("flashvid", "llava", {"--flashvid-inner": "off"})["inner"] is None
    assert pruning.resolve_params("flashvid", "llava", {"inner": "2,0.5"})["inner"] == (2, 0.5)


def test_parse_inner():
    assert parse_inner("20,0.3") == (20, 0.3) and parse_inner([2, 1]) == (2, 1.0)
    assert parse_inner("off") is None and parse_inner(None) is None
    for bad in ("20", "0,0.3", "3,0", "3,1.5", "a,b"):
        with pytest.raises(InvalidOptionError, match="--flashvid-inner"):
            parse_inner(bad)
    with pytest.raises(InvalidOptionError, match="--flashvid-inner"):
        pruning.check_options(["flashvid"], "llava", {"--flashvid-inner": "0,0.3"})
    with pytest.raises(InvalidOptionError, match="applies to --method flashvid"):
        pruning.check_options(["fastvid"], "llava", {"--flashvid-inner": "1,0.3"})


def test_the_stage_keeps_the_top_tokens_unchanged_and_the_newline():
    stage = pruning.llm_stage("flashvid", "llava", {"inner": (1, 0.3)}, ratio=0.25)
    assert isinstance(stage, InnerPrune) and (stage.layer, stage.llm_retention_ratio, stage.tail) == (1, 0.3, 1)
    hidden = torch.randn(11, 4)  # 10 video rows + LLaVA-OV's newline
    attention = torch.tensor([0.1, 0.5, 0.2, 0.5, 0.0, 0.3, 0.3, 0.1, 0.0, 0.2, 0.0])
    kept, out = stage.reduce(hidden, attention)
    # ceil(10 * 0.3) = 3: 0.5, 0.5, then 0.3 at 5 before 0.3 at 6 (ties: the lowest index); the newline always
    assert kept.tolist() == [1, 3, 5, 10] and torch.equal(out, hidden[kept])
    assert pruning.llm_stage("flashvid", "llava", {"inner": (1, 0.3)}, ratio=1.0) is None  # ratio 1.0 prunes nothing
    assert pruning.llm_stage("flashvid", "llava", {"inner": None}) is None
    qwen = pruning.llm_stage("flashvid", "qwen", {"inner": (20, 0.3)}, ratio=0.25)
    assert isinstance(qwen, InnerPrune) and qwen.tail == 0  # Qwen-VL: no newline after the video tokens


def test_the_qwen_variant_runs_with_its_own_defaults():
    gen = torch.Generator().manual_seed(0)
    X, a = torch.randn(6, 16, 8, generator=gen), torch.rand(6, 16, generator=gen)
    res = flashvid_qwen(X, None, None, 0.25, attn=a)
    ref = flashvid(X, None, None, 0.25, attn=a, **FAMILY_VARIANTS["qwen2_5_vl"])
    assert QWEN_DEFAULTS == FAMILY_VARIANTS["qwen2_5_vl"]
    assert torch.equal(res.index, ref.index) and torch.equal(res.embeds, ref.embeds)
    assert not res.compact and res.budget[0] == math.ceil(16 * 0.25 * 1.25)


# ------------------------------------------------------------------------------------------ the engine
def flashvid_opts(ratio: float, **given) -> PruneOptions:
    return PruneOptions(method="flashvid", ratio=ratio, params=pruning.resolve_params("flashvid", "llava", given))


def test_ask_runs_the_inner_stage(engine, index_video):
    """K=1 on the tiny model (2 LLM layers): the note says what was kept, the KV cache is shorter from layer 1 on
    by exactly the dropped video tokens, and the answer is the same every time."""
    sess = engine.session(str(index_video), frames=4, prune=flashvid_opts(0.25, inner="1,0.3"))
    kept = sess.result.kept
    assert isinstance(sess.inner, InnerPrune) and sess.result.compact
    F, N = sess.feats.embeds.shape[:2]
    assert kept >= F * math.ceil(N * 0.25 * 1.25)  # the pre-LLM budget: ratio x expansion per frame
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=3))
    after = inner_keep_count(kept, 0.3) + 1  # + the newline, outside the visual range
    assert r.video_tokens_kept == kept and r.params["inner"] == (1, 0.3)
    assert any(n.startswith(f"FlashVID inner prune before LLM layer 1: {after} of {kept + 1} video-span tokens")
               for n in r.notes), r.notes
    asm, stage = sess.prefill_input("What happens?")
    done = StagePrefill(stage).run(engine.model, asm, engine.clock)
    lengths = [int(layer.keys.shape[-2]) for layer in done.cache.layers]
    assert lengths == [asm.length, asm.length - (kept + 1 - after)]
    again = engine.session(str(index_video), frames=4, prune=flashvid_opts(0.25, inner="1,0.3"))
    assert again.answer("What happens?", GenerationOptions(max_new_tokens=3)).answer == r.answer
    assert torch.equal(again.result.index, sess.result.index)


def test_default_inner_stage_past_the_models_depth_is_off_with_a_note(engine, index_video):
    sess = engine.session(str(index_video), frames=4, prune=flashvid_opts(0.25))  # K=20 on a 2-layer LLM
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=2))
    assert sess.inner is None and r.params["inner"] == (20, 0.3)
    assert any("FlashVID inner prune off: --flashvid-inner K=20 is not below the LLM's 2 layers" in n
               for n in r.notes)
    new_cache(engine.model)  # nothing else to clean up: a plain prefill ran


def test_ratio_one_keeps_everything(engine, index_video):
    sess = engine.session(str(index_video), frames=4, prune=flashvid_opts(1.0, inner="1,0.3"))
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=2))
    assert sess.inner is None and r.video_tokens_kept == r.video_tokens_total
    assert not any("FlashVID inner prune" in n for n in r.notes)


# ------------------------------------------------------------------------------------------ the commands
def test_compare_on_the_demo_model_prints_one_table():
    args = ["compare", str(DEMO_CLIP), QUESTION, "--model", "demo", "--device", "cpu", "--no-cache",
            "--repeat", "1", "--method", "fastvid", "--method", "flashvid", "--method", "vidcom2", "--method", "evs",
            "-r", "0.25", "-r", "0.1"]
    res = CliRunner().invoke(app_(), args)
    assert res.exit_code == 0, res.output
    out = res.stdout
    lines = out.splitlines()
    assert sum(line.split()[:2] == ["method", "r"] for line in lines if line.strip()) == 1  # one table
    rows = [line.split()[:2] for line in lines if "%)" in line]  # "flashvid  0.25    320 (31%) …"
    assert rows == [["none", "1"]] + [[m, r] for m in ("fastvid", "flashvid", "vidcom2", "evs") for r in ("0.25", "0.1")]
    res = CliRunner().invoke(app_(), [*args, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [(r["method"], r["ratio"]) for r in rows][1:] == [
        (m, r) for m in ("fastvid", "flashvid", "vidcom2", "evs") for r in (0.25, 0.1)]


def app_():
    from fastvid_cli.cli import app

    return app


@pytest.fixture(scope="module")
def cli_base(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu", "--frames", "4"]


def test_batch_and_eval_run_flashvid_with_its_inner_stage(cli_base, index_video, tmp_path):
    import shutil

    shutil.copy(index_video, tmp_path / "a.mp4")
    csv = tmp_path / "q.csv"
    csv.write_text("id,video,question\nr1,a.mp4,What happens?\nr2,a.mp4,Why?\n")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app_(), [str(a) for a in ["batch", csv, *cli_base, "--max-new-tokens", "2", "--method",
                                                       "flashvid", "--ratio", "0.25", "--flashvid-inner", "1,0.3",
                                                       "-o", out]])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] == "ok" and any("FlashVID inner prune before LLM layer 1" in n for n in r["notes"])
               for r in recs)
    assert {tuple(r["settings"]["params"]["inner"]) for r in recs} == {(1, 0.3)}
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "video": "a.mp4", "question": f"Which colour ({i})?",
                                         "options": ["red", "green", "blue", "yellow"], "answer": "A"}) + "\n"
                             for i in range(2)))
    res = CliRunner().invoke(app_(), [str(a) for a in ["eval", bench, *cli_base, "--max-new-tokens", "2", "--method",
                                                       "flashvid", "--ratio", "0.25", "-o", tmp_path / "res.jsonl",
                                                       "--json"]])
    assert res.exit_code == 0, res.output
    settings = {s["setting"]: s for s in json.loads(res.stdout)["settings"]}
    assert settings["flashvid@0.25"]["params"]["inner"] == [20, 0.3] and settings["flashvid@0.25"]["errors"] == 0
