"""Decode speed and correctness of the CUDA-graph decoder (`--compile`) against the eager loop, on the GPU.

    python benchmarks/bench_decode.py [--tokens 128] [--repeat 3] [--prompt 800] [--out decode.json]

1. Correctness on a tiny random LLaVA-OV checkpoint in float32 on CUDA: greedy and seeded-sampling token streams
   of the graph decoder equal the eager loop's (pruned prompt, original positions, shared-prefix path too).
2. Speed on a LLaVA-OV-7B-shaped random bf16 model (bench_ask.build_7b_shaped): decode tokens/s after a prompt of
   --prompt tokens (≈ a 32-frame video at ratio 0.1), eager vs graph, medians of --repeat runs, graph capture time,
   and how many of the greedy tokens agree (bf16 kernels differ between the two attention paths, so random
   weights with near-tied logits may diverge late; the tiny fp32 check is the exactness test).
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
from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill  # noqa: E402
from fastvid_cli.engine import versions  # noqa: E402


def tiny_check() -> dict:
    from fastvid_cli.engine import Engine
    from fastvid_cli.pruning import fastvid
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


def speed(tokens: int, repeat: int, prompt: int, inductor: bool = False) -> dict:
    from bench_ask import build_7b_shaped

    eng = build_7b_shaped("cuda", torch.bfloat16)
    model = eng.model
    torch.manual_seed(0)
    emb = torch.randn(1, prompt, model.config.text_config.hidden_size, device="cuda", dtype=torch.bfloat16) * 0.02
    pos = torch.arange(prompt, device="cuda")[None] * 3  # gaps, as after pruning
    s = Sampling(max_new_tokens=tokens)
    static = StaticDecoder(model)
    runs: dict[str, list] = {"eager": [], "graph": [], "inductor": []}
    streams, capture = {}, None
    variants = [("eager", decode), ("graph", static.decode)]
    if inductor:
        fused = StaticDecoder(model, inductor=True)
        variants.append(("inductor", fused.decode))
    for name, fn in variants:
        for i in range(repeat + 1):
            with torch.inference_mode():
                cache = new_cache(model)
                logits = prefill(model, emb, pos, cache)
                r = fn(model, logits, cache, pos[..., -1:] + 1, s)
            if r.capture_ms is not None and name == "graph":
                capture = r.capture_ms
            if r.capture_ms is not None and name == "inductor":
                print(f"inductor compile + capture: {r.capture_ms / 1e3:.1f} s", flush=True)
            t = r.token_times
            span = t[-1] - t[0] - (r.capture_ms or 0.0) / 1e3
            if i > 0:  # first run: warm-up (and the capture)
                runs[name].append((len(t) - 1) / span)
            streams[name] = r.token_ids
    a, b = streams["eager"], streams["graph"]
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    if inductor:
        c = streams["inductor"]
        print(f"inductor graph: {med(runs['inductor'])[0]:.1f} tok/s [{med(runs['inductor'])[1]:.1f}-"
              f"{med(runs['inductor'])[2]:.1f}]; greedy stream equal to eager for the first "
              f"{next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), len(a))}/{len(a)} tokens", flush=True)
    return dict(prompt=prompt, tokens=tokens, eager_tok_s=med(runs["eager"]), graph_tok_s=med(runs["graph"]),
                capture_ms=capture, capacity=static.capacity, greedy_tokens_equal_prefix=agree,
                mem_gib=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=800)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--inductor", action="store_true", help="also: the graph step fused by torch.compile first")
    args = ap.parse_args()
    env = dict(device=torch.cuda.get_device_name(0), **versions(), date=time.strftime("%Y-%m-%d"))
    print(f"# bench_decode | {env}", flush=True)
    result = dict(env=env)
    if not args.skip_tiny:
        t = tiny_check()
        print(f"tiny fp32 CUDA, graph vs eager: {json.dumps(t)}", flush=True)
        result["tiny"] = t
    if not args.skip_speed:
        sp = speed(args.tokens, args.repeat, args.prompt, args.inductor)
        result["speed"] = sp
        e, g = sp["eager_tok_s"], sp["graph_tok_s"]
        print(f"7B shape bf16, prompt {sp['prompt']} tokens, {sp['tokens']} new tokens: eager {e[0]:.1f} tok/s "
              f"[{e[1]:.1f}-{e[2]:.1f}] | CUDA graph {g[0]:.1f} tok/s [{g[1]:.1f}-{g[2]:.1f}] "
              f"({g[0] / e[0]:.2f}x) | capture {sp['capture_ms']:.0f} ms once (buffers for {sp['capacity']} "
              f"tokens) | greedy streams agree for the first {sp['greedy_tokens_equal_prefix']}/{sp['tokens']} "
              f"tokens | peak {sp['mem_gib']:.1f} GiB", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
