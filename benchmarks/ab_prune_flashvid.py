"""Interleaved A/B timing of two FlashVID implementations on the same inputs (a busy, shared CPU makes separate
runs incomparable): ``flashvid`` of the package vs the frozen pre-issue-15 copy in tests/flashvid_reference.py,
alternating calls, medians.

    python benchmarks/ab_prune_flashvid.py [--device cuda] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import flashvid_reference as old  # noqa: E402
from bench_prune_flashvid import make_inputs  # noqa: E402
from fastvid_cli.pruning import flashvid as new  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", default="32x196x3584:llava_onevision,60x264x3584:qwen2_5_vl")
    parser.add_argument("--ratios", default="0.10,0.25")
    parser.add_argument("--scenarios", default="scenes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        res = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return res, (time.perf_counter() - t) * 1e3

    print(f"A/B on {device}, {dtype}, {torch.get_num_threads()} threads, {args.repeat} alternating runs each")
    with torch.inference_mode():
        for spec in args.cases.split(","):
            shape, _, family = spec.partition(":")
            F, N, D = (int(v) for v in shape.split("x"))
            params = new.FAMILY_VARIANTS[family]
            for scenario in args.scenarios.split(","):
                embeds, attn = make_inputs(F, N, D, dtype, device, scenario)
                for ratio in (float(r) for r in args.ratios.split(",")):
                    calls = {"before": lambda: old.flashvid(embeds, None, None, ratio, attn=attn, **params),
                             "after": lambda: new.flashvid(embeds, None, None, ratio, attn=attn, **params)}
                    times = {k: [] for k in calls}
                    results = {k: fn() for k, fn in calls.items()}  # warm-up
                    for _ in range(args.repeat):
                        for k, fn in calls.items():
                            results[k], ms = timed(fn)
                            times[k].append(ms)
                    same = torch.equal(results["before"].index, results["after"].index)
                    b, a = statistics.median(times["before"]), statistics.median(times["after"])
                    print(f"{shape:>12} {family:>15} {scenario:>8} r={ratio:.2f}  before {b:9.2f} ms  after "
                          f"{a:9.2f} ms  ({b / a:.2f}x)  same index: {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
