"""1 video x N questions: one session (sample/encode/prune once, prefix KV cache shared) vs N separate asks.

    python benchmarks/bench_batch.py [--questions 10] [--new-tokens 32] [--frames 32] [--ratio 0.1]

Same process, model loaded once (excluded), LLaVA-OV-7B-shaped random bf16 model on the GPU (see bench_ask.py).
Goal of issue #3: the grouped path answers >= 4x faster than N separate asks' worth of work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ask import build_7b_shaped, write_clip  # noqa: E402
from fastvid_cli.engine import GenerationOptions, PruneOptions, versions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--answer-batch", type=int, default=16, help="rows decoded together (1: one by one)")
    args = ap.parse_args()
    engine = build_7b_shaped("cuda", torch.bfloat16)
    engine.warmup()
    video = write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=30)
    prune = PruneOptions(method="fastvid", ratio=args.ratio, params=dict(c=8, tau=0.9, d=0.4, p=4, beta=0.6))
    questions = [f"Question {i}: what happens in the video around second {i}?" for i in range(args.questions)]
    print(f"# bench_batch: {torch.cuda.get_device_name(0)} | {versions()} | {time.strftime('%Y-%m-%d')}")
    print(f"1 video x {args.questions} questions, {args.frames} frames, ratio {args.ratio}, "
          f"{args.new_tokens} new tokens each")
    for compile_ in (True, False):
        gen = GenerationOptions(max_new_tokens=args.new_tokens, compile=compile_)
        engine.ask(video, questions[0], frames=args.frames, prune=prune, gen=gen)  # warm-up (and graph capture)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        separate = [engine.ask(video, q, frames=args.frames, prune=prune, gen=gen) for q in questions]
        torch.cuda.synchronize()
        t_sep = time.perf_counter() - t0
        t0 = time.perf_counter()
        sess = engine.session(video, frames=args.frames, prune=prune)
        setup_wall = (time.perf_counter() - t0) * 1e3
        grouped, walls = [], []
        if args.answer_batch > 1:  # what `fastvid batch` does with greedy rows: decoded together
            t1 = time.perf_counter()
            grouped = sess.answer_many(questions, gen, max_rows=args.answer_batch)
            walls.append((time.perf_counter() - t1) * 1e3)
        else:
            for q in questions:
                t1 = time.perf_counter()
                grouped.append(sess.answer(q, gen, reuse_prefix=True))
                walls.append((time.perf_counter() - t1) * 1e3)
        torch.cuda.synchronize()
        t_grp = time.perf_counter() - t0
        same = sum(a.answer == b.answer for a, b in zip(separate, grouped))
        mode = grouped[-1].decode_mode
        print(f"\n## decode: {mode} (separate asks: {separate[-1].decode_mode})")
        print(f"separate asks: {t_sep:.2f} s ({t_sep / args.questions * 1e3:.0f} ms per question); stage medians: "
              + stage_medians(separate))
        print(f"one session, shared prefix: {t_grp:.2f} s ({t_grp / args.questions * 1e3:.0f} ms per question) "
              f"-> {t_sep / t_grp:.2f}x faster; session setup {sum(sess.timings.get(k, 0) for k in STAGES):.0f} ms "
              f"(session() wall {setup_wall:.0f} ms) + prefix prefill {sess.prefix_ms:.1f} ms once; per question: "
              + stage_medians(grouped))
        print(f"identical greedy answers: {same}/{args.questions}")
        print("per-answer total ms (grouped): " + " ".join(f"{r.timings_ms['total']:.0f}" for r in grouped)
              + " | answer() wall ms: " + " ".join(f"{w:.0f}" for w in walls))


STAGES = ("sample", "preprocess", "vision", "prune")


def stage_medians(reports) -> str:
    keys = ["sample", "preprocess", "vision", "prune", "prefill", "decode", "total"]
    out = []
    for k in keys:
        xs = sorted(r.timings_ms[k] for r in reports if k in r.timings_ms)
        if xs:
            out.append(f"{k} {xs[len(xs) // 2]:.1f}")
    tps = sorted(r.decode_tokens_per_s or 0 for r in reports)
    return ", ".join(out) + f" ms, decode {tps[len(tps) // 2]:.0f} tok/s"


if __name__ == "__main__":
    main()
