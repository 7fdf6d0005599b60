"""Prompting and scoring the two forms of a question: "mc" (the options shown; the option letter read back from the
answer) and "short" (no options; the answer normalised and compared with the gold short answer)."""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Callable, Sequence

from fastvid_cli.evaluate.bench import LETTERS

PROMPT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PROMPT_VERSION = 1  # bump when mc_prompt changes: it is part of every fingerprint
SHORT_PROMPT_VERSION = 1  # bump when the short-answer prompt (synth.short_prompt) changes
SHORT_SCORING = "normalised-exact-match-v1"  # bump when normalize_short changes: records store "correct"


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
    """parser(text, options): `fastvid_cli.synth.parse_choice` for 4-option questions (one reading of answers for
    the benchmark's generator and its evaluator; it reads A-D only), else `parse_choice`."""
    from fastvid_cli import synth

    def parse(text: str, options: Sequence[str]) -> str | None:
        if len(options) != 4:
            return parse_choice(text, options)
        return synth.parse_choice(text, list(options))

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
