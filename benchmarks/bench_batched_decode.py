"""Batched decode on the GPU: the fused B-row step (`fast_decode.FusedRowsDecoder`, CUDA graphs per row bucket and
span) against the eager batched loop (`decoding.decode_rows`) and the one-answer fused step, for B = 1, 4, 8, 16 rows
of questions about one video (a shared prefix, question suffixes of different lengths).

    python benchmarks/bench_batched_decode.py --device cuda [--rows 1 4 8 16] [--prefix 2000] [--tokens 128]
                                              [--repeat 3] [--out f.json]
    python benchmarks/bench_batched_decode.py --device cpu --shape tiny --tokens 16 --repeat 1   # smoke run

1. Checks (unless --skip-checks; CUDA only): the row-batched Triton kernels against the torch reference ops on
   7B-shaped bf16 inputs of 16 rows (max abs difference), and tiny random LLaVA-OV / Qwen2.5-VL / Qwen3-VL models in
   float32 (Triton kernels, CUDA graphs, several spans, a row bucket with a spare row): each row's greedy stream
   against the same prompt decoded alone by the one-answer fused step, twice (the second run replays the graphs).
2. Speed on a LLaVA-OV-7B-shaped random bf16 model (bench_ask.build_7b_shaped; eos off, so every row decodes
   --tokens): aggregate decode tok/s (all rows' tokens after the first / wall time from the first to the last
   token) of the eager batched loop and the fused rows step, medians of --repeat runs after one warm-up run (the
   captures), and the one-answer fused step as the B=1 reference. Then the greedy check at full size: each row
   decoded alone by the one-answer fused step; for a row whose stream departs, the step and the one-row pick's
   margin there (top-1 minus runner-up logit of a stock forward over the prompt and the tokens so far), since bf16
   products of 16 rows and of one row round differently and a near-tie can go either way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import environment, fmt, med  # noqa: E402  (sets sys.path)
from fastvid_cli.decoding import Sampling, decode_rows, new_cache, prefill, prefill_rows  # noqa: E402
from fastvid_cli.fast_decode import FusedDecoder, FusedRowsDecoder  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ prompts
def make_prompts(model, device: str, dtype, prefix: int, rows: int, seed: int = 0, mrope: bool = False):
    """A shared prefix (embeddings (1,P,H), positions with gaps as after pruning) and `rows` suffixes of different
    lengths (8..47 tokens) at positions continuing after the unpruned prefix. Returns (prefix cache, suffix embeds,
    suffix positions, the prefix inputs)."""
    H = model.config.text_config.hidden_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    emb = (torch.randn(1, prefix, H, generator=g) * 0.02).to(device, dtype)
    pos = torch.arange(prefix).view(1, prefix) * 3
    embs, poss = [], []
    for b in range(rows):
        n = 8 + (b * 13) % 40
        embs.append((torch.randn(1, n, H, generator=g) * 0.02).to(device, dtype))
        poss.append(3 * prefix + torch.arange(n).view(1, n))
    if mrope:
        pos = pos.view(1, 1, prefix).expand(4, 1, prefix).contiguous()
        poss = [p.view(1, 1, -1).expand(4, 1, p.shape[-1]).contiguous() for p in poss]
    pos, poss = pos.to(device), [p.to(device) for p in poss]
    cache = new_cache(model)
    with torch.inference_mode():
        prefill(model, emb, pos, cache)
    return cache, embs, poss, (emb, pos)


def alone(model, prefix_inputs, emb, pos, s: Sampling, fused: FusedDecoder):
    """One prompt (prefix + this suffix) decoded alone by the one-answer fused step, as `answer` does it."""
    with torch.inference_mode():
        cache = new_cache(model)
        prefill(model, *prefix_inputs, cache)
        first = prefill(model, emb, pos, cache)
        return fused.decode(model, first, cache, pos[..., -1:] + 1, s)


def margin_at(model, prefix_inputs, emb, pos, tokens: list[int]) -> float:
    """Top-1 minus runner-up logit of the stock forward after the prompt and `tokens` (the one-row stream so far)."""
    with torch.inference_mode():
        cache = new_cache(model)
        prefill(model, *prefix_inputs, cache)
        logits = prefill(model, emb, pos, cache)
        if tokens:
            ids = torch.tensor([tokens], device=emb.device)
            nxt = pos[..., -1:] + 1 + torch.arange(len(tokens), device=emb.device)
            e = model.get_input_embeddings()(ids)
            logits = prefill(model, e, nxt, cache)
        top = logits.float().topk(2).values
        return float(top[0] - top[1])


def aggregate_tok_s(results) -> float:
    """All rows' tokens after the first, per second from the first token to the last."""
    t0 = min(r.token_times[0] for r in results)
    t1 = max(r.token_times[-1] for r in results)
    return sum(len(r.token_ids) - 1 for r in results) / max(t1 - t0, 1e-9)


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first differing token (len when equal)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ------------------------------------------------------------------------------------------ checks
def ops_check() -> dict:
    """Row-batched Triton kernels vs the torch reference ops, 16 rows of 7B-shaped bf16 inputs: max abs diff."""
    from fastvid_cli import fast_decode
    from fastvid_cli.fast_kernels import TritonOps

    T, R = TritonOps, fast_decode._TorchOps
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, nq, nkv, D, cap = 16, 3584, 28, 4, 128, 1024
    bf = dict(device="cuda", dtype=torch.bfloat16)
    out = {}
    x = torch.randn(B, H, generator=g, **bf)
    r = torch.randn(B, H, generator=g, **bf)
    w = torch.rand(H, generator=g, **bf) + 0.5
    x1, x2 = x.clone(), x.clone()
    y1, y2 = T.add_rms(x1, r, w, 1e-6), R.add_rms(x2, r, w, 1e-6)
    out["add_rms"] = max((y1 - y2).abs().max().item(), (x1 - x2).abs().max().item())
    gu = torch.randn(B, 2 * 18944, generator=g, **bf) * 3
    out["silu_mul"] = (T.silu_mul(gu) - R.silu_mul(gu)).abs().max().item()
    for norm in (False, True):
        qkv = torch.randn(B, (nq + 2 * nkv) * D, generator=g, **bf)
        cos = torch.randn(B, D, generator=g, **bf)
        sin = torch.randn(B, D, generator=g, **bf)
        qn = kn = None
        if norm:
            qn = torch.rand(D, generator=g, **bf) + 0.5
            kn = torch.rand(D, generator=g, **bf) + 0.5
        slot = torch.tensor([517], device="cuda")
        bufs = []
        for ops in (T, R):
            big = torch.zeros(2, B + 2, nkv, cap, D, **bf)  # views of a bigger buffer, as the decoder passes them
            q = torch.empty(B, nq, D, **bf)
            ops.rope_write(qkv, cos, sin, slot, big[0, :B], big[1, :B], q, nq, nkv, qn, kn, 1e-6)
            bufs.append((q, big))
        out[f"rope_write{'_qknorm' if norm else ''}"] = max((a - b).abs().max().item() for a, b in zip(*bufs))
    return out


def tiny_rows_check() -> dict:
    """Tiny random models in float32 on CUDA: each row of a 5-row batch (bucket 8) equals its prompt decoded alone."""
    from fastvid_cli.tiny import byte_tokenizer, qwen_tokenizer, tiny_llava_onevision, tiny_qwen_vl

    models = {"llava_onevision": lambda: tiny_llava_onevision(byte_tokenizer())}
    for kind in ("qwen2_5_vl", "qwen3_vl"):
        models[kind] = lambda kind=kind: tiny_qwen_vl(qwen_tokenizer(kind), kind)
    out = {}
    for name, make in models.items():
        model = make().to("cuda").eval()
        model.generation_config.eos_token_id = None
        cache, embs, poss, pre_in = make_prompts(model, "cuda", torch.float32, 300, 5, seed=1,
                                                 mrope=name != "llava_onevision")
        for e in embs:
            e.mul_(50)  # the random tiny models answer alike for small inputs: make the rows differ
        rows_dec, one = FusedRowsDecoder(model), FusedDecoder(model)
        rows_dec.SPAN = one.SPAN = 64  # cross several spans (one graph each)
        s = Sampling(max_new_tokens=120)
        runs = []
        for _ in range(2):  # the second run replays the captured graphs
            with torch.inference_mode():
                pre = prefill_rows(model, cache, embs, poss)
                runs.append([r.token_ids for r in rows_dec.decode(model, pre, [s] * 5)])
        ref = [alone(model, pre_in, e, p, s, one).token_ids for e, p in zip(embs, poss)]
        out[name] = dict(tokens=120, rows=5, distinct_rows=len({tuple(r) for r in ref}),
                         equal_prefix=[[first_difference(a, b) for a, b in zip(run, ref)] for run in runs],
                         graphs=rows_dec.captures, ops=rows_dec.ops.name)
    return out


# ------------------------------------------------------------------------------------------ speed
def build(shape: str, device: str, dtype):
    if shape == "7b":
        from bench_ask import build_7b_shaped

        return build_7b_shaped(device, dtype).model
    from fastvid_cli.tiny import byte_tokenizer, tiny_llava_onevision

    model = tiny_llava_onevision(byte_tokenizer()).to(device, dtype).eval()
    model.generation_config.eos_token_id = None
    return model


def speed(args, device: str, dtype) -> dict:
    model = build(args.shape, device, dtype)
    graphs = device.startswith("cuda")
    rows_dec = FusedRowsDecoder(model, graphs=graphs)
    one = FusedDecoder(model, graphs=graphs)
    s = Sampling(max_new_tokens=args.tokens)
    B_max = max(args.rows)
    cache, embs, poss, pre_in = make_prompts(model, device, dtype, args.prefix, B_max)
    out: dict = {}

    def timed(fn, rows: int):
        speeds, last = [], None
        for i in range(args.repeat + 1):
            with torch.inference_mode():
                pre = prefill_rows(model, cache, embs[:rows], poss[:rows])
                _sync(device)
                res = fn(pre)
                _sync(device)
            if i > 0:  # the first run: warm-up and captures
                speeds.append(aggregate_tok_s(res))
            last = res
        return med(speeds), last

    # the one-answer fused step (what a single request decodes with): the B=1 reference
    one_speeds = []
    for i in range(args.repeat + 1):
        r = alone(model, pre_in, embs[0], poss[0], s, one)
        if i > 0:
            one_speeds.append(aggregate_tok_s([r]))
    out["one_answer_fused"] = dict(tok_s=med(one_speeds))
    print(f"one-answer fused step: {fmt(med(one_speeds))} tok/s", flush=True)
    for rows in args.rows:
        eager, _ = timed(lambda pre: decode_rows(model, pre, [s] * pre.rows), rows)
        before = rows_dec.capture_ms
        fused, res = timed(lambda pre: rows_dec.decode(model, pre, [s] * pre.rows), rows)
        out[rows] = dict(eager=eager, fused=fused, capture_ms=rows_dec.capture_ms - before,
                         streams=[r.token_ids for r in res], modes=sorted({r.mode for r in res}),
                         fallback=res[0].fallback)
        print(f"B={rows:2d}: eager batched {fmt(eager)} tok/s | fused rows {fmt(fused)} tok/s "
              f"({fused[0] / eager[0]:.2f}x eager, {fused[0] / out['one_answer_fused']['tok_s'][0]:.2f}x one answer)"
              f" | captures {rows_dec.capture_ms - before:.0f} ms | {out[rows]['modes']}", flush=True)
    # greedy rows == one row alone, at full size (bf16): where a stream departs, how close was the one-row pick?
    ref = [alone(model, pre_in, e, p, s, one).token_ids for e, p in zip(embs, poss)]
    check = {}
    for rows in args.rows:
        per_row = []
        for b, got in enumerate(out[rows].pop("streams")):
            i = first_difference(got, ref[b])
            item = dict(equal_prefix=i)
            if i < len(ref[b]):
                item["one_row_margin_there"] = margin_at(model, pre_in, embs[b], poss[b], ref[b][:i])
            per_row.append(item)
        check[rows] = per_row
        equal = sum(1 for it in per_row if it["equal_prefix"] == args.tokens)
        print(f"B={rows:2d}: rows equal to their answer alone: {equal}/{rows} "
              + " ".join(f"[row {b}: {it['equal_prefix']}/{args.tokens}, margin "
                         f"{it['one_row_margin_there']:.3f}]" for b, it in enumerate(per_row)
                         if "one_row_margin_there" in it), flush=True)
    out["greedy_check"] = check
    if graphs:
        out["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=["7b", "tiny"], default="7b",
                    help="7b: LLaVA-OV-7B-shaped random bf16 (the GPU run); tiny: the tests' tiny model (smoke)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--prefix", type=int, default=2000, help="shared prefix (video prompt) length in tokens")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = args.device
    dtype = torch.bfloat16 if (device.startswith("cuda") or args.shape == "7b") else torch.float32
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    env = environment(name)
    print(f"# bench_batched_decode | {json.dumps(env)} | {vars(args)}", flush=True)
    result: dict = dict(env=env, args=vars(args))
    if not args.skip_checks and device.startswith("cuda"):
        o = ops_check()
        print(f"row-batched Triton kernels vs torch ops (max abs diff, bf16, 16 rows): {json.dumps(o)}", flush=True)
        t = tiny_rows_check()
        print(f"fused rows, tiny fp32 CUDA models, rows vs alone: {json.dumps(t)}", flush=True)
        result.update(ops=o, tiny_rows=t)
    if not args.skip_speed:
        sp = speed(args, device, dtype)
        result["speed"] = sp
        base = sp["one_answer_fused"]["tok_s"][0]
        print("| rows | eager batched tok/s | fused rows tok/s | vs one-answer fused | rows equal alone |")
        print("|---|---|---|---|---|")
        for rows in args.rows:
            row = sp[rows]
            eq = sum(1 for it in sp["greedy_check"][rows] if it["equal_prefix"] == args.tokens)
            print(f"| {rows} | {fmt(row['eager'])} | **{fmt(row['fused'])}** | {row['fused'][0] / base:.2f}x | "
                  f"{eq}/{rows} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
