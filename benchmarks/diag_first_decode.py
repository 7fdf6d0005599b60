"""What the first fused decode in a process costs: Triton compiling its kernels (cold: empty Triton cache) or
loading them (warm cache), plus capturing the first graph. Run twice with the same TRITON_CACHE_DIR:

    TRITON_CACHE_DIR=/tmp/tc python benchmarks/diag_first_decode.py   # cold
    TRITON_CACHE_DIR=/tmp/tc python benchmarks/diag_first_decode.py   # warm
"""

from __future__ import annotations

import os
import time

import torch

from _common import med  # noqa: F401,E402  (sets sys.path)
from fastvid_cli.decoding import Sampling, new_cache, prefill  # noqa: E402
from fastvid_cli.fast_decode import FusedDecoder  # noqa: E402
from fastvid_cli.tiny import byte_tokenizer, tiny_llava_onevision  # noqa: E402

model = tiny_llava_onevision(byte_tokenizer()).to("cuda", torch.bfloat16).eval()
emb = torch.randn(1, 100, model.config.text_config.hidden_size, device="cuda", dtype=torch.bfloat16)
pos = torch.arange(100, device="cuda").view(1, 100)
fused = FusedDecoder(model)
for i in range(2):
    with torch.inference_mode():
        cache = new_cache(model)
        logits = prefill(model, emb, pos, cache)
        t0 = time.perf_counter()
        r = fused.decode(model, logits, cache, torch.tensor([[100]], device="cuda"), Sampling(max_new_tokens=16))
        wall = (time.perf_counter() - t0) * 1e3
    print(f"call {i + 1}: {wall:.0f} ms for {len(r.token_ids)} tokens, capture {r.capture_ms} ms, mode {r.mode}, "
          f"kernels {fused.ops.name}, TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR')}", flush=True)
