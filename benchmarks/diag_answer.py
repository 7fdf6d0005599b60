"""Where does a question's time go in a shared-prefix session? (diagnostic for the batch scale goal)

    python benchmarks/diag_answer.py

On the 7B shape (bench_ask.build_7b_shaped): times the suffix prefill on top of a prefix KV cache in the main
thread and in a worker thread, a full prefill, one CUDA-graph decode step (CUDA events), the raw bandwidth of
the GPU (a 1 GiB copy and a Qwen2-7B MLP-sized GEMV), and the top kernels of one eager decode step.
"""

from __future__ import annotations

import threading
import time

import torch

import _common  # noqa: F401  (sets sys.path)
from bench_ask import build_7b_shaped
from fastvid_cli.decoding import Sampling, StaticDecoder, crop_cache, new_cache, prefill


def cuda_ms(fn, n=10) -> float:
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def wall_ms(fn, n=5) -> float:
    fn()
    torch.cuda.synchronize()
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        xs.append((time.perf_counter() - t) * 1e3)
    return sorted(xs)[len(xs) // 2]


@torch.inference_mode()
def main() -> None:
    eng = build_7b_shaped("cuda", torch.bfloat16)
    model = eng.model
    D = model.config.text_config.hidden_size
    x = torch.randn(1, 900, D, device="cuda", dtype=torch.bfloat16) * 0.02
    pos = torch.arange(900, device="cuda")[None] * 2
    cut = 870
    cache = new_cache(model)
    prefill(model, x[:, :cut], pos[..., :cut], cache)

    def suffix():
        prefill(model, x[:, cut:], pos[..., cut:], cache)
        crop_cache(cache, cut)

    def full():
        prefill(model, x, pos, new_cache(model))

    print(f"full prefill 900 tok: wall {wall_ms(full):.1f} ms | gpu {cuda_ms(full, 5):.1f} ms")
    print(f"suffix prefill 30 tok on 870 prefix: wall {wall_ms(suffix):.1f} ms | gpu {cuda_ms(suffix, 5):.1f} ms")
    box = {}

    def in_thread():
        with torch.inference_mode():
            box["ms"] = wall_ms(suffix)

    th = threading.Thread(target=in_thread)
    th.start()
    th.join()
    print(f"suffix prefill in a worker thread: wall {box['ms']:.1f} ms")
    after_sampling(suffix)

    static = StaticDecoder(model)
    logits = prefill(model, x, pos, c2 := new_cache(model))
    static.decode(model, logits, c2, pos[..., -1:] + 1, Sampling(max_new_tokens=4))
    print(f"graph replay (1 decode step): gpu {cuda_ms(static.graph.replay, 20):.2f} ms "
          f"(buffers {static.capacity} tokens)")
    big = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(big)
    ms = cuda_ms(lambda: dst.copy_(big), 10)
    print(f"1 GiB copy: {ms:.2f} ms -> {2 * 2**30 / ms / 1e6:.0f} GB/s (read+write)")
    w = torch.randn(18944, 3584, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 3584, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: torch.nn.functional.linear(v, w), 50)
    print(f"GEMV 18944x3584 bf16: {ms * 1e3:.0f} us -> {w.numel() * 2 / ms / 1e6:.0f} GB/s")
    from torch.profiler import ProfilerActivity, profile

    static.decode(model, logits, c2, pos[..., -1:] + 1, Sampling(max_new_tokens=2))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        static._set_length(900)
        static._step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(f"kernels in one step: {sum(e.count for e in prof.key_averages() if e.device_type.name == 'CUDA')}")
    session_path(eng)


def after_sampling(suffix) -> None:
    """Does PyAV decoding in this process leave the host slow afterwards? (threads left spinning?)"""
    import os
    import tempfile
    from pathlib import Path

    from bench_ask import write_clip
    from fastvid_cli.video import sample_frames

    video = write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=5)

    def cpu_busy(secs=0.5) -> float:
        t = os.times()
        time.sleep(secs)
        u = os.times()
        return (u.user + u.system - t.user - t.system) / secs

    print(f"before sampling: suffix {wall_ms(suffix):.1f} ms, idle cpu {cpu_busy():.2f} cores, "
          f"threads {len(os.listdir('/proc/self/task'))}")
    t0 = time.perf_counter()
    sample_frames(video, 32)
    print(f"sampled 32 frames in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    for _ in range(6):
        print(f"  +{time.perf_counter() - t0:.1f} s: suffix {wall_ms(suffix):.1f} ms, idle cpu {cpu_busy():.2f} "
              f"cores, threads {len(os.listdir('/proc/self/task'))}")


def session_path(eng) -> None:
    """The batch path (one session, shared prefix) with each answer's own timings and a wrapped prefill."""
    import tempfile
    from pathlib import Path

    import fastvid_cli.engine as engine_mod
    from bench_ask import write_clip
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    video = write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=5)
    real = engine_mod.prefill
    spans = []

    def timed(*a, **k):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = real(*a, **k)
        torch.cuda.synchronize()
        spans.append((time.perf_counter() - t) * 1e3)
        return out

    engine_mod.prefill = timed
    prune = PruneOptions(method="fastvid", ratio=0.1, params=dict(c=8, tau=0.9, d=0.4, p=4, beta=0.6))
    sess = eng.session(video, frames=32, prune=prune)
    for i in range(4):
        for compile_ in (True, False):
            t = time.perf_counter()
            r = sess.answer(f"Question {i}: what happens around second {i}?",
                            GenerationOptions(max_new_tokens=8, compile=compile_), reuse_prefix=True)
            wall = (time.perf_counter() - t) * 1e3
            print(f"answer {i} compile={compile_}: wall {wall:.1f} ms | prefill call {spans[-1]:.1f} ms | "
                  f"{ {k: round(v, 1) for k, v in r.timings_ms.items()} } | {r.decode_mode}")


if __name__ == "__main__":
    main()
