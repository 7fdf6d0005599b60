"""The numbers of an eval: per setting accuracy, retention against the unpruned reference, tokens kept and TTFT,
and accuracy per question type; read from the output's records (what this and earlier runs answered)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastvid_cli.evaluate.plan import EvalPlan
from fastvid_cli.evaluate.records import chosen_record
from fastvid_cli.journal import index_records

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
