"""Sampling an H.264 clip with B-frames: the decoder skipping the non-reference frames it does not keep, or not.

    python benchmarks/bench_skip_nonref.py [--seconds 60] [--repeat 5] [--out skip.json]

The clip: bench_ask's synthetic 1280x720 30 fps content, encoded the way web video usually is, with B-frames
(x264 preset veryfast: 3 B-frames, B-pyramid; crf 23; a keyframe every 250 frames) - unlike the benchmarks' usual
ultrafast clip, which has none (and where skipping changes nothing). For 32 and 128 frames (`ask`'s default and
`--select 32`'s candidates), medians of --repeat runs of video.sample_frames (every core) with
FrameSink.skips_nonref on (the default) and off; the frames must be equal bit for bit (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import CLIP_DIR, environment  # noqa: E402
from fastvid_cli import video  # noqa: E402


def write(path: Path, seconds: int) -> None:
    """bench_ask's clip content, encoded as web video usually is (B-frames), under a temporary name."""
    from bench_ask import _write_clip_here

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    _write_clip_here(str(tmp), seconds, 30, (1280, 720),
                     {"preset": "veryfast", "crf": "23", "g": "250", "keyint_min": "250"})
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--write", default=None, help=argparse.SUPPRESS)  # child process: write the clip and exit
    args = ap.parse_args()
    if args.write:
        write(Path(args.write), args.seconds)
        return
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    path = CLIP_DIR / f"synthetic_{args.seconds}s_1280x720_30fps_gop250_bframes.mp4"
    if not path.exists():  # in a child process: x264 leaves the writer's process slow for a while (bench_ask)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write", str(path), "--seconds", str(args.seconds)], check=True)
        print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        time.sleep(3.0)
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        kinds = [av.video.frame.PictureType(f.pict_type).name for f in c.decode(s)]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        nonref = len(kinds) - sum(1 for _ in c.decode(s))
    env = environment("cpu")
    print(f"# bench_skip_nonref: {path.name}: {len(kinds)} frames, {kinds.count('B')} B, {nonref} non-reference | "
          f"{env}", flush=True)
    rows, ok = [], True
    for n in (32, 128):
        times: dict[bool, list[float]] = {True: [], False: []}
        frames = {}
        for r in range(args.repeat + 1):  # the first round warms the page cache and the decoders
            for skip in ((True, False) if r % 2 else (False, True)):  # neither side always goes first
                video.FrameSink.skips_nonref = skip
                t0 = time.perf_counter()
                clip = video.sample_frames(str(path), n)
                times[skip].append((time.perf_counter() - t0) * 1e3)
                frames[skip] = clip.frames
        video.FrameSink.skips_nonref = True
        same = bool(np.array_equal(frames[True], frames[False]))
        ok &= same
        on, off = (statistics.median(times[k][1:]) for k in (True, False))
        rows.append(dict(frames=n, skip_ms=on, full_ms=off, speedup=off / on, equal=same))
        print(f"| {n} frames | skipping {on:.1f} ms | decoding every frame {off:.1f} ms | {off / on:.2f}x | "
              f"frames equal: {same} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, clip=path.name, frames=len(kinds), nonref=nonref,
                                                  rows=rows), indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
