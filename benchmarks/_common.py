"""Helpers shared by the benchmark scripts: cached synthetic clips, random-weight full-size modules, medians,
environment lines.

The 7B-shaped model builder and the clip writer live in bench_ask.py (its first user); this module only adds
what several scripts need on top of them, so no script carries its own copy.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CLIP_DIR = Path(os.environ.get("FASTVID_BENCH_CLIPS", "/tmp/fastvid-bench-clips"))


def cached_clip(seconds: int, *, fps: int = 30, size: tuple[int, int] = (1280, 720), gop: int = 250) -> str:
    """Path of a synthetic H.264 clip (bench_ask's content and encoder settings: x264 ultrafast, crf 23,
    keyframe every `gop` frames) written once with PyAV into CLIP_DIR and reused by later runs.

    Written under a temporary name and renamed, so an interrupted write never leaves a cut-short clip behind."""
    from bench_ask import write_clip

    if gop != 250:
        raise ValueError("bench_ask's writer uses 250-frame GOPs")
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    path = CLIP_DIR / f"synthetic_{seconds}s_{size[0]}x{size[1]}_{fps}fps_gop{gop}.mp4"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.mp4")
        t0 = time.perf_counter()
        print(f"writing {path.name} with PyAV ({seconds} s of {size[0]}x{size[1]} at {fps} fps)…", flush=True)
        write_clip(str(tmp), seconds=seconds, fps=fps, size=size)
        os.replace(tmp, path)
        print(f"  written in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return str(path)


def random_modules(device: str, dtype, *makers) -> list:
    """Build each module (`makers`: callables) directly on `device` in `dtype` with N(0, 0.02) weights, seed 0:
    full-size model shapes without their weights (speed does not depend on the values)."""
    import torch

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            modules = [make().eval() for make in makers]
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.normal_(0, 0.02)
    return modules


def time_calls(run, device, warmup: int, repeat: int):
    """(the last result, sorted ms of `repeat` calls of `run`) after `warmup` untimed calls, the device synchronised
    at both ends of each timed call."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = None
    for _ in range(warmup):
        result = run()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return result, sorted(times)


def med(xs) -> tuple[float, float, float]:
    """(median, min, max)."""
    xs = list(xs)
    return statistics.median(xs), min(xs), max(xs)


def fmt(m, digits: int = 1) -> str:
    """'median [min–max]' of a med() triple, or '–' for None."""
    if m is None:
        return "–"
    return f"{m[0]:.{digits}f} [{m[1]:.{digits}f}–{m[2]:.{digits}f}]"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment(device: str | None = None) -> dict:
    """Device, CPU, versions and date for a results header."""
    import av
    import numpy
    import torch
    import transformers

    env = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu_name(), cores=cores(), python=platform.python_version(),
               torch=torch.__version__, transformers=transformers.__version__, av=av.__version__,
               numpy=numpy.__version__)
    if device is not None:
        env["device"] = device
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        env["torchvision"] = None
    try:
        env["git"] = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    return env


def measure_setting(engine, feats, opts, prompt, repeat: int):
    """One pruning setting on encoded features: prune repeat+2 times (the first two pay allocator/kernel warm-up and
    are dropped), assemble the prompt, then `repeat` timed prefills into fresh caches.
    Returns (PruneResult, Assembled, prune ms list, prefill ms list, peak GPU GiB or None on CPU)."""
    import torch

    prune_ms = []
    for _ in range(repeat + 2):
        tm: dict[str, float] = {}
        res = engine.prune(feats, opts, tm)
        prune_ms.append(tm["prune"])
    with torch.inference_mode():
        asm = engine.adapter.assemble(prompt, feats, res.embeds, res.index)
    if engine.cuda:
        torch.cuda.reset_peak_memory_stats()
    prefill_ms = [engine.timed_prefill(asm) for _ in range(repeat)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if engine.cuda else None
    return res, asm, prune_ms[2:], prefill_ms, peak
