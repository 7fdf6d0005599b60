"""What `fastvid eval` was asked (EvalConfig), the settings it compares (none@1 first, then methods x ratios), and
the fingerprint of each (question, setting), all resolved before any model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastvid_cli.batch.plan import model_settings
from fastvid_cli.pruning import DEFAULT_METHOD, spec_of
from fastvid_cli.batch.rows import MAX_FRAMES
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.evaluate.bench import BENCH_ERROR, BenchQuestion, read_bench
from fastvid_cli.evaluate.scoring import PROMPT_VERSION, SHORT_PROMPT_VERSION, SHORT_SCORING, normalize_short
from fastvid_cli.journal import fingerprint
from fastvid_cli.runs import ModelOptions

DEFAULT_RATIOS = (0.25, 0.1)
FORMS = ("mc", "short")  # multiple choice (a letter); short answer (normalised exact match against short_answer)
DEFAULT_MAX_NEW_TOKENS = 8


@dataclass
class EvalConfig(ModelOptions):
    """Everything `fastvid eval` was asked to do (command-line values; None = the model family's default),
    with the model options (model, threads, device, dtype, attn_implementation, saliency_model) of ModelOptions."""

    bench: Path
    output: Path | None = None  # default: BENCH's name with the suffix .eval.jsonl, in the working directory
    videos_root: Path | None = None
    frames: int | None = None
    fps: float | None = None  # Qwen-VL families: sampling rate when no frame count is given
    methods: list[str] = field(default_factory=lambda: [DEFAULT_METHOD])
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    # the method options given on the command line, by flag ("--dyseg-tau") or parameter name ("tau"); each setting
    # takes its method's own
    params: dict[str, Any] = field(default_factory=dict)
    reference: bool = True  # always run none@1 (retention is measured against it)
    limit: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    system: str | None = None
    compile: bool | None = None  # CUDA-graph decode (None: on where CUDA runs)
    retry_errors: bool = False
    form: str = "mc"  # "mc": options and a letter; "short": short_prompt, exact match against short_answer
    cache_dir: Path | None = None  # on-disk feature cache (feature_cache.FeatureCache); None: none. Not fingerprinted
    # --select K: frames chosen per question (settings.SelectOptions); fingerprinted ("select") only when given
    select: Any = None

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
        return spec_of(self.method).keeps_all

    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


def validate_config(cfg: EvalConfig) -> None:
    """Option checks that need no model (exit 2 on failure)."""
    from fastvid_cli.pruning import check_options, method_names

    known = method_names()
    if not cfg.methods:
        raise InvalidOptionError("give at least one --method")
    for m in cfg.methods:
        if m not in known:
            raise InvalidOptionError(f"--method must be one of {', '.join(known)} (got '{m}')")
    if not cfg.ratios and not all(spec_of(m).keeps_all for m in cfg.methods):
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
    if cfg.select is not None:
        cfg.select.validate()
        if cfg.frames is not None or cfg.fps is not None:
            raise InvalidOptionError("--select K chooses the frames; it excludes --frames and --fps")
    check_options(cfg.methods, None, cfg.params)  # on any family: the model's, once known (make_plan)
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
    """Every keyword argument of the setting's method, defaults included (pruning.full_params), sorted."""
    from fastvid_cli.pruning import full_params

    return full_params(method, defaults.get("method_family"), cfg.params)


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
    from fastvid_cli.pruning import check_options
    from fastvid_cli.settings import sampling_settings

    validate_config(cfg)
    questions = read_bench(cfg.bench, cfg.videos_root)
    if cfg.form == "short":
        check_short_answers(questions, str(cfg.bench))
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    ref, dtype_label, defaults = model_settings(cfg, engine)
    check_options(cfg.methods, defaults.get("method_family"), cfg.params)
    # default_frames None: sampled by `rate` (Qwen-VL), unless a question gives its own count
    default_frames, rate = sampling_settings(cfg.model, cfg.frames, cfg.fps, defaults)
    from fastvid_cli.compare import settings as compare_settings

    # compare's order: none@1 first, then methods x ratios high to low; a ratio of 1.0 is that reference, run once
    pairs = compare_settings(list(dict.fromkeys(cfg.methods)), list(cfg.ratios), cfg.reference)
    settings = [Setting(m, float(r), tuple(_setting_params(m, cfg, defaults).items()))
                for m, r in dict.fromkeys(pairs)]
    frames = {q.id: (cfg.select.k if cfg.select is not None else q.frames or default_frames) for q in questions}
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
                # saliency only changes what the methods that use it keep; the other methods ignore it
                "saliency_model": cfg.saliency_model if spec_of(s.method).uses_saliency else None,
                "max_new_tokens": int(cfg.max_new_tokens),
                "decoding": "greedy",
                "system": cfg.system,
            }
            if frames[q.id] is None:  # only rate-sampling families carry it: other fingerprints are unchanged
                x["fps"] = rate
            if cfg.select is not None:  # chosen frames: only these records carry it
                x["select"] = cfg.select.key()
            full[(q.id, s.label)] = x
            fps[(q.id, s.label)] = fingerprint(x)
    return EvalPlan(questions, settings, ref.source, frames, full, fps, cfg.form, ref.display)
