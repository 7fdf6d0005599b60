"""Time VidCom2 (authors' and vLLM's variants) and EVS on synthetic LLaVA-OneVision- and Qwen-VL-sized inputs.

    python benchmarks/bench_prune_vidcom2_evs.py                          # cuda if available, else cpu
    python benchmarks/bench_prune_vidcom2_evs.py --device cpu --repeat 5 --warmup 1
    python benchmarks/bench_prune_vidcom2_evs.py --device cuda --dtype fp32 --json out.json

Default shapes: 32x196x3584 (LLaVA-OV-7B, 32 frames) and 60x264x3584 (Qwen2.5-VL-7B: 60 temporal patches of
264 merged tokens = 15 840 video tokens). Issue 15's goal on an H100: <= 3 ms for the first, <= 8 ms for the
second. Each timed run goes from a synchronized start to a synchronized end, so it includes any wait for the
host the method makes. Inputs: a few "scenes" (a shared base per scene plus per-token noise), so frame budgets
are not all equal; the timing hardly depends on the content.
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

from fastvid_cli.pruning.evs import evs  # noqa: E402
from fastvid_cli.pruning.vidcom2 import vidcom2  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METHODS = {
    "vidcom2": lambda x, r: vidcom2(x, None, None, r),
    "vidcom2-vllm": lambda x, r: vidcom2(x, None, None, r, variant="vllm"),
    "evs": lambda x, r: evs(x, None, None, r),
}


def make_embeds(F: int, N: int, D: int, dtype, device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scene = torch.randint(0, 4, (F,), generator=gen).cummax(0).values  # scenes 0..3, in order
    bases = torch.randn(4, 1, D, generator=gen)
    x = bases[scene] + 0.5 * torch.randn(F, N, D, generator=gen)
    return x.to(device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(method: str, x: torch.Tensor, ratio: float, warmup: int, repeat: int) -> dict:
    run = METHODS[method]
    for _ in range(warmup):
        result = run(x, ratio)
    times = []
    for _ in range(repeat):
        sync(x.device)
        start = time.perf_counter()
        result = run(x, ratio)
        sync(x.device)
        times.append((time.perf_counter() - start) * 1e3)
    F, N, D = x.shape
    return dict(method=method, shape=f"{F}x{N}x{D}", ratio=ratio, kept=result.kept,
                median_ms=statistics.median(times), min_ms=min(times), runs=len(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--shapes", default="32x196x3584,60x264x3584", help="comma-separated FxNxD")
    parser.add_argument("--ratios", default="0.25,0.15,0.10")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 50 cuda, 5 cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="default 5 cuda, 1 cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if not set(methods) <= set(METHODS):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    device = torch.device(args.device)
    repeat = args.repeat or (50 if device.type == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    if repeat < 1 or warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"vidcom2/evs pruning benchmark: {device} ({name}), torch {torch.__version__}, {args.dtype}, "
          f"{torch.get_num_threads()} CPU threads, {warmup} warm-up + {repeat} timed runs (median)")
    header = f"{'method':>13} {'shape':>12} {'ratio':>6} {'kept':>6} {'median ms':>10} {'min ms':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            F, N, D = (int(v) for v in shape.lower().split("x"))
            x = make_embeds(F, N, D, DTYPES[args.dtype], device)
            for ratio in (float(r) for r in args.ratios.split(",")):
                for method in methods:
                    row = time_case(method, x, ratio, warmup, repeat)
                    rows.append(row)
                    print(f"{method:>13} {row['shape']:>12} {ratio:>6g} {row['kept']:>6} {row['median_ms']:>10.3f} "
                          f"{row['min_ms']:>8.3f}", flush=True)
    if args.json:
        meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(device),
                    device_name=name, torch=torch.__version__, dtype=args.dtype, threads=torch.get_num_threads())
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
