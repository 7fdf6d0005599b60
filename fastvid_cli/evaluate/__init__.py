"""`fastvid eval`: accuracy of several pruning settings on a JSONL benchmark, resumable.

Two forms of the same questions (``EvalConfig.form``): "mc" (default) prompts with the options (``mc_prompt``) and
scores the option letter read back by the parser; "short" prompts with ``synth.short_prompt`` (no options) and
scores the normalised exact match of the answer against the record's ``short_answer`` (``normalize_short``).

Modules: bench (the benchmark file) · scoring (prompts, reading answers) · plan (EvalConfig, settings and
fingerprints) · records · runner (run_eval) · summary (the numbers of the tables).

Resume uses fastvid_cli.journal, as `batch` does (records, torn-line repair, file lock, fingerprint): a (question,
setting) is done when the output holds a record with the question's id, the setting's fingerprint and the
same question, video, options and gold answer ("ok", or "error" unless ``retry_errors``). The form is part of
the fingerprint ("task": "multiple-choice" or "short-answer"), so records of one form never count for the other,
even in the same output file; multiple-choice fingerprints are what they were before forms existed.

Importing this package does not import torch; the model and the pruning registry are imported when used.
"""

from fastvid_cli.evaluate.bench import BENCH_ERROR, LETTERS, REQUIRED_KEYS, BenchQuestion, read_bench, regenerate_videos
from fastvid_cli.evaluate.plan import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_RATIOS,
    FORMS,
    EvalConfig,
    EvalPlan,
    Setting,
    check_short_answers,
    make_plan,
    validate_config,
)
from fastvid_cli.evaluate.records import chosen_record, error_record, gold_of, ok_record
from fastvid_cli.evaluate.runner import EvalResult, run_eval
from fastvid_cli.evaluate.scoring import (
    PROMPT_INSTRUCTION,
    PROMPT_VERSION,
    SHORT_PROMPT_VERSION,
    SHORT_SCORING,
    choice_parser,
    mc_prompt,
    normalize_short,
    parse_choice,
    short_correct,
    short_prompt,
)
from fastvid_cli.evaluate.summary import summarize
from fastvid_cli.journal import fingerprint
from fastvid_cli.runs import Progress

__all__ = [
    "BENCH_ERROR", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_RATIOS", "FORMS", "LETTERS", "PROMPT_INSTRUCTION",
    "PROMPT_VERSION", "REQUIRED_KEYS", "SHORT_PROMPT_VERSION", "SHORT_SCORING", "BenchQuestion", "EvalConfig",
    "EvalPlan", "EvalResult", "Progress", "Setting", "check_short_answers", "choice_parser", "chosen_record",
    "error_record", "fingerprint", "gold_of", "make_plan", "mc_prompt", "normalize_short", "ok_record",
    "parse_choice", "read_bench", "regenerate_videos", "run_eval", "short_correct", "short_prompt", "summarize",
    "validate_config",
]
