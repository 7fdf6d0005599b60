"""Frame sampling (issue #6, goal 2): fastvid's sampler vs transformers' own PyAV loader, same file, same frames.

    python benchmarks/bench_sampling.py [--seconds 600] [--frames 32] [--repeat 5] [--out results.json]

The clip: a synthetic 1280x720 H.264 video (x264 ultrafast, crf 23, a keyframe every 250 frames, 30 fps) written
once with PyAV into /tmp/fastvid-bench-clips (bench_ask.py's content) and reused. Both loaders are asked for the
same frame indices (lmms-eval's linspace, which fastvid uses; transformers' loader takes them through its
`sample_indices_fn` hook), and both results are checked bit for bit against a full sequential decode of the file.
Medians of --repeat runs with min–max; the loaders alternate so that both see the same machine state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cached_clip, cores, environment, fmt, med  # noqa: E402

from fastvid_cli.video import sample_frames, sample_indices  # noqa: E402


def hf_loader():
    """transformers' PyAV loader as `f(path, indices) -> uint8 (n, H, W, 3)`, and its name.

    `transformers.video_utils.load_video(..., backend="pyav")` exists in 5.17 and 5.23 and imports torchvision
    only when it is installed. Where it cannot be imported at all, the same algorithm is run from here (see
    `_hf_algorithm`) and the name says so."""
    try:
        from transformers.video_utils import load_video
    except ImportError:
        return _hf_algorithm, "re-implementation of transformers' read_video_pyav (load_video not importable)"

    def run(path: str, indices: list[int]) -> np.ndarray:
        want = np.asarray(indices, dtype=int)
        video, _ = load_video(path, backend="pyav", sample_indices_fn=lambda metadata, **kw: want)
        return video

    return run, "transformers.video_utils.load_video(backend='pyav')"


def _hf_algorithm(path: str, indices: list[int]) -> np.ndarray:
    """What read_video_pyav does (5.17-5.23): open with PyAV's default threading, decode from the start, keep the
    frames whose running index is in `indices`, stop after the last one, convert the kept frames to RGB."""
    import av

    want = np.asarray(indices, dtype=int)
    kept = []
    with av.open(path) as container:
        container.seek(0)
        for i, frame in enumerate(container.decode(video=0)):
            if i > want[-1]:
                break
            if i in want:
                kept.append(frame)
        return np.stack([f.to_ndarray(format="rgb24") for f in kept])


def full_decode(path: str, indices: list[int]) -> tuple[np.ndarray, int]:
    """Ground truth: decode every frame in order (frame threads for speed; H.264 output does not depend on them),
    convert the wanted ones. Returns (frames, total frame count)."""
    import av

    want = set(indices)
    out = {}
    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for n, frame in enumerate(container.decode(stream), start=1):
            if n - 1 in want:
                out[n - 1] = frame.to_ndarray(format="rgb24")
    return np.stack([out[i] for i in indices]), n


def _cpu_s() -> float:
    """CPU seconds this process has used, all threads (less sensitive than wall time to other load on the box)."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def measure(path: str, frames: int, repeat: int, *, single_thread: bool = True, log=print) -> dict:
    """Time transformers' loader and ours on `path` (same indices), check both against a full decode.

    Returns dict(clip=..., indices=..., full_decode_s=..., rows=[dict(loader, key, threads, ms=(med, min, max),
    speedup, cpu_s, bit_identical, runs_ms)]) with rows "hf", "ours" (and "ours_1thread")."""
    t0 = time.perf_counter()
    ours0 = sample_frames(path, frames)  # also warms the page cache for every loader
    indices = ours0.indices
    truth, total = full_decode(path, indices)
    full_s = time.perf_counter() - t0
    assert total == ours0.total_frames, (total, ours0.total_frames)
    assert indices == sample_indices(total, frames)
    hf, hf_name = hf_loader()
    loaders = {
        "hf": lambda: hf(path, indices),
        "ours": lambda: sample_frames(path, frames).frames,
    }
    if single_thread:
        loaders["ours_1thread"] = lambda: sample_frames(path, frames, threads=1).frames
    runs = {k: [] for k in loaders}
    cpu = {k: [] for k in loaders}
    identical = {k: True for k in loaders}
    for r in range(repeat):
        for key, fn in loaders.items():
            c = _cpu_s()
            t = time.perf_counter()
            got = fn()
            runs[key].append((time.perf_counter() - t) * 1e3)
            cpu[key].append(_cpu_s() - c)
            identical[key] &= bool(got.shape == truth.shape and np.array_equal(got, truth))
        log(f"  sampling run {r + 1}/{repeat}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in runs.items()))
    stats = {k: med(v) for k, v in runs.items()}
    rows = [
        dict(loader=hf_name, key="hf", threads="PyAV default (slice)"),
        dict(loader="fastvid sample_frames (demux once, GOP-aware seeks, parallel GOP decoders)", key="ours",
             threads=f"all ({cores()})"),
        dict(loader="fastvid sample_frames, threads=1", key="ours_1thread", threads="1"),
    ]
    rows = [row for row in rows if row["key"] in loaders]
    for row in rows:
        k = row["key"]
        row.update(ms=stats[k], speedup=stats["hf"][0] / stats[k][0], bit_identical=identical[k], runs_ms=runs[k],
                   cpu_s=med(cpu[k]))
    import av

    with av.open(path) as c:
        st = c.streams.video[0]
        clip = dict(path=path, width=st.width, height=st.height, frames=total, fps=float(st.average_rate),
                    codec=st.codec_context.name, size_mib=round(Path(path).stat().st_size / 2**20, 1))
    return dict(clip=clip, indices=indices, full_decode_s=full_s, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--video", default=None, help="use this file instead of the synthetic clip")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    path = args.video or cached_clip(args.seconds)
    res = measure(path, args.frames, args.repeat, log=lambda m: print(m, flush=True))
    env = environment()
    clip, total = res["clip"], res["clip"]["frames"]
    print(f"\n# bench_sampling | {env['date']} | {env['cpu']} ({env['cores']} cores) | av {env['av']} | "
          f"transformers {env['transformers']} | torch {env['torch']} | python {env['python']}")
    print(f"clip: {clip['width']}x{clip['height']} {clip['codec']}, {total} frames ({total / clip['fps']:.0f} s), "
          f"{clip['size_mib']} MiB; {args.frames} frames at indices linspace(0, {total - 1}, {args.frames}); "
          f"ground truth = full sequential decode ({res['full_decode_s']:.1f} s incl. one sampler run)")
    print(f"\n| loader | threads | wall ms, median [min–max] of {args.repeat} | speedup vs transformers | "
          "CPU s (median) | bit-identical to full decode |")
    print("|---|---|---|---|---|---|")
    for row in res["rows"]:
        print(f"| {row['loader']} | {row['threads']} | {fmt(row['ms'], 0)} | {row['speedup']:.2f}x | "
              f"{row['cpu_s'][0]:.2f} | {'yes' if row['bit_identical'] else 'NO'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, frames=args.frames, repeat=args.repeat, **res), indent=2))


if __name__ == "__main__":
    main()
