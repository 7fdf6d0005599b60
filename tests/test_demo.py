"""The demo model shipped in the package: loads offline from the package folder and answers a known clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastvid_cli.cli import app
from fastvid_cli.models import DEMO_DIR

DEMO_CLIP = Path(__file__).resolve().parents[1] / "examples" / "demo.mp4"
QUESTION = "What colour does the square turn into? Answer the question using a single word or phrase."


def test_demo_weights_ship_small_with_their_saliency_head():
    files = {p.name: p.stat().st_size for p in DEMO_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "saliency_head.safetensors", "tokenizer.json"} <= files.keys()
    assert sum(files.values()) <= 25 * 2**20
    log = json.loads((DEMO_DIR / "train_log.json").read_text())
    assert log["seed"] == 0 and log["steps"] > 0 and log["log"]  # provenance of the shipped weights


@pytest.mark.parametrize("ratio", ["0.1", "1.0"])
def test_demo_answers_the_demo_clip(ratio):
    # examples/demo.mp4 is synth seed 2_000_015 (not in the test split): the square turns red
    result = CliRunner().invoke(app, ["ask", str(DEMO_CLIP), QUESTION, "--model", "demo", "--device", "cpu",
                                      "--ratio", ratio, "--json", "--no-cache", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"].strip().lower() == "red"
    assert data["model"] == "demo" and data["saliency_source"].startswith("siglip-head")
    assert data["frames"] == 16 and data["video_tokens_total"] == 16 * 64


def test_demo_clip_is_the_documented_synthetic_clip():
    from fastvid_cli import synth
    from fastvid_cli.video import sample_frames

    spec, qas = synth.generate(2_000_015)
    assert qas[0].type == "colour_change" and qas[0].short_answer == "red"
    clip = sample_frames(DEMO_CLIP, 16)
    diff = abs(clip.frames.astype(int) - synth.render(spec).astype(int))
    assert (diff < 24).mean() > 0.98  # the file is that clip, through H.264
