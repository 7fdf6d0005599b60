"""`fastvid find` on the needle split: how often the true moment (the seconds the asked-about shape is on screen)
is the top moment of its video, and among the top 5. CPU is fine (the demo's selector).

    python benchmarks/find_needle.py --videos-root /tmp/sel-videos [--selector demo] [--limit N] [--out f.json]

Each question's text is searched in its own video, with `find`'s defaults (candidates: two per second, 64..256;
the moment rule of selection.find_moments). A moment is a hit when it overlaps the needle's [start, end).
Videos missing under --videos-root are rendered there first (synth.materialize).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvid_cli import synth, synth_needle  # noqa: E402,F401 - synth_needle registers its generator
from fastvid_cli.cli_find import _Plan  # noqa: E402
from fastvid_cli.frame_scorer import load_scorer, selector_source  # noqa: E402
from fastvid_cli.selection import find_moments  # noqa: E402
from fastvid_cli.video import sample_frames  # noqa: E402

SPLIT = Path(__file__).resolve().parents[1] / "fastvid_cli" / "data" / "synth_needle.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos-root", required=True)
    ap.add_argument("--selector", default="demo")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    records = synth.read_split(SPLIT)[: args.limit]
    synth.materialize(SPLIT, args.videos_root)
    scorer = load_scorer(selector_source(args.selector))
    top1 = top5 = 0
    rows = []
    t0 = time.perf_counter()
    for r in records:
        clip = sample_frames(str(Path(args.videos_root) / r["video"]), _Plan(None))
        scores = scorer.embed_frames(clip.frames) @ scorer.embed_texts([r["question"]])[0]
        moments = find_moments(scores, clip.timestamps, clip.duration)
        start, end = r["needle"]
        hits = [m.start < end and m.end > start for m in moments]
        top1 += bool(hits[:1] and hits[0])
        top5 += any(hits[:5])
        rows.append({"id": r["id"], "needle": r["needle"], "moments": [[m.start, m.end, m.score] for m in moments[:5]],
                     "rank": hits.index(True) + 1 if any(hits) else None})
    n = len(records)
    widths = [r["moments"][0][1] - r["moments"][0][0] for r in rows]
    print(f"find on the needle split ({n} questions, selector {scorer.source}): top-1 {top1}/{n} = "
          f"{100 * top1 / n:.1f} %, top-5 {top5}/{n} = {100 * top5 / n:.1f} %; top-1 moment {sum(widths) / n:.2f} s "
          f"long on average, {sum(w > 2 for w in widths)} longer than 2 s ({time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps({"n": n, "top1": top1, "top5": top5, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
