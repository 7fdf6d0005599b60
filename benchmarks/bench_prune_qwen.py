"""FastVID's Qwen variant: the vectorised `fastvid_qwen` against its former per-patch loop (kept in
tests/test_pruning_fastvid_qwen.py as the reference), on a Qwen2.5-VL-7B-sized input.

    python benchmarks/bench_prune_qwen.py [--frames 60] [--repeat 20]

60 temporal patches x 264 tokens x 3584 (a 60 s clip at 2 fps), with runs of near-duplicate patches and scene
jumps (the tests' input generator), ratio 0.1 and 0.27. On CUDA in bf16 (and on the CPU in float32 with fewer
repeats): median ms of each, and whether they keep the same slots.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_pruning_fastvid_qwen import random_inputs, reference_fastvid_qwen  # noqa: E402

from fastvid_cli.pruning.fastvid_qwen import fastvid_qwen  # noqa: E402


def timed(fn, args, kwargs, repeat: int, cuda: bool) -> tuple[float, object]:
    out = fn(*args, **kwargs)  # warm-up
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    x, sal, g = random_inputs(args.frames, 264, 3584, seed=0)
    devices = [("cpu", torch.float32, max(2, args.repeat // 10))]
    if torch.cuda.is_available():
        devices.insert(0, ("cuda", torch.bfloat16, args.repeat))
        print(f"# bench_prune_qwen | {torch.cuda.get_device_name(0)} | torch {torch.__version__}")
    for dev, dtype, repeat in devices:
        xs, ss, gs = x.to(dev, dtype), sal.to(dev), g.to(dev)
        for ratio in (0.1, 0.27):
            old_ms, old = timed(reference_fastvid_qwen, (xs, ss, gs), dict(ratio=ratio), repeat, dev == "cuda")
            new_ms, new = timed(fastvid_qwen, (xs, ss, gs), dict(ratio=ratio), repeat, dev == "cuda")
            same = torch.equal(old.index.cpu(), new.index.cpu())
            line = (f"{dev} {str(dtype).replace('torch.', '')} {args.frames}x264x3584 ratio {ratio}: loop "
                    f"{old_ms:.2f} ms, vectorised {new_ms:.2f} ms ({old_ms / new_ms:.1f}x); same kept slots {same}; "
                    f"kept {new.kept}, {len(new.segments)} segments, {len(new.anchors)} anchors")
            print(line, flush=True)


if __name__ == "__main__":
    main()
