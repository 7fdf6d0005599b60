"""`fastvid eval`: benchmark validation, answer parsing, scoring, resume, and a real run on the tiny model.

The tiny model's weights are random, so its answers are gibberish: the scoring is tested with a fake engine
whose answers are scripted, and the real runs test the machinery (records, counts, resume), not the score.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fastvid_cli import evaluate as E
from fastvid_cli.errors import InvalidOptionError

OPTIONS = ["red", "green", "blue", "yellow"]


# ---------------------------------------------------------------------------------------------- helpers
def write_bench(path: Path, rows: list, raw_lines: list[str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] + list(raw_lines or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(id_: str, video: str, answer: str = "A", type_: str | None = None, **kw) -> dict:
    r = {"id": id_, "video": video, "question": f"What colour is it ({id_})?", "options": OPTIONS,
         "answer": answer}
    if type_ is not None:
        r["type"] = type_
    r.update(kw)
    return r


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def eval_app() -> typer.Typer:
    """The `eval` command as registered in fastvid_cli.cli when it is there, else on a small app of its own."""
    from fastvid_cli import cli
    from fastvid_cli.cli_eval import eval_

    if any(c.callback is eval_ or c.name == "eval" for c in cli.app.registered_commands):
        return cli.app
    app = typer.Typer(add_completion=False)
    app.command(name="eval")(eval_)

    @app.callback()
    def _root() -> None:
        pass

    return app


def invoke(*args: str):
    return CliRunner().invoke(eval_app(), ["eval", *map(str, args)])


# ---------------------------------------------------------------------------------------------- fake engine
class FakeSession:
    def __init__(self, engine: "FakeEngine", video: str, prune):
        self.engine, self.video, self.prune = engine, video, prune
        self.clip, self.feats = ("clip", video), ("feats", video)
        self.timings = {"prune": 2.0}

    def answer(self, question, gen, *, reuse_prefix=True, lead_ms=0.0, **_):
        from fastvid_cli.engine import Report

        assert reuse_prefix is True
        assert gen.temperature == 0.0
        self.engine.prompts.append(question)
        label = f"{self.prune.method}@{self.prune.ratio:g}"
        qid = question.split("(")[1].split(")")[0]  # row() puts the id in the question
        self.engine.answered.append((label, qid, Path(self.video).name))
        kept = self.engine.tokens[self.prune.method]
        return Report(answer=self.engine.script[label].get(qid, "I don't know"), method=self.prune.method,
                      ratio=self.prune.ratio, video_tokens_kept=int(kept * self.prune.ratio), video_tokens_total=kept,
                      frames=4, new_tokens=1, stop_reason="eos",
                      timings_ms={"ttft": 10.0 * self.prune.ratio + lead_ms, "prefill": 1.0, "prune": 2.0})


class FakeEngine:
    """Scripted answers per setting label and question id; counts encodings and pruned sessions."""

    dtype = "torch.float32"
    defaults = dict(frames=4, method="fastvid", ratio=0.1, c=8, tau=0.9, d=0.4, p=4, beta=0.6)
    tokens = {"none": 800, "fastvid": 800, "uniform": 800, "random": 800}

    def __init__(self, script: dict[str, dict[str, str]]):
        self.script = script
        self.encoded: list[tuple[str, int]] = []
        self.pruned: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str, str]] = []
        self.prompts: list[str] = []

    def session(self, video, *, frames=None, prune=None, system=None, **_):
        assert prune.method == "none" and prune.ratio == 1.0  # encoding: features kept whole
        self.encoded.append((Path(video).name, frames))
        return FakeSession(self, video, prune)

    def session_from_features(self, video, clip, feats, prune, timings=None, *, system=None, **_):
        assert clip == ("clip", video) and feats == ("feats", video)  # the shared encoding
        self.pruned.append((Path(video).name, f"{prune.method}@{prune.ratio:g}"))
        return FakeSession(self, video, prune)


@pytest.fixture()
def fake_bench(tmp_path, monkeypatch) -> Path:
    """6 questions over 2 (empty: the fake engine never decodes) videos, 2 types; gold letters A B C D A B. The
    working directory is tmp_path, where the default output (bench.eval.jsonl) goes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / name).write_bytes(b"")
    rows = [row("q1", "v/a.mp4", "A", "colour"), row("q2", "v/b.mp4", "B", "count"),
            row("q3", "v/a.mp4", "C", "colour"), row("q4", "v/b.mp4", "D", "count"),
            row("q5", "v/a.mp4", "A", "colour"), row("q6", "v/b.mp4", "B", "count")]
    return write_bench(tmp_path / "bench.jsonl", rows)


SCRIPT = {
    # reference: 5 of 6 right (q6 wrong)
    "none@1": {"q1": "A", "q2": "B", "q3": "(C)", "q4": "The answer is D.", "q5": "A.", "q6": "C"},
    # 4 of 6 right: q3 names another letter, q6 is unparseable
    "fastvid@0.5": {"q1": "A", "q2": "b", "q3": "D", "q4": "D", "q5": "Answer: A", "q6": "I don't know"},
    # 3 of 6 right, two of them by option text
    "uniform@0.5": {"q1": "red", "q2": "A", "q3": "A", "q4": "A", "q5": "A", "q6": "Green."},
}


SHORT_GOLD = {"q1": "red", "q2": "2", "q3": "blue", "q4": "3", "q5": "red", "q6": "one"}


@pytest.fixture()
def short_bench(fake_bench) -> Path:
    """fake_bench with a short_answer on every line (colours for colour questions, counts for count ones)."""
    rows = [json.loads(line) for line in fake_bench.read_text().splitlines()]
    return write_bench(fake_bench, [{**r, "short_answer": SHORT_GOLD[r["id"]]} for r in rows])


SHORT_SCRIPT = {
    # 4 of 6: q3 has an extra word, q6 answers with a letter
    "none@1": {"q1": "Red.", "q2": "two", "q3": "The blue one", "q4": "3", "q5": "**red**", "q6": "B"},
    # 4 of 6: q4 is another number, q5 does not know; q6 "One" matches the gold "one"
    "fastvid@0.5": {"q1": "red", "q2": "2.", "q3": "Blue", "q4": "4", "q5": "I don't know", "q6": "One"},
    # 3 of 6: q1 names option A's letter (not an answer here), q2 is empty, q5 the wrong colour
    "uniform@0.5": {"q1": "A", "q2": "", "q3": "the blue", "q4": "three", "q5": "green", "q6": "1"},
}


def fake_config(bench: Path, **kw) -> E.EvalConfig:
    base = dict(model="llava-ov-0.5b", methods=["fastvid", "uniform"], ratios=[0.5], frames=4)
    return E.EvalConfig(bench=bench, **{**base, **kw})


# ---------------------------------------------------------------------------------------------- input
def test_read_bench_fields_paths_and_missing_videos(tmp_path, monkeypatch):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    other = tmp_path / "elsewhere"
    (other / "clips").mkdir(parents=True)
    (other / "clips" / "a.mp4").write_bytes(b"")
    bench = tmp_path / "b.jsonl"
    text = ("\ufeff" + json.dumps(row("x1", "clips/a.mp4", "b", "count", frames=6, seed=3, short_answer="green"))
            + "\r\n\n   \n" + json.dumps({**row("x2", "clips/missing.mp4"), "id": 7}) + "\n")
    bench.write_text(text, encoding="utf-8")
    monkeypatch.chdir(other / "clips")  # relative paths follow the file's folder, not the working directory
    qs = E.read_bench(bench)
    assert [(q.line, q.id, q.answer, q.type, q.frames, q.seed) for q in qs] == [
        (1, "x1", "B", "count", 6, 3), (4, "7", "A", None, None, None)]
    assert qs[0].path == str(tmp_path / "clips" / "a.mp4") and qs[0].error is None
    assert qs[0].short_answer == "green" and qs[0].options == OPTIONS
    assert qs[1].error == "video not found: clips/missing.mp4"
    # --videos-root replaces the file's folder
    qs = E.read_bench(bench, videos_root=other)
    assert qs[0].path == str(other / "clips" / "a.mp4")


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("", "no questions"),
    ('{"id": "a", "video": "v.mp4"', "line 1: invalid JSON"),
    ('\n[1, 2]', "line 2: expected a JSON object"),
    ('{"id": "a", "video": "v.mp4", "question": "Q?"}', "line 1: missing required keys options, answer"),
    ('{"id": "a", "video": "v.mp4", "question": "Q?", "options": ["x"], "answer": "A"}', "line 1: options"),
    ('{"id": "a", "video": "v.mp4", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": "E"}',
     "line 1: answer must be one of the letters A, B, C, D"),
    ('{"id": "", "video": "v.mp4", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": "A"}', "line 1: id"),
    ('{"id": "a", "video": "v.mp4", "question": " ", "options": ["w", "x", "y", "z"], "answer": "A"}',
     "line 1: question"),
    ('{"id": "a", "video": "v.mp4", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": "A", "frames": 0}',
     "line 1: frames"),
    ('{"id": "a", "video": "v.mp4", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": "A"}\n'
     '{"id": "a", "video": "w.mp4", "question": "R?", "options": ["w", "x", "y", "z"], "answer": "B"}',
     "line 2: duplicate id 'a' \\(first used on line 1\\)"),
])
def test_read_bench_errors_name_the_line(tmp_path, content, message):
    bench = tmp_path / "bench.jsonl"
    if content is not None:
        bench.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidOptionError, match=message):
        E.read_bench(bench)


# ---------------------------------------------------------------------------------------------- prompt, parse
def test_mc_prompt():
    assert E.mc_prompt("What colour is the square?", OPTIONS) == (
        "What colour is the square?\nA. red\nB. green\nC. blue\nD. yellow\n"
        "Answer with the option's letter from the given choices directly.")
    try:
        from fastvid_cli import synth
    except ImportError:
        return
    if hasattr(synth, "mc_prompt"):  # one prompt for the benchmark and its evaluator
        record = {"question": "What colour is the square?", "options": OPTIONS}
        assert synth.mc_prompt(record) == E.mc_prompt(record["question"], record["options"])


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("  B.", "B"), ("(C)", "C"), ("[D]", "D"), ("D) yellow", "D"), ("C\n", "C"), ("b", "B"), ("a.", "A"),
    ("Answer: B", "B"), ("answer:D", "D"), ("The answer is C.", "C"), ("The correct answer is: A", "A"),
    ("The best answer is B", "B"), ("**D**", "D"), ("Option (C)", "C"), ("B: green", "B"), ("blue", "C"),
    ("Yellow.", "D"), ("E", None), ("", None), ("I don't know", None), ("A red square", "A"), ("purple", None),
])
def test_parse_choice(text, letter):
    assert E.parse_choice(text, OPTIONS) == letter


def test_parse_choice_articles_and_counts():
    opts = ["A cat sleeps", "A dog runs", "Nothing", "Two cars"]
    assert E.parse_choice("A dog runs", opts) == "B"  # the article, then the option's text
    assert E.parse_choice("A dog runs", 4) is None
    assert E.parse_choice("C", 2) is None  # beyond the options
    assert E.parse_choice("B", ["yes", "no"]) == "B"


def test_choice_parser_agrees_on_common_answers():
    parse = E.choice_parser()
    for text, letter in [("A", "A"), ("(c)", "C"), ("The answer is D.", "D"), ("green", "B"), ("", None)]:
        assert parse(text, OPTIONS) == letter


# ---------------------------------------------------------------------------------------------- short answers
@pytest.mark.parametrize("text, normal", [
    ("blue", "blue"), ("Blue.", "blue"), ("  BLUE!\n", "blue"), ("**blue**", "blue"), ("(blue)", "blue"),
    ('"cyan"', "cyan"), ("“cyan”", "cyan"), ("The circle", "circle"), ("a square.", "square"),
    ("An apple", "apple"), ("the", "the"), ("A", "a"), ("Two", "2"), ("two.", "2"), ("2", "2"),
    ("twenty", "20"), ("two circles", "2 circles"), ("the two", "2"), ("３", "3"), ("it is blue", "it is blue"),
    ("light-blue", "light-blue"), ("dark  blue", "dark blue"), ("left\nright", "left right"), ("", ""),
    (None, ""), ("...", ""), ("the 'x'", "x"),
])
def test_normalize_short(text, normal):
    assert E.normalize_short(text) == normal


@pytest.mark.parametrize("answer, gold, right", [
    ("Blue.", "blue", True), ("The square", "square", True), ("two", "2", True), ("2", "two", True),
    ("three", "2", False), ("B", "green", False), ("blue circle", "blue", False), ("blueish", "blue", False),
    ("", "blue", False), ("", "", False), (None, "...", False),
])
def test_short_correct(answer, gold, right):
    assert E.short_correct(answer, gold) is right


def test_short_prompt_is_synths():
    from fastvid_cli import synth

    assert E.short_prompt("What colour is the square? ") == (
        "What colour is the square?\nAnswer the question using a single word or phrase.")
    question = "What colour is the square?"
    assert E.short_prompt(question) == synth.short_prompt({"question": question})


# ---------------------------------------------------------------------------------------------- plan
def test_settings_order_reference_first_and_once(fake_bench):
    engine = FakeEngine(SCRIPT)
    plan = E.make_plan(fake_config(fake_bench, methods=["uniform", "fastvid", "uniform"], ratios=[0.1, 1.0, 0.5]),
                       engine)
    assert [s.label for s in plan.settings] == ["none@1", "uniform@0.5", "uniform@0.1", "fastvid@0.5",
                                                "fastvid@0.1"]
    fastvid = plan.settings[3].param_dict()
    assert fastvid == dict(beta=0.6, c=8, d=0.4, k=4, p=4, tau=0.9)
    assert plan.settings[0].param_dict() == {} and plan.settings[1].param_dict() == {}
    plan = E.make_plan(fake_config(fake_bench, methods=["random"], ratios=[0.25], reference=False,
                                   params={"--random-seed": 5}), engine)
    assert [s.label for s in plan.settings] == ["random@0.25"] and plan.settings[0].param_dict() == {"seed": 5}
    # every answer-affecting option changes the fingerprint; the output path does not
    fps = set()
    for kw in ({}, {"max_new_tokens": 9}, {"frames": 5}, {"system": "Be brief."}, {"params": {"tau": 0.8}}):
        plan = E.make_plan(fake_config(fake_bench, **kw), engine)
        fps.add(plan.fp(plan.questions[0], plan.settings[1]))
    assert len(fps) == 5
    out = fake_config(fake_bench, output=fake_bench.with_name("other.jsonl"))
    assert E.make_plan(out, engine).fps == E.make_plan(fake_config(fake_bench), engine).fps


def test_form_is_part_of_the_fingerprint(short_bench):
    engine = FakeEngine(SCRIPT)
    mc = E.make_plan(fake_config(short_bench), engine)
    short = E.make_plan(fake_config(short_bench, form="short"), engine)
    assert (mc.form, short.form) == ("mc", "short")
    assert not set(mc.fps.values()) & set(short.fps.values())  # no (question, setting) shares a fingerprint
    key = (mc.questions[0].id, mc.settings[1].label)
    # multiple choice keeps exactly the keys it had before forms existed: old result files still resume
    assert mc.full_settings[key]["task"] == "multiple-choice" and mc.full_settings[key]["prompt_version"] == 1
    assert set(mc.full_settings[key]) == {"task", "prompt_version", "model", "dtype", "method", "ratio", "frames",
                                          "params", "saliency_model", "max_new_tokens", "decoding", "system"}
    assert short.full_settings[key] == {**mc.full_settings[key], "task": "short-answer",
                                        "prompt_version": E.SHORT_PROMPT_VERSION, "scoring": E.SHORT_SCORING}


@pytest.mark.parametrize("kw, message", [
    (dict(form="long"), "--form must be one of mc, short"),
    (dict(methods=["tome"]), "--method must be one of"),
    (dict(ratios=[0.0]), "--ratio must be in"),
    (dict(ratios=[float("nan")]), "--ratio must be in"),
    (dict(limit=0), "--limit"),
    (dict(max_new_tokens=0), "--max-new-tokens"),
])
def test_invalid_options(fake_bench, kw, message):
    with pytest.raises(InvalidOptionError, match=message):
        E.make_plan(fake_config(fake_bench, **kw), FakeEngine(SCRIPT))


def test_fingerprints_are_those_of_earlier_versions(short_bench):
    """Pinned: a change that alters these makes every existing result file be answered again instead of resumed."""
    for form, expected in (("mc", {"none@1": "00de08ac66ac", "uniform@0.5": "117d07138365"}),
                           ("short", {"none@1": "fe2cb0a8c8c6", "uniform@0.5": "dab19f0e45da"})):
        plan = E.make_plan(fake_config(short_bench, methods=["uniform"], frames=None, form=form), FakeEngine(SCRIPT))
        assert {s.label: plan.fp(plan.questions[0], s) for s in plan.settings} == expected


def test_a_result_file_written_by_an_earlier_version_resumes(fake_bench):
    """Records as earlier versions wrote them (fingerprints pinned above) count as done and are what is scored."""
    q1 = json.loads(fake_bench.read_text().splitlines()[0])
    write_bench(fake_bench, [q1])
    settings = {"task": "multiple-choice", "prompt_version": 1, "model": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                "dtype": "float32", "method": "none", "ratio": 1.0, "frames": 32, "params": {},
                "saliency_model": None, "max_new_tokens": 8, "decoding": "greedy", "system": None}
    old = [{"id": "q1", "line": 1, "status": "ok", "error": None, "form": "mc", "setting": "none@1",
            "method": "none", "ratio": 1.0, "params": {}, "frames": 32, "video": "v/a.mp4", "type": "colour",
            "question": q1["question"], "options": OPTIONS, "gold": "A", "answer": "A", "predicted": "A",
            "correct": True, "video_tokens_kept": 6272, "ttft_ms": 50.0, "input_error": False, "model": "llava-ov-0.5b",
            "settings": settings, "fingerprint": "00de08ac66ac", "finished_at": "2026-12-01T10:00:00.000000Z"},
           {"id": "q1", "line": 1, "status": "ok", "error": None, "form": "mc", "setting": "uniform@0.5",
            "method": "uniform", "ratio": 0.5, "params": {}, "frames": 32, "video": "v/a.mp4", "type": "colour",
            "question": q1["question"], "options": OPTIONS, "gold": "A", "answer": "B", "predicted": "B",
            "correct": False, "video_tokens_kept": 3136, "ttft_ms": 30.0, "input_error": False,
            "model": "llava-ov-0.5b", "settings": {**settings, "method": "uniform", "ratio": 0.5},
            "fingerprint": "117d07138365", "finished_at": "2026-12-01T10:00:01.000000Z"}]
    out = fake_bench.with_name("old.eval.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    before = out.read_bytes()
    engine = FakeEngine(SCRIPT)
    result = E.run_eval(fake_config(fake_bench, methods=["uniform"], frames=None, output=out), engine=engine)
    assert (result.total, result.skipped, result.answered) == (2, 2, 0) and engine.answered == []
    assert out.read_bytes() == before
    assert [(r["setting"], r["correct"], r["n"]) for r in result.summary["settings"]] == [
        ("none@1", 1, 1), ("uniform@0.5", 0, 1)]


# ---------------------------------------------------------------------------------------------- scoring
def test_scoring_with_scripted_answers(fake_bench):
    engine = FakeEngine(SCRIPT)
    result = E.run_eval(fake_config(fake_bench), engine=engine)
    assert (result.total, result.skipped, result.answered, result.failed) == (18, 0, 18, 0)
    # one encoding per video; one pruned session per (video, setting); reference first
    assert engine.encoded == [("a.mp4", 4), ("b.mp4", 4)]
    assert engine.pruned == [(v, s) for v in ("a.mp4", "b.mp4") for s in ("none@1", "fastvid@0.5", "uniform@0.5")]
    rows = {r["setting"]: r for r in result.summary["settings"]}
    assert list(rows) == ["none@1", "fastvid@0.5", "uniform@0.5"]
    assert (rows["none@1"]["correct"], rows["none@1"]["n"]) == (5, 6)
    assert rows["none@1"]["accuracy_pct"] == round(500 / 6, 2) and rows["none@1"]["retention"] == 1.0
    assert (rows["fastvid@0.5"]["correct"], rows["fastvid@0.5"]["accuracy_pct"]) == (4, round(400 / 6, 2))
    assert rows["fastvid@0.5"]["retention"] == 0.8  # (4/6) / (5/6)
    assert (rows["uniform@0.5"]["correct"], rows["uniform@0.5"]["retention"]) == (3, 0.6)
    assert rows["fastvid@0.5"]["mean_video_tokens_kept"] == 400.0 and rows["none@1"]["mean_video_tokens_kept"] == 800
    # TTFT: 10*ratio per question, plus the 2 ms of pruning on each video's first question of a setting
    assert rows["fastvid@0.5"]["mean_ttft_ms"] == round(5.0 + 2 * 2.0 / 6, 3)
    assert all(r["errors"] == 0 and r["pending"] == 0 for r in rows.values())
    assert result.summary["by_type"] == {
        "colour": {"none@1": {"n": 3, "correct": 3, "accuracy_pct": 100.0},
                   "fastvid@0.5": {"n": 3, "correct": 2, "accuracy_pct": 66.67},
                   "uniform@0.5": {"n": 3, "correct": 2, "accuracy_pct": 66.67}},
        "count": {"none@1": {"n": 3, "correct": 2, "accuracy_pct": 66.67},
                  "fastvid@0.5": {"n": 3, "correct": 2, "accuracy_pct": 66.67},
                  "uniform@0.5": {"n": 3, "correct": 1, "accuracy_pct": 33.33}}}
    recs = read_jsonl(Path("bench.eval.jsonl"))  # the default output, in the working directory
    assert len(recs) == 18
    r = next(r for r in recs if r["id"] == "q6" and r["setting"] == "fastvid@0.5")
    assert (r["status"], r["answer"], r["predicted"], r["correct"], r["gold"]) == ("ok", "I don't know", None,
                                                                                  False, "B")
    assert r["type"] == "count" and r["video"] == "v/b.mp4" and r["frames"] == 4 and r["ratio"] == 0.5
    assert r["settings"]["method"] == "fastvid" and r["fingerprint"] == E.fingerprint(r["settings"])
    r = next(r for r in recs if r["id"] == "q1" and r["setting"] == "uniform@0.5")
    assert (r["predicted"], r["correct"]) == ("A", True)  # "red" is option A's text


def test_no_reference_means_no_retention(fake_bench):
    result = E.run_eval(fake_config(fake_bench, reference=False, methods=["fastvid"]), engine=FakeEngine(SCRIPT))
    [row_] = result.summary["settings"]
    assert row_["setting"] == "fastvid@0.5" and row_["retention"] is None and row_["correct"] == 4


def test_limit_takes_the_first_questions(fake_bench):
    engine = FakeEngine(SCRIPT)
    result = E.run_eval(fake_config(fake_bench, limit=2, methods=["fastvid"]), engine=engine)
    assert result.summary["questions"] == 2 and result.answered == 4
    assert sorted({qid for _, qid, _ in engine.answered}) == ["q1", "q2"]


def test_short_form_scoring_with_scripted_answers(short_bench):
    engine = FakeEngine(SHORT_SCRIPT)
    result = E.run_eval(fake_config(short_bench, form="short"), engine=engine)
    assert (result.total, result.answered, result.failed) == (18, 18, 0)
    # the short prompt: the question alone, no options
    assert all(p.endswith("\nAnswer the question using a single word or phrase.") and "A. red" not in p
               for p in engine.prompts) and len(engine.prompts) == 18
    assert result.summary["form"] == "short"
    rows = {r["setting"]: r for r in result.summary["settings"]}
    assert [(rows[s]["correct"], rows[s]["n"]) for s in rows] == [(4, 6), (4, 6), (3, 6)]
    assert (rows["none@1"]["retention"], rows["fastvid@0.5"]["retention"], rows["uniform@0.5"]["retention"]) == (
        1.0, 1.0, 0.75)
    assert result.summary["by_type"]["count"] == {"none@1": {"n": 3, "correct": 2, "accuracy_pct": 66.67},
                                                  "fastvid@0.5": {"n": 3, "correct": 2, "accuracy_pct": 66.67},
                                                  "uniform@0.5": {"n": 3, "correct": 2, "accuracy_pct": 66.67}}
    recs = {(r["id"], r["setting"]): r for r in read_jsonl(Path("bench.eval.jsonl"))}
    r = recs[("q2", "none@1")]
    assert (r["form"], r["answer"], r["predicted"], r["gold"], r["correct"]) == ("short", "two", "2", "2", True)
    assert r["settings"]["task"] == "short-answer" and r["fingerprint"] == E.fingerprint(r["settings"])
    r = recs[("q6", "fastvid@0.5")]
    assert (r["predicted"], r["gold"], r["correct"]) == ("1", "one", True)
    r = recs[("q1", "uniform@0.5")]
    assert (r["predicted"], r["correct"]) == ("a", False)


def test_forms_never_count_for_each_other(short_bench):
    """mc and short results share the output file; each form resumes only its own records."""
    mc_cfg = fake_config(short_bench, methods=["fastvid"])
    short_cfg = fake_config(short_bench, methods=["fastvid"], form="short")
    mc = E.run_eval(mc_cfg, engine=FakeEngine(SCRIPT))
    assert mc.answered == 12
    short = E.run_eval(short_cfg, engine=FakeEngine(SHORT_SCRIPT))  # nothing of mc's counts: all 12 answered
    assert (short.skipped, short.answered) == (0, 12)
    assert mc_cfg.output_path == short_cfg.output_path and len(read_jsonl(mc_cfg.output_path)) == 24
    mc2 = E.run_eval(mc_cfg, engine=NoEngine())
    short2 = E.run_eval(short_cfg, engine=NoEngine())
    assert (mc2.answered, mc2.skipped, short2.answered, short2.skipped) == (0, 12, 0, 12)
    assert mc2.summary == mc.summary and short2.summary == short.summary
    assert [r["correct"] for r in mc.summary["settings"]] == [5, 4]
    assert [r["correct"] for r in short.summary["settings"]] == [4, 4]
    # a changed gold short answer is not the record's any more: that question is answered again
    rows = [json.loads(line) for line in short_bench.read_text().splitlines()]
    rows[0]["short_answer"] = "crimson"
    write_bench(short_bench, rows)
    engine = FakeEngine(SHORT_SCRIPT)
    third = E.run_eval(short_cfg, engine=engine)
    assert third.answered == 2 and {q for _, q, _ in engine.answered} == {"q1"}
    assert E.run_eval(mc_cfg, engine=NoEngine()).answered == 0  # mc does not look at short_answer


def test_short_form_needs_short_answers(short_bench):
    rows = [json.loads(line) for line in short_bench.read_text().splitlines()]
    # a file without any: the first line is named, before anything is written
    plain = write_bench(short_bench.with_name("plain.jsonl"), [{k: v for k, v in r.items() if k != "short_answer"}
                                                                for r in rows])
    with pytest.raises(InvalidOptionError, match=r"plain.jsonl line 1: no short_answer, which --form short needs "
                                                 r"\(6 of 6 questions lack one\)"):
        E.run_eval(fake_config(plain, form="short"), engine=NoEngine())
    assert not Path("plain.eval.jsonl").exists()
    # a mixed file: the first line that lacks one, also when --limit stops before it (the file is checked whole)
    mixed = [dict(r) for r in rows]
    del mixed[3]["short_answer"], mixed[5]["short_answer"]
    write_bench(short_bench, mixed)
    for limit in (None, 2):
        with pytest.raises(InvalidOptionError, match=r"line 4: no short_answer, .*\(2 of 6 questions lack one\)"):
            E.make_plan(fake_config(short_bench, form="short", limit=limit), NoEngine())
    mixed[3]["short_answer"], mixed[5]["short_answer"] = "3", " . "
    write_bench(short_bench, mixed)
    with pytest.raises(InvalidOptionError, match=r"line 6: short_answer ' \. ' is empty once normalised"):
        E.make_plan(fake_config(short_bench, form="short"), NoEngine())
    # multiple choice does not need them
    assert E.run_eval(fake_config(plain, methods=["fastvid"], limit=1), engine=FakeEngine(SCRIPT)).answered == 2


# ---------------------------------------------------------------------------------------------- resume
class NoEngine:
    """Stands in for the engine where a run must not need the model."""

    dtype, defaults = FakeEngine.dtype, FakeEngine.defaults

    def session(self, *a, **k):
        raise AssertionError("a question was answered again although nothing was left to do")


def test_resume_skips_done_items_and_repairs_a_torn_line(fake_bench):
    cfg = fake_config(fake_bench, methods=["fastvid"])
    out = cfg.output_path
    first = E.run_eval(cfg, engine=FakeEngine(SCRIPT))
    assert first.answered == 12
    lines = out.read_bytes()
    again = E.run_eval(cfg, engine=NoEngine())  # nothing to do: the output is not even opened for writing
    assert (again.answered, again.skipped) == (0, 12)
    assert out.read_bytes() == lines and again.summary == first.summary
    # a run killed mid-write: the last record is torn; the rerun cuts it off and answers that item again
    keep = lines.rstrip(b"\n").rfind(b"\n") + 1
    last = json.loads(lines[keep:])
    out.write_bytes(lines[:keep] + lines[keep:keep + 40])
    engine = FakeEngine(SCRIPT)
    third = E.run_eval(cfg, engine=engine)
    assert third.answered == 1 and [(s, q) for s, q, _ in engine.answered] == [(last["setting"], last["id"])]
    assert read_jsonl(out)[-1]["id"] == last["id"]
    # the same scores; only TTFT moved (the re-answered question now came first in its session, paying pruning)
    def drop(summary):
        return [{k: v for k, v in r.items() if k != "mean_ttft_ms"} for r in summary["settings"]]

    assert drop(third.summary) == drop(first.summary) and third.summary["by_type"] == first.summary["by_type"]
    # a changed setting is a new fingerprint: everything is answered again, next to the old records
    fourth = E.run_eval(fake_config(fake_bench, methods=["fastvid"], max_new_tokens=5), engine=FakeEngine(SCRIPT))
    assert fourth.answered == 12 and len(read_jsonl(out)) == 24


def test_missing_video_is_an_error_record_until_the_video_exists(fake_bench):
    rows = [json.loads(line) for line in fake_bench.read_text().splitlines()]
    rows[1]["video"] = "v/late.mp4"  # q2
    write_bench(fake_bench, rows)
    cfg = fake_config(fake_bench, methods=["fastvid"])
    first = E.run_eval(cfg, engine=FakeEngine(SCRIPT))
    assert (first.answered, first.failed) == (12, 2)
    errors = [r for r in read_jsonl(cfg.output_path) if r["status"] == "error"]
    assert {(r["id"], r["setting"]) for r in errors} == {("q2", "none@1"), ("q2", "fastvid@0.5")}
    assert errors[0]["error"] == "video not found: v/late.mp4" and errors[0]["input_error"] is True
    assert errors[0]["correct"] is None and errors[0]["options"] == OPTIONS
    rows_ = {r["setting"]: r for r in first.summary["settings"]}
    assert (rows_["none@1"]["n"], rows_["none@1"]["errors"]) == (5, 1)
    assert E.run_eval(cfg, engine=NoEngine()).answered == 0  # errors are done too (unless --retry-errors)
    (fake_bench.parent / "v" / "late.mp4").write_bytes(b"")
    engine = FakeEngine(SCRIPT)
    third = E.run_eval(cfg, engine=engine)
    assert third.answered == 2 and {q for _, q, _ in engine.answered} == {"q2"}
    assert all(r["errors"] == 0 and r["n"] == 6 for r in third.summary["settings"])


def test_retry_errors(fake_bench, monkeypatch):
    cfg = fake_config(fake_bench, methods=["fastvid"], limit=2)
    engine = FakeEngine(SCRIPT)
    calls = {"n": 0}
    real = FakeSession.answer

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(self, *a, **k)

    monkeypatch.setattr(FakeSession, "answer", flaky)
    seen = []
    first = E.run_eval(cfg, engine=engine, on_exception=seen.append)
    assert first.failed == 1 and isinstance(seen[0], RuntimeError)
    err = next(r for r in read_jsonl(cfg.output_path) if r["status"] == "error")
    assert err["error"] == "internal error: RuntimeError: boom" and err["input_error"] is False
    assert E.run_eval(cfg, engine=NoEngine()).answered == 0
    cfg.retry_errors = True
    retried = E.run_eval(cfg, engine=FakeEngine(SCRIPT))
    assert (retried.answered, retried.failed) == (1, 0)
    assert all(r["errors"] == 0 for r in retried.summary["settings"])


def test_seeded_missing_video_is_regenerated(tmp_path):
    synth = pytest.importorskip("fastvid_cli.synth")
    if not hasattr(synth, "make_split") or not hasattr(synth, "materialize"):
        pytest.skip("fastvid_cli.synth has no make_split/materialize")
    records = synth.make_split(1_000_000, 1, frames=8, size=64)
    bench = write_bench(tmp_path / "synth.jsonl", records)
    [q] = E.read_bench(bench)
    assert q.error is not None and q.seed == records[0]["seed"]
    notes = E.regenerate_videos([q])
    assert q.error is None and Path(q.path).is_file() and notes


# ---------------------------------------------------------------------------------------------- CLI and real runs
@pytest.fixture(scope="module")
def clips(tmp_path_factory, index_video) -> Path:
    """Two short clips (a.mp4: the index clip; b.mp4: another one) and a 4-question benchmark over them."""
    from videogen import index_frames, write_video

    folder = tmp_path_factory.mktemp("eval")
    (folder / "clips").mkdir()
    shutil.copy(index_video, folder / "clips" / "a.mp4")
    write_video(str(folder / "clips" / "b.mp4"), index_frames(24, 48, 64)[::-1].copy(), fps=24)
    write_bench(folder / "bench.jsonl", [row("r1", "clips/a.mp4", "A", "colour"), row("r2", "clips/b.mp4", "B"),
                                         row("r3", "clips/a.mp4", "C", "count"), row("r4", "clips/b.mp4", "D")])
    return folder


@pytest.fixture(scope="module")
def cli_args(tiny_llava, tiny_saliency):
    return ["--model", tiny_llava, "--saliency-model", tiny_saliency, "--device", "cpu", "--frames", "4",
            "--max-new-tokens", "4"]


@pytest.mark.parametrize("setup, args, message", [
    ("bad_json", [], "line 2: invalid JSON"),
    ("missing", [], "benchmark file not found"),
    ("ok", ["--method", "tome"], "--method must be one of"),
    ("ok", ["--ratio", "1.5"], "--ratio must be in"),
    ("ok", ["--videos-root", "nowhere"], "--videos-root"),
    ("ok", ["--form", "long"], "--form must be one of mc, short"),
    ("ok", ["--form", "short"], "line 1: no short_answer, which --form short needs"),
])
def test_cli_usage_errors_exit_2(tmp_path, cli_args, setup, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "bench.jsonl"
    if setup == "bad_json":
        bench.write_text(json.dumps(row("a", "v.mp4")) + "\n{oops\n", encoding="utf-8")
    elif setup == "ok":
        write_bench(bench, [row("a", "v.mp4")])
    res = invoke(bench, *cli_args, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not bench.with_name("bench.eval.jsonl").exists()


def test_cli_exit_code_8_when_items_failed(tmp_path):
    """Every item tried, some failed (here: videos that do not exist, so no model is even loaded): the results
    are still printed (--json on stdout), then one `error:` line and exit code 8."""
    bench = write_bench(tmp_path / "bench.jsonl", [row("m1", "gone/a.mp4"), row("m2", "gone/b.mp4")])
    out = tmp_path / "out.jsonl"
    args = [bench, "--model", "demo", "--device", "cpu", "--method", "uniform", "--ratio", "0.5", "-o", out]
    res = invoke(*args, "--json")
    assert res.exit_code == 8, res.output
    data = json.loads(res.stdout)
    assert data["run"] == {"items": 4, "skipped": 0, "answered": 4, "failed": 4}
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert "4 of 4 items" in line and "Traceback" not in res.stderr
    assert len(read_jsonl(out)) == 4 and all(r["status"] == "error" for r in read_jsonl(out))
    table = invoke(*args)  # resumed: the errors still stand
    assert table.exit_code == 8 and "uniform@0.5" in table.stdout, table.output


def test_records_and_table_name_the_model_as_the_user_did(tmp_path):
    """`--model demo`: records, --json and the table title say "demo", not the weights folder in the package."""
    bench = write_bench(tmp_path / "bench.jsonl", [row("m1", "gone/a.mp4")])
    args = [bench, "--model", "demo", "--device", "cpu", "--method", "uniform", "--ratio", "0.5",
            "-o", tmp_path / "out.jsonl"]
    res = invoke(*args, "--json")
    assert json.loads(res.stdout)["model"] == "demo"
    assert {r["model"] for r in read_jsonl(tmp_path / "out.jsonl")} == {"demo"}
    table = invoke(*args)
    assert table.stdout.lstrip().startswith("demo · 1 questions"), table.stdout
    assert "weights" not in table.stdout


def test_default_output_goes_to_the_working_directory_never_into_the_package(tmp_path, monkeypatch):
    """`fastvid eval <the shipped split>` without -o: results land in ./synth_test.eval.jsonl and the clip that is
    regenerated from its seed in ./videos/; nothing is written into the installed package, and a rerun resumes
    from the file in the working directory."""
    import fastvid_cli
    from fastvid_cli import synth

    split = synth.shipped_split_path()
    package = Path(fastvid_cli.__file__).resolve().parent  # the whole package, not only fastvid_cli/evaluate

    def files() -> set[Path]:
        return {p for p in package.rglob("*") if "__pycache__" not in p.parts}

    before = files()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [split, "--model", "demo", "--device", "cpu", "--limit", "1", "--method", "uniform", "--ratio", "0.5",
            "--no-reference", "--json"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert files() == before  # no results, no regenerated video inside the package
    out = work / "synth_test.eval.jsonl"
    assert json.loads(res.stdout)["output"] == "synth_test.eval.jsonl"
    [rec] = read_jsonl(out)
    assert rec["status"] == "ok" and (work / rec["video"]).is_file()
    again = invoke(*args)
    assert json.loads(again.stdout)["run"]["skipped"] == 1 and len(read_jsonl(out)) == 1


def test_cli_end_to_end_json_and_resume(clips, cli_args, tmp_path):
    """The tiny model on 2 clips x 2 questions, reference + uniform@0.25: records, JSON keys, then a rerun."""
    out = tmp_path / "results.jsonl"
    args = [clips / "bench.jsonl", *cli_args, "--method", "uniform", "--ratio", "0.25", "-o", out, "--json"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"bench", "output", "questions", "model", "form", "settings", "by_type", "run"}
    assert data["form"] == "mc"
    assert data["run"] == {"items": 8, "skipped": 0, "answered": 8, "failed": 0}
    assert [s["setting"] for s in data["settings"]] == ["none@1", "uniform@0.25"]
    for s in data["settings"]:
        assert set(s) == {"setting", "method", "ratio", "params", "reference", "n", "correct", "accuracy_pct",
                          "retention", "mean_video_tokens_kept", "video_tokens_total", "mean_ttft_ms", "errors",
                          "pending"}
        assert s["n"] == 4 and 0 <= s["correct"] <= 4 and s["accuracy_pct"] == round(100 * s["correct"] / 4, 2)
        assert s["mean_ttft_ms"] > 0 and s["video_tokens_total"] == 4 * 196
    ref, uni = data["settings"]
    assert ref["mean_video_tokens_kept"] == 4 * 196 and uni["mean_video_tokens_kept"] == 4 * 49
    assert set(data["by_type"]) == {"colour", "count", "untyped"}
    recs = read_jsonl(out)
    assert len(recs) == 8 and all(r["status"] == "ok" and r["form"] == "mc" for r in recs)
    for r in recs:
        assert r["predicted"] in (None, "A", "B", "C", "D") and r["correct"] == (r["predicted"] == r["gold"])
        assert r["frames_used"] == 4 and r["new_tokens"] >= 1 and r["ttft_ms"] > 0
    # rerun: nothing left to do, the same numbers, no model load
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    data2 = json.loads(again.stdout)
    assert data2["run"] == {"items": 8, "skipped": 8, "answered": 0, "failed": 0}
    assert data2["settings"] == data["settings"] and len(read_jsonl(out)) == 8
    # the table form of the same results
    table = invoke(*args[:-1])
    assert table.exit_code == 0, table.output
    assert "none@1" in table.stdout and "uniform@0.25" in table.stdout and "accuracy" in table.stdout
    assert "multiple choice" in " ".join(table.stdout.split())  # the form, in the title


def test_real_engine_groups_and_counts(clips, tiny_llava, tiny_saliency, tmp_path):
    """In process, with a loaded engine: one session per (video, setting) and FastVID's own token counts."""
    from fastvid_cli.engine import Engine

    engine = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))
    calls = []
    real = engine.session

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    engine.session = counting
    cfg = E.EvalConfig(bench=clips / "bench.jsonl", output=tmp_path / "out.jsonl", model=str(tiny_llava),
                       saliency_model=str(tiny_saliency), frames=4, methods=["fastvid", "random"], ratios=[0.25],
                       reference=False, max_new_tokens=2, limit=2)
    result = E.run_eval(cfg, engine=engine)
    assert (result.answered, result.failed) == (4, 0)
    assert sorted(Path(c).name for c in calls) == ["a.mp4", "b.mp4"]  # one encoding per video
    rows = {r["setting"]: r for r in result.summary["settings"]}
    assert rows["random@0.25"]["mean_video_tokens_kept"] == 4 * 49
    assert 0 < rows["fastvid@0.25"]["mean_video_tokens_kept"] <= 4 * 49
    recs = read_jsonl(cfg.output_path)
    assert {r["params"].get("seed") for r in recs if r["method"] == "random"} == {0}


def test_feature_cache_serves_a_later_run(clips, engine, tiny_llava, tiny_saliency, tmp_path, monkeypatch):
    """With a cache folder, each video is encoded once and stored; another run on the same videos (here: another
    ratio) encodes nothing. Without one, nothing is stored and every run encodes. The CLI has --cache-dir and
    --no-cache, as `ask`."""
    real = engine.features
    encoded: list[int] = []
    monkeypatch.setattr(engine, "features", lambda clip, t: encoded.append(1) or real(clip, t))
    cache = tmp_path / "features"

    def run(ratio: float, name: str, cache_dir) -> E.EvalResult:
        encoded.clear()
        cfg = E.EvalConfig(bench=clips / "bench.jsonl", output=tmp_path / name, model=str(tiny_llava),
                           saliency_model=str(tiny_saliency), frames=4, methods=["uniform"], ratios=[ratio],
                           reference=False, max_new_tokens=2, cache_dir=cache_dir)
        result = E.run_eval(cfg, engine=engine)
        assert result.failed == 0 and result.answered == 4
        return result

    run(0.5, "a.jsonl", cache)
    assert len(encoded) == 2 and len(list(cache.rglob("*.safetensors"))) == 2
    run(0.25, "b.jsonl", cache)
    assert encoded == []  # both videos' features came from the cache
    run(0.25, "c.jsonl", None)
    assert len(encoded) == 2 and len(list(cache.rglob("*.safetensors"))) == 2
    res = invoke(clips / "bench.jsonl", "--help")
    assert "--cache-dir" in res.stdout and "--no-cache" in res.stdout


def test_demo_model_short_form_end_to_end(tmp_path):
    """The shipped demo model, both forms on its documented clip (demo_example: synth seed 2_000_000, the blue
    object is a circle): the short form scores its answer right at 1.0 and at fastvid 0.1 — answers the model gives
    there by a logit margin of at least demo_example.MIN_MARGIN, checked first, so no CPU's rounding decides this
    test; the mc run on the same output answers everything again (its records are not the short form's), and each
    rerun resumes its own form."""
    from fastvid_cli import synth

    from demo_example import ANSWER, DEMO_CLIP, MIN_MARGIN, QA, SEED, ask

    spec, qas = synth.generate(SEED)
    record = {**synth.to_record(spec, qas[QA], QA), "video": str(DEMO_CLIP)}
    del record["seed"]  # the clip is there: nothing to regenerate
    assert record["short_answer"] == ANSWER
    for method, ratio in (("none", 1.0), ("fastvid", 0.1)):  # the eval's prompt, its two settings
        answer, margins, _ = ask(synth.short_prompt(qas[QA]), method, ratio)
        assert answer == ANSWER and min(margins) >= MIN_MARGIN, (method, answer, margins)
    bench = write_bench(tmp_path / "demo.jsonl", [record])
    out = tmp_path / "demo.eval.jsonl"
    args = [bench, "--model", "demo", "--device", "cpu", "--method", "fastvid", "--ratio", "0.1", "-o", out]
    res = invoke(*args, "--form", "short", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["form"] == "short" and data["run"]["answered"] == 2
    assert [(s["setting"], s["correct"], s["n"]) for s in data["settings"]] == [("none@1", 1, 1), ("fastvid@0.1", 1, 1)]
    recs = read_jsonl(out)
    assert [(r["form"], r["predicted"], r["gold"], r["correct"]) for r in recs] == [("short", ANSWER, ANSWER, True)] * 2
    mc = invoke(*args, "--json")  # the default form: nothing of the short run counts
    assert mc.exit_code == 0, mc.output
    data = json.loads(mc.stdout)
    assert data["form"] == "mc" and data["run"] == {"items": 2, "skipped": 0, "answered": 2, "failed": 0}
    assert all(r["predicted"] in (None, "A", "B", "C", "D") for r in read_jsonl(out) if r["form"] == "mc")
    table = invoke(*args, "--form", "short")  # resumed: the table of the short run, no model load
    assert table.exit_code == 0, table.output
    assert "short answer" in " ".join(table.stdout.split()) and "1 / 1" in table.stdout
    assert "0 answered now" in " ".join(table.stderr.split()) and len(read_jsonl(out)) == 4


def test_per_type_table_is_cut_into_tables_that_fit():
    """Many settings: the per-type table comes as several tables that fit the width (no cells cut to "…"), each
    opening with the reference column; every setting is shown once otherwise."""
    from fastvid_cli.cli_eval import _column_groups, _type_cell

    settings = ["none@1"] + [f"{m}@{r}" for r in ("0.5", "0.25", "0.1") for m in ("fastvid", "uniform", "holitom")]
    rows = [{"setting": s, "reference": s == "none@1"} for s in settings]
    cell = {"n": 64, "correct": 40, "accuracy_pct": 62.5}
    data = {"by_type": {t: {s: cell for s in settings} for t in ("colour_change", "first_appears", "count")}}
    groups = _column_groups(data, rows, 100)
    assert len(groups) > 1 and all(g[0] == "none@1" for g in groups)
    assert [s for g in groups for s in g if s != "none@1"] == settings[1:]
    for g in groups:
        width = len("first_appears") + 4 + sum(max(len(s), len(_type_cell(cell))) + 3 for s in g)
        assert width <= 100
    assert _column_groups(data, rows, 1000) == [settings]  # wide enough: one table
