"""Time FastVID pruning (fastvid_cli.pruning.fastvid) on synthetic LLaVA-OneVision-sized inputs.

    python benchmarks/bench_prune.py                       # cuda if available, 50 timed runs per case
    python benchmarks/bench_prune.py --device cpu --repeat 3 --warmup 1   # quick check
    python benchmarks/bench_prune.py --json results.json   # also write the numbers

Each timed run is wall-clock from a synchronized start to a synchronized end, so it includes the one
device->host transfer the method makes. Two scenarios per shape: "scenes" (frame features drift with
occasional jumps, giving segments of several frames, the realistic case) and "distinct" (unrelated frames:
every frame is its own segment).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvid_cli.pruning import fastvid  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_inputs(F: int, N: int, D: int, dtype, device, scenario: str, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    embeds = torch.randn(F, N, D, generator=gen).to(device=device, dtype=dtype)
    saliency = torch.rand(F, N, generator=gen).to(device=device, dtype=dtype)
    Dg = 1152
    if scenario == "distinct":
        feats = torch.randn(F, Dg, generator=gen)
    else:  # scenes of a few frames: small drift, a jump with probability 0.15
        feats = torch.empty(F, Dg)
        feats[0] = torch.randn(Dg, generator=gen)
        for i in range(1, F):
            jump = torch.rand(1, generator=gen).item() < 0.15
            feats[i] = torch.randn(Dg, generator=gen) if jump else feats[i - 1] + 0.2 * torch.randn(Dg, generator=gen)
    return embeds, saliency, feats.to(device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(args, device, F, N, D, scenario):
    embeds, saliency, feats = make_inputs(F, N, D, DTYPES[args.dtype], device, scenario)
    run = lambda: fastvid(embeds, saliency, feats, ratio=args.ratio)  # noqa: E731
    for _ in range(args.warmup):
        result = run()
    sync(device)
    times = []
    for _ in range(args.repeat):
        sync(device)
        start = time.perf_counter()
        result = run()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    pick = lambda frac: times[min(len(times) - 1, int(frac * len(times)))]  # noqa: E731
    return dict(
        shape=f"{F}x{N}x{D}", scenario=scenario, segments=len(result.segments), kept=result.kept,
        median_ms=statistics.median(times), p10_ms=pick(0.1), p90_ms=pick(0.9), runs=len(times),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--shapes", default="32x196x3584,128x196x3584", help="comma-separated FxNxD")
    parser.add_argument("--scenarios", default="scenes,distinct")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"fastvid pruning benchmark: device {device} ({name}), torch {torch.__version__}, {args.dtype}, "
          f"ratio {args.ratio}, {args.warmup} warm-up + {args.repeat} timed runs")
    rows = []
    header = f"{'shape':>14} {'scenario':>9} {'segments':>8} {'kept':>6} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}"
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            F, N, D = (int(v) for v in shape.lower().split("x"))
            for scenario in args.scenarios.split(","):
                row = time_case(args, device, F, N, D, scenario)
                rows.append(row)
                print(f"{row['shape']:>14} {scenario:>9} {row['segments']:>8} {row['kept']:>6} "
                      f"{row['median_ms']:>10.3f} {row['p10_ms']:>8.3f} {row['p90_ms']:>8.3f}")
    if args.json:
        meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(device),
                    device_name=name, torch=torch.__version__, dtype=args.dtype, ratio=args.ratio)
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
