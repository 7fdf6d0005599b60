"""Where does the time go? generate() vs a plain forward/decode loop on the 7B-shaped model (see RESULTS.md).

    python benchmarks/diag_decode.py
"""
import sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ask import build_7b_shaped  # noqa: E402
from transformers import DynamicCache  # noqa: E402
from fastvid_cli.decoding import with_cache  # noqa: E402

eng = build_7b_shaped("cuda", torch.bfloat16)
eng.warmup()
a = eng.adapter
model = a.model
prompt = a.build_prompt("What happens in this video? Describe it in detail.")
for L in (680, 6343):
    D = 3584
    emb = torch.randn(1, L, D, device="cuda", dtype=torch.bfloat16) * 0.02
    pos = torch.arange(L, device="cuda")[None]
    am = torch.ones(1, L, dtype=torch.long, device="cuda")
    def gen(n, **kw):
        torch.cuda.synchronize(); t = time.perf_counter()
        model.generate(inputs_embeds=emb, attention_mask=am, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
        torch.cuda.synchronize(); return time.perf_counter() - t
    for name, kw in [("generate+pos", dict(position_ids=pos)), ("generate nopos", {})]:
        t1 = min(gen(1, **kw) for _ in range(3)); t33 = min(gen(33, **kw) for _ in range(2))
        print(f"L={L} {name}: 1-token {t1*1e3:.1f} ms, decode {(32/(t33-t1)):.1f} tok/s")
    with torch.inference_mode():
        for _ in range(2):
            cache = DynamicCache(config=model.config)
            torch.cuda.synchronize(); t = time.perf_counter()
            o = model(inputs_embeds=emb, position_ids=pos, use_cache=True, logits_to_keep=1, **with_cache(model, cache))
            nxt = o.logits[:, -1].argmax(-1, keepdim=True); torch.cuda.synchronize(); tp = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(32):
                o = model(input_ids=nxt, position_ids=torch.tensor([[L + i]], device="cuda"), use_cache=True, **with_cache(model, cache))
                nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize(); td = time.perf_counter() - t
        print(f"L={L} manual: prefill {tp*1e3:.1f} ms, decode {32/td:.1f} tok/s")
