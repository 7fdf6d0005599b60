"""`fastvid batch`: CSV validation, settings fingerprint, grouped answers, resume, kills, data parallel."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastvid_cli import batch as B
from fastvid_cli.errors import InvalidOptionError

RUNNER = str(Path(__file__).with_name("batch_runner.py"))
QUESTIONS = ["What happens?", "Is there any text, and where?", "Describe the colours.", "Count the bands.",
             "What moves?", "Is it day or night?"]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def clips(tmp_path_factory, index_video) -> Path:
    """A folder holding two short clips: a.mp4 (the index clip) and b.mp4 (a different, reversed one)."""
    from videogen import index_frames, write_video

    folder = tmp_path_factory.mktemp("batch") / "clips"
    folder.mkdir()
    shutil.copy(index_video, folder / "a.mp4")
    write_video(str(folder / "b.mp4"), index_frames(40, 48, 64)[::-1].copy(), fps=24)
    return folder


@pytest.fixture(scope="module")
def cli_args(tiny_llava, tiny_saliency):
    return ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu",
            "--frames", "8", "--max-new-tokens", "24", "--temperature", "1.0", "--seed", "11"]


def config(tiny_llava, tiny_saliency, csv: Path, out: Path, **kw) -> B.BatchConfig:
    """The BatchConfig that `cli_args` builds (in-process runs must agree with the CLI's fingerprints)."""
    base = dict(model=str(tiny_llava), device="cpu", dtype="auto", saliency_model=str(tiny_saliency), frames=8,
                max_new_tokens=24, temperature=1.0, seed=11)
    return B.BatchConfig(questions=csv, output=out, **{**base, **kw})


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def six_rows(folder: Path) -> Path:
    """6 rows over 2 videos, interleaved so that groups are not contiguous in the CSV."""
    lines = ["id,video,question"]
    for i, q in enumerate(QUESTIONS):
        lines.append(f'r{i + 1},clips/{"ab"[i % 2]}.mp4,"{q}"')
    return write_csv(folder / "questions.csv", "\n".join(lines) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Every line of the output; each must be one complete JSON record."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def final_view(path: Path) -> dict[str, dict]:
    """The final view as the issue defines it, read naively: the last record per id (id null = duplicate rows)."""
    view: dict[str, dict] = {}
    for rec in read_jsonl(path):
        if rec["id"] is not None:
            view[rec["id"]] = rec
    return view


def assert_no_duplicate_ok(path: Path) -> None:
    seen = set()
    for rec in read_jsonl(path):
        if rec["status"] == "ok":
            key = (rec["id"], rec["fingerprint"])
            assert key not in seen, f"two ok records for {key}"
            seen.add(key)


class NoLoad:
    """Stands in for Engine.load where a run must not need the model."""

    def __call__(self, *a, **k):
        raise AssertionError("the model was loaded although nothing was left to do")


# ---------------------------------------------------------------------------------------------- CSV input
def test_csv_bom_quotes_newlines_relative_paths_and_overrides(clips, tmp_path, monkeypatch):
    text = ("\ufeffID, Video ,question,ratio,frames\n"
            'x1,clips/a.mp4,"What, exactly, happens?",,\n'
            'x2,clips/b.mp4,"Line one\nline two ""quoted""",0.25,6\n'
            f',{clips / "a.mp4"},Absolute path?, 0.5 ,\n'
            ",,,,\n"  # a spreadsheet's empty row: skipped, does not count
            "\n")
    csv = write_csv(clips.parent / "q.csv", text)
    monkeypatch.chdir(tmp_path)  # relative video paths follow the CSV's folder, not the working directory
    rows = B.read_questions(csv)
    assert [r.row for r in rows] == [1, 2, 3]
    assert [r.id for r in rows] == ["x1", "x2", "3"]  # no id -> the 1-based data row number
    assert rows[0].question == "What, exactly, happens?"
    assert rows[1].question == 'Line one\nline two "quoted"'
    assert rows[0].path == str(clips / "a.mp4") and rows[0].video == "clips/a.mp4"
    assert all(r.error is None for r in rows)
    assert (rows[0].ratio, rows[0].frames) == (None, None)
    assert (rows[1].ratio, rows[1].frames) == (0.25, 6)
    assert rows[2].ratio == 0.5
    base = {"model": "m", "method": "fastvid", "ratio": 0.1, "frames": 8, "params": {}}
    s = [B.row_settings(r, base) for r in rows]
    assert (s[0]["ratio"], s[0]["frames"]) == (0.1, 8)
    assert (s[1]["ratio"], s[1]["frames"]) == (0.25, 6)
    groups = B.make_groups(rows, {r.row: x for r, x in zip(rows, s)})
    assert [[r.row for r in g.rows] for g in groups] == [[1], [2], [3]]  # ratio/frames split groups


def test_bad_rows_become_row_errors(clips):
    csv = write_csv(clips.parent / "bad.csv", (
        "id,video,question,ratio,frames\n"
        "ok,clips/a.mp4,Fine?,,\n"
        "noq,clips/a.mp4,  ,,\n"
        "novid,clips/nope.mp4,Where?,,\n"
        "dir,clips,Folder?,,\n"
        "ok,clips/b.mp4,Same id?,,\n"
        "r1,clips/a.mp4,Ratio?,abc,\n"
        "r2,clips/a.mp4,Ratio?,1.5,\n"
        "r3,clips/a.mp4,Ratio?,nan,\n"
        "f1,clips/a.mp4,Frames?,,0\n"
        "f2,clips/a.mp4,Frames?,,8.5\n"
        "wide,clips/a.mp4,Too,many,fields,here\n"))
    rows = {(r.id, r.row): r for r in B.read_questions(csv)}
    err = {k: r.error for k, r in rows.items()}
    assert err[("ok", 1)] is None
    assert err[("noq", 2)] == "empty question"
    assert "video not found: clips/nope.mp4" in err[("novid", 3)]
    assert "not a regular file" in err[("dir", 4)]
    assert err[("ok", 5)].startswith("duplicate id 'ok' (first used in row 1)")
    assert rows[("ok", 5)].key != rows[("ok", 1)].key
    for k in [("r1", 6), ("r2", 7), ("r3", 8)]:
        assert "bad ratio" in err[k]
    for k in [("f1", 9), ("f2", 10)]:
        assert "bad frames" in err[k]
    assert "fields but the header has 5" in err[("wide", 11)]


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    ("video,prompt\na.mp4,Q?\n", "missing required column question"),
    ("id;video;question\n1;a.mp4;Q?\n", "missing required columns video, question"),
    ("", "empty"),
    ("\n\n", "empty"),
    ("video,question,video\na,b,c\n", "appears twice"),
    (b"video,question\na.mp4,Qu\xe9?\n", "not UTF-8"),
])
def test_whole_file_problems_are_usage_errors(tmp_path, content, match):
    path = tmp_path / "q.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidOptionError, match=match) as e:
        B.read_questions(path)
    assert e.value.exit_code == 2
    with pytest.raises(InvalidOptionError, match="not a regular file"):
        B.read_questions(tmp_path)


def test_cli_rejects_bad_csv_before_loading_anything(clips, cli_args, monkeypatch):
    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", NoLoad())
    bad = write_csv(clips.parent / "nocol.csv", "video,prompt\nclips/a.mp4,Q?\n")
    out = clips.parent / "nocol.jsonl"
    result = CliRunner().invoke(build_app(), ["batch", str(bad), "-o", str(out), *cli_args])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "missing required column question" in errors[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_batch_module_imports_no_torch():
    code = ("import sys, fastvid_cli.cli_batch; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_changes_with_every_answer_setting(tmp_path, tiny_saliency):
    defaults = dict(frames=32, method="fastvid", ratio=0.1, c=8, tau=0.9, d=0.4, p=4, beta=0.6)

    def fp(dtype="float32", **kw):
        cfg = B.BatchConfig(questions=tmp_path / "q.csv", output=tmp_path / "o.jsonl",
                            **{"model": "llava-ov-7b", "saliency_model": None, **kw})
        return B.fingerprint(B.base_settings(cfg, defaults, dtype))

    ref = fp()
    assert ref == fp() and len(ref) == 12 and int(ref, 16) >= 0
    # Not answer-affecting, or the same values spelt differently: same fingerprint.
    assert fp(device="cpu", attn_implementation="eager", csv_out=tmp_path / "x.csv", retry_errors=True) == ref
    assert fp(ratio=0.1, frames=32, params={"c": 8, "tau": 0.9}) == ref
    assert fp(model="llava-hf/llava-onevision-qwen2-7b-ov-hf") == ref  # alias and hub id are one model
    assert fp(saliency_model="google/siglip-so400m-patch14-384") == ref
    changed = [fp(model="llava-ov-0.5b"), fp(dtype="bfloat16"), fp(method="none"), fp(ratio=0.25), fp(frames=16),
               fp(params={"c": 4}), fp(params={"tau": 0.8}), fp(params={"d": 0.5}), fp(params={"p": 2}),
               fp(params={"beta": 0.5}), fp(max_new_tokens=64), fp(temperature=0.7), fp(top_p=0.9), fp(seed=1),
               fp(system="Be brief."), fp(saliency_model=str(tiny_saliency)), fp(saliency_model="fallback")]
    assert len({ref, *changed}) == len(changed) + 1
    # a row's overrides change it too; its invalid cell text enters the settings
    rows_base = B.base_settings(B.BatchConfig(questions=tmp_path / "q", output=tmp_path / "o", model="llava-ov-7b"),
                                defaults, "float32")
    row = B.Row(row=1, id="1", video="v", path="v", question="q")
    assert B.fingerprint(B.row_settings(row, rows_base)) == B.fingerprint(rows_base)
    row.ratio, row.raw_ratio = 0.2, "0.2"
    assert B.fingerprint(B.row_settings(row, rows_base)) != B.fingerprint(rows_base)
    row.ratio = None
    assert B.row_settings(row, rows_base)["ratio"] == "0.2"


# Fingerprints of files written by earlier versions: a change that alters one of these makes every existing output
# be answered again instead of resumed. Change a value here only together with FINGERPRINT_VERSION.
# what Engine.defaults / settings.family_defaults give: the family's sampling, its method family, and the default
# method's settings from the pruning registry
LLAVA_DEFAULTS = dict(frames=32, method_family="llava", method="fastvid", ratio=0.1, c=8, tau=0.9, d=0.4, p=4, beta=0.6)
QWEN_DEFAULTS = dict(frames=None, fps=2.0, method_family="qwen", method="fastvid", ratio=0.27, c=8, tau=0.84,
                     ignore=0.95, d=0.4, p=4, beta=0.6)


def test_fingerprints_are_those_of_earlier_versions(tmp_path):
    def fp(defaults=LLAVA_DEFAULTS, dtype="float32", row=None, **kw):
        cfg = B.BatchConfig(questions=tmp_path / "q.csv", output=tmp_path / "o.jsonl", **{"model": "llava-ov-7b", **kw})
        base = B.base_settings(cfg, defaults, dtype)
        return B.fingerprint(base if row is None else B.row_settings(row, base))

    assert fp() == "453a18e83b70"
    assert fp(dtype="bfloat16", method="uniform", ratio=0.25, frames=16, max_new_tokens=64, system="Be brief.",
              seed=3, temperature=0.5) == "959b61a20882"
    assert fp(row=B.Row(row=1, id="1", video="v", path="v", question="q", frames=8, raw_frames="8", ratio=0.2,
                        raw_ratio="0.2")) == "702186757fe4"
    assert fp(QWEN_DEFAULTS, "bfloat16", model="qwen2.5-vl-7b") == "2ebe51943d73"


class SettingsOnlyEngine:
    """An engine that supplies the defaults and dtype of the settings, and fails if asked to answer."""

    dtype = "float32"
    defaults = LLAVA_DEFAULTS

    def session(self, *a, **k):
        raise AssertionError("a row was answered although the output already held its record")


def test_an_output_written_by_an_earlier_version_resumes(tmp_path):
    """Records as earlier versions wrote them (their fingerprint pinned above) count as done: nothing is answered
    again, nothing is appended, and the final view is those records."""
    (tmp_path / "clip.mp4").write_bytes(b"")
    csv = write_csv(tmp_path / "q.csv", "id,video,question\nr1,clip.mp4,What happens?\nr2,clip.mp4,What moves?\n")
    settings = {"model": "llava-hf/llava-onevision-qwen2-7b-ov-hf", "dtype": "float32", "method": "fastvid",
                "ratio": 0.1, "frames": 32, "params": {"beta": 0.6, "c": 8, "d": 0.4, "p": 4, "tau": 0.9},
                "saliency_model": "google/siglip-so400m-patch14-384", "max_new_tokens": 512, "temperature": 0.0,
                "top_p": 1.0, "seed": None, "system": None}
    old = [{"id": "r1", "row": 1, "status": "ok", "error": None, "answer": "A square moves.", "model": "llava-ov-7b",
            "video": "clip.mp4", "question": "What happens?", "video_tokens_kept": 640, "video_tokens_total": 6272,
            "timings_ms": {"ttft": 812.5}, "video_path": str(tmp_path / "clip.mp4"), "settings": settings,
            "fingerprint": "453a18e83b70", "finished_at": "2026-12-01T10:00:00.000000Z"},
           {"id": "r2", "row": 2, "status": "error", "error": "out of memory", "model": "llava-ov-7b",
            "video": "clip.mp4", "question": "What moves?", "video_path": str(tmp_path / "clip.mp4"),
            "settings": settings, "fingerprint": "453a18e83b70", "finished_at": "2026-12-01T10:00:01.000000Z"}]
    out = tmp_path / "answers.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    before = out.read_bytes()
    cfg = B.BatchConfig(questions=csv, output=out, model="llava-ov-7b", csv_out=tmp_path / "answers.csv")
    result = B.run_batch(cfg, engine=SettingsOnlyEngine(), dist=B.Dist())
    assert (result.skipped, result.answered) == (2, 0)
    assert out.read_bytes() == before
    assert [(row.id, rec["status"], rec.get("answer")) for row, rec in result.final] == [
        ("r1", "ok", "A square moves."), ("r2", "error", None)]
    assert (result.final_ok, result.final_failed, result.final_pending) == (1, 1, 0)


# ---------------------------------------------------------------------------------------------- answers
SAME_AS_ASK = ("answer", "new_tokens", "stop_reason", "question", "frames", "frame_indices", "video_tokens_total",
               "video_tokens_kept", "prompt_tokens_total", "prompt_tokens_kept", "segments", "saliency_source",
               "ratio", "params", "method")


def test_grouped_answers_equal_separate_asks(engine, clips, tiny_llava, tiny_saliency, monkeypatch):
    """One session per (video, frames, ratio), questions answered from its shared prefix KV cache, gives what a
    separate `engine.ask` per row gives (greedy). Random tiny weights answer nearly the same text to everything,
    so the prompt/frame/token fields (which depend on the question, the video and the settings) are compared too."""
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    csv = write_csv(clips.parent / "grouped.csv", (
        "id,video,question,ratio,frames\n"
        'a1,clips/a.mp4,"What happens, first?",,\n'
        "b1,clips/b.mp4,Who is there?,,\n"
        "a2,clips/a.mp4,Describe the colours in this clip.,,\n"
        "b2,clips/b.mp4,What moves?,,\n"
        "a3,clips/a.mp4,Count the bands.,,\n"
        "a4,clips/a.mp4,What happens?,0.25,\n"
        "b3,clips/b.mp4,Who is there?,,6\n"))
    out = csv.with_suffix(".jsonl")
    opened = []
    real_session = engine.session
    monkeypatch.setattr(engine, "session", lambda video, **kw: opened.append(video) or real_session(video, **kw))
    cfg = config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=10, temperature=0.0, seed=None, answer_batch=16)
    result = B.run_batch(cfg, engine=engine)
    assert len(opened) == 4  # (a, 8, 0.1) (b, 8, 0.1) (a, 8, 0.25) (b, 6, 0.1): one session each
    view = final_view(out)
    assert list(view) == ["a1", "b1", "a2", "b2", "a3", "a4", "b3"]  # the output ends in CSV order
    assert result.final_ok == 7 and all(r["status"] == "ok" for r in view.values())
    gen = GenerationOptions(max_new_tokens=10)
    params = {k: engine.defaults[k] for k in ("c", "tau", "d", "p", "beta")}
    for rec in view.values():
        alone = engine.ask(str(clips / Path(rec["video"]).name), rec["question"], frames=rec["settings"]["frames"],
                           prune=PruneOptions("fastvid", rec["settings"]["ratio"], params), gen=gen).to_dict()
        assert {k: rec[k] for k in SAME_AS_ASK} == {k: alone[k] for k in SAME_AS_ASK}, rec["id"]
        assert "prefix_prefill" in rec["timings_ms"]  # answered from the shared prefix KV cache
    assert view["a4"]["ratio"] == 0.25 and view["b3"]["frames"] == 6
    # a1-a3 and b1-b2 were decoded together (one batched decode per group), a4 and b3 alone
    assert [view[k]["decode_mode"] for k in ("a1", "a2", "a3", "b1", "b2")] == ["batched x3"] * 3 + ["batched x2"] * 2
    assert view["a4"]["decode_mode"] == view["b3"]["decode_mode"] == "eager"
    assert view["a1"]["frame_indices"] != view["b1"]["frame_indices"]  # a 48- and a 40-frame clip
    assert view["a1"]["prompt_tokens_kept"] != view["a3"]["prompt_tokens_kept"]
    expected = {"id", "row", "status", "error", "settings", "fingerprint", *B._report_keys()}
    assert expected <= set(view["a1"]) and view["a1"]["error"] is None


def test_next_video_is_decoded_while_the_current_one_is_answered(engine, clips, tiny_llava, tiny_saliency,
                                                                  monkeypatch):
    """Prefetch: b's frames are sampled on the background thread before a's questions are answered (a's session
    waits for that to happen, so a missing prefetch fails here instead of passing by luck); the records carry
    sample and sample_wait; answers and order equal a run without prefetch; a video that fails to decode in the
    background becomes that group's error records and the batch goes on."""
    import threading

    import fastvid_cli.video as V

    csv = six_rows(clips.parent)  # r1 r3 r5 about a.mp4, r2 r4 r6 about b.mp4
    bad = clips.parent / "clips" / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with open(csv, "a", encoding="utf-8") as f:
        f.write("r7,clips/broken.mp4,Anything?\nr8,clips/a.mp4,Last one?\n")
    real_sample, real_session = V.sample_frames, engine.session
    b_sampled = threading.Event()
    sampled_on: dict[str, str] = {}
    waited_for_b: list[bool] = []

    def sample(path, n, **kw):
        clip = real_sample(path, n, **kw)
        sampled_on.setdefault(Path(path).name, threading.current_thread().name)
        if Path(path).name == "b.mp4":
            b_sampled.set()
        return clip

    def session(video, **kw):
        s = real_session(video, **kw)
        if Path(video).name == "a.mp4" and not waited_for_b:
            waited_for_b.append(b_sampled.wait(timeout=20))
        return s

    monkeypatch.setattr(V, "sample_frames", sample)
    monkeypatch.setattr(engine, "session", session)
    out = clips.parent / "prefetch.jsonl"
    cfg = config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=6, temperature=0.0, seed=None)
    B.run_batch(cfg, engine=engine)
    assert waited_for_b == [True]  # b was decoded while a's session was being built and answered
    assert sampled_on["b.mp4"].startswith("fastvid-prefetch") and sampled_on["a.mp4"].startswith("fastvid-prefetch")
    view = final_view(out)
    assert list(view) == [f"r{i}" for i in range(1, 9)]
    assert view["r7"]["status"] == "error" and "broken.mp4" in view["r7"]["error"]
    ok = [r for r in view.values() if r["status"] == "ok"]
    assert len(ok) == 7
    for rec in ok:  # sample and sample_wait describe the group's session, like sample does without prefetch
        assert rec["timings_ms"]["sample"] > 0 and rec["timings_ms"]["sample_wait"] >= 0
    for first in ("r1", "r2"):  # a group's first answer waited for the frames: that wait is part of its TTFT
        assert view[first]["timings_ms"]["sample_wait"] <= view[first]["timings_ms"]["ttft"]
    assert view["r2"]["timings_ms"]["sample_wait"] < view["r2"]["timings_ms"]["sample"]  # b was ready in advance

    monkeypatch.setattr(engine, "session", real_session)
    plain = clips.parent / "no-prefetch.jsonl"
    B.run_batch(config(tiny_llava, tiny_saliency, csv, plain, max_new_tokens=6, temperature=0.0, seed=None),
                engine=engine, prefetch=False)
    view0 = final_view(plain)
    assert list(view0) == list(view)
    for key in view:
        assert view0[key]["status"] == view[key]["status"]
        assert (view0[key]["answer"], view0[key]["frame_indices"]) == (view[key]["answer"], view[key]["frame_indices"])
        assert "sample_wait" not in (view0[key]["timings_ms"] or {})


def test_feature_cache_is_used_and_skips_decoding(engine, clips, tiny_llava, tiny_saliency, tmp_path, monkeypatch):
    """With a cache folder, each video's encoded features are stored (records say cache "miss"); a run with other
    answer settings takes them from there ("hit"), does not decode videos whose features are cached (only the first
    one, decoded while the model would load, before the cache can be asked), and answers the same. Without one,
    nothing is stored ("off")."""
    import fastvid_cli.video as V

    csv = six_rows(clips.parent)
    cache = tmp_path / "features"
    real_sample, real_features = V.sample_frames, engine.features
    sampled: list[str] = []
    encoded: list[int] = []
    monkeypatch.setattr(V, "sample_frames", lambda path, n, **kw: sampled.append(Path(path).name)
                        or real_sample(path, n, **kw))
    monkeypatch.setattr(engine, "features", lambda clip, t: encoded.append(1) or real_features(clip, t))

    def run(name: str, **kw) -> dict[str, dict]:
        sampled.clear()
        encoded.clear()
        B.run_batch(config(tiny_llava, tiny_saliency, csv, tmp_path / name, max_new_tokens=6, **kw), engine=engine)
        return final_view(tmp_path / name)

    miss = run("miss.jsonl", cache_dir=cache)
    assert {r["cache"] for r in miss.values()} == {"miss"} and len(encoded) == 2
    assert len(list(cache.rglob("*.safetensors"))) == 2  # one entry per video
    hit = run("hit.jsonl", cache_dir=cache, seed=12)  # other answer settings, same features
    assert {r["cache"] for r in hit.values()} == {"hit"} and encoded == []
    assert sampled == ["a.mp4"]  # b.mp4 was not decoded at all
    same = run("same.jsonl", cache_dir=cache)
    assert {k: r["answer"] for k, r in same.items()} == {k: r["answer"] for k, r in miss.items()}
    off = run("off.jsonl")
    assert {r["cache"] for r in off.values()} == {"off"} and len(encoded) == 2
    assert sorted(sampled) == ["a.mp4", "b.mp4"] and len(list(cache.rglob("*.safetensors"))) == 2


def test_cli_cache_dir_and_no_cache(engine, clips, cli_args, tmp_path, monkeypatch):
    """`batch --cache-dir DIR` stores and reuses features there, `--no-cache` neither reads nor writes any, and by
    default (as `ask`) the cache under $FASTVID_CACHE/features is used."""
    import os

    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "default"))
    csv = write_csv(clips.parent / "cached.csv", "id,video,question\n1,clips/b.mp4,What happens?\n")
    out = tmp_path / "cached.jsonl"
    mine = tmp_path / "mine"

    def run(*extra: str) -> str:
        result = CliRunner().invoke(build_app(), ["batch", str(csv), "-o", str(out), "--overwrite", *cli_args,
                                                  *extra])
        assert result.exit_code == 0, result.output
        [rec] = read_jsonl(out)
        return rec["cache"]

    assert run("--cache-dir", str(mine)) == "miss" and len(list(mine.rglob("*.safetensors"))) == 1
    assert run("--cache-dir", str(mine)) == "hit"
    assert run("--no-cache", "--cache-dir", str(mine)) == "off"
    assert run("--no-cache") == "off" and not os.path.exists(tmp_path / "default")
    assert run() == "miss" and len(list((tmp_path / "default" / "features").rglob("*.safetensors"))) == 1
    assert run() == "hit"


def test_answer_batch_auto_is_one_on_cpu_and_sixteen_on_cuda(engine, clips, tiny_llava, tiny_saliency, monkeypatch):
    """--answer-batch auto (the default) answers greedy rows one at a time on the CPU (batching lost up to 3x
    there, benchmarks/RESULTS.md) and 16 together on CUDA; a number given is used as given; anything else is a
    one-line usage error (exit 2) before the model loads."""
    from types import SimpleNamespace

    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    assert B.BatchConfig(questions=Path("q.csv"), output=Path("o.jsonl")).answer_batch is None  # auto
    assert B.resolve_answer_batch(None, SimpleNamespace(cuda=False)) == 1
    assert B.resolve_answer_batch(None, SimpleNamespace(cuda=True)) == 16
    assert B.resolve_answer_batch(4, SimpleNamespace(cuda=True)) == 4 and B.resolve_answer_batch(4, engine) == 4

    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    csv = write_csv(clips.parent / "auto.csv", "id,video,question\n1,clips/a.mp4,What happens?\n"
                    "2,clips/a.mp4,What moves?\n3,clips/a.mp4,Which colours?\n")
    out = clips.parent / "auto.jsonl"
    greedy = ["--model", str(tiny_llava), "--saliency-model", str(tiny_saliency), "--device", "cpu", "--frames", "8",
              "--max-new-tokens", "4", "-o", str(out), "--overwrite", "--no-cache"]

    def modes(*extra: str) -> list[str]:
        result = CliRunner().invoke(build_app(), ["batch", str(csv), *greedy, *extra])
        assert result.exit_code == 0, result.output
        return [r["decode_mode"] for r in read_jsonl(out)]

    assert modes() == ["eager"] * 3  # auto on this CPU engine: one at a time
    assert modes("--answer-batch", "auto") == ["eager"] * 3
    assert modes("--answer-batch", "16") == ["batched x3"] * 3
    monkeypatch.setattr(Engine, "load", NoLoad())
    for bad in ("0", "257", "many", "-1"):
        result = CliRunner().invoke(build_app(), ["batch", str(csv), *greedy, "--answer-batch", bad])
        assert result.exit_code == 2, result.output
        [line] = _error_lines(result.stderr)
        assert "--answer-batch must be auto or a whole number from 1 to 256" in line


# ---------------------------------------------------------------------------------------------- resume
def test_resume_retry_errors_overwrite_and_csv_out(engine, clips, tiny_llava, tiny_saliency, monkeypatch):
    from fastvid_cli.engine import Engine

    csv = write_csv(clips.parent / "resume.csv", (
        "id,video,question\n"
        "1,clips/a.mp4,First?\n"
        "2,clips/later.mp4,Second?\n"
        "3,clips/b.mp4,Third?\n"
        "4,clips/a.mp4,\n"))
    out = clips.parent / "resume.jsonl"
    csv_out = clips.parent / "resume-flat.csv"
    cfg = config(tiny_llava, tiny_saliency, csv, out, csv_out=csv_out, max_new_tokens=6)
    B.run_batch(cfg, engine=engine)
    first = out.read_bytes()
    view = final_view(out)
    assert {k: v["status"] for k, v in view.items()} == {"1": "ok", "2": "error", "3": "ok", "4": "error"}
    assert "video not found" in view["2"]["error"] and view["4"]["error"] == "empty question"

    # Rerun: nothing to do, no model needed, not a byte changed.
    monkeypatch.setattr(Engine, "load", NoLoad())
    again = B.run_batch(cfg)
    assert out.read_bytes() == first and again.answered == 0 and again.skipped == 4

    # --retry-errors redoes only the error rows; with the video now there, row 2 is answered.
    shutil.copy(clips / "b.mp4", clips / "later.mp4")
    monkeypatch.undo()
    retry = B.run_batch(config(tiny_llava, tiny_saliency, csv, out, csv_out=csv_out, max_new_tokens=6,
                               retry_errors=True), engine=engine)
    assert retry.answered == 2 and retry.skipped == 2
    view = final_view(out)
    assert view["2"]["status"] == "ok" and view["4"]["status"] == "error"
    assert len(read_jsonl(out)) == 6  # history kept: the old errors stay before their replacements
    assert_no_duplicate_ok(out)

    import csv as csvmod

    flat = list(csvmod.DictReader(csv_out.open(encoding="utf-8", newline="")))
    assert [r["id"] for r in flat] == ["1", "2", "3", "4"]
    assert list(flat[0]) == list(B.CSV_OUT_COLUMNS)
    assert [r["status"] for r in flat] == ["ok", "ok", "ok", "error"]
    assert flat[0]["answer"] == view["1"]["answer"] and flat[0]["video_tokens_kept"] == "152"
    assert float(flat[0]["ttft_ms"]) > 0 and flat[3]["error"] == "empty question"

    # Other settings: every row again; back to the first settings: nothing to do, their answers are final again.
    other = B.run_batch(config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=7), engine=engine)
    assert other.answered == 4 and final_view(out)["1"]["settings"]["max_new_tokens"] == 7
    back = B.run_batch(cfg, engine=engine)
    assert back.answered == 0 and final_view(out)["1"]["settings"]["max_new_tokens"] == 6
    assert final_view(out)["1"]["answer"] == view["1"]["answer"]

    # --overwrite starts over.
    over = B.run_batch(config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=6, overwrite=True),
                       engine=engine)
    assert over.answered == 4 and len(read_jsonl(out)) == 4


def test_torn_last_line_is_cut_and_its_row_redone(engine, clips, tiny_llava, tiny_saliency):
    csv = six_rows(clips.parent)
    out = clips.parent / "torn.jsonl"
    cfg = config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=6)
    B.run_batch(cfg, engine=engine)
    complete = read_jsonl(out)
    data = out.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    out.write_bytes(data[: last + (len(data) - last) // 2])  # killed halfway through writing the last record
    assert not out.read_bytes().endswith(b"\n")
    again = B.run_batch(cfg, engine=engine)
    assert again.answered == 1 and again.skipped == 5
    recs = read_jsonl(out)  # every line whole again
    assert len(recs) == 6 and [r["id"] for r in recs] == [f"r{i}" for i in range(1, 7)]
    assert {r["id"]: r["answer"] for r in recs} == {r["id"]: r["answer"] for r in complete}


def test_shards_of_any_process_count_are_read_and_merged(engine, clips, tiny_llava, tiny_saliency, monkeypatch):
    """Resume after a change of N: records spread over the output and shard files of an earlier 3-process run
    (one with a torn tail, one repeating a record) count as done and end up merged, in CSV order."""
    from fastvid_cli.engine import Engine

    csv = six_rows(clips.parent)
    out = clips.parent / "shards.jsonl"
    cfg = config(tiny_llava, tiny_saliency, csv, out, max_new_tokens=6)
    B.run_batch(cfg, engine=engine)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text(lines[5])
    B.shard_path(out, 0, 3).write_text(lines[3] + lines[0])
    B.shard_path(out, 1, 3).write_text(lines[1] + lines[4] + lines[0][:40])
    B.shard_path(out, 2, 3).write_text(lines[2] + lines[5])
    monkeypatch.setattr(Engine, "load", NoLoad())
    result = B.run_batch(cfg)
    assert result.answered == 0 and result.final_ok == 6
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == lines
    assert B.shard_files(out) == []


# ---------------------------------------------------------------------------------------------- CLI outcome
def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error")]


def test_exit_code_8_when_rows_failed_after_every_row_was_tried(engine, clips, cli_args, monkeypatch):
    """A script must be able to tell: rows that end as errors give exit code 8 (one `error:` line), but only
    after every row was tried and recorded; a rerun with those errors still standing says so again; with the
    failures fixed and --retry-errors, 0."""
    from batch_runner import build_app

    from fastvid_cli.engine import Engine
    from fastvid_cli.errors import EXIT_CODES, RowsFailedError

    assert RowsFailedError.exit_code == 8 and 8 in EXIT_CODES
    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    (clips / "broken.mp4").write_bytes(b"not a video at all")
    csv = write_csv(clips.parent / "failing.csv", (
        "id,video,question\n"
        "bad1,clips/nowhere.mp4,Missing?\n"  # invalid before the load
        "good,clips/a.mp4,What happens?\n"
        "bad2,clips/broken.mp4,Undecodable?\n"))  # fails in its session
    out = clips.parent / "failing.jsonl"
    args = ["batch", str(csv), "-o", str(out), *cli_args]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 8, result.output
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert "2 of 3 rows failed" in line and str(out) in line
    view = final_view(out)  # every row was tried: the good one answered after the failures
    assert {k: v["status"] for k, v in view.items()} == {"bad1": "error", "good": "ok", "bad2": "error"}

    monkeypatch.setattr(Engine, "load", NoLoad())  # nothing left to do, the errors still stand
    again = CliRunner().invoke(build_app(), args)
    assert again.exit_code == 8 and len(_error_lines(again.stderr)) == 1, again.output

    shutil.copy(clips / "b.mp4", clips / "nowhere.mp4")
    shutil.copy(clips / "b.mp4", clips / "broken.mp4")
    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    fixed = CliRunner().invoke(build_app(), [*args, "--retry-errors"])
    assert fixed.exit_code == 0 and not _error_lines(fixed.stderr), fixed.output
    assert all(r["status"] == "ok" for r in final_view(out).values())


def test_interrupt_exit_code_wins_over_failed_rows(clips, cli_args, monkeypatch):
    """Ctrl-C during a run that also has failed rows: 130 (interrupted), not 8."""
    from batch_runner import build_app

    real = B.run_batch

    def interrupted(cfg, **kw):
        kw["stop"].set()  # as the first Ctrl-C does: stop before the first row
        return real(cfg, **kw)

    monkeypatch.setattr(B, "run_batch", interrupted)
    csv = write_csv(clips.parent / "int.csv", "id,video,question\n1,clips/int-missing.mp4,Missing?\n")
    out = clips.parent / "int.jsonl"
    # an error record already stands for row 1 (an earlier run): the final view has a failed row
    row = B.read_questions(csv)[0]
    cfg = B.BatchConfig(questions=csv, output=out, model=cli_args[1], saliency_model=cli_args[3], device="cpu",
                        frames=8, max_new_tokens=24, temperature=1.0, seed=11)
    plan = B.make_plan(cfg)
    out.write_text(json.dumps(B.error_record(row, "earlier failure", plan.settings[1], plan.fps[1],
                                             model=plan.model_name)) + "\n")
    result = CliRunner().invoke(build_app(), ["batch", str(csv), "-o", str(out), *cli_args])
    assert result.exit_code == 130, result.output


def test_every_record_names_the_model_as_the_user_did(clips, tmp_path):
    """`--model demo`: ok and error records alike say "demo" (not the weights folder inside the package); the
    fingerprinted settings keep the resolved source."""
    from batch_runner import build_app

    (clips / "broken.mp4").write_bytes(b"not a video at all")
    csv = write_csv(clips.parent / "names.csv", (
        "id,video,question\n"
        "ok,clips/a.mp4,What happens?\n"
        "missing,clips/nowhere-at-all.mp4,Missing?\n"
        "broken,clips/broken.mp4,Undecodable?\n"
        "empty,clips/a.mp4,\n"))
    out = tmp_path / "names.jsonl"
    result = CliRunner().invoke(build_app(), ["batch", str(csv), "-o", str(out), "--model", "demo", "--device", "cpu",
                                              "--frames", "4", "--max-new-tokens", "2"])
    assert result.exit_code == 8, result.output
    recs = read_jsonl(out)
    assert sorted(r["status"] for r in recs) == ["error", "error", "error", "ok"]
    assert {r["model"] for r in recs} == {"demo"}
    assert all(r["settings"]["model"].endswith("weights") for r in recs)


def test_default_output_goes_to_the_working_directory(engine, clips, cli_args, tmp_path, monkeypatch):
    """Without -o the answers go to ./<questions name>.answers.jsonl, not next to the CSV (which may sit in a
    read-only or installed folder); a rerun from the same directory resumes from it."""
    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    csv = write_csv(clips.parent / "where.csv", "id,video,question\n1,clips/a.mp4,What happens?\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(build_app(), ["batch", str(csv), *cli_args])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(work / "where.answers.jsonl")] == ["1"]
    assert not (clips.parent / "where.answers.jsonl").exists()
    monkeypatch.setattr(Engine, "load", NoLoad())
    again = CliRunner().invoke(build_app(), ["batch", str(csv), *cli_args])
    assert again.exit_code == 0 and "1 already answered" in again.stderr, again.output


def test_progress_shows_no_eta_before_the_model_is_ready(engine, clips, tiny_llava, tiny_saliency):
    """Rows that fail validation are written before the model loads, in no time: they must not make the progress
    say "ETA 0 s" while the model is still loading. The ETA is "?" until a row was answered after the model was
    ready, then an estimate from those rows only."""
    import io

    from rich.console import Console

    from fastvid_cli.cli_batch import BatchProgress

    csv = write_csv(clips.parent / "eta.csv", (
        "id,video,question\n"
        "bad1,clips/eta-missing.mp4,Missing?\n"
        "bad2,clips/a.mp4,\n"
        "ok1,clips/a.mp4,What happens?\n"
        "ok2,clips/a.mp4,What moves?\n"
        "ok3,clips/a.mp4,Anything else?\n"))
    progress = BatchProgress()
    buf = io.StringIO()
    progress.console = Console(file=buf, width=400, highlight=False)  # not a terminal: one line per row
    marks: list[str] = []
    ready = progress.answering

    def answering() -> None:  # what the progress would show while the model loads, and once it is ready
        marks.append(progress.eta())
        ready()
        marks.append(progress.eta())

    progress.answering = answering
    cfg = config(tiny_llava, tiny_saliency, csv, clips.parent / "eta.jsonl", max_new_tokens=4, answer_batch=1)
    B.run_batch(cfg, engine=engine, progress=progress)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in lines] == [f"[{i}/5" for i in range(1, 6)]
    assert marks == ["?", "?"]  # while loading, and when ready with no answered row yet
    assert lines[0].endswith("ETA ?") and lines[1].endswith("ETA ?")  # the invalid rows
    assert lines[2].endswith(" s") and "ETA ?" not in lines[2]  # an estimate from the first answered row
    assert lines[4].endswith("ETA 0 s")


# ---------------------------------------------------------------------------------------------- real processes
def _entry() -> list[str]:
    """`python -m fastvid_cli` once `batch` is registered in cli.py, else the runner script."""
    from batch_runner import build_app

    from fastvid_cli import cli

    return ["-m", "fastvid_cli"] if build_app() is cli.app else [RUNNER]


def _batch_proc(args: list[str], cwd: Path, *, torchrun: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_addr",
               "127.0.0.1", "--master_port", str(port), *_entry(), "batch", *args]
    else:
        cmd = [sys.executable, *_entry(), "batch", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"no record appeared (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference(engine, clips, tiny_llava, tiny_saliency) -> dict[str, dict]:
    """An uninterrupted single-process run of six_rows with cli_args' settings: id -> record."""
    csv = six_rows(clips.parent)
    out = clips.parent / "reference.jsonl"
    B.run_batch(config(tiny_llava, tiny_saliency, csv, out), engine=engine)
    view = final_view(out)
    assert len(view) == 6 and all(r["status"] == "ok" for r in view.values())
    return view


def test_ctrl_c_stops_after_the_current_row(engine, clips, cli_args, reference, monkeypatch):
    """The CLI's SIGINT handling, in this process: the first Ctrl-C lets the current row finish and be recorded,
    then the run stops with exit code 130; a rerun does the rest."""
    import threading

    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # a late signal must not hit pytest
    csv = six_rows(clips.parent)
    out = clips.parent / "ctrl-c.jsonl"
    sent = threading.Event()

    def press_ctrl_c() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)
        sent.set()

    try:
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        result = CliRunner().invoke(build_app(), ["batch", str(csv), "-o", str(out), *cli_args])
        sent.wait(10)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 130, result.output
    assert "stopping after the current row" in result.stderr and "Traceback" not in result.stderr
    done = read_jsonl(out)
    assert 1 <= len(done) < 6 and all(r["status"] == "ok" for r in done)
    rerun = CliRunner().invoke(build_app(), ["batch", str(csv), "-o", str(out), *cli_args])
    assert rerun.exit_code == 0, rerun.output
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == list(reference)
    assert [r["answer"] for r in recs] == [r["answer"] for r in reference.values()]


def test_sigkill_at_a_random_moment_then_resume_answers_each_row_once(engine, clips, cli_args, reference,
                                                                     monkeypatch):
    csv = six_rows(clips.parent)
    out = clips.parent / "killed.jsonl"
    args = [str(csv), "-o", str(out), *cli_args]
    # A seeded random moment after the first record: after record k (1..4) plus up to about one row's time,
    # so the kill lands mid-run (while answering, or while writing a record) on any machine speed.
    rng = random.Random(20261121)
    k, extra = rng.randint(1, 4), rng.uniform(0.0, 0.08)
    p = _batch_proc(args, clips.parent)
    _wait_for_records(out, k, p)
    time.sleep(extra)
    p.kill()
    p.communicate(timeout=60)
    assert k <= out.read_bytes().count(b"\n") < 6  # killed before the end
    # Rerun the same command to completion (in this process, to save a second model load: same CLI path).
    from batch_runner import build_app

    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    rerun = CliRunner().invoke(build_app(), ["batch", *args])
    assert rerun.exit_code == 0, rerun.output
    recs = read_jsonl(out)  # nothing torn
    assert [r["id"] for r in recs] == list(reference)  # each row answered exactly once, in CSV order
    assert_no_duplicate_ok(out)
    for rec in recs:
        ref = reference[rec["id"]]
        assert rec["status"] == "ok" and rec["answer"] == ref["answer"], rec["id"]
        assert rec["fingerprint"] == ref["fingerprint"]  # the CLI resolves settings as run_batch does


def test_data_parallel_torchrun_gloo(clips, cli_args, reference, monkeypatch, tiny_llava, tiny_saliency):
    csv = six_rows(clips.parent)
    out = clips.parent / "dp.jsonl"
    # Start from a file where an earlier single-process run answered one row.
    out.write_text(json.dumps(reference["r2"], ensure_ascii=False) + "\n", encoding="utf-8")
    p = _batch_proc([str(csv), "-o", str(out), "--csv-out", str(clips.parent / "dp.csv"), *cli_args],
                    clips.parent, torchrun=2)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "[rank 1/2]" in err and "over 2 processes" in err
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == list(reference)  # merged in CSV order, each row once
    assert B.shard_files(out) == []
    for rec in recs:
        assert rec["status"] == "ok" and rec["answer"] == reference[rec["id"]]["answer"], rec["id"]
    assert recs[1]["finished_at"] == reference["r2"]["finished_at"]  # the earlier answer was kept, not redone
    # Resume with N = 1: nothing left to do.
    from fastvid_cli.engine import Engine

    monkeypatch.setattr(Engine, "load", NoLoad())
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = out.read_bytes()
    result = B.run_batch(config(tiny_llava, tiny_saliency, csv, out))
    assert result.answered == 0 and result.skipped == 6 and out.read_bytes() == before
