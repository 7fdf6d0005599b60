"""`--select K` end to end (ask on the demo and on a tiny Qwen2.5-VL, eval), `fastvid find` on a synthetic needle
clip, and the errors: bad K/M values (exit 2), a selector that is not here offline (exit 6), all one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fastvid_cli.cli import app

NEEDLE_SEED = 2_000_000  # the first record of the shipped needle split: "What colour is the diamond?"


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def needle(tmp_path_factory):
    """(video path, record) of a needle clip: 128 frames at 8 fps; the asked-about shape shows for 4 frames."""
    from fastvid_cli import synth, synth_needle

    spec, qas = synth_needle.generate(NEEDLE_SEED)
    rec = synth_needle.to_record(spec, qas[0])
    path = tmp_path_factory.mktemp("needle") / "needle.mp4"
    synth.write_clip(path, synth.render(spec))
    return path, rec


def one_line_error(result) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_ask_select_on_the_demo_uses_k_chosen_frames(runner, needle):
    video, rec = needle
    args = ["ask", str(video), rec["question"], "--model", "demo", "--select", "8", "--max-new-tokens", "4",
            "--no-cache", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    sel = data["selection"]
    assert data["frames"] == 8 and sel["k"] == 8 and sel["candidates"] == 32  # 4*K; 16 s of video at 1 fps is less
    assert data["frame_timestamps"] == pytest.approx(sel["timestamps"], abs=1e-3)
    assert sel["timestamps"] == sorted(sel["timestamps"]) and len(set(sel["timestamps"])) == 8
    assert len(sel["scores"]) == 8 and len(sel["candidate_scores"]) == 32
    assert data["video_tokens_total"] == 8 * 64
    # the needle [start, end) holds a candidate, and that candidate is among the chosen frames
    start, end = rec["needle"]
    assert any(start - 0.01 <= t < end for t in sel["timestamps"])
    assert sel["rule"] == "bolt-its" and sel["power"] == 3.0


def test_ask_select_on_a_tiny_qwen_model(runner, needle, tmp_path_factory):
    from fastvid_cli.tiny import save_qwen_checkpoint

    ckpt = save_qwen_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen25")
    video, rec = needle
    result = runner.invoke(app, ["ask", str(video), rec["question"], "--model", str(ckpt), "--device", "cpu",
                                 "--select", "6", "--candidates", "12", "--selector", "demo",
                                 "--max-new-tokens", "3", "--no-cache", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["frames"] == 6 and data["selection"]["candidates"] == 12
    assert data["frame_timestamps"] == pytest.approx(data["selection"]["timestamps"], abs=1e-3)


def test_find_returns_the_needle_moment_in_the_top_5(runner, needle):
    video, rec = needle
    result = runner.invoke(app, ["find", str(video), "What colour is the diamond?", "--selector", "demo",
                                 "--top", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["videos"][0]["candidates"] == 64  # two per second of a 16 s clip, at least 64
    start, end = rec["needle"]
    moments = data["moments"]
    assert 1 <= len(moments) <= 5 and all(m["video"] == str(video) for m in moments)
    # a moment overlapping the needle, widened by half a second for CPU-to-CPU differences in the scores' ties
    assert any(m["start"] < end + 0.5 and m["end"] > start - 0.5 for m in moments), (rec["needle"], moments)


def test_find_again_reads_the_frame_scores_from_the_cache(runner, needle, tmp_path):
    """A second search of the same video (another text) decodes and embeds nothing: the candidates' embeddings come
    from --cache-dir, and the moments are those a fresh search finds; --no-cache neither reads nor writes."""
    video, _ = needle
    runs = []
    for text, extra in (("a red circle", []), ("a blue diamond", []), ("a blue diamond", ["--no-cache"])):
        result = runner.invoke(app, ["find", str(video), text, "--selector", "demo", "--json",
                                     "--cache-dir", str(tmp_path / "c"), *extra])
        assert result.exit_code == 0, result.stderr
        runs.append(json.loads(result.stdout))
    assert [r["videos"][0]["cached"] for r in runs] == [False, True, False]
    assert runs[1]["moments"] == runs[2]["moments"] and runs[1]["moments"]
    assert len(list((tmp_path / "c").rglob("*.safetensors"))) == 1


@pytest.mark.parametrize("extra, words", [
    (["--select", "0"], "--select"),
    (["--select", "300"], "--select must be"),
    (["--select", "8", "--candidates", "4"], "--candidates must be"),
    (["--select", "8", "--frames", "8"], "excludes --frames"),
    (["--candidates", "8"], "go with --select"),
])
def test_bad_select_values_are_one_line_usage_errors(runner, needle, extra, words):
    video, rec = needle
    result = runner.invoke(app, ["ask", str(video), "q?", "--model", "demo", *extra])
    assert result.exit_code == 2
    assert words in one_line_error(result)


def test_offline_without_the_selector_weights_says_what_to_download(runner, needle):
    video, _ = needle  # the tests' hub is empty and offline (conftest)
    result = runner.invoke(app, ["ask", str(video), "q?", "--model", "demo", "--select", "4", "--offline",
                                 "--selector", "google/siglip-so400m-patch14-384"])
    assert result.exit_code == 6
    line = one_line_error(result)
    assert "hf download google/siglip-so400m-patch14-384" in line and "model.safetensors" in line
    result = runner.invoke(app, ["find", str(video), "a diamond", "--offline"])  # find's default is SigLIP too
    assert result.exit_code == 6 and "hf download google/siglip-so400m-patch14-384" in one_line_error(result)


def test_find_checks_its_inputs(runner, needle, tmp_path):
    video, _ = needle
    result = runner.invoke(app, ["find", str(video), str(tmp_path / "missing.mp4"), "x", "--selector", "demo"])
    assert result.exit_code == 3 and "video not found" in one_line_error(result)
    result = runner.invoke(app, ["find", str(video), "  ", "--selector", "demo"])
    assert result.exit_code == 2 and "empty" in one_line_error(result)


def test_eval_select_records_the_chosen_frames(runner, needle, tmp_path):
    video, rec = needle
    bench = tmp_path / "needle.jsonl"
    bench.write_text(json.dumps({**rec, "video": str(video)}) + "\n")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["eval", str(bench), "--model", "demo", "--select", "8", "--method", "fastvid",
                                 "--ratio", "0.25", "--no-reference", "-o", str(out), "--json", "--no-cache"])
    assert result.exit_code == 0, result.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["status"] == "ok" and recs[0]["frames_used"] == 8
    assert len(recs[0]["selection"]["timestamps"]) == 8 and recs[0]["settings"]["select"]["k"] == 8
    # resume: the same command finds it done
    again = runner.invoke(app, ["eval", str(bench), "--model", "demo", "--select", "8", "--method", "fastvid",
                                "--ratio", "0.25", "--no-reference", "-o", str(out), "--json", "--no-cache"])
    assert json.loads(again.stdout)["run"]["skipped"] == 1


def test_batch_select_answers_each_row_with_its_own_frames(runner, needle, tmp_path):
    video, rec = needle
    csv = tmp_path / "q.csv"
    csv.write_text(f"id,video,question\na,{video},What colour is the diamond?\nb,{video},What shape is the "
                   f"blue object?\n")
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(app, ["batch", str(csv), "--model", "demo", "--select", "4", "--max-new-tokens", "3",
                                 "-o", str(out), "--no-cache"])
    assert result.exit_code == 0, result.stderr
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(recs) == {"a", "b"} and all(r["status"] == "ok" and r["frames"] == 4 for r in recs.values())
    assert all(r["frame_timestamps"] == pytest.approx(r["selection"]["timestamps"], abs=1e-3) for r in recs.values())
    assert recs["a"]["settings"]["select"]["k"] == 4


def test_server_selects_per_request_and_checks_the_values(needle, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from fastvid_cli.server import ServeConfig, Service

    video, rec = needle
    svc = Service(ServeConfig(model="demo", device="cpu", dtype="float32", port=0, media_dirs=[str(video.parent)],
                              no_cache=True))
    svc.start()
    try:
        def body(ext):
            return {"model": "demo", "max_tokens": 4, "fastvid": ext, "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"file://{video}"}},
                {"type": "text", "text": rec["question"]}]}]}

        r = httpx.post(f"{svc.url}/v1/chat/completions", json=body({"select": 6, "candidates": 24}), timeout=300)
        assert r.status_code == 200, r.text
        fv = r.json()["fastvid"]
        assert fv["frames"] == 6 and fv["selection"]["candidates"] == 24 and len(fv["selection"]["timestamps"]) == 6
        # select_for: the frames are chosen for that text, whatever the message asks (eval --server sends the bare
        # question with its multiple-choice prompt): the same text gives the same frames under another prompt
        other = body({"select": 6, "candidates": 24, "select_for": rec["question"]})
        other["messages"][0]["content"][1]["text"] = "Describe the clip in one word."
        r = httpx.post(f"{svc.url}/v1/chat/completions", json=other, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["fastvid"]["selection"]["timestamps"] == fv["selection"]["timestamps"]
        for bad in ({"select": 0.5}, {"select": 4, "frames": 8}, {"candidates": 8}, {"select": 8, "candidates": 4},
                    {"select_for": "a red square"}, {"select": 4, "select_for": " "}, {"select": 4, "select_for": 5}):
            r = httpx.post(f"{svc.url}/v1/chat/completions", json=body(bad), timeout=60)
            assert r.status_code == 400, (bad, r.text)
    finally:
        svc.stop()


def test_chat_select_keeps_the_opening_questions_frames(runner, needle):
    video, rec = needle
    result = runner.invoke(app, ["chat", str(video), "--model", "demo", "--select", "4", "--max-new-tokens", "3",
                                 "--no-cache", "--json"], input=f"{rec['question']}\nAnd its shape?\n/quit\n")
    assert result.exit_code == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2 and all(a["frames"] == 4 for a in answers)
    assert answers[0]["selection"]["timestamps"] == answers[1]["selection"]["timestamps"]  # follow-up: same frames


def test_chat_frames_ends_selection_and_select_starts_it_again(runner, needle):
    video, rec = needle
    script = "\n".join([rec["question"], "/frames 6", "And its shape?", "/select x", "/select 5", rec["question"],
                        "/settings", "/select off", "What colour?", "/quit"]) + "\n"
    result = runner.invoke(app, ["chat", str(video), "--model", "demo", "--select", "4", "--max-new-tokens", "3",
                                 "--no-cache", "--json"], input=script)
    assert result.exit_code == 2, result.stderr  # piped chat ends with its first error's code (/select x); it went on
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [a["frames"] for a in answers] == [4, 6, 5, 6]
    assert [a.get("selection") is not None for a in answers] == [True, False, True, False]
    assert len(answers[2]["selection"]["timestamps"]) == 5
    assert "/select takes a whole number of frames, or off (got 'x')" in result.stderr
    assert "5 chosen for the question" in result.stderr  # /settings
