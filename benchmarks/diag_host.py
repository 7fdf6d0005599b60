"""Does CPU work before decoding (PyAV sampling, CPU resize) slow the decode loop down? (see RESULTS.md)

    python benchmarks/diag_host.py
"""
import sys, tempfile, time, threading
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ask import build_7b_shaped, write_clip  # noqa: E402
from fastvid_cli.decoding import Sampling, decode, new_cache, prefill  # noqa: E402
from fastvid_cli.video import sample_frames  # noqa: E402

eng = build_7b_shaped("cuda", torch.bfloat16)
eng.warmup()
a = eng.adapter
L = 680
emb = torch.randn(1, L, 3584, device="cuda", dtype=torch.bfloat16) * 0.02
pos = torch.arange(L, device="cuda")[None]
video = write_clip(str(Path(tempfile.mkdtemp()) / "c.mp4"), seconds=10)


def tok_s(label, thread=False):
    out = {}

    def run():
        with torch.inference_mode():
            cache = new_cache(a.model)
            lg = prefill(a.model, emb, pos, cache)
            torch.cuda.synchronize()
            t = time.perf_counter()
            r = decode(a.model, lg, cache, L, Sampling(max_new_tokens=33))
            out["v"] = 32 / (r.token_times[-1] - r.token_times[0])
            out["pf"] = (time.perf_counter() - t)
    if thread:
        th = threading.Thread(target=run); th.start(); th.join()
    else:
        run()
    print(f"{label}: decode {out['v']:.1f} tok/s", flush=True)


tok_s("fresh")
tok_s("fresh, worker thread", thread=True)
clip = sample_frames(video, 32)
tok_s("after sample_frames")
time.sleep(1.0)
tok_s("after sample_frames + 1 s sleep")
px = a.preprocess(clip.frames)
tok_s("after CPU preprocess")
time.sleep(1.0)
tok_s("after CPU preprocess + 1 s")
torch.set_num_threads(1)
px = a.preprocess(clip.frames)
tok_s("num_threads=1, after preprocess")
print("threads alive:", [t.name for t in threading.enumerate()])
