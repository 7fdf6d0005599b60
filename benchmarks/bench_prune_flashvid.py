"""Time FlashVID's pre-LLM compression (fastvid_cli.pruning.flashvid) on LLaVA-OneVision-sized inputs.

    python benchmarks/bench_prune_flashvid.py                         # cpu, 32x196x3584, ratios 0.25/0.15/0.10
    python benchmarks/bench_prune_flashvid.py --device cuda           # the issue-15 target: <= 3 ms on an H100
    python benchmarks/bench_prune_flashvid.py --family qwen2_5_vl --dtype fp32 --repeat 5
    python benchmarks/bench_prune_flashvid.py --json flashvid.json    # also write the numbers

Each timed run is wall-clock from a synchronized start to a synchronized end (it includes the method's two
device->host waits). Scenarios: "scenes" (scenes of a few frames in which 60 % of the token positions drift
slowly and the rest change, so DySeg finds segments and TSTM builds trees; a scene cut with probability 0.15 per
frame) and "distinct" (unrelated frames: every transition is a cut, complementary cuts aside). "segs" counts the
DySeg segments, "kept" the rows handed to the LLM (before the inner-LLM stage).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import time_calls  # noqa: E402
from fastvid_cli.pruning.flashvid import FAMILY_VARIANTS, flashvid  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_inputs(F: int, N: int, D: int, dtype, device, scenario: str, seed: int = 0):
    """(embeds (F, N, D), attention received (F, N)) on ``device``; built on the CPU from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(F, N, D, generator=gen)
    if scenario == "scenes":
        # a scene's tokens share an offset (as real frames share a mean), so DySeg sees high similarity inside a
        # scene; 60 % of the positions drift slowly from frame to frame, the others change
        slow = torch.rand(N, generator=gen) < 0.6
        offset = torch.randn(D, generator=gen)
        for t in range(F):
            if t and torch.rand(1, generator=gen).item() < 0.15:  # a scene cut
                offset = torch.randn(D, generator=gen)
            elif t:
                embeds[t, slow] = embeds[t - 1, slow] - offset + 0.1 * torch.randn(int(slow.sum()), D, generator=gen)
            embeds[t] += offset
    elif scenario != "distinct":
        raise ValueError(f"unknown scenario {scenario!r}")
    attn = torch.rand(F, N, generator=gen) ** 4  # a few tokens receive most of the attention
    attn /= attn.sum(dim=1, keepdim=True)
    return embeds.to(device=device, dtype=dtype), attn.to(device=device, dtype=dtype)


def time_case(args, device, F, N, D, scenario: str, ratio: float) -> dict:
    embeds, attn = make_inputs(F, N, D, DTYPES[args.dtype], device, scenario)
    params = FAMILY_VARIANTS[args.family]
    run = lambda: flashvid(embeds, None, None, ratio, attn=attn, **params)  # noqa: E731
    result, times = time_calls(run, device, args.warmup, args.repeat)
    pick = lambda frac: times[min(len(times) - 1, int(frac * len(times)))]  # noqa: E731
    return dict(shape=f"{F}x{N}x{D}", scenario=scenario, ratio=ratio, segments=len(result.segments),
                kept=result.kept, median_ms=statistics.median(times), p10_ms=pick(0.1), p90_ms=pick(0.9),
                runs=len(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default: 5 cpu, 50 cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 cpu, 10 cuda)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--ratios", default="0.25,0.15,0.10")
    parser.add_argument("--shapes", default="32x196x3584", help="comma-separated FxNxD")
    parser.add_argument("--scenarios", default="scenes,distinct")
    parser.add_argument("--family", choices=sorted(FAMILY_VARIANTS), default="llava_onevision")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.repeat = args.repeat if args.repeat is not None else (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"flashvid benchmark: device {device} ({name}), torch {torch.__version__}, {args.dtype}, "
          f"{torch.get_num_threads()} cpu threads, family {args.family}, {args.warmup} warm-up + {args.repeat} runs")
    header = (f"{'shape':>14} {'scenario':>9} {'ratio':>6} {'segs':>5} {'kept':>6} {'median ms':>10} {'p10 ms':>8} "
              f"{'p90 ms':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            F, N, D = (int(v) for v in shape.lower().split("x"))
            for scenario in args.scenarios.split(","):
                for ratio in (float(r) for r in args.ratios.split(",")):
                    row = time_case(args, device, F, N, D, scenario, ratio)
                    rows.append(row)
                    print(f"{row['shape']:>14} {scenario:>9} {ratio:>6.2f} {row['segments']:>5} {row['kept']:>6} "
                          f"{row['median_ms']:>10.3f} {row['p10_ms']:>8.3f} {row['p90_ms']:>8.3f}", flush=True)
    if args.json:
        meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(device),
                    device_name=name, torch=torch.__version__, dtype=args.dtype, family=args.family,
                    threads=torch.get_num_threads())
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
