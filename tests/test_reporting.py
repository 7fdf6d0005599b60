"""What `ask` and `compare` report: honest stage times (sampling beside the model load, feature-cache hits), the
measured prefill speedup of `--baseline` (taken like compare's), and a summary panel and compare table that read
at 80 and at 120 columns."""

from __future__ import annotations

import io
import json
import re
import statistics
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fastvid_cli.cli import app


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def base_args(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu",
            "--frames", "8", "--max-new-tokens", "4", "--no-cache"]


def _panel_row(stderr: str, label: str) -> str:
    """The value of the summary panel's row `label`, its wrapped lines joined with spaces."""
    lines = [line[1:].rstrip().rstrip("│") for line in stderr.splitlines() if line.startswith("│")]
    for i, body in enumerate(lines):
        if body.lstrip().startswith(label + " "):
            rest = body[body.index(label) + len(label):]
            col = len(body) - len(rest) + len(rest) - len(rest.lstrip())  # where the values start
            out = [body[col:].strip()]
            for line in lines[i + 1:]:
                if line[:col].strip():
                    break
                out.append(line[col:].strip())
            return " ".join(out)
    raise AssertionError(f"no '{label}' row in:\n{stderr}")


# ---------------------------------------------------------------- A: sampling beside the model load
def test_sampling_during_a_slow_load_reports_its_own_time(runner, base_args, index_video, monkeypatch):
    """The load takes 1.5 s longer than sampling: sampling still reports only its own few ms, and no wait."""
    from fastvid_cli.engine import Engine

    load = Engine.load.__func__

    def slow_load(cls, *a, **k):
        time.sleep(1.5)
        return load(cls, *a, **k)

    monkeypatch.setattr(Engine, "load", classmethod(slow_load))
    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--json"])
    assert res.exit_code == 0, res.stderr
    t = json.loads(res.stdout)["timings_ms"]
    assert t["sample"] < 1000 and t["sample_wait"] == 0.0  # not the 1.5 s spent waiting for the loader

    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args])
    assert res.exit_code == 0, res.stderr
    assert re.search(r"✓ sample frames \d+ ms", res.stderr), res.stderr  # under a second: the sampler's own time
    load_s = re.search(r"✓ load model ([\d.]+) s", res.stderr)
    assert load_s and float(load_s.group(1)) >= 1.5
    row = _panel_row(res.stderr, "time")
    assert re.search(r"sample \d+\.\d ms \(during load\)", row) and "waited" not in row, row


def test_sampling_that_outlasts_the_load_shows_the_wait(runner, base_args, index_video, monkeypatch):
    """Sampling ends 0.4 s after the load: its time includes that, and the wait is shown apart."""
    import fastvid_cli.video
    from fastvid_cli.engine import Engine

    load, sample = Engine.load.__func__, fastvid_cli.video.sample_frames
    loaded = threading.Event()

    def load_and_tell(cls, *a, **k):
        try:
            return load(cls, *a, **k)
        finally:
            loaded.set()

    def late_sample(*a, **k):
        loaded.wait(120)
        time.sleep(0.4)
        return sample(*a, **k)

    monkeypatch.setattr(Engine, "load", classmethod(load_and_tell))
    monkeypatch.setattr(fastvid_cli.video, "sample_frames", late_sample)
    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--json"])
    assert res.exit_code == 0, res.stderr
    t = json.loads(res.stdout)["timings_ms"]
    assert 350 <= t["sample_wait"] <= t["sample"]
    assert t["ttft"] >= t["sample_wait"]  # the wait held the answer up
    loaded.clear()
    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args])
    assert res.exit_code == 0, res.stderr
    assert re.search(r"sample \d+\.\d ms \(during load; waited \d+\.\d ms\)", _panel_row(res.stderr, "time")), res.stderr


def test_feature_cache_hit_claims_no_sampling_time(runner, base_args, index_video, tmp_path):
    args = ["ask", str(index_video), "What happens?", *[a for a in base_args if a != "--no-cache"],
            "--cache-dir", str(tmp_path / "fc")]
    assert runner.invoke(app, args).exit_code == 0  # miss: stores the features
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert re.fullmatch(r"hit: cached features used, preprocess and vision skipped \(the frames sampled during the "
                        r"load were not needed(; waited \d+\.\d ms for them)?\)", _panel_row(res.stderr, "feature cache"))
    row = _panel_row(res.stderr, "time")
    assert "prefill" in row and not re.search(r"\b(sample|preprocess|vision) ", row), row
    assert "✓ look up cached features" in res.stderr


# ---------------------------------------------------------------- B: --baseline, measured like compare
def test_baseline_reports_both_medians_in_json_and_panel(runner, base_args, index_video):
    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--baseline", "--json"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["prefill_speedup_measured"] is True and d["prefill_timed_runs"] == 3
    assert d["baseline_prefill_ms"] > 0 and d["pruned_prefill_ms"] > 0
    assert d["prefill_speedup"] == pytest.approx(d["baseline_prefill_ms"] / d["pruned_prefill_ms"], rel=1e-2)
    assert "prefill_pruned_timed" not in d["timings_ms"]
    res = runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args, "--baseline"])
    assert res.exit_code == 0, res.stderr
    row = _panel_row(res.stderr, "prefill speedup")
    assert re.fullmatch(r"\d+\.\d\dx measured \([\d.]+ m?s unpruned vs [\d.]+ m?s pruned, median of 3\)", row), row
    answer = json.loads(runner.invoke(app, ["ask", str(index_video), "What happens?", *base_args,
                                            "--json"]).stdout)["answer"]
    assert res.stdout_bytes == answer.encode() + (b"" if answer.endswith("\n") else b"\n")  # one newline


def test_progress_after_the_answer_starts_on_a_new_line(monkeypatch):
    """--baseline's progress comes after the streamed answer: the answer's line is ended first (it used to read
    "red… baseline prefill" on a terminal), and only once."""
    from fastvid_cli import ui

    events: list[str] = []
    monkeypatch.setattr(ui, "write_answer_piece", lambda piece: events.append(f"out:{piece}"))
    monkeypatch.setattr(ui.err_console, "print", lambda text, *a, **k: events.append(f"err:{text}"))
    answer = ui.AnswerOut()
    display = ui.StageDisplay(answer=answer)
    display.live = False
    display("decode", "start")
    answer("red")
    display("decode", "done")
    display("baseline", "start")
    display("baseline", "done")
    answer.end_line()
    assert [e[:8] for e in events] == ["out:red", "out:\n", "err:[dim", "err:[gre"]


def test_baseline_alternates_timed_prefills_and_takes_medians(engine, index_video, monkeypatch):
    """After the answer: one untimed unpruned prefill, then pruned and unpruned prefills in turn, 3 each; the
    speedup is the ratio of the medians (one slow outlier on each side changes nothing)."""
    from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions

    clip, _ = engine.sample(str(index_video), 8)
    sess = engine.session(str(index_video), clip=clip, prune=PruneOptions(ratio=0.25))
    full_len = sess.feats.num_frames * sess.feats.tokens_per_frame
    order: list[str] = []
    fake = {"pruned": iter([10.0, 100.0, 12.0]), "full": iter([999.0, 50.0, 60.0, 500.0])}

    def timed(self, asm, inner=None):
        kind = "full" if asm.length > full_len else "pruned"
        order.append(kind)
        return next(fake[kind])

    monkeypatch.setattr(Engine, "timed_prefill", timed)
    r = sess.answer("What happens?", GenerationOptions(max_new_tokens=2), baseline=True)
    assert order == ["full", "pruned", "full", "pruned", "full", "pruned", "full"]
    assert (r.pruned_prefill_ms, r.baseline_prefill_ms, r.prefill_timed_runs) == (12.0, 60.0, 3)
    assert r.prefill_speedup == 5.0 and r.prefill_speedup_measured


def test_compare_times_prefills_with_the_same_rounds(engine, index_video, monkeypatch):
    """compare's prefill column and speedups come from Engine.timed_prefills over every row's prompt at once."""
    from fastvid_cli.compare import run_compare
    from fastvid_cli.engine import Engine, GenerationOptions

    calls = []
    real = Engine.timed_prefills

    def spy(self, prompts, runs):
        times = real(self, prompts, runs)
        calls.append((len(prompts), runs, times))
        return times

    monkeypatch.setattr(Engine, "timed_prefills", spy)
    result = run_compare(engine, str(index_video), "What happens?", methods=["fastvid"], ratios=[0.25, 0.1],
                         params={}, frames=8, repeat=2, gen=GenerationOptions(max_new_tokens=2))
    (n, runs, times), = calls
    assert (n, runs) == (3, 2)
    rows = result["rows"]
    assert [r["prefill_ms"] for r in rows] == [statistics.median(t) for t in times]
    assert rows[2]["prefill_speedup"] == round(rows[0]["prefill_ms"] / rows[2]["prefill_ms"], 3)


# ---------------------------------------------------------------- C: 80 and 120 columns
def _render(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


REPORT = {
    "answer": "red", "model": "llava-hf/llava-onevision-qwen2-7b-ov-hf", "method": "fastvid", "ratio": 0.1,
    "frames": 32, "frames_requested": 32, "frame_timestamps": [0.0, 59.0], "video_duration_s": 60.0,
    "video_tokens_total": 6272, "video_tokens_kept": 608, "prompt_tokens_total": 6343, "prompt_tokens_kept": 679,
    "segments": [4, 4, 4, 4, 4, 4, 4, 4], "saliency_source": "siglip-head: google/siglip-so400m-patch14-384",
    "timings_ms": {"sample": 354.2, "sample_wait": 12.5, "preprocess": 3.1, "vision": 80.4,
                   "encode_after_sample": 24.2, "prune": 0.7, "prefill": 22.3, "ttft": 188.6, "decode": 612.3},
    "decode_tokens_per_s": 208.0, "new_tokens": 128, "stop_reason": "max_new_tokens", "prefill_speedup": 6.563,
    "prefill_speedup_measured": True, "baseline_prefill_ms": 1250.0, "pruned_prefill_ms": 190.5,
    "prefill_timed_runs": 3, "peak_gpu_mem_mb": 17000.0, "device": "cuda:0", "dtype": "bfloat16",
    "attn_implementation": "sdpa", "cache": "miss", "decode_mode": "fused-graph", "notes": [],
}
PANEL_UNITS = ["load 3.23 s", "sample 354.2 ms", "(during load;", "waited 12.5 ms)", "preprocess 3.1 ms",
               "vision 80.4 ms", "(during sampling;", "24.2 ms after it)", "prune 0.7 ms", "prefill 22.3 ms",
               "TTFT 188.6 ms", "decode 612.3 ms", "6.56x measured", "(1.25 s unpruned", "vs 190.5 ms pruned,",
               "median of 3)", "128 new tokens,", "208.0 tok/s", "6272 → 608", "(9.7% kept,", "fastvid r=0.1)",
               "t = 0.00–59.00 s", "of 60.00 s", "16.60 GiB", "cuda:0 · bfloat16 · sdpa"]


@pytest.mark.parametrize("width", [80, 120])
def test_summary_panel_keeps_every_value_on_one_line(width):
    from fastvid_cli.ui import summary_panel

    lines = _render(summary_panel(REPORT, 3230.0), width)
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    assert "…" not in text
    for unit in PANEL_UNITS:
        assert unit in text, f"'{unit}' split or missing at {width} columns:\n{text}"


def _compare_result() -> dict:
    rows = []
    for method, ratio, kept, seg, prune, prefill, ttft, tps, sp, st in [
        ("none", 1.0, 6272, 0, 0.06, 1174.1, 1698.7, 79.4, 1.0, 1.0),
        ("fastvid", 0.25, 1568, 8, 0.69, 322.3, 605.6, 150.2, 3.643, 2.805),
        ("fastvid", 0.1, 608, 8, 0.71, 122.3, 188.6, 208.0, 9.6, 9.007),
        ("holitom-orig", 0.25, 1600, 5, 14.21, 330.0, 640.2, 149.9, 3.558, 2.653),
        ("holitom-orig", 0.1, 640, 4, 12.5, 125.0, 201.0, 207.5, 9.393, 8.451),
    ]:
        rows.append({"method": method, "ratio": ratio, "video_tokens_kept": kept, "video_tokens_total": 6272,
                     "kept_pct": 100 * kept / 6272, "segments": seg, "prune_ms": prune, "prefill_ms": prefill,
                     "ttft_ms": ttft, "decode_tokens_per_s": tps, "prefill_speedup": sp, "ttft_speedup": st,
                     "answer": "A man rides a bike.", "notes": []})
    return {"model": "llava-ov-7b", "frames": 32, "repeat": 3, "cache": "off", "notes": [], "rows": rows,
            "shared_ms": {"sample": 354.2, "preprocess": 3.1, "vision": 80.4}}


@pytest.mark.parametrize("width", [80, 120])
def test_compare_table_reads_at_80_and_120_columns(width):
    from fastvid_cli.ui import print_compare

    out = Console(width=width, record=True, color_system=None, file=io.StringIO())
    err = Console(width=width, record=True, color_system=None, file=io.StringIO())
    print_compare(_compare_result(), out=out, err=err)
    table, context = out.export_text(), err.export_text()
    lines = table.splitlines()
    assert "…" not in table and max(len(line) for line in lines) <= width
    header = next(line for line in lines if line.startswith("method"))
    shown = header.split()
    core = ["method", "r", "kept", "prefill", "TTFT", "prefill×", "TTFT×"]  # never left out, headers whole
    assert [h for h in shown if h in core] == core and set(shown) <= {*core, "seg", "prune", "tok/s"}
    expected = {"1174", "1699", "6272 (100%)", "608 (10%)", "holitom-orig", "9.60x", "9.01x", "8.45x"}
    assert all(v in table for v in expected), table
    row = next(line for line in lines if line.startswith("fastvid") and " 0.1 " in line)
    cells = dict(zip(shown, re.split(r"\s{2,}", row.strip())))  # columns are 2 spaces apart at least
    full_row = {"method": "fastvid", "r": "0.1", "kept": "608 (10%)", "seg": "8", "prune": "0.71", "prefill": "122.3",
                "TTFT": "188.6", "tok/s": "208.0", "prefill×": "9.60x", "TTFT×": "9.01x"}
    assert cells == {k: v for k, v in full_row.items() if k in shown}
    hidden = [h for h in ("seg", "tok/s", "prune") if h not in shown]
    flat = " ".join(context.split())
    if width >= 120:
        assert not hidden and "left out" not in flat
    else:
        assert hidden and f"left out at this width: {', '.join(hidden)}" in flat
    for unit in ("sample 354.2 ms", "preprocess 3.1 ms", "vision 80.4 ms", "×: speedup over the ratio 1.0 row"):
        assert any(unit in line for line in context.splitlines()), context
