"""Time FlashVID's pre-LLM compression (fastvid_cli.pruning.flashvid), whole and per phase.

    python benchmarks/bench_prune_flashvid.py                         # cpu: LLaVA-OV 32x196 and Qwen2.5-VL 60x264
    python benchmarks/bench_prune_flashvid.py --device cuda           # issue 15: <= 3 ms (32x196), <= 8 ms (60x264)
    python benchmarks/bench_prune_flashvid.py --shapes 32x196x3584:qwen2_5_vl --dtype fp32 --repeat 5
    python benchmarks/bench_prune_flashvid.py --json flashvid.json    # also write the numbers

Shapes are FxNxD[:family] (family: the FAMILY_VARIANTS settings; default --family). 60x264x3584 is Qwen2.5-VL on
60 s at 2 fps (120 frames -> 60 temporal patches of 264 merged tokens: 15 840). On CUDA every case runs with the
CUDA graph ("graph") and without ("eager"), unless --graphs says otherwise. Each timed run is wall-clock from a
synchronized start to a synchronized end (it includes the method's one device->host read). "phases": one more set
of eager runs with a mark after each phase (segmentation / ADTS / TSTM / DPC / sort, then the host read and the
gather of the kept rows): CUDA events on a GPU (GPU-timeline time, which in eager mode is mostly launch time),
perf_counter on the CPU; medians. Scenarios: "scenes" (scenes of a few frames in which 60 % of the token positions drift
slowly and the rest change, so DySeg finds segments and TSTM builds trees; a scene cut with probability 0.15 per
frame) and "distinct" (unrelated frames: every transition is a cut, complementary cuts aside). "segs" counts the
DySeg segments, "kept" the rows handed to the LLM (before the inner-LLM stage).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import time_calls  # noqa: E402
from fastvid_cli.pruning import flashvid as fv  # noqa: E402
from fastvid_cli.pruning import graphed  # noqa: E402
from fastvid_cli.pruning.flashvid import FAMILY_VARIANTS, flashvid  # noqa: E402

PHASES = ("segmentation", "adts", "tstm", "dpc", "sort", "read+gather")

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


@functools.lru_cache(maxsize=1)
def cached_inputs(F: int, N: int, D: int, dtype, device, scenario: str):
    """``make_inputs``, built once per shape and scenario for all its ratios and modes (60x264x3584 takes seconds
    on the CPU); never modified by the method."""
    return make_inputs(F, N, D, dtype, device, scenario)


def time_case(args, device, F, N, D, family: str, scenario: str, ratio: float, mode: str) -> dict:
    embeds, attn = cached_inputs(F, N, D, DTYPES[args.dtype], device, scenario)
    params = FAMILY_VARIANTS[family]
    graphed.enabled(mode == "graph")
    run = lambda: flashvid(embeds, None, None, ratio, attn=attn, **params)  # noqa: E731
    result, times = time_calls(run, device, args.warmup, args.repeat)
    pick = lambda frac: times[min(len(times) - 1, int(frac * len(times)))]  # noqa: E731
    row = dict(shape=f"{F}x{N}x{D}", family=family, scenario=scenario, ratio=ratio, mode=mode,
               segments=len(result.segments), kept=result.kept, median_ms=statistics.median(times),
               p10_ms=pick(0.1), p90_ms=pick(0.9), runs=len(times))
    if mode == "graph" and graphed.failures():
        row["graph_failures"] = {str(k): v for k, v in graphed.failures().items()}
    if args.phases and mode != "graph":
        row["phases_ms"] = time_phases(embeds, attn, ratio, params, device, args)
    return row


def time_phases(embeds, attn, ratio, params, device, args) -> dict[str, float]:
    """Median ms of each phase of the eager pipeline (``_device_pipeline``'s marks), then the host read + gather."""
    p = fv.check_params(ratio, 1.25, 0.7, 0.8, 0.9, params["min_segment_num"], True, True, params["selection"],
                        params["positions"], params["duplicates"], 0, None)
    F, N, D = embeds.shape
    cfg = fv._setup(F, N, D, embeds.dtype, p)
    stream = fv._seeded_stream(0, F * N, device)
    cuda = device.type == "cuda"
    samples: dict[str, list[float]] = {name: [] for name in PHASES}
    for i in range(args.warmup + args.repeat):
        stamps = []

        def mark(name, stamps=stamps):
            if cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                stamps.append((name, ev))
            else:
                stamps.append((name, time.perf_counter()))

        if cuda:
            torch.cuda.synchronize(device)
        mark("start")
        out = fv._device_pipeline(embeds, attn, stream, cfg, mark=mark)
        fv._result(embeds, out, cfg, p, [])
        mark("read+gather")
        if cuda:
            torch.cuda.synchronize(device)
        if i < args.warmup:
            continue
        for (_, a), (name, b) in zip(stamps, stamps[1:]):
            samples[name].append(a.elapsed_time(b) if cuda else (b - a) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default: 5 cpu, 50 cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 cpu, 10 cuda)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--ratios", default="0.25,0.15,0.10")
    parser.add_argument("--shapes", default="32x196x3584,60x264x3584:qwen2_5_vl",
                        help="comma-separated FxNxD[:family]")
    parser.add_argument("--scenarios", default="scenes,distinct")
    parser.add_argument("--family", choices=sorted(FAMILY_VARIANTS), default="llava_onevision")
    parser.add_argument("--graphs", choices=["both", "on", "off"], default="both",
                        help="CUDA graph replay on, off, or each case both ways (CUDA only; default both)")
    parser.add_argument("--no-phases", dest="phases", action="store_false", help="skip the per-phase runs")
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
    modes = {"both": ["graph", "eager"], "on": ["graph"], "off": ["eager"]}[args.graphs] if cuda else ["eager"]

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"flashvid benchmark: device {device} ({name}), torch {torch.__version__}, {args.dtype}, "
          f"{torch.get_num_threads()} cpu threads, {args.warmup} warm-up + {args.repeat} runs")
    header = (f"{'shape':>14} {'family':>15} {'scenario':>9} {'ratio':>6} {'mode':>6} {'segs':>5} {'kept':>6} "
              f"{'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}  phases (eager, median ms)")
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode():
        for spec in args.shapes.split(","):
            shape, _, family = spec.partition(":")
            family = family or args.family
            F, N, D = (int(v) for v in shape.lower().split("x"))
            for scenario in args.scenarios.split(","):
                for ratio in (float(r) for r in args.ratios.split(",")):
                    for mode in modes:
                        row = time_case(args, device, F, N, D, family, scenario, ratio, mode)
                        rows.append(row)
                        phases = " ".join(f"{k} {v:.3f}" for k, v in row.get("phases_ms", {}).items())
                        print(f"{row['shape']:>14} {family:>15} {scenario:>9} {ratio:>6.2f} {mode:>6} "
                              f"{row['segments']:>5} {row['kept']:>6} {row['median_ms']:>10.3f} "
                              f"{row['p10_ms']:>8.3f} {row['p90_ms']:>8.3f}  {phases}", flush=True)
                        if row.get("graph_failures"):
                            print(f"    graph capture failed, ran eagerly: {row['graph_failures']}")
    graphed.enabled(True)
    if args.json:
        meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(device),
                    device_name=name, torch=torch.__version__, dtype=args.dtype,
                    threads=torch.get_num_threads())
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
