"""The demo model shipped in the package: loads offline from the package folder and answers the README's clip,
at every ratio and method, by a margin that no CPU's rounding can overturn (see demo_example.py)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastvid_cli.cli import app
from fastvid_cli.models import DEMO_DIR

from demo_example import ANSWER, DEMO_CLIP, METHODS, MIN_MARGIN, QA, QUESTION, RATIOS, SEED, _encoded, ask

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_demo_weights_ship_small_with_their_saliency_head():
    files = {p.name: p.stat().st_size for p in DEMO_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "saliency_head.safetensors", "tokenizer.json"} <= files.keys()
    assert sum(files.values()) <= 25 * 2**20
    log = json.loads((DEMO_DIR / "train_log.json").read_text())
    assert log["seed"] == 0 and log["steps"] > 0 and log["log"]  # provenance of the shipped weights


def test_demo_answers_the_demo_clip():
    """The README's command as it stands (default method and ratio: fastvid 0.1), with --json --margins: the
    answer, and every answer step decided by a margin no CPU's rounding comes near."""
    result = CliRunner().invoke(app, ["ask", str(DEMO_CLIP), QUESTION, "--model", "demo", "--device", "cpu",
                                      "--json", "--no-cache", "--margins"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"].strip().lower() == ANSWER
    assert data["method"] == "fastvid" and data["ratio"] == 0.1 and data["decode_mode"] == "eager"
    assert data["stop_reason"] == "eos" and len(data["logit_margins"]) == data["new_tokens"]
    assert min(data["logit_margins"]) >= MIN_MARGIN, data["logit_margins"]
    assert data["model"] == "demo" and data["saliency_source"].startswith("siglip-head")
    assert data["frames"] == 16 and data["video_tokens_total"] == 16 * 64


def test_ask_json_has_margins_only_when_asked():
    result = CliRunner().invoke(app, ["ask", str(DEMO_CLIP), QUESTION, "--model", "demo", "--device", "cpu",
                                      "--json", "--no-cache", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.stderr
    assert "logit_margins" not in json.loads(result.stdout)


@pytest.mark.parametrize("method", ["none", *METHODS])
@pytest.mark.parametrize("form", ["readme", "eval"])
def test_demo_answer_is_robust_at_every_ratio_and_method(method, form):
    """The README promises the answer at every ratio and method: each one answers it, ends there, and decides
    every token by at least MIN_MARGIN, asked as the README types it and as `eval --form short` asks it."""
    from fastvid_cli import synth

    question = QUESTION if form == "readme" else synth.short_prompt(synth.generate(SEED)[1][QA])
    for ratio in (1.0,) if method == "none" else RATIOS:
        answer, margins, stop = ask(question, method, ratio)
        assert (answer.strip(), stop) == (ANSWER, "eos"), (method, ratio, answer)
        assert min(margins) >= MIN_MARGIN, (method, ratio, margins)


def test_demo_clip_is_the_documented_synthetic_clip():
    from fastvid_cli import synth
    from fastvid_cli.video import sample_frames

    spec, qas = synth.generate(SEED)
    qa = qas[QA]
    assert qa.short_answer == ANSWER
    assert synth.short_prompt(qa) == QUESTION.replace("? ", "?\n")  # the README's question is the seed's
    clip = sample_frames(DEMO_CLIP, 16)
    diff = abs(clip.frames.astype(int) - synth.render(spec).astype(int))
    assert (diff < 24).mean() > 0.98  # the file is that clip, through H.264


@pytest.fixture(scope="module")
def diag():
    """benchmarks/diag_demo_margins.py, imported as its script runs it (benchmarks/ on sys.path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("diag_demo_margins")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_margin_probe_answers_the_same_from_frames_sampled_ahead(tmp_path, diag):
    """benchmarks/diag_demo_margins.py --decode-to / --decoded (how the bf16 search runs on the GPU machine, which has
    no PyAV): frames kept from the CPU's sampling give the same answer and margins as decoding the file there, and
    a seed with no kept frames is not searched."""
    engine = _encoded()[0]
    diag.decode_to(engine, tmp_path, [])
    kept = diag.load_decoded(tmp_path, None)
    assert kept is not None and kept.frames.shape[0] == len(kept.indices) == 16
    assert diag.load_decoded(tmp_path, SEED + 1) is None
    direct = diag.Probe(engine, str(DEMO_CLIP)).cell(QUESTION, ANSWER, "fastvid", 0.1, 0, 0.0)
    ahead = diag.Probe(engine, "demo.mp4", kept).cell(QUESTION, ANSWER, "fastvid", 0.1, 0, 0.0)
    assert ahead["answer"] == direct["answer"] and ahead["correct"]
    assert ahead["margins"] == pytest.approx(direct["margins"], abs=1e-4)
    assert diag.search(engine, 2_000_000, 3, 2.0, 0, 0.0, decoded=tmp_path) == []  # no seed kept: none asked


def test_margin_search_screens_only_the_questions_it_is_told_to(tmp_path, diag):
    """diag_demo_margins.py --search … --match TEXT (how a new clip for the README's question is found): only the
    clip's questions containing TEXT are asked. The README clip has several questions the model answers right
    everywhere; with an unreachable --min each one answered right on every screening setting lands in `near`, so
    `near` holds exactly the questions that were screened."""
    engine = _encoded()[0]
    diag.decode_to(engine, tmp_path, [SEED])
    near: list = []
    found = diag.search(engine, SEED, 1, 1e6, 0, 0.0, near, decoded=tmp_path, match=QUESTION.split("?")[0].upper())
    assert found == [] and [(s, q, a) for _, s, q, a in near] == [(SEED, QA, ANSWER)]
    assert near[0][0] >= MIN_MARGIN
    assert diag.search(engine, SEED, 1, 1e6, 0, 0.0, near, decoded=tmp_path, match="no such words") == []
    assert len(near) == 1  # nothing else was asked
