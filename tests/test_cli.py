"""The command line as a user meets it: exit codes, one-line errors, streaming, --json, models, doctor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastvid_cli.cli import app
from fastvid_cli.errors import EXIT_CODES

REQUIRED_JSON_KEYS = {
    "answer", "model", "video", "question", "method", "ratio", "frames", "frame_timestamps", "video_tokens_total",
    "video_tokens_kept", "prompt_tokens_total", "prompt_tokens_kept", "segments", "saliency_source", "timings_ms",
    "decode_tokens_per_s", "new_tokens", "prefill_speedup", "prefill_speedup_measured", "peak_gpu_mem_mb", "device",
    "dtype", "versions",
}
TIMING_KEYS = {"sample", "preprocess", "vision", "prune", "prefill", "ttft", "decode", "total"}


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def base_args(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu",
            "--frames", "8", "--max-new-tokens", "6", "--no-cache"]


def one_line_error(result) -> str:
    """The error is one line starting with 'error: ' (progress lines may precede it), and no traceback."""
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and result.stderr.strip().endswith(lines[0])
    assert "Traceback" not in result.stderr
    return lines[0]


def test_json_output_has_every_key(runner, base_args, index_video):
    result = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--json", "--ratio", "0.25"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert REQUIRED_JSON_KEYS <= data.keys()
    assert TIMING_KEYS <= data["timings_ms"].keys()
    assert data["ratio"] == 0.25 and data["method"] == "fastvid" and data["frames"] == 8
    assert data["video_tokens_total"] == 8 * 196 and 0 < data["video_tokens_kept"] < 8 * 196 * 0.25 + 1
    assert data["prefill_speedup_measured"] is False and data["prefill_speedup"] > 1
    assert set(data["versions"]) == {"fastvid", "torch", "transformers"}
    assert data["new_tokens"] == 6
    assert sum(data["segments"]) == 8


def test_plain_output_streams_answer_to_stdout_and_summary_to_stderr(runner, base_args, index_video):
    result = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--baseline"])
    assert result.exit_code == 0, result.stderr
    assert "video tokens" in result.stderr and "prefill speedup" in result.stderr and "measured" in result.stderr
    assert "video tokens" not in result.stdout
    js = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--json"])
    assert result.stdout.strip() == json.loads(js.stdout)["answer"].strip()


def test_estimated_speedup_is_labelled(runner, base_args, index_video):
    result = runner.invoke(app, ["ask", str(index_video), "Q?", *base_args])
    assert result.exit_code == 0
    assert "est." in result.stderr


@pytest.mark.parametrize("args,code", [
    (["--ratio", "0"], 2), (["--ratio", "1.5"], 2), (["--ratio", "nan"], 2), (["--device", "tpu"], 2),
    (["--dtype", "int3"], 2), (["--method", "magic"], 2), (["--top-p", "0"], 2),
    (["--model", "no-such-alias"], 5),
    (["--model", "llava-hf/not-downloaded-model", "--offline"], 6),
])
def test_bad_options_exit_with_their_code(runner, base_args, index_video, args, code):
    result = runner.invoke(app, ["ask", str(index_video), "Q?", *base_args, *args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    one_line_error(result)


def test_bad_frames_value_is_a_usage_error(runner, base_args, index_video):
    result = runner.invoke(app, ["ask", str(index_video), "Q?", *base_args, "--frames", "0"])
    assert result.exit_code == 2


def test_missing_video_and_directory(runner, base_args, tmp_path):
    r1 = runner.invoke(app, ["ask", str(tmp_path / "nope.mp4"), "Q?", *base_args])
    assert r1.exit_code == 3 and "nope.mp4" in one_line_error(r1)
    r2 = runner.invoke(app, ["ask", str(tmp_path), "Q?", *base_args])
    assert r2.exit_code == 3
    one_line_error(r2)


def test_not_a_video(runner, base_args, tmp_path):
    from videogen import text_as_video, write_audio_only

    fake = text_as_video(tmp_path / "notes.mp4")
    r1 = runner.invoke(app, ["ask", str(fake), "Q?", *base_args])
    assert r1.exit_code == 4 and "notes.mp4" in one_line_error(r1)
    audio = write_audio_only(tmp_path / "sound.m4a")
    r2 = runner.invoke(app, ["ask", str(audio), "Q?", *base_args])
    assert r2.exit_code == 4
    one_line_error(r2)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    r3 = runner.invoke(app, ["ask", str(empty), "Q?", *base_args])
    assert r3.exit_code == 4


def test_unsupported_architecture(runner, base_args, index_video, tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    result = runner.invoke(app, ["ask", str(index_video), "Q?", *base_args, "--model", str(folder)])
    assert result.exit_code == 5
    assert "bert" in one_line_error(result)


def test_out_of_memory_is_reported_with_a_hint(runner, base_args, index_video, monkeypatch):
    import torch

    from fastvid_cli.models.llava_onevision import LlavaOnevisionAdapter

    def boom(self, pixels, chunk_frames=32):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LlavaOnevisionAdapter, "encode", boom)
    result = runner.invoke(app, ["ask", str(index_video), "Q?", *base_args])
    assert result.exit_code == 7
    assert "--frames" in one_line_error(result)


def test_debug_shows_traceback(runner, base_args, tmp_path):
    result = runner.invoke(app, ["ask", str(tmp_path / "x.mp4"), "Q?", *base_args, "--debug"])
    assert result.exit_code == 3


def test_models_lists_aliases(runner):
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    names = {m["alias"] for m in data["models"]}
    assert {"llava-ov-0.5b", "llava-ov-7b", "llava-ov-72b", "llava-video-7b"} <= names
    # hermetic, empty cache: only the demo model (shipped in the package, when its weights are there) is local
    assert all(m["cached"] is False for m in data["models"] if m["alias"] != "demo")
    assert "llava_onevision" in data["families"]
    table = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert "llava-hf/llava-onevision-qwen2-7b-ov-hf" in table.stdout and "the paper's main model" in table.stdout
    narrow = runner.invoke(app, ["models"], env={"COLUMNS": "80"})  # short columns intact, notes dropped
    assert narrow.exit_code == 0 and "qwen3-vl-30b-a3b" in narrow.stdout and "2 fps" in narrow.stdout
    assert "notes hidden" in narrow.stdout and max(len(line) for line in narrow.stdout.splitlines()) <= 80


def test_doctor_reports_environment(runner):
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["versions"]["torch"] != "MISSING" and info["versions"]["av"] != "MISSING"
    assert info["decoders"]["h264"] is True
    assert info["offline"] is True and set(info["cached_models"]) <= {"demo"}
    assert "NOT cached" in info["saliency_weights"]
    import importlib.util

    assert info["fused_decode"].startswith("Triton") == (importlib.util.find_spec("triton") is not None)


def test_exit_codes_are_documented_in_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} missing from README"


# ---------------------------------------------------------------- real processes
def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastvid_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, fastvid_cli.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "fastvid_cli", "ask", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--ratio" in out.stdout and "est." in out.stdout


def test_no_module_imports_the_app_module():
    """cli.py registers the batch and eval commands; nothing imports cli.py back (the helpers every command shares
    are in cli_common.py), so there is no import cycle, not even one deferred into a function."""
    import ast

    import fastvid_cli

    package = Path(fastvid_cli.__file__).resolve().parent
    importers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if "fastvid_cli.cli" in names:
                importers.append(path.relative_to(package).as_posix())
    assert importers == ["__main__.py"]


def test_batch_and_eval_packages_import_no_torch():
    code = ("import sys, fastvid_cli.batch, fastvid_cli.evaluate, fastvid_cli.journal, fastvid_cli.runs; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_path_starting_with_dash_after_double_dash(base_args, index_video, tmp_path):
    shutil.copy(index_video, tmp_path / "-clip.mp4")
    p = _cli("ask", *base_args, "--json", "--", "-clip.mp4", "What?", cwd=tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads(out)["video"] == "-clip.mp4"


def test_ctrl_c_keeps_partial_answer_and_exits_130(tiny_llava, tiny_saliency, index_video):
    import threading

    p = _cli("ask", str(index_video), "Tell me everything.", "--model", str(tiny_llava), "--saliency-model",
             str(tiny_saliency), "--device", "cpu", "--frames", "8", "--max-new-tokens", "100000")
    try:
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stdout.read(1), "")), daemon=True)
        reader.start()
        deadline = time.time() + 240
        while len(chunks) < 20 and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        before = "".join(chunks)
        assert before, "no streamed output before the deadline"
        p.send_signal(signal.SIGINT)
        err = p.stderr.read()
        p.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if p.poll() is None:  # never leave a 100000-token generation running behind a failed test
            p.kill()
            p.wait()
    after = "".join(chunks)
    assert p.returncode == 130, err
    assert after.startswith(before)  # what was printed stays printed
    assert "interrupted" in err and "Traceback" not in err


def test_feature_cache_hit_miss_and_invalidation(runner, base_args, index_video, tmp_path):
    video = tmp_path / "v.mp4"
    shutil.copy(index_video, video)
    base = [a for a in base_args if a != "--no-cache"]
    args = ["ask", str(video), "Q?", *base, "--json", "--cache-dir", str(tmp_path / "fc")]
    first = json.loads(runner.invoke(app, args + ["--ratio", "0.1"]).stdout)
    second = json.loads(runner.invoke(app, args + ["--ratio", "0.25"]).stdout)
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert second["timings_ms"]["vision"] == 0.0 and second["frame_indices"] == first["frame_indices"]
    again = json.loads(runner.invoke(app, args + ["--ratio", "0.1"]).stdout)
    assert again["answer"] == first["answer"] and again["video_tokens_kept"] == first["video_tokens_kept"]
    other_frames = json.loads(runner.invoke(app, args + ["--frames", "6"]).stdout)
    assert other_frames["cache"] == "miss"  # frames are part of the key
    # a changed file (same path) misses; a corrupt entry is ignored and rewritten
    from videogen import index_frames, write_video

    write_video(str(video), index_frames(40, 48, 64)[::-1].copy(), fps=24)
    assert json.loads(runner.invoke(app, args).stdout)["cache"] == "miss"
    for entry in (tmp_path / "fc").rglob("*.safetensors"):
        entry.write_bytes(b"garbage")
    assert json.loads(runner.invoke(app, args).stdout)["cache"] == "miss"
    assert json.loads(runner.invoke(app, args).stdout)["cache"] == "hit"
    off = json.loads(runner.invoke(app, args + ["--no-cache"]).stdout)
    assert off["cache"] == "off"


def test_compare_json_rows(runner, base_args, index_video):
    args = [a for a in base_args if a not in ("--max-new-tokens", "6")]
    result = runner.invoke(app, ["compare", str(index_video), "What happens?", *args, "--max-new-tokens", "4",
                                 "--ratio", "0.1", "--ratio", "0.25", "--repeat", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    rows = data["rows"]
    assert [(r["method"], r["ratio"]) for r in rows] == [("none", 1.0), ("fastvid", 0.25), ("fastvid", 0.1)]
    assert rows[0]["video_tokens_kept"] == rows[0]["video_tokens_total"] == 8 * 196
    assert rows[2]["video_tokens_kept"] < rows[1]["video_tokens_kept"] < rows[0]["video_tokens_kept"]
    assert rows[0]["prefill_speedup"] == 1.0 and all(r["prefill_speedup"] > 0 for r in rows)
    assert all(r["runs"] == 2 and r["new_tokens"] == 4 for r in rows)
    # the same greedy answer as `ask` at that ratio
    ask = json.loads(runner.invoke(app, ["ask", str(index_video), "What happens?", *args, "--max-new-tokens", "4",
                                         "--ratio", "0.1", "--json"]).stdout)
    assert rows[2]["answer"] == ask["answer"] and rows[2]["video_tokens_kept"] == ask["video_tokens_kept"]
    nob = json.loads(runner.invoke(app, ["compare", str(index_video), "Q?", *args, "--max-new-tokens", "2",
                                         "--ratio", "0.1", "--no-baseline", "--repeat", "1", "--json"]).stdout)
    assert [r["ratio"] for r in nob["rows"]] == [0.1] and nob["rows"][0]["prefill_speedup"] is None
    table = runner.invoke(app, ["compare", str(index_video), "Q?", *args, "--max-new-tokens", "2", "--ratio", "0.1",
                                "--repeat", "1"])
    assert table.exit_code == 0 and "prefill×" in table.stdout
    bad = runner.invoke(app, ["compare", str(index_video), "Q?", *args, "--ratio", "2"])
    assert bad.exit_code == 2
