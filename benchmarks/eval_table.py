"""One table of every setting in two `fastvid eval -o` record files (multiple-choice and short-answer forms), over the
questions answered in every setting of both files (so an eval stopped early still gives a fair table).

    python benchmarks/eval_table.py MC.jsonl SHORT.jsonl

Prints, per setting: right answers and accuracy per form, retention vs `none@1` of the same form, mean video
tokens kept, median TTFT; then the per-type accuracy of each method at the smallest ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def load(path: str) -> dict[tuple[str, str], dict]:
    """(question id, setting) -> record, for the records that ended as an answer."""
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("status") == "ok":
                out[(rec["id"], rec["setting"])] = rec
    return out


def complete_ids(recs: dict, settings: list[str]) -> set[str]:
    by_id = defaultdict(set)
    for qid, setting in recs:
        by_id[qid].add(setting)
    return {qid for qid, have in by_id.items() if have >= set(settings)}


def main() -> None:
    mc, short = load(sys.argv[1]), load(sys.argv[2])
    settings = list(dict.fromkeys(s for _, s in mc))
    ids = sorted(complete_ids(mc, settings) & complete_ids(short, settings))
    n = len(ids)
    if not n:
        raise SystemExit("no question has every setting in both files")
    acc = {form: {s: sum(bool(recs[(q, s)]["correct"]) for q in ids) for s in settings}
           for form, recs in (("mc", mc), ("short", short))}
    print(f"{n} questions with every setting in both forms\n")
    print("| setting | multiple choice | retention | short answer | retention | video tokens kept | median TTFT ms |")
    print("|---|---|---|---|---|---|---|")
    for s in settings:
        kept = statistics.fmean(mc[(q, s)]["video_tokens_kept"] for q in ids)
        ttft = statistics.median(mc[(q, s)]["ttft_ms"] for q in ids)
        cells = []
        for form in ("mc", "short"):
            right, base = acc[form][s], acc[form]["none@1"]
            cells.append(f"{right} ({100 * right / n:.1f} %) | {100 * right / base:.1f} %")
        print(f"| {s} | {' | '.join(cells)} | {kept:.0f} | {ttft:.1f} |")
    smallest = min(float(s.split("@")[1]) for s in settings if not s.startswith("none"))
    types = sorted({mc[(q, 'none@1')]["type"] for q in ids})
    print(f"\nmultiple choice by type (%), none@1 and every method at {smallest:g}:\n")
    shown = ["none@1"] + [s for s in settings if s.endswith(f"@{smallest:g}")]
    print("| type | n | " + " | ".join(shown) + " |")
    print("|---|---|" + "---|" * len(shown))
    for t in types:
        qs = [q for q in ids if mc[(q, "none@1")]["type"] == t]
        vals = [f"{100 * sum(bool(mc[(q, s)]['correct']) for q in qs) / len(qs):.0f}" for s in shown]
        print(f"| {t} | {len(qs)} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
