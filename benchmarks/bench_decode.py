"""Decode speed and correctness of the `--compile` decoders against the eager loop, on the GPU.

    python benchmarks/bench_decode.py [--tokens 128] [--repeat 3] [--prompt 800 [--prompt 6000 ...]] [--out f.json]

1. Correctness (unless --skip-tiny) on a tiny random LLaVA-OV checkpoint in float32 on CUDA: greedy and
   seeded-sampling token streams of the graph of transformers' modules (`StaticDecoder`) equal the eager loop's
   (pruned prompt, original positions, shared-prefix path too), and `Engine.ask` answers the same either way.
2. The fused step (unless --skip-fused-checks): its Triton kernels against the torch reference ops on 7B-shaped bf16
   inputs (max abs difference), and on tiny random LLaVA-OV / Qwen2.5-VL / Qwen3-VL models in float32 on CUDA
   (Triton kernels, CUDA graphs, several attention spans): greedy and sampled streams against the eager loop, twice
   (the second run replays the captured graphs), and one step's logits against the stock forward.
3. Speed (unless --skip-speed) on a LLaVA-OV-7B-shaped random bf16 model (bench_ask.build_7b_shaped): the weight
   products alone replayed as one graph (the floor of any step with these kernels), then decode tokens/s after a
   prompt of each --prompt length: eager loop, `StaticDecoder` (up to its 4096-token limit), optionally the
   torch.compile'd StaticDecoder (--inductor), and the fused step; medians of --repeat runs after a warm-up run,
   capture times, and for how many tokens each greedy stream agrees with the eager one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import med  # noqa: E402  (sets sys.path)
from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill, with_cache  # noqa: E402
from fastvid_cli.engine import versions  # noqa: E402


def tiny_check() -> dict:
    from fastvid_cli.engine import Engine
    from fastvid_cli.pruning.fastvid import fastvid
    from fastvid_cli.tiny import save_llava_checkpoint, save_saliency_checkpoint
    from fastvid_cli.video import sample_frames

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from videogen import index_frames, write_video

    tmp = Path(tempfile.mkdtemp())
    ckpt = save_llava_checkpoint(tmp / "tiny")
    sal = save_saliency_checkpoint(tmp / "sal")
    video = write_video(str(tmp / "v.mp4"), index_frames(48, 48, 64), fps=24)
    eng = Engine.load(str(ckpt), device="cuda", dtype="float32", saliency_model=str(sal))
    a = eng.adapter
    feats = a.encode(a.preprocess(sample_frames(video, 8).frames))
    res = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.25, c=4)
    asm = a.assemble(a.build_prompt("What happens?"), feats, res.embeds, res.index)
    out = {}
    static = StaticDecoder(a.model)
    for name, s in [("greedy", Sampling(max_new_tokens=48)),
                    ("sampled", Sampling(max_new_tokens=48, temperature=1.2, top_p=0.9, seed=5))]:
        streams = []
        for fn in (decode, static.decode, static.decode):  # the 2nd graph run reuses the captured graph
            cache = new_cache(a.model)
            logits = prefill(a.model, asm.inputs_embeds, asm.position_ids, cache)
            r = fn(a.model, logits, cache, asm.next_position, s)
            streams.append(r.token_ids)
        out[name] = dict(equal=streams[0] == streams[1] == streams[2], tokens=len(streams[0]))
    # shared prefix path
    cut = asm.video_span[1]
    cache = new_cache(a.model)
    prefill(a.model, asm.inputs_embeds[:, :cut], asm.position_ids[..., :cut], cache)
    logits = prefill(a.model, asm.inputs_embeds[:, cut:], asm.position_ids[..., cut:], cache)
    shared = static.decode(a.model, logits, cache, asm.next_position, Sampling(max_new_tokens=48)).token_ids
    cache = new_cache(a.model)
    logits = prefill(a.model, asm.inputs_embeds, asm.position_ids, cache)
    eager = decode(a.model, logits, cache, asm.next_position, Sampling(max_new_tokens=48)).token_ids
    out["shared_prefix"] = dict(equal=shared == eager, tokens=len(eager))
    out["captures"] = static.captures
    # the engine's own path (default compile=None -> graph on CUDA)
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    r1 = eng.ask(video, "What happens?", frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)),
                 gen=GenerationOptions(max_new_tokens=24))
    r2 = eng.ask(video, "What happens?", frames=8, prune=PruneOptions(ratio=0.25, params=dict(c=4)),
                 gen=GenerationOptions(max_new_tokens=24, compile=False))
    out["engine"] = dict(equal=r1.answer == r2.answer, modes=[r1.decode_mode, r2.decode_mode], notes=r1.notes)
    return out


def ops_check() -> dict:
    """Triton kernels vs the torch reference ops on random bf16 inputs of the 7B shape: max abs difference."""
    from fastvid_cli import fast_decode
    from fastvid_cli.fast_kernels import TritonOps

    T, R = TritonOps, fast_decode._TorchOps
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for H in (3584, 896):
        x = torch.randn(1, H, device="cuda", dtype=torch.bfloat16, generator=g)
        r = torch.randn(1, H, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.rand(H, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
        x1, x2 = x.clone(), x.clone()
        y1, y2 = T.add_rms(x1, r, w, 1e-6), R.add_rms(x2, r, w, 1e-6)
        out[f"add_rms_{H}"] = max((y1 - y2).abs().max().item(), (x1 - x2).abs().max().item())
    nq, nkv, D, cap = 28, 4, 128, 1024
    for norm in (False, True):
        qkv = torch.randn(1, (nq + 2 * nkv) * D, device="cuda", dtype=torch.bfloat16, generator=g)
        cos = torch.randn(1, D, device="cuda", dtype=torch.bfloat16, generator=g)
        sin = torch.randn(1, D, device="cuda", dtype=torch.bfloat16, generator=g)
        qn = kn = None
        if norm:
            qn = torch.rand(D, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
            kn = torch.rand(D, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
        slot = torch.tensor([517], device="cuda")
        bufs = []
        for ops in (T, R):
            k = torch.zeros(nkv, cap, D, device="cuda", dtype=torch.bfloat16)
            v = torch.zeros_like(k)
            q = torch.empty(nq, D, device="cuda", dtype=torch.bfloat16)
            ops.rope_write(qkv, cos, sin, slot, k, v, q, nq, nkv, qn, kn, 1e-6)
            bufs.append((q, k, v))
        out[f"rope_write{'_qknorm' if norm else ''}"] = max((a - b).abs().max().item()
                                                            for a, b in zip(*bufs))
    gu = torch.randn(1, 2 * 18944, device="cuda", dtype=torch.bfloat16, generator=g) * 3
    out["silu_mul"] = (T.silu_mul(gu) - R.silu_mul(gu)).abs().max().item()
    return out


def tiny_fused_check() -> dict:
    """The fused step on tiny random LLaVA-OV / Qwen2.5-VL / Qwen3-VL models in float32 on CUDA (Triton kernels,
    CUDA graphs, several attention spans): greedy and sampled streams vs the eager loop."""
    from fastvid_cli.fast_decode import FusedDecoder
    from fastvid_cli.tiny import byte_tokenizer, qwen_tokenizer, tiny_llava_onevision, tiny_qwen_vl

    out = {}
    models = {"llava_onevision": lambda: tiny_llava_onevision(byte_tokenizer())}
    for kind in ("qwen2_5_vl", "qwen3_vl"):
        models[kind] = lambda kind=kind: tiny_qwen_vl(qwen_tokenizer(kind), kind)
    for name, make in models.items():
        model = make().to("cuda").eval()
        H = model.config.text_config.hidden_size
        torch.manual_seed(0)
        emb = torch.randn(1, 300, H, device="cuda")
        pos = torch.arange(300, device="cuda").view(1, 300) * 2
        if name != "llava_onevision":
            pos = pos.view(1, 1, 300).expand(3, 1, 300).contiguous()
        nxt = pos[..., -1:] + 1
        fused = FusedDecoder(model)
        fused.SPAN = 64  # cross several spans (one graph each) in 200 tokens
        res = {}
        for label, s in [("greedy", Sampling(max_new_tokens=200)),
                         ("sampled", Sampling(max_new_tokens=60, temperature=1.2, top_p=0.9, seed=5))]:
            streams = []
            for fn in (decode, fused.decode, fused.decode):
                with torch.inference_mode():
                    cache = new_cache(model)
                    logits = prefill(model, emb, pos, cache)
                    streams.append(fn(model, logits, cache, nxt, s).token_ids)
            a = streams[0]
            res[label] = dict(tokens=len(a), equal_prefix=[next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                                                                 len(a)) for b in streams[1:]])
        # one step's logits, fused vs the stock forward, from the same cache
        with torch.inference_mode():
            cache = new_cache(model)
            prefill(model, emb, pos, cache)
            tok = torch.tensor([[7]], device="cuda")
            ref = model(input_ids=tok, position_ids=nxt, use_cache=True, **with_cache(model, cache)).logits[0, -1]
            cache = new_cache(model)
            prefill(model, emb, pos, cache)
            fused.load(cache, nxt, 4)
            fused.tok.fill_(7)
            res["step_logits_max_abs_diff"] = (fused._step(fused._span(fused.length))[0] - ref).abs().max().item()
        res["graphs"] = fused.captures
        res["ops"] = fused.ops.name
        out[name] = res
    return out


def _step_speed(model, fn, emb, pos, s, repeat: int) -> tuple[list[float], list[int], float | None]:
    speeds, tokens, capture = [], [], None
    for i in range(repeat + 1):
        with torch.inference_mode():
            cache = new_cache(model)
            logits = prefill(model, emb, pos, cache)
            r = fn(model, logits, cache, pos[..., -1:] + 1, s)
        if r.capture_ms is not None:
            capture = r.capture_ms
        t = r.token_times
        if i > 0:  # first run: warm-up (and the captures)
            speeds.append((len(t) - 1) / (t[-1] - t[0]))
        tokens = r.token_ids
    return speeds, tokens, capture


def speed(tokens: int, repeat: int, prompts: list[int], inductor: bool = False) -> dict:
    from bench_ask import build_7b_shaped

    from fastvid_cli.fast_decode import FusedDecoder

    eng = build_7b_shaped("cuda", torch.bfloat16)
    model = eng.model
    s = Sampling(max_new_tokens=tokens)
    static = StaticDecoder(model)
    out = {}
    for prompt in prompts:
        torch.manual_seed(0)
        emb = torch.randn(1, prompt, model.config.text_config.hidden_size, device="cuda",
                          dtype=torch.bfloat16) * 0.02
        pos = torch.arange(prompt, device="cuda")[None] * 3  # gaps, as after pruning
        variants = [("eager", decode)]
        if prompt + tokens <= StaticDecoder.MAX_TOKENS:
            variants.append(("graph", static.decode))
        if inductor:
            variants.append(("inductor", StaticDecoder(model, inductor=True).decode))
        fused = FusedDecoder(model)  # re-lays out q/k/v and gate/up (same values: the other paths are unchanged)
        variants.append(("fused", fused.decode))
        row, streams = {}, {}
        for name, fn in variants:
            speeds, streams[name], capture = _step_speed(model, fn, emb, pos, s, repeat)
            row[name] = dict(tok_s=med(speeds), capture_ms=capture)
            print(f"  prompt {prompt}: {name:8s} {med(speeds)[0]:7.1f} tok/s [{med(speeds)[1]:.1f}-"
                  f"{med(speeds)[2]:.1f}] capture {capture}", flush=True)
        ref = streams["eager"]
        for name, toks in streams.items():
            row[name]["equal_prefix"] = next((i for i, (x, y) in enumerate(zip(ref, toks)) if x != y), len(ref))
        row["fused"]["graphs"] = fused.captures
        row["fused"]["ops"] = fused.ops.name
        out[prompt] = row
    out["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def gemv_floor(repeat: int = 20) -> dict:
    """ms of the weight products alone of one 7B decode step (28 layers, fused q/k/v and gate/up, LM head),
    replayed as one CUDA graph: the floor any decode step with these kernels has on this GPU."""
    H, I, V, L = 3584, 18944, 152064, 28
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for n, k in
          [(H + 1024, H), (H, H), (2 * I, H), (H, I)] * L + [(V, H)]]
    x = {H: torch.randn(1, H, device="cuda", dtype=torch.bfloat16),
         I: torch.randn(1, I, device="cuda", dtype=torch.bfloat16)}

    def step():
        for w in ws:
            torch.nn.functional.linear(x[w.shape[1]], w)

    step()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    gb = sum(w.numel() for w in ws) * 2 / 1e9
    ms = med(times)[0]
    return dict(ms=ms, gb=gb, tb_s=gb / ms, tok_s_floor=1e3 / ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", type=int, action="append", default=None,
                    help="prompt length(s) (default 800; repeat the option for several)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-fused-checks", action="store_true")
    ap.add_argument("--inductor", action="store_true", help="also: the graph step fused by torch.compile first")
    args = ap.parse_args()
    env = dict(device=torch.cuda.get_device_name(0), **versions(), date=time.strftime("%Y-%m-%d"))
    print(f"# bench_decode | {env}", flush=True)
    result = dict(env=env)
    if not args.skip_tiny:
        t = tiny_check()
        print(f"tiny fp32 CUDA, graph vs eager: {json.dumps(t)}", flush=True)
        result["tiny"] = t
    if not args.skip_fused_checks:
        o = ops_check()
        print(f"Triton kernels vs torch reference ops (max abs diff, bf16): {json.dumps(o)}", flush=True)
        t = tiny_fused_check()
        print(f"fused step, tiny fp32 CUDA models vs eager loop: {json.dumps(t)}", flush=True)
        result.update(ops=o, tiny_fused=t)
    if not args.skip_speed:
        fl = gemv_floor()
        print(f"weight products alone (CUDA graph): {fl['ms']:.2f} ms/step = {fl['tb_s']:.2f} TB/s -> floor "
              f"{fl['tok_s_floor']:.0f} tok/s", flush=True)
        sp = speed(args.tokens, args.repeat, args.prompt or [800], args.inductor)
        result.update(gemv_floor=fl, speed=sp)
        print(f"| prompt | eager tok/s | graph (StaticDecoder) | fused graph | fused vs eager | greedy equal "
              f"(fused) | captures |", flush=True)
        for prompt, row in sp.items():
            if not isinstance(prompt, int):
                continue
            e, f = row["eager"]["tok_s"], row["fused"]["tok_s"]
            gr = row.get("graph", {}).get("tok_s")
            print(f"| {prompt} | {e[0]:.1f} [{e[1]:.1f}-{e[2]:.1f}] | "
                  f"{f'{gr[0]:.1f} [{gr[1]:.1f}-{gr[2]:.1f}]' if gr else '-'} | **{f[0]:.1f}** [{f[1]:.1f}-"
                  f"{f[2]:.1f}] | {f[0] / e[0]:.2f}x | {row['fused']['equal_prefix']}/{args.tokens} | "
                  f"{row['fused']['graphs']} ({row['fused']['capture_ms'] or 0:.0f} ms) |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
