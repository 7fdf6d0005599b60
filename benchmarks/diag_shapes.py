"""Does a new prompt length cost extra on its first call? (cuDNN SDPA builds a plan per new shape)

    python benchmarks/diag_shapes.py

7B shape, one video session, questions of 10 different lengths answered twice each, with PyTorch's cuDNN
attention backend enabled (the default on H100/H200) and disabled; prints each answer's total ms.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import _common  # noqa: F401  (sets sys.path)
from bench_ask import build_7b_shaped, write_clip
from fastvid_cli.engine import GenerationOptions, PruneOptions


def main() -> None:
    eng = build_7b_shaped("cuda", torch.bfloat16)
    eng.warmup()
    video = write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=5)
    prune = PruneOptions(method="fastvid", ratio=0.1, params=dict(c=8, tau=0.9, d=0.4, p=4, beta=0.6))
    qs = ["What happens" + " and then" * i + "?" for i in range(10)]
    for cudnn in (True, False) if len(sys.argv) < 2 else (sys.argv[1] == "on",):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        for compile_ in (True, False):
            gen = GenerationOptions(max_new_tokens=8, compile=compile_)
            sess = eng.session(video, frames=32, prune=prune)
            for rnd in range(2):
                totals = []
                for q in qs:
                    r = sess.answer(q + f" (cudnn {cudnn}, compile {compile_})", gen)
                    totals.append(r.timings_ms["total"])
                print(f"cudnn_sdp={cudnn} compile={compile_} round {rnd}: "
                      + " ".join(f"{t:.0f}" for t in totals) + f" | median {sorted(totals)[5]:.0f} ms", flush=True)
        t = time.perf_counter()
        full = eng.session(video, frames=32, prune=PruneOptions(method="none", ratio=1.0))
        r = full.answer("What happens?", GenerationOptions(max_new_tokens=2), reuse_prefix=False)
        r = full.answer("What happens?", GenerationOptions(max_new_tokens=2), reuse_prefix=False)
        print(f"cudnn_sdp={cudnn}: ratio 1.0 prefill {r.timings_ms['prefill']:.1f} ms "
              f"({time.perf_counter() - t:.1f} s for the session)", flush=True)


if __name__ == "__main__":
    main()
