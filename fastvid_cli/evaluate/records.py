"""The records `fastvid eval` appends to its output (fastvid_cli.journal): one per (question, setting), and the one
that stands for each."""

from __future__ import annotations

from typing import Any

from fastvid_cli.evaluate.bench import BenchQuestion
from fastvid_cli.evaluate.plan import EvalPlan, Setting
from fastvid_cli.evaluate.scoring import short_correct
from fastvid_cli.journal import now, select

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
               prune_ms=t.get("prune"), new_tokens=report.new_tokens, finished_at=now())
    return rec


def error_record(plan: EvalPlan, q: BenchQuestion, s: Setting, message: str, *, input_error: bool = False
                 ) -> dict[str, Any]:
    """A question that could not be answered. `input_error`: its video was missing, so the record stops
    counting as done once the video is there."""
    rec = _record(plan, q, s, "error", message)
    rec.update(input_error=input_error, finished_at=now())
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
