"""Where the sampling part of TTFT goes on the benchmark's 1-minute 1280x720 clip (bench_e2e's TTFT clip).

    python benchmarks/diag_sampling.py [--seconds 60] [--repeat 5]

Prints, for several thread budgets: wall ms of `sample_frames(path, 32)` (median of --repeat), the decoders and
FFmpeg threads each, and when the frames become available (ms after the start at which 8/16/24/32 of the 32
frames are converted), i.e. how much of the vision work could overlap with decoding. Also: the RGB conversion
cost per frame, and a single GOP run decoded with 1..8 FFmpeg threads.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from _common import cached_clip, med  # noqa: E402  (sets sys.path)
from fastvid_cli import video as V  # noqa: E402


def arrivals(path: str, frames: int, threads: int) -> tuple[float, list[float]]:
    stamps: list[float] = []
    orig = V._rgb

    def timed(frame, w, h):
        a = orig(frame, w, h)
        stamps.append(time.perf_counter())
        return a

    V._rgb = timed
    try:
        t0 = time.perf_counter()
        V.sample_frames(path, frames, threads=threads)
        t1 = time.perf_counter()
    finally:
        V._rgb = orig
    return (t1 - t0) * 1e3, sorted((s - t0) * 1e3 for s in stamps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    path = cached_clip(args.seconds)
    cores = len(os.sched_getaffinity(0))
    print(f"# diag_sampling | {path} | {cores} cores", flush=True)
    V.sample_frames(path, args.frames)  # page cache warm
    out = {}
    for budget in sorted({cores // 2, cores, 2 * cores, 4 * cores, 8}):
        walls, quart = [], []
        for _ in range(args.repeat):
            w, st = arrivals(path, args.frames, budget)
            walls.append(w)
            n = len(st)
            quart.append([st[max(0, n * q // 4 - 1)] for q in (1, 2, 3, 4)])
        qs = np.median(np.array(quart), axis=0).round(1).tolist()
        m = med(walls)
        out[budget] = dict(wall=m, arrivals_25_50_75_100=qs)
        print(f"threads budget {budget:3d}: {m[0]:7.1f} ms [{m[1]:.1f}-{m[2]:.1f}] | frames ready at 25/50/75/100 %: "
              f"{qs}", flush=True)
    # RGB conversion alone
    import av

    with av.open(path) as c:
        fr = next(c.decode(video=0))
        t0 = time.perf_counter()
        for _ in range(32):
            fr.to_ndarray(format="rgb24")
        rgb_ms = (time.perf_counter() - t0) * 1e3 / 32
    print(f"rgb24 conversion: {rgb_ms:.2f} ms/frame (x32 = {rgb_ms * 32:.0f} ms of CPU)", flush=True)
    # one GOP (250 frames) decoded with n FFmpeg threads
    for n in (1, 2, 4, 8, 16):
        with av.open(path) as c:
            s = c.streams.video[0]
            s.codec_context.thread_type = "AUTO"
            s.codec_context.thread_count = n
            t0 = time.perf_counter()
            for i, _f in enumerate(c.decode(s)):
                if i == 249:
                    break
            ms = (time.perf_counter() - t0) * 1e3
        out[f"gop_threads_{n}"] = ms
        print(f"one 250-frame GOP, {n:2d} FFmpeg threads: {ms:.1f} ms ({ms / 250:.2f} ms/frame)", flush=True)
    out["rgb_ms_per_frame"] = rgb_ms
    print(json.dumps(out))


if __name__ == "__main__":
    main()
