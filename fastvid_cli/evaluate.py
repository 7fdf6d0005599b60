"""Benchmark evaluation: accuracy of several pruning settings on a JSONL benchmark, resumable.

Two forms of the same questions (``EvalConfig.form``): "mc" (default) prompts with the options (``mc_prompt``) and
scores the option letter read back by the parser; "short" prompts with ``synth.short_prompt`` (no options) and
scores the normalised exact match of the answer against the record's ``short_answer`` (``normalize_short``).

Data path::

    BENCH.jsonl ──read_bench──▶ questions, the whole file validated before anything runs (a bad line is a usage
      error naming its line; a missing video becomes an error record) ──make_plan──▶ settings (the unpruned
      reference none@1 first, then methods × ratios, high to low) and a fingerprint per (question, setting)
      ──run_eval──▶ per (video, frames): ONE encoding; per setting: one pruned session whose prompt-prefix KV
      cache serves every question of that video ──Appender──▶ one fsync'd JSON line per (question, setting)
      ──summarize──▶ accuracy, retention vs the reference, mean tokens kept, mean TTFT (per question type too).

Resume uses fastvid_cli.batch's machinery (records, torn-line repair, file lock, fingerprint): a (question,
setting) is done when the output holds a record with the question's id, the setting's fingerprint and the
same question, video, options and gold answer ("ok", or "error" unless ``retry_errors``). The form is part of
the fingerprint ("task": "multiple-choice" or "short-answer"), so records of one form never count for the other,
even in the same output file; multiple-choice fingerprints are what they were before forms existed.

Importing this module does not import torch; the model and the pruning registry are imported when used.
"""

from __future__ import annotations

import datetime
import inspect
import json
import math
import os
import re
import string
import threading
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from fastvid_cli.batch import (
    MAX_FRAMES,
    PRUNE_PARAM_NAMES,
    Appender,
    family_defaults,
    fingerprint,
    index_records,
    is_done,
    read_records,
    select,
)
from fastvid_cli.errors import FastVidError, InvalidOptionError, ServerError

# Whole-file problems (missing, unreadable, invalid JSON, a line lacking a required key) are usage errors, exit 2.
BENCH_ERROR = InvalidOptionError

REQUIRED_KEYS = ("id", "video", "question", "options", "answer")
LETTERS = "ABCDEFGH"  # options per question: 2 to 8 (the benchmark format uses 4, A-D)
PROMPT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PROMPT_VERSION = 1  # bump when mc_prompt changes: it is part of every fingerprint
DEFAULT_RATIOS = (0.25, 0.1)
FORMS = ("mc", "short")  # multiple choice (a letter); short answer (normalised exact match against short_answer)
SHORT_PROMPT_VERSION = 1  # bump when the short-answer prompt (synth.short_prompt) changes
SHORT_SCORING = "normalised-exact-match-v1"  # bump when normalize_short changes: records store "correct"
DEFAULT_MAX_NEW_TOKENS = 8


# ---------------------------------------------------------------------------------------------- input
@dataclass
class BenchQuestion:
    """One line of the benchmark JSONL, validated. `error` set: answered by error records (missing video)."""

    line: int  # 1-based line number in the file
    id: str
    video: str  # as written in the file
    path: str  # resolved against `root`
    question: str
    options: list[str]
    answer: str  # the gold letter
    type: str | None = None
    seed: int | None = None
    frames: int | None = None
    short_answer: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the line's object, for synth.materialize
    root: str = ""  # the folder relative video paths are taken against: --videos-root or the file's folder
    error: str | None = None


def read_bench(path: str | os.PathLike, videos_root: str | os.PathLike | None = None) -> list[BenchQuestion]:
    """Read and validate the whole benchmark JSONL (format: see fastvid_cli/synth.py; keys id, video,
    question, options, answer; optional type, seed, frames, short_answer). Blank lines are skipped. Any
    problem with the file or a line raises BENCH_ERROR naming the line; a missing video only sets `error`."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise BENCH_ERROR(f"benchmark file not found: {name}")
    if not p.is_file():
        raise BENCH_ERROR(f"benchmark file is not a regular file: {name}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BENCH_ERROR(f"cannot read benchmark file {name}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BENCH_ERROR(f"benchmark file {name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start})") from None
    if videos_root is not None:
        root = Path(videos_root).expanduser()
        if root.exists() and not root.is_dir():
            raise BENCH_ERROR(f"--videos-root {videos_root} is not a folder")
        root = root.resolve()  # may not exist yet: videos regenerated from their seeds are written there
    else:
        root = p.resolve().parent
        if _in_package(root):  # the shipped split: its videos are not there, and regenerated ones must not go there
            root = Path.cwd().resolve()
    questions: list[BenchQuestion] = []
    first_line_of: dict[str, int] = {}
    for n, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise BENCH_ERROR(f"{name} line {n}: invalid JSON ({detail})") from None
        if not isinstance(obj, dict):
            raise BENCH_ERROR(f"{name} line {n}: expected a JSON object, got {type(obj).__name__}")
        q = _parse_question(obj, n, name, root)
        if q.id in first_line_of:
            raise BENCH_ERROR(f"{name} line {n}: duplicate id '{q.id}' (first used on line {first_line_of[q.id]})")
        first_line_of[q.id] = n
        questions.append(q)
    if not questions:
        raise BENCH_ERROR(f"benchmark file {name} has no questions")
    if not root.exists() and not any(q.seed is not None for q in questions):  # nothing to regenerate into it
        raise BENCH_ERROR(f"--videos-root {videos_root} does not exist")
    return questions


def _in_package(folder: Path) -> bool:
    """Whether `folder` is inside the installed fastvid_cli package (site-packages for a normal install)."""
    package = Path(__file__).resolve().parent
    return folder == package or package in folder.parents


def _parse_question(obj: dict[str, Any], n: int, name: str, root: Path) -> BenchQuestion:
    def bad(message: str) -> InvalidOptionError:
        return BENCH_ERROR(f"{name} line {n}: {message}")

    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise bad(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    id_ = obj["id"]
    if isinstance(id_, int) and not isinstance(id_, bool):
        id_ = str(id_)
    if not isinstance(id_, str) or not id_.strip():
        raise bad(f"id must be a non-empty string, got {id_!r}")
    video, question, options = obj["video"], obj["question"], obj["options"]
    if not isinstance(video, str) or not video.strip():
        raise bad(f"video must be a non-empty path, got {video!r}")
    if not isinstance(question, str) or not question.strip():
        raise bad(f"question must be a non-empty string, got {question!r}")
    if (not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS)
            or not all(isinstance(o, str) and o.strip() for o in options)):
        raise bad(f"options must be a list of 2 to {len(LETTERS)} non-empty strings, got {options!r}")
    answer = obj["answer"]
    letters = LETTERS[: len(options)]
    if not isinstance(answer, str) or answer.strip().upper() not in letters or not answer.strip():
        raise bad(f"answer must be one of the letters {', '.join(letters)}, got {answer!r}")
    type_, seed, frames, short = obj.get("type"), obj.get("seed"), obj.get("frames"), obj.get("short_answer")
    if type_ is not None and not isinstance(type_, str):
        raise bad(f"type must be a string, got {type_!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad(f"seed must be an integer, got {seed!r}")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or
                               not 1 <= frames <= MAX_FRAMES):
        raise bad(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}")
    if short is not None and not isinstance(short, str):
        raise bad(f"short_answer must be a string, got {short!r}")
    vp = Path(video.strip()).expanduser()
    vp = vp if vp.is_absolute() else root / vp
    q = BenchQuestion(line=n, id=id_.strip(), video=video, path=str(vp), question=question, options=list(options),
                      answer=answer.strip().upper(), type=type_, seed=seed, frames=frames, short_answer=short,
                      raw=obj, root=str(root))
    q.error = _video_problem(q)
    return q


def _video_problem(q: BenchQuestion) -> str | None:
    vp = Path(q.path)
    if not vp.exists():
        return f"video not found: {q.video}"
    if not vp.is_file():
        return f"video is not a regular file: {q.video}"
    return None


def regenerate_videos(questions: list[BenchQuestion]) -> list[str]:
    """Questions whose video is missing but that have a "seed": re-render their clips with
    ``fastvid_cli.synth.materialize`` (when that module exists), which writes ``root / record["video"]`` for the
    records of a JSONL; it gets a temporary one holding just these records. Clears `error` of each question
    whose video is there now; a failure becomes their error. Returns notes for the user."""
    wanted = [q for q in questions if q.error and q.seed is not None and not Path(q.path).exists()]
    if not wanted:
        return []
    try:
        from fastvid_cli import synth  # optional: only the synthetic benchmark generator provides it
    except ImportError:
        return []
    materialize = getattr(synth, "materialize", None)
    if not callable(materialize):
        return []
    import tempfile

    notes = []
    by_root: dict[str, list[BenchQuestion]] = defaultdict(list)
    for q in wanted:
        by_root[q.root].append(q)
    for root, qs in by_root.items():
        with tempfile.TemporaryDirectory(prefix="fastvid-eval-") as tmp:
            split = Path(tmp) / "regenerate.jsonl"
            split.write_text("".join(json.dumps(q.raw, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
            try:
                materialize(split, root)
            except Exception as e:  # a failed regeneration is these questions' error, not the run's
                msg = (e.one_line() if isinstance(e, FastVidError) else " ".join(str(e).split())) or type(e).__name__
                for q in qs:
                    q.error = f"video not found: {q.video}; regenerating it from its seed failed: {msg[:200]}"
                notes.append(f"could not regenerate {len(qs)} video(s) from their seeds: {msg[:200]}")
                continue
        done = 0
        for q in qs:
            q.error = _video_problem(q)
            done += q.error is None
        if done:
            notes.append(f"regenerated the videos of {done} question(s) from their seeds under {root}")
    return notes


# ---------------------------------------------------------------------------------------------- prompt, parse
def mc_prompt(question: str, options: Sequence[str]) -> str:
    """The multiple-choice prompt: the question, one "X. option" line per option, then the instruction."""
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options)]
    lines.append(PROMPT_INSTRUCTION)
    return "\n".join(lines)


_PREFIX = re.compile(r"^(?:the\s+)?(?:(?:best|correct|right|final)\s+)?(?:answer|option|choice)\s*(?:is\s*)?"
                     r"(?:[:\-]\s*)?", re.IGNORECASE)
# A letter at the start that stands alone: end of text, punctuation, or a word that is not lowercase prose
# ("A dog runs" is a sentence, not option A).
_LEAD = re.compile(r"^[\s*_(\[\"'`]*([A-Z])(?=$|\s*[.):\]，,;*_\"'`]|\s*\n|\s+[^a-z\s])")
_KEYWORD = re.compile(r"(?i:answer|option|choice)\s*(?:is\s*)?(?:[:\-]\s*)?[(\[]?([A-Z])(?![A-Za-z])")
_BRACKETED = re.compile(r"[(\[]([A-Z])[)\]]")


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def parse_choice(text: str, options: Sequence[str] | int = 4) -> str | None:
    """The option letter a model's answer names, or None. `options`: the option texts (or just their count).

    In order: a standalone letter at the start (after "Answer:", "The answer is", quotes, brackets or markdown
    bold), a letter after "answer"/"option"/"choice" anywhere, a bracketed "(X)" anywhere, then the text of
    exactly one option named in the answer (whole words). A letter beyond the options is not one."""
    n = options if isinstance(options, int) else len(options)
    letters = LETTERS[:n]
    t = (text or "").strip()
    if not t:
        return None
    body = _PREFIX.sub("", t, count=1)
    m = _LEAD.match(body)
    if m:
        return m.group(1) if m.group(1) in letters else None
    if len(body) == 1 or (len(body) == 2 and body[1] in ".)"):
        return body[0].upper() if body[0].upper() in letters else None  # a lone lowercase letter
    for pattern in (_KEYWORD, _BRACKETED):
        m = pattern.search(t)
        if m and m.group(1) in letters:
            return m.group(1)
    if not isinstance(options, int):
        said = f" {_norm(body)} "
        hits = [LETTERS[i] for i, o in enumerate(options) if _norm(o) and f" {_norm(o)} " in said]
        if len(hits) == 1:
            return hits[0]
    return None


def choice_parser() -> Callable[[str, Sequence[str]], str | None]:
    """parser(text, options): `fastvid_cli.synth.parse_choice` for 4-option questions when that module provides
    it (one reading of answers for the benchmark's generator and its evaluator), else `parse_choice`."""
    try:
        from fastvid_cli import synth
    except ImportError:
        return parse_choice
    theirs = getattr(synth, "parse_choice", None)
    if not callable(theirs):
        return parse_choice
    try:
        positional = [p for p in inspect.signature(theirs).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return parse_choice
    with_options = len(positional) >= 2

    def parse(text: str, options: Sequence[str]) -> str | None:
        if len(options) != 4:  # synth's reads A-D only
            return parse_choice(text, options)
        return theirs(text, list(options)) if with_options else theirs(text)

    return parse


def short_prompt(question: str) -> str:
    """The short-answer prompt: ``synth.short_prompt`` (the question, then "Answer the question using a single
    word or phrase."), the wording the demo model was trained on. No options are shown."""
    from fastvid_cli import synth

    return synth.short_prompt({"question": question.strip()})


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_ARTICLES = ("a", "an", "the")
_EDGE = string.whitespace + string.punctuation + "“”‘’«»…–—"


def normalize_short(text: str | None) -> str:
    """A short answer as compared by ``--form short`` (rule "normalised-exact-match-v1"):

    1. Unicode NFKC, lowercase (casefold), runs of whitespace (newlines too) become one space;
    2. whitespace and punctuation are stripped from both ends ("Blue." "**blue**" "(blue)" -> "blue");
    3. one leading article "a", "an" or "the" is dropped when a word follows ("The circle" -> "circle");
    4. number words zero..twenty become digits, word by word ("Two." -> "2", "two circles" -> "2 circles").

    Nothing else: punctuation inside the answer stays, and extra words make it a different answer ("it is blue"
    does not match "blue"). An empty or missing answer gives ""."""
    s = " ".join(unicodedata.normalize("NFKC", text or "").casefold().split()).strip(_EDGE)
    words = s.split(" ") if s else []
    if len(words) > 1 and words[0] in _ARTICLES:
        words = " ".join(words[1:]).strip(_EDGE).split(" ")
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w)


def short_correct(answer: str | None, gold: str | None) -> bool:
    """Whether a generated answer matches the gold short answer under ``normalize_short``."""
    want = normalize_short(gold)
    return bool(want) and normalize_short(answer) == want


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class EvalConfig:
    """Everything `fastvid eval` was asked to do (command-line values; None = the model family's default)."""

    bench: Path
    output: Path | None = None  # default: BENCH's name with the suffix .eval.jsonl, in the working directory
    videos_root: Path | None = None
    model: str = "llava-ov-7b"
    threads: int | None = None  # torch's CPU threads (engine.set_threads)
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    saliency_model: str | None = None
    frames: int | None = None
    fps: float | None = None  # Qwen-VL families: sampling rate when no frame count is given
    methods: list[str] = field(default_factory=lambda: ["fastvid"])
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    params: dict[str, Any] = field(default_factory=dict)  # fastvid c, tau, d, p, beta given on the command line
    holitom_inner: str | None = None  # "K,R": HoliTom's inner-LLM stage for the holitom methods
    random_seed: int | None = None  # seed of the "random" method (default: its registry default)
    reference: bool = True  # always run none@1 (retention is measured against it)
    limit: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    system: str | None = None
    compile: bool | None = None  # CUDA-graph decode (None: on where CUDA runs)
    retry_errors: bool = False
    form: str = "mc"  # "mc": options and a letter; "short": short_prompt, exact match against short_answer
    cache_dir: Path | None = None  # on-disk feature cache (feature_cache.FeatureCache); None: none. Not fingerprinted

    @property
    def output_path(self) -> Path:
        if self.output is not None:
            return Path(self.output)
        # the working directory, never next to BENCH: that may be the installed package (the shipped split)
        return Path(Path(self.bench).stem + ".eval.jsonl")

    def generation(self):
        from fastvid_cli.settings import GenerationOptions

        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=0.0, system=self.system,
                                 compile=self.compile)


@dataclass(frozen=True)
class Setting:
    """One pruning setting of the run."""

    method: str
    ratio: float
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.method}@{self.ratio:g}"

    @property
    def is_reference(self) -> bool:
        return self.method == "none"

    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


def validate_config(cfg: EvalConfig) -> None:
    """Option checks that need no model (exit 2 on failure)."""
    from fastvid_cli.pruning import method_names

    known = method_names()
    if not cfg.methods:
        raise InvalidOptionError("give at least one --method")
    for m in cfg.methods:
        if m not in known:
            raise InvalidOptionError(f"--method must be one of {', '.join(known)} (got '{m}')")
    if not cfg.ratios and any(m != "none" for m in cfg.methods):
        raise InvalidOptionError("give at least one --ratio")
    for r in cfg.ratios:
        if not isinstance(r, (int, float)) or math.isnan(r) or not 0 < r <= 1:
            raise InvalidOptionError(f"--ratio must be in (0, 1] (got {r})")
    if cfg.form not in FORMS:
        raise InvalidOptionError(f"--form must be one of {', '.join(FORMS)} (got '{cfg.form}')")
    if cfg.limit is not None and cfg.limit < 1:
        raise InvalidOptionError(f"--limit must be >= 1 (got {cfg.limit})")
    if cfg.frames is not None and not 1 <= cfg.frames <= MAX_FRAMES:
        raise InvalidOptionError(f"--frames must be from 1 to {MAX_FRAMES} (got {cfg.frames})")
    if cfg.random_seed is not None and cfg.random_seed < 0:
        raise InvalidOptionError(f"--random-seed must be >= 0 (got {cfg.random_seed})")
    cfg.generation().validate()
    out = cfg.output_path
    if out.is_dir():
        raise InvalidOptionError(f"--output {out} is a folder; give a file name, e.g. results.jsonl")
    if not out.parent.is_dir():
        raise InvalidOptionError(f"--output {out}: folder {out.parent} does not exist")
    if out.resolve() == Path(cfg.bench).resolve():
        raise InvalidOptionError("--output must differ from the benchmark file")


@dataclass
class EvalPlan:
    """The validated questions and settings, and the fingerprint of each (question, setting). Nothing written."""

    questions: list[BenchQuestion]
    settings: list[Setting]
    model: str  # resolved: hub id or absolute folder (what fingerprints hold)
    frames: dict[str, int]  # question id -> frames requested
    full_settings: dict[tuple[str, str], dict[str, Any]]  # (question id, setting label) -> settings
    fps: dict[tuple[str, str], str]  # (question id, setting label) -> fingerprint
    form: str = "mc"  # EvalConfig.form
    model_name: str = ""  # what records and the table call the model: the alias as given (as `ask` and `batch` do)

    def fp(self, q: BenchQuestion, s: Setting) -> str:
        return self.fps[(q.id, s.label)]


def _setting_params(method: str, cfg: EvalConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    from fastvid_cli.pruning import DEFAULTS

    params = {k: v for k, v in DEFAULTS.get(method, {}).items() if k != "ratio"}
    if method == "fastvid":
        params.update({k: defaults[k] for k in PRUNE_PARAM_NAMES + ("ignore",) if k in defaults})
        params.update(cfg.params)
    if method == "random" and cfg.random_seed is not None:
        params["seed"] = int(cfg.random_seed)
    if method.startswith("holitom") and cfg.holitom_inner:
        from fastvid_cli.inner_merge import parse_inner

        params["inner"] = parse_inner(cfg.holitom_inner)
    return {k: params[k] for k in sorted(params)}


def check_short_answers(questions: list[BenchQuestion], name: str) -> None:
    """--form short needs a gold short answer on every line of the file (also with --limit: the file is checked
    whole, as read_bench does). The first line without one, or with one that normalises to nothing, is a usage
    error naming it."""
    lacking = [q for q in questions if q.short_answer is None]
    if lacking:
        raise BENCH_ERROR(f"{name} line {lacking[0].line}: no short_answer, which --form short needs ("
                          f"{len(lacking)} of {len(questions)} questions lack one); use --form mc or add "
                          f"\"short_answer\" to every line")
    for q in questions:
        if not normalize_short(q.short_answer):
            raise BENCH_ERROR(f"{name} line {q.line}: short_answer {q.short_answer!r} is empty once normalised "
                              f"(--form short compares normalised answers)")


def make_plan(cfg: EvalConfig, engine=None) -> EvalPlan:
    """Everything that can fail on a bad option or a bad benchmark file fails here, before any write or load.
    `engine` (already loaded) supplies the defaults and dtype; otherwise they come from the checkpoint config."""
    from fastvid_cli.models import (ALIASES, check_attn_implementation, check_device_name, check_dtype_name,
                                    resolve_model)

    validate_config(cfg)
    questions = read_bench(cfg.bench, cfg.videos_root)
    if cfg.form == "short":
        check_short_answers(questions, str(cfg.bench))
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    ref = getattr(engine, "ref", None) or resolve_model(cfg.model)  # a server's engine knows its model
    check_device_name(cfg.device)
    check_dtype_name(cfg.dtype)
    check_attn_implementation(cfg.attn_implementation)
    if engine is None:
        from fastvid_cli.models.base import dtype_name, resolve_device, resolve_dtype

        dtype_label = dtype_name(resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
        defaults = family_defaults(cfg.model)
    else:
        dtype_label = str(engine.dtype).replace("torch.", "")
        defaults = dict(engine.defaults)
    alias = ALIASES.get(cfg.model.strip())
    default_frames = cfg.frames or (alias.frames if alias else defaults["frames"])
    default_frames = int(default_frames) if default_frames else None  # None: sampled by rate (Qwen-VL)
    if "ignore" in cfg.params and "ignore" not in defaults:
        raise InvalidOptionError("--dyseg-ignore applies to FastVID on Qwen-VL models")
    if cfg.holitom_inner and not any(m.startswith("holitom") for m in cfg.methods):
        raise InvalidOptionError("--holitom-inner applies to --method holitom or holitom-orig")
    if cfg.fps is not None and cfg.frames:
        raise InvalidOptionError("--frames and --fps exclude each other")
    if cfg.fps is not None and "fps" not in defaults:
        raise InvalidOptionError("--fps applies to the Qwen-VL families; this model samples --frames uniformly")
    rate = float(cfg.fps or defaults.get("fps") or 0.0) or None
    from fastvid_cli.compare import settings as compare_settings

    # compare's order: none@1 first, then methods x ratios high to low; a ratio of 1.0 is that reference, run once
    pairs = compare_settings(list(dict.fromkeys(cfg.methods)), list(cfg.ratios), cfg.reference)
    settings = [Setting(m, float(r), tuple(_setting_params(m, cfg, defaults).items()))
                for m, r in dict.fromkeys(pairs)]
    frames = {q.id: q.frames or default_frames for q in questions}
    # the form's part of every fingerprint; multiple choice keeps the keys it had before forms existed
    if cfg.form == "mc":
        task: dict[str, Any] = {"task": "multiple-choice", "prompt_version": PROMPT_VERSION}
    else:
        task = {"task": "short-answer", "prompt_version": SHORT_PROMPT_VERSION, "scoring": SHORT_SCORING}
    full: dict[tuple[str, str], dict[str, Any]] = {}
    fps: dict[tuple[str, str], str] = {}
    for q in questions:
        for s in settings:
            x = {
                **task,
                "model": ref.source,
                "dtype": dtype_label,
                "method": s.method,
                "ratio": float(s.ratio),
                "frames": frames[q.id],
                "params": s.param_dict(),
                # saliency only changes what FastVID keeps; the other methods ignore it
                "saliency_model": cfg.saliency_model if s.method == "fastvid" else None,
                "max_new_tokens": int(cfg.max_new_tokens),
                "decoding": "greedy",
                "system": cfg.system,
            }
            if frames[q.id] is None:  # only rate-sampling families carry it: other fingerprints are unchanged
                x["fps"] = rate
            full[(q.id, s.label)] = x
            fps[(q.id, s.label)] = fingerprint(x)
    return EvalPlan(questions, settings, ref.source, frames, full, fps, cfg.form, ref.display)


# ---------------------------------------------------------------------------------------------- records
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def gold_of(q: BenchQuestion, form: str) -> str | None:
    """What a record of `form` is scored against: the answer letter (mc) or the short answer (short)."""
    return q.short_answer if form == "short" else q.answer


def _record(plan: EvalPlan, q: BenchQuestion, s: Setting, status: str, error: str | None) -> dict[str, Any]:
    return {
        "id": q.id, "line": q.line, "status": status, "error": error, "form": plan.form,
        "setting": s.label, "method": s.method, "ratio": s.ratio, "params": s.param_dict(),
        "frames": plan.frames[q.id], "video": q.video, "video_path": q.path, "type": q.type,
        "question": q.question, "options": list(q.options), "gold": gold_of(q, plan.form),
        "answer": None, "predicted": None, "correct": None,
        "video_tokens_kept": None, "video_tokens_total": None, "frames_used": None,
        "ttft_ms": None, "prefill_ms": None, "prune_ms": None, "new_tokens": None,
        "input_error": False, "model": plan.model_name, "settings": plan.full_settings[(q.id, s.label)],
        "fingerprint": plan.fp(q, s), "finished_at": None,
    }


def ok_record(plan: EvalPlan, q: BenchQuestion, s: Setting, report, predicted: str | None) -> dict[str, Any]:
    """An answered question: the raw answer, what was read from it (mc: the parsed letter; short: the normalised
    answer) and whether it is the gold one, tokens, times."""
    rec = _record(plan, q, s, "ok", None)
    t = report.timings_ms
    correct = short_correct(report.answer, q.short_answer) if plan.form == "short" else predicted == q.answer
    rec.update(answer=report.answer, predicted=predicted, correct=correct,
               video_tokens_kept=report.video_tokens_kept, video_tokens_total=report.video_tokens_total,
               frames_used=report.frames, ttft_ms=t.get("ttft"), prefill_ms=t.get("prefill"),
               prune_ms=t.get("prune"), new_tokens=report.new_tokens, finished_at=_now())
    return rec


def error_record(plan: EvalPlan, q: BenchQuestion, s: Setting, message: str, *, input_error: bool = False
                 ) -> dict[str, Any]:
    """A question that could not be answered. `input_error`: its video was missing, so the record stops
    counting as done once the video is there."""
    rec = _record(plan, q, s, "error", message)
    rec.update(input_error=input_error, finished_at=_now())
    return rec


def chosen_record(by_key: dict[str, list[dict[str, Any]]], q: BenchQuestion, fp: str, form: str = "mc"
                  ) -> dict[str, Any] | None:
    """The record standing for `q` under fingerprint `fp` (batch.select: the first "ok", else the latest
    error), among records with the same options and gold answer (of `form`: the letter or the short answer). An
    error about a missing video no longer stands once the video is there."""
    gold = gold_of(q, form)
    same = [r for r in by_key.get(q.id, []) if r.get("options") == q.options and r.get("gold") == gold
            and not (r.get("input_error") and q.error is None)]
    return select(same, q, fp)


# ---------------------------------------------------------------------------------------------- the run
class Progress:
    """What run_eval tells its display; this one shows nothing (cli_eval.EvalProgress draws it)."""

    def start(self, *, total: int, pending: int, skipped: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def answering(self) -> None:
        """The model is ready: items from now on take model time."""

    def item_done(self, record: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class EvalResult:
    plan: EvalPlan
    bench: Path
    output: Path
    total: int = 0  # questions x settings
    skipped: int = 0  # done before this run
    answered: int = 0  # records written by this run
    failed: int = 0  # of those, errors
    summary: dict[str, Any] = field(default_factory=dict)


def run_eval(cfg: EvalConfig, *, engine=None, progress: Progress | None = None,
             stop: threading.Event | None = None,
             on_exception: Callable[[BaseException], None] | None = None) -> EvalResult:
    """Answer every (question, setting) of `cfg` not answered yet, then summarize the output file.

    `engine`: an already loaded Engine (tests); else one is loaded, and only if something is left to answer.
    `stop`: when set, the run stops after the current question. `on_exception`: called with unexpected
    exceptions recorded as errors (the CLI prints their traceback under --debug)."""
    progress = progress or Progress()
    stop = stop or threading.Event()
    plan = make_plan(cfg, engine)
    output = cfg.output_path
    by_key = index_records(read_records([output]))
    todo: list[tuple[BenchQuestion, Setting]] = [
        (q, s) for q in plan.questions for s in plan.settings
        if not is_done(chosen_record(by_key, q, plan.fp(q, s), plan.form), cfg.retry_errors)]
    result = EvalResult(plan=plan, bench=Path(cfg.bench), output=output,
                        total=len(plan.questions) * len(plan.settings))
    result.skipped = result.total - len(todo)
    progress.start(total=result.total, pending=len(todo), skipped=result.skipped)
    try:
        if todo:
            for note in regenerate_videos(list({q.id: q for q, _ in todo}.values())):
                progress.note(note)
            appender = Appender(output)
            if appender.repaired:
                progress.note(f"removed a torn last line ({appender.repaired} bytes) from {output.name}")

            def write(rec: dict[str, Any]) -> None:
                appender.append(rec)
                result.answered += 1
                result.failed += rec["status"] == "error"
                progress.item_done(rec)

            try:
                for q, s in todo:
                    if q.error and not stop.is_set():
                        write(error_record(plan, q, s, q.error, input_error=True))
                answerable = [(q, s) for q, s in todo if not q.error]
                if answerable and not stop.is_set():
                    engine = engine or _load_engine(cfg, progress)
                    fcache = None
                    if cfg.cache_dir is not None:
                        from fastvid_cli.feature_cache import FeatureCache

                        fcache = FeatureCache(cfg.cache_dir)
                    progress.answering()
                    for group in _groups(answerable, plan):
                        if stop.is_set():
                            break
                        _answer_group(engine, group, plan, cfg, write, stop, on_exception, fcache)
            finally:
                appender.close()
    finally:
        progress.stop()
    result.summary = summarize(plan, read_records([output]))
    return result


def _load_engine(cfg: EvalConfig, progress: Progress):
    from fastvid_cli.engine import Engine, set_threads

    set_threads(cfg.threads)
    progress.note("loading model…")
    engine = Engine.load(cfg.model, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
                         saliency_model=cfg.saliency_model)
    progress.note(f"model loaded in {(engine.load_ms or 0) / 1e3:.2f} s on {engine.device}")
    for w in engine.adapter.warnings:
        progress.note(f"warning: {w}")
    return engine


@dataclass
class _Group:
    """The pending items of one video at one frame count: one encoding, one pruned session per setting."""

    path: str
    frames: int | None  # None: sampled by rate (EvalConfig.fps, or the family's default)
    items: dict[Setting, list[BenchQuestion]]


def _groups(items: list[tuple[BenchQuestion, Setting]], plan: EvalPlan) -> list[_Group]:
    groups: dict[tuple[str, int], _Group] = {}
    for q, s in items:  # items come question by question, so groups are in order of their first question
        key = (os.path.realpath(q.path), plan.frames[q.id])
        g = groups.setdefault(key, _Group(q.path, plan.frames[q.id], {}))
        g.items.setdefault(s, []).append(q)
    order = {s: i for i, s in enumerate(plan.settings)}
    for g in groups.values():
        g.items = dict(sorted(g.items.items(), key=lambda kv: order[kv[0]]))
    return list(groups.values())


def _one_line(e: BaseException, on_exception=None) -> str:
    if isinstance(e, FastVidError):
        return e.one_line()
    if on_exception is not None:
        on_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"internal error: {type(e).__name__}: {msg[:300]}"


def _answer_group(engine, group: _Group, plan: EvalPlan, cfg: EvalConfig, write: Callable, stop: threading.Event,
                  on_exception=None, feature_cache=None) -> None:
    """Encode the video once (method none keeps the features whole; looked up in / stored to `feature_cache` when
    given), then per setting prune those features into a session whose prompt-prefix KV cache every question of
    this video shares."""
    from fastvid_cli.settings import PruneOptions

    gen = cfg.generation()
    short = plan.form == "short"
    parse = None if short else choice_parser()
    try:
        base = engine.session(group.path, frames=group.frames, prune=PruneOptions(method="none", ratio=1.0),
                              system=gen.system, fps=cfg.fps if group.frames is None else None,
                              feature_cache=feature_cache)
    except Exception as e:  # an unreadable video (or a bug): its items are errors, the run goes on
        message = _one_line(e, on_exception)
        for s, qs in group.items.items():
            for q in qs:
                write(error_record(plan, q, s, message))
        return
    for s, qs in group.items.items():
        if stop.is_set():
            return
        opts = PruneOptions(method=s.method, ratio=s.ratio, params=s.param_dict())
        try:
            sess = engine.session_from_features(group.path, base.clip, base.feats, opts, base.timings,
                                                system=gen.system)
        except Exception as e:
            message = _one_line(e, on_exception)
            for q in qs:
                write(error_record(plan, q, s, message))
            continue
        for i, q in enumerate(qs):
            if stop.is_set():
                return
            try:
                # The first question of a session also pays pruning (and, inside answer, the prefix prefill).
                prompt = short_prompt(q.question) if short else mc_prompt(q.question, q.options)
                report = sess.answer(prompt, gen, reuse_prefix=True,
                                     lead_ms=sess.timings.get("prune", 0.0) if i == 0 else 0.0)
            except ServerError:  # --server: the server is gone or failing; stop (what was written stays)
                raise
            except Exception as e:
                write(error_record(plan, q, s, _one_line(e, on_exception)))
                continue
            if report.stop_reason == "interrupted":  # Ctrl-C mid-answer: a partial answer is not recorded
                raise KeyboardInterrupt
            read = normalize_short(report.answer) if short else parse(report.answer, q.options)
            write(ok_record(plan, q, s, report, read))
        del sess  # frees this setting's prefix KV cache before the next one is built


# ---------------------------------------------------------------------------------------------- summary
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def summarize(plan: EvalPlan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting, over the plan's questions: n (answered), correct, accuracy %, retention (accuracy / the
    reference's accuracy), mean video tokens kept, mean TTFT ms, errors, pending; and per question type."""
    by_key = index_records(records)
    rows: list[dict[str, Any]] = []
    typed = any(q.type for q in plan.questions)
    by_type: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in plan.settings:
        oks: list[dict[str, Any]] = []
        errors = pending = 0
        per_type: dict[str, list[bool]] = {q.type or "untyped": [] for q in plan.questions} if typed else {}
        for q in plan.questions:
            rec = chosen_record(by_key, q, plan.fp(q, s), plan.form)
            if rec is None:
                pending += 1
            elif rec.get("status") == "ok":
                oks.append(rec)
                if typed:
                    per_type[q.type or "untyped"].append(bool(rec.get("correct")))
            else:
                errors += 1
        n = len(oks)
        correct = sum(bool(r.get("correct")) for r in oks)
        kept = [r["video_tokens_kept"] for r in oks if r.get("video_tokens_kept") is not None]
        ttft = [r["ttft_ms"] for r in oks if r.get("ttft_ms") is not None]
        rows.append({
            "setting": s.label, "method": s.method, "ratio": s.ratio, "params": s.param_dict(),
            "reference": s.is_reference, "n": n, "correct": correct,
            "accuracy_pct": _round(100.0 * correct / n, 2) if n else None,
            "retention": None, "mean_video_tokens_kept": _round(_mean(kept), 1),
            "video_tokens_total": oks[0].get("video_tokens_total") if oks else None,
            "mean_ttft_ms": _round(_mean(ttft), 3), "errors": errors, "pending": pending,
        })
        for t, marks in per_type.items():
            by_type[t][s.label] = {"n": len(marks), "correct": sum(marks),
                                   "accuracy_pct": round(100.0 * sum(marks) / len(marks), 2) if marks else None}
    ref = next((r for r in rows if r["reference"]), None)
    if ref is not None and ref["n"] and ref["correct"]:
        ref_acc = ref["correct"] / ref["n"]
        for r in rows:
            if r["n"]:
                r["retention"] = round(r["correct"] / r["n"] / ref_acc, 4)
    return {"questions": len(plan.questions), "model": plan.model_name, "form": plan.form, "settings": rows,
            "by_type": {t: by_type[t] for t in sorted(by_type)}}
