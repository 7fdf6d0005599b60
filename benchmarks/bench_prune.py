"""Time pruning methods (FastVID, HoliTom) on synthetic LLaVA-OneVision-sized inputs.

    python benchmarks/bench_prune.py                       # cuda if available, 50 timed runs per case
    python benchmarks/bench_prune.py --device cpu --repeat 3 --warmup 1 --shapes 32x196x256   # quick check
    python benchmarks/bench_prune.py --methods holitom     # one method only
    python benchmarks/bench_prune.py --json results.json   # also write the numbers

Each timed run is wall-clock from a synchronized start to a synchronized end, so it includes the one
device->host transfer each method makes. Two scenarios per shape: "scenes" (frame features drift with
occasional jumps, giving segments of several frames, the realistic case; for HoliTom, about 60 % of the token
positions also stay nearly constant within a scene, giving static windows) and "distinct" (unrelated frames:
every frame is its own segment or window). HoliTom ranks dynamic tokens by the saliency tensor, standing in for
the vision attention it gets in the app (same shape, same cost). "segs" is the number of DySeg segments
(FastVID) or temporal windows (HoliTom).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import time_calls  # noqa: E402
from fastvid_cli.pruning.fastvid import fastvid  # noqa: E402
from fastvid_cli.pruning.holitom import holitom  # noqa: E402

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
    if scenario != "distinct":
        embeds = with_static_positions(embeds, feats, seed)
    return embeds, saliency, feats.to(device=device, dtype=dtype)


def with_static_positions(embeds, feats, seed: int, share: float = 0.6):
    """``embeds`` where, inside each scene of ``feats`` (a frame that does not jump), ``share`` of the token
    positions repeat the previous frame plus a little noise: HoliTom's static positions. Drawn from a generator of
    its own, so FastVID's inputs (the features, saliency and its view of the embeddings) are the same numbers."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    F, N, D = embeds.shape
    same = torch.nn.functional.cosine_similarity(feats[1:], feats[:-1], dim=-1) > 0.5  # no jump into frame i+1
    static = torch.rand(N, generator=gen) < share
    out = embeds.clone()
    for i in range(1, F):
        if same[i - 1]:
            noise = 0.05 * torch.randn(int(static.sum()), D, generator=gen).to(out)
            out[i, static.to(out.device)] = out[i - 1, static.to(out.device)] + noise
    return out


METHODS = {
    "fastvid": lambda embeds, saliency, feats, ratio: fastvid(embeds, saliency, feats, ratio=ratio),
    "holitom": lambda embeds, saliency, feats, ratio: holitom(embeds, saliency, feats, ratio, attn=saliency),
}


def time_case(args, device, F, N, D, scenario, method: str):
    embeds, saliency, feats = make_inputs(F, N, D, DTYPES[args.dtype], device, scenario)
    prune = METHODS[method]
    run = lambda: prune(embeds, saliency, feats, args.ratio)  # noqa: E731
    result, times = time_calls(run, device, args.warmup, args.repeat)
    pick = lambda frac: times[min(len(times) - 1, int(frac * len(times)))]  # noqa: E731
    return dict(
        method=method, shape=f"{F}x{N}x{D}", scenario=scenario, segments=len(result.segments), kept=result.kept,
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
    parser.add_argument("--methods", default="fastvid,holitom", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    methods = args.methods.split(",")
    if not set(methods) <= set(METHODS):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"pruning benchmark: device {device} ({name}), torch {torch.__version__}, {args.dtype}, "
          f"ratio {args.ratio}, {args.warmup} warm-up + {args.repeat} timed runs")
    rows = []
    header = (f"{'method':>8} {'shape':>14} {'scenario':>9} {'segs':>5} {'kept':>6} {'median ms':>10} {'p10 ms':>8} "
              f"{'p90 ms':>8}")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            F, N, D = (int(v) for v in shape.lower().split("x"))
            for scenario in args.scenarios.split(","):
                for method in methods:
                    row = time_case(args, device, F, N, D, scenario, method)
                    rows.append(row)
                    print(f"{method:>8} {row['shape']:>14} {scenario:>9} {row['segments']:>5} {row['kept']:>6} "
                          f"{row['median_ms']:>10.3f} {row['p10_ms']:>8.3f} {row['p90_ms']:>8.3f}")
    if args.json:
        meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(device),
                    device_name=name, torch=torch.__version__, dtype=args.dtype, ratio=args.ratio)
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
