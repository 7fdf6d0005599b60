"""Write the synthetic video-QA test split, render its videos, or stream training examples.

    python examples/make_synth_bench.py test                      # writes fastvid_cli/data/synth_test.jsonl
    python examples/make_synth_bench.py test --videos /tmp/synth  # ... and renders its 512 videos there
    python examples/make_synth_bench.py videos /tmp/synth         # only render the videos of the shipped split
    python examples/make_synth_bench.py train --count 2000        # stream examples from the training seeds

The test split is the primary question of seeds 1_000_000 .. 1_000_511 (64 per question type); training seeds
start at 0 and never reach the test range. Videos are rendered from the seeds, so only the JSONL is committed.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from fastvid_cli import synth

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fastvid_cli" / "data" / "synth_test.jsonl"


def cmd_test(args) -> None:
    records = synth.make_split(args.seed_start, args.count, frames=args.frames, size=args.size)
    path = synth.write_jsonl(records, args.out)
    types = Counter(r["type"] for r in records)
    print(f"wrote {len(records)} questions to {path} ({path.stat().st_size / 1024:.1f} KiB)")
    print("  " + ", ".join(f"{t}: {types[t]}" for t in synth.TYPES))
    if args.videos:
        render_videos(path, args.videos)


def render_videos(jsonl: Path, out_dir: Path) -> None:
    t = time.perf_counter()
    stats = synth.materialize(jsonl, out_dir)
    print(f"videos in {out_dir}: {stats['written']} written, {stats['kept']} already there "
          f"({time.perf_counter() - t:.1f} s measured)")


def cmd_train(args) -> None:
    t = time.perf_counter()
    types: Counter = Counter()
    n = 0
    for frames, qa in synth.iter_examples(args.seed_start, args.count, frames=args.frames, size=args.size,
                                          all_questions=args.all_questions):
        n += 1
        types[qa.type] += 1
        if n == 1:
            print(f"example: frames {frames.shape} {frames.dtype}\n{synth.mc_prompt(qa)}\n-> {qa.answer}")
    dt = time.perf_counter() - t
    print(f"{n} examples from seeds {args.seed_start}..{args.seed_start + args.count - 1} in {dt:.1f} s "
          f"({n / dt:.0f}/s measured, rendering included)")
    print("  " + ", ".join(f"{t}: {types[t]}" for t in synth.TYPES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("test", help="write the fixed test split (JSONL)")
    t.add_argument("--out", type=Path, default=DEFAULT_OUT)
    t.add_argument("--seed-start", type=int, default=synth.TEST_SEED_START)
    t.add_argument("--count", type=int, default=synth.TEST_COUNT)
    t.add_argument("--videos", type=Path, help="also render the split's videos into this folder")
    t.set_defaults(func=cmd_test)

    v = sub.add_parser("videos", help="render the videos of a split (default: the shipped one)")
    v.add_argument("out_dir", type=Path)
    v.add_argument("--jsonl", type=Path, default=DEFAULT_OUT)
    v.set_defaults(func=lambda a: render_videos(a.jsonl, a.out_dir))

    tr = sub.add_parser("train", help="stream training examples (nothing is written)")
    tr.add_argument("--seed-start", type=int, default=synth.TRAIN_SEED_START)
    tr.add_argument("--count", type=int, default=1000)
    tr.add_argument("--all-questions", action="store_true", help="every question of each clip, not one")
    tr.set_defaults(func=cmd_train)

    for p in (t, tr):
        p.add_argument("--frames", type=int, default=synth.DEFAULT_FRAMES)
        p.add_argument("--size", type=int, default=synth.DEFAULT_SIZE)
    args = ap.parse_args()
    test_end = synth.TEST_SEED_START + synth.TEST_COUNT
    if args.cmd == "train" and args.seed_start < test_end and args.seed_start + args.count > synth.TEST_SEED_START:
        ap.error(f"training seeds overlap the test split's seeds {synth.TEST_SEED_START}..{test_end - 1}")
    args.func(args)


if __name__ == "__main__":
    main()
