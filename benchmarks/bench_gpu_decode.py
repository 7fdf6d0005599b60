"""Issue #17 self-check and benchmark: frame sampling with NVDEC (video_gpu, --decoder gpu) against the CPU path.

    python benchmarks/bench_gpu_decode.py --out gpu_decode.json            # on a CUDA machine with NVDEC
    python benchmarks/bench_gpu_decode.py --quick                          # fewer/shorter clips

For each clip, 32 frames (--frames), medians of --repeat runs after one warm-up:
  * CPU: video.sample_frames (demux once, GOP-aware runs on parallel software decoders, swscale RGB)
  * GPU: video_gpu.sample_clip(decoder="gpu") with the default sessions, frames ready (synchronised) when timed;
    and the same plan with 1, 2, 4 and 8 parallel NVDEC sessions (NvdecSink(sessions=k)) on the main clips
  * checks: same frame indices and timestamps; which decoder really ran (a clip NVDEC cannot take falls back to
    the CPU, with the reason); |GPU RGB - CPU RGB| max and mean in grey levels. 8-bit clips of even height must be
    equal bit for bit (yuv.py reproduces swscale's arithmetic; NVDEC's YUV equals FFmpeg's software decoders');
    other clips are reported (swscale's general scaler is not reproduced: tests/test_yuv.py's bound).
Clips: bench_e2e's 1-minute 720p H.264 clip, a 1-minute 1080p and a 10-minute 720p one (bench_ask's writer, 250-frame
GOPs), and short 720p clips written here: H.264 with B-frames, H.264 rotated 90, HEVC, HEVC Main10, VP9, VP9 of an
odd size, AV1 (PyAV opens AV1 with libdav1d, so this one is expected to fall back), plus every file of
../shared/videos and any --video given.

Exit status 1 when a check fails (indices, timestamps, or an 8-bit even-height clip not bit-exact on the GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import CLIP_DIR, cached_clip, environment  # noqa: E402

from fastvid_cli.video import sample_frames  # noqa: E402
from fastvid_cli.video_gpu import NvdecSink, nvdec_status, sample_clip  # noqa: E402


def write_codec_clip(name: str, codec: str, *, pix_fmt="yuv420p", size=(1280, 720), frames=240, rotation=None,
                     bframes=None, options=None) -> str | None:
    """A clip of tests/videogen's index frames (flat bands + moving noise), written once into CLIP_DIR; None when
    this PyAV build cannot encode it."""
    import av

    from videogen import index_frames

    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    path = CLIP_DIR / name
    if path.exists():
        return str(path)
    W, H = size
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w") as c:
            s = c.add_stream(codec, rate=30)
            s.width, s.height, s.pix_fmt = W, H, pix_fmt
            s.codec_context.gop_size = 60
            opts = dict(options or {})
            if bframes is not None:
                opts.update(bf=str(bframes), **{"x264-params": "b-adapt=0"})
            s.options = opts
            if rotation:
                s.set_display_rotation(rotation)
            for img in index_frames(frames, H, W):
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    except Exception as e:  # noqa: BLE001 - an encoder this build lacks
        print(f"  cannot write {name} ({type(e).__name__}: {e})", flush=True)
        tmp.unlink(missing_ok=True)
        return None
    tmp.rename(path)
    return str(path)


def timed(fn, repeat: int) -> tuple[list[float], object]:
    fn()  # warm-up: page cache, CUDA context, NVDEC session set-up
    times, out = [], None
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, out


def gpu_sample(path: str, frames: int, notes: list[str]):
    clip = sample_clip(path, frames, decoder="gpu", device="cuda:0", notes=notes)
    torch.cuda.synchronize()
    return clip


def check_clip(name: str, path: str, frames: int, repeat: int, sessions: list[int]) -> dict:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        fmt = s.codec_context.pix_fmt or ""
        coded_height = s.codec_context.height
        info = f"{s.codec_context.name} {fmt} {s.codec_context.width}x{coded_height}"
    cpu_t, cpu = timed(lambda: sample_frames(path, frames), repeat)
    notes: list[str] = []
    t0 = time.perf_counter()
    first = gpu_sample(path, frames, notes)  # cold: includes this process's first NVDEC set-up for this clip
    cold_ms = (time.perf_counter() - t0) * 1e3
    gpu_t, gpu = timed(lambda: gpu_sample(path, frames, []), repeat)
    row = dict(clip=name, path=path, stream=info, cpu_ms=statistics.median(cpu_t), gpu_ms=statistics.median(gpu_t),
               gpu_cold_ms=cold_ms, cpu_runs=cpu_t, gpu_runs=gpu_t, decoder=first.decoder, fallback=notes,
               indices_equal=gpu.indices == cpu.indices, timestamps_equal=gpu.timestamps == cpu.timestamps,
               rotation=(cpu.rotation, gpu.rotation))
    if gpu.decoder == "gpu":
        g = gpu.frames.cpu().numpy().astype(np.int16)
        d = np.abs(g - cpu.frames.astype(np.int16)) if g.shape == cpu.frames.shape else None
        row.update(max_diff=int(d.max()) if d is not None else None, mean_diff=float(d.mean()) if d is not None else None,
                   shape_equal=d is not None)
        # swscale's fast path, which yuv.py reproduces exactly: 8-bit 4:2:0 of even (stored) height
        row["must_be_exact"] = fmt in ("yuv420p", "yuvj420p") and coded_height % 2 == 0
        for k in sessions:
            sink = NvdecSink("cuda:0", sessions=k)
            t, _ = timed(lambda: sample_frames(path, frames, sink=sink), repeat)
            row[f"gpu_ms_{k}_sessions"] = statistics.median(t)
    ok = row["indices_equal"] and row["timestamps_equal"]
    if row.get("must_be_exact"):
        ok = ok and row.get("max_diff") == 0
    row["ok"] = bool(ok)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the 10-minute and 1080p clips")
    ap.add_argument("--video", action="append", default=[], help="another clip to check (repeatable)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    # Before torch uses the GPU (as Engine.load does for --decoder gpu): without it every NVDEC open fails with
    # ENOTSUP and each clip falls back (what the 2026-12-07 session-6 run of this script measured: CPU vs CPU).
    from fastvid_cli.video_gpu import share_primary_context

    print(f"NVDEC context sharing: {share_primary_context(0)}", flush=True)
    status = nvdec_status(0)
    print(f"NVDEC: {status}", flush=True)
    if not status["available"]:
        sys.exit(f"NVDEC is not available: {status['reason']}")

    print("clips…", flush=True)
    clips: list[tuple[str, str | None, list[int]]] = [
        ("H.264 720p 60 s (bench_e2e)", cached_clip(60, size=(1280, 720)), [1, 2, 4, 8])]
    if not args.quick:
        clips += [("H.264 1080p 60 s", cached_clip(60, size=(1920, 1080)), [1, 2, 4, 8]),
                  ("H.264 720p 600 s", cached_clip(600, size=(1280, 720)), [1, 2, 4, 8])]
    clips += [
        ("H.264 B-frames 720p", write_codec_clip("g_h264_bf.mp4", "libx264", bframes=3,
                                                  options={"preset": "medium", "crf": "18"}), [4]),
        ("H.264 rotated 90", write_codec_clip("g_h264_rot90.mp4", "libx264", rotation=90,
                                              options={"preset": "ultrafast"}), []),
        ("HEVC 8-bit", write_codec_clip("g_hevc.mp4", "libx265", options={"x265-params": "log-level=error"}), [4]),
        ("HEVC Main10", write_codec_clip("g_hevc10.mp4", "libx265", pix_fmt="yuv420p10le",
                                         options={"x265-params": "log-level=error"}), []),
        ("VP9", write_codec_clip("g_vp9.webm", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}), [4]),
        ("VP9 odd size 641x361", write_codec_clip("g_vp9_odd.webm", "libvpx-vp9", size=(641, 361),
                                                  options={"deadline": "realtime", "cpu-used": "8"}), []),
        ("AV1 (SVT)", write_codec_clip("g_av1.mp4", "libsvtav1", frames=120), []),
    ]
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
    for extra in sorted(shared.glob("*")) if shared.is_dir() else []:
        if extra.suffix.lower() in (".mp4", ".webm", ".mkv", ".mov"):
            clips.append((extra.name, str(extra), []))
    clips += [(Path(v).name, v, [4]) for v in args.video]

    rows = []
    for name, path, sessions in clips:
        if path is None:
            continue
        print(f"{name}…", flush=True)
        try:
            rows.append(check_clip(name, path, args.frames, args.repeat, sessions))
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append(dict(clip=name, path=path, error=f"{type(e).__name__}: {e}", ok=False))
            print(f"  ERROR {rows[-1]['error']}", flush=True)

    env = environment()
    env["device"] = torch.cuda.get_device_name(0)
    print(f"\n# bench_gpu_decode | {env['date']} | {env['device']} | torch {env['torch']} | av {env['av']} | "
          f"{env['cores']} CPU cores | {args.frames} frames | medians of {args.repeat}")
    print("\n| clip | stream | CPU ms | GPU ms (cold) | speedup | 1/2/4/8 sessions ms | ran on | max/mean diff | "
          "indices, ts | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['clip']} | | | | | | | | | ERROR {r['error']} |")
            continue
        sess = "/".join(f"{r[f'gpu_ms_{k}_sessions']:.0f}" for k in (1, 2, 4, 8) if f"gpu_ms_{k}_sessions" in r)
        diff = f"{r['max_diff']} / {r['mean_diff']:.3f}" if r.get("max_diff") is not None else "–"
        ran = r["decoder"] + (f" ({r['fallback'][0][:70]})" if r["fallback"] else "")
        print(f"| {r['clip']} | {r['stream']} | {r['cpu_ms']:.1f} | {r['gpu_ms']:.1f} ({r['gpu_cold_ms']:.0f}) | "
              f"{r['cpu_ms'] / r['gpu_ms']:.2f}x | {sess or '–'} | {ran} | {diff} | "
              f"{'same' if r['indices_equal'] and r['timestamps_equal'] else 'DIFFERENT'} | "
              f"{'ok' if r['ok'] else 'FAIL'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, nvdec=status, rows=rows), indent=2, default=str))
        print(f"wrote {args.out}")
    failed = [r["clip"] for r in rows if not r["ok"]]
    print("self-check: " + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
