"""`fastvid batch --answer-batch N` on the CPU: greedy rows answered one by one (N = 1) vs decoded together.

    python benchmarks/bench_batch_cpu.py [--videos 1] [--questions 12] [--batches 1 4 16] [--repeat 3]

What it runs is `fastvid batch` itself (`batch.run_batch`, as the CLI calls it: grouping, background frame
decoding, one session per video, records fsync'd) with the demo model that ships in the package, on the CPU, over
a CSV of `--videos` synthetic clips (fastvid_cli.synth, 16 frames, 128x128) x `--questions` questions each. The
model is loaded once (not counted); each timed run starts from an empty output (`overwrite`), so every row is
answered. The values of N are interleaved within each repeat, after one untimed warm-up run of each, so that load
from other jobs on a shared machine hits them alike.

Printed per N: wall ms per row of the whole run (what a user waits for), and the medians over rows of the
`prefill` and `decode` timings the records carry. A batched row reports its chunk's prefill and decode (the rows
of a chunk wait for each other), so those two are per chunk, not a per-row cost; the wall time is.
Also checks that every N gives the same answers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def write_csv(folder: Path, videos: int, per_video: int) -> Path:
    """`videos` synthetic clips (seeds from 3,000,000) and a CSV of `per_video` distinct questions about each, in
    the wordings the demo model was trained on (short answer, then multiple choice, then numbered variants)."""
    import csv

    from fastvid_cli import synth
    from fastvid_cli.evaluate import mc_prompt

    rows = []
    for v in range(videos):
        seed = 3_000_000 + v
        spec, qas = synth.generate(seed)
        records = [synth.to_record(spec, qa, i) for i, qa in enumerate(qas)]
        path = folder / synth.video_name(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        synth.write_clip(path, synth.render(spec), synth.DEFAULT_FPS)
        for k in range(per_video):
            rec = records[k % len(records)]
            text = synth.short_prompt(rec) if (k // len(records)) % 2 == 0 else mc_prompt(rec["question"],
                                                                                           rec["options"])
            if k >= 2 * len(records):
                text = f"({k}) {text}"
            rows.append({"id": f"v{v}q{k}", "video": str(path), "question": text})
    out = folder / "questions.csv"
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "video", "question"])
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--questions", type=int, default=12, help="questions per video")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="--answer-batch values to time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32, help="--max-new-tokens (greedy; eos stops earlier)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--no-prefetch", action="store_true", help="no background decoding of the next video")
    args = ap.parse_args()

    import torch

    from fastvid_cli.batch import BatchConfig, run_batch
    from fastvid_cli.engine import Engine, versions

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.load("demo", device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="fastvid-bench-batch-cpu-"))
    csv_path = write_csv(folder, args.videos, args.questions)
    rows = args.videos * args.questions

    def run(n: int) -> tuple[float, list[dict]]:
        out = folder / f"answers-{n}.jsonl"
        cfg = BatchConfig(questions=csv_path, output=out, model="demo", device="cpu", temperature=0.0,
                          max_new_tokens=args.new_tokens, answer_batch=n, overwrite=True)
        t0 = time.perf_counter()
        result = run_batch(cfg, engine=engine, prefetch=not args.no_prefetch)
        wall = (time.perf_counter() - t0) * 1e3
        recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert result.final_ok == rows and len(recs) == rows, (result.final_ok, len(recs))
        return wall, recs

    print(f"# bench_batch_cpu: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()} | "
          f"{versions()} | {time.strftime('%Y-%m-%d')} | load average at start {os.getloadavg()[0]:.2f}")
    for n in args.batches:  # warm-up: one-time costs of each path, not counted
        run(n)
    walls: dict[int, list[float]] = {n: [] for n in args.batches}
    prefill: dict[int, list[float]] = {n: [] for n in args.batches}
    decode: dict[int, list[float]] = {n: [] for n in args.batches}
    answers: dict[int, list[str]] = {}
    recs: list[dict] = []
    for _ in range(args.repeat):
        for n in args.batches:
            wall, recs = run(n)
            walls[n].append(wall / rows)
            prefill[n] += [r["timings_ms"]["prefill"] for r in recs]
            decode[n] += [r["timings_ms"]["decode"] for r in recs]
            answers[n] = [r["answer"] for r in recs]
    r0 = recs[0]
    print(f"`fastvid batch`, demo model on the CPU ({r0['dtype']}), {args.videos} synthetic video(s) x "
          f"{args.questions} questions = {rows} rows, {r0['frames']} frames, ratio {r0['ratio']}, "
          f"{r0['video_tokens_kept']} of {r0['video_tokens_total']} video tokens kept, greedy, <= {args.new_tokens} "
          f"new tokens; prefetch {'off' if args.no_prefetch else 'on'}; {args.repeat} repeats after a warm-up, "
          "interleaved; model load not counted")
    ref = args.batches[0]
    print(f"\n| --answer-batch | wall ms per row, median [min-max] | record prefill ms, median | record decode ms, "
          f"median | answers equal to N={ref} |")
    print("|---|---|---|---|---|")
    for n in args.batches:
        w = walls[n]
        same = sum(a == b for a, b in zip(answers[n], answers[ref]))
        print(f"| {n} | {statistics.median(w):.1f} [{min(w):.1f}-{max(w):.1f}] | "
              f"{statistics.median(prefill[n]):.1f} | {statistics.median(decode[n]):.1f} | {same}/{rows} |")
    new_tokens = [r["new_tokens"] for r in recs]
    print(f"\nnew tokens per answer: median {statistics.median(new_tokens):g}, max {max(new_tokens)}")
    for n in args.batches:
        print(f"N={n}: wall ms per row by repeat: " + " ".join(f"{w:.1f}" for w in walls[n]))
    print(f"load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
