"""Per-stage timings of `fastvid ask` on a Qwen2.5-VL-7B-SHAPED model with random weights (no download).

    python benchmarks/bench_qwen.py [--fps 2] [--seconds 60] [--repeat 5] [--ratios 1.0,0.5,0.25,0.1] [--out r.json]
    python benchmarks/bench_qwen.py --tiny        # a tiny random Qwen2.5-VL on the CPU: checks the script runs

Builds the Qwen2.5-VL-7B vision tower (32 blocks, width 1280, windowed attention, full attention in blocks
7/15/23/31) and LLM (28 layers, d=3584, M-RoPE) at full size in bf16 on the GPU, and runs the real pipeline:
Qwen's fps sampling of a synthetic 1280x720 H.264 clip (60 s at 2 fps: 120 frames, 60 temporal patches of 12x22
tokens = 15840 video tokens under the default budget), own preprocessing, the stock vision tower with FastVID's
last-block saliency, FastVID's Qwen variant (tau 0.84, near-duplicate collapse at 0.95; the table shows the
tokens actually kept), prefill with the original M-RoPE positions, decode. Speed does not depend on weight
values. Same table as bench_ask.py (medians over --repeat, min-max in brackets); writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _common import (cached_clip, environment, fmt, measure_setting, med,  # noqa: E402  (puts the repo on sys.path)
                     random_modules)
from fastvid_cli.decoding import Sampling, decode, new_cache, prefill  # noqa: E402
from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions  # noqa: E402
from fastvid_cli.models import ModelRef  # noqa: E402
from fastvid_cli.models.qwen_vl import CLIP_MEAN_STD, QwenVLAdapter  # noqa: E402
from fastvid_cli.tiny import QWEN2_TEMPLATE, qwen_tokenizer, tiny_qwen_vl  # noqa: E402
from fastvid_cli.video import sample_frames  # noqa: E402


def build_7b_shaped(device: str, dtype: torch.dtype):
    """Qwen2_5_VLForConditionalGeneration with Qwen2.5-VL-7B-Instruct's shapes and random N(0, 0.02) weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen_tokenizer("qwen2_5_vl")
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, bos_token_id=None,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
    cfg._attn_implementation = "sdpa"
    (model,) = random_modules(device, dtype, lambda: Qwen2_5_VLForConditionalGeneration(cfg))
    return _engine(model, tok, "qwen2.5-vl-7b-shaped", device, dtype)


def build_tiny(device: str, dtype: torch.dtype):
    tok = qwen_tokenizer("qwen2_5_vl")
    model = tiny_qwen_vl(tok, "qwen2_5_vl").to(device=device, dtype=dtype)
    return _engine(model, tok, "tiny-qwen2.5-vl", device, dtype)


def _engine(model, tok, name: str, device: str, dtype: torch.dtype) -> Engine:
    model.generation_config.eos_token_id = None  # random weights: never stop early, decode a fixed count
    model.generation_config.pad_token_id = tok.pad_token_id
    adapter = QwenVLAdapter(model, tok, ModelRef(name, None, True), family="qwen2_5_vl", mean=CLIP_MEAN_STD[0],
                            std=CLIP_MEAN_STD[1], norm_source="bench", template=QWEN2_TEMPLATE)
    return Engine(adapter, model_name=name, device=device, dtype=dtype, attn_implementation="sdpa")


def decode_rate(engine: Engine, asm, tokens: int, graphs: bool) -> float | None:
    """Steady-state tokens/s after this prompt: the eager loop, or the engine's `--compile` decoder (for these
    models the fused CUDA-graph step); the first of two equal runs is untimed (it captures the graphs)."""
    model = engine.model
    res = None
    for _ in range(2):
        with torch.inference_mode():
            cache = new_cache(model)
            logits = prefill(model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra())
            if graphs:
                res = engine.decode(logits, cache, asm.next_position, GenerationOptions(max_new_tokens=tokens))
            else:
                res = decode(model, logits, cache, asm.next_position, Sampling(max_new_tokens=tokens))
    tt = res.token_times
    return (len(tt) - 1) / (tt[-1] - tt[0]) if len(tt) > 1 and tt[-1] > tt[0] else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny random Qwen2.5-VL on the CPU (a check of the script)")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--seconds", type=int, default=None, help="length of the synthetic clip (default 60; 4 --tiny)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ratios", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda and not args.tiny:
        raise SystemExit("the 7B-shaped run needs a CUDA GPU; use --tiny to check the script on a CPU")
    t0 = time.perf_counter()
    engine = build_tiny(device, dtype) if args.tiny else build_7b_shaped(device, dtype)
    build_s = time.perf_counter() - t0
    if cuda:
        engine.warmup()
    seconds = args.seconds or (4 if args.tiny else 60)
    video = args.video or cached_clip(seconds, size=(320, 240) if args.tiny else (1280, 720))
    plan = engine.frame_plan(None, args.fps)
    samples = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        clip = sample_frames(video, plan)
        samples.append((time.perf_counter() - t) * 1e3)
    a = engine.adapter
    pre, vis = [], []
    for _ in range(args.repeat):
        tm: dict[str, float] = {}
        feats = engine.features(clip, tm)
        pre.append(tm["preprocess"])
        vis.append(tm["vision"])
    total = feats.num_frames * feats.tokens_per_frame
    prompt = a.build_prompt("What happens in this video? Describe it in detail.")
    params = {k: engine.defaults[k] for k in ("c", "tau", "ignore", "d", "p", "beta")}
    rows, base_prefill = [], None
    for ratio in [float(r) for r in args.ratios.split(",")]:
        opts = PruneOptions(method="none" if ratio >= 1 else "fastvid", ratio=ratio,
                            params={} if ratio >= 1 else params)
        res, asm, prune_ms, prefill_ms, peak = measure_setting(engine, feats, opts, prompt, args.repeat)
        eager = decode_rate(engine, asm, args.decode_tokens, graphs=False)
        graph = decode_rate(engine, asm, args.decode_tokens, graphs=True) if cuda else None
        pf = med(prefill_ms)
        if base_prefill is None and ratio >= 1:
            base_prefill = pf[0]
        ttft = statistics.median(samples) + statistics.median(pre) + statistics.median(vis) + med(prune_ms)[0] + pf[0]
        rows.append(dict(ratio=ratio, video_tokens=res.kept, video_tokens_total=total,
                         kept_pct=100.0 * res.kept / total, prompt_tokens=asm.length,
                         full_prompt_tokens=asm.full_length, segments=len(res.segments), prune_ms=med(prune_ms),
                         prefill_ms=pf, ttft_ms_est=ttft, decode_tok_s=eager, decode_tok_s_graph=graph,
                         peak_gib=peak))
    for r in rows:
        r["prefill_speedup"] = (base_prefill / r["prefill_ms"][0]) if base_prefill else None
    env = environment(torch.cuda.get_device_name(0) if cuda else "cpu")
    env.update(model="tiny Qwen2.5-VL" if args.tiny else "Qwen2.5-VL-7B-shaped", dtype=str(dtype), build_s=round(
        build_s, 1), fps=args.fps, clip=f"{seconds} s synthetic", frames=len(clip.indices),
               temporal_patches=feats.num_frames, tokens_per_patch=feats.tokens_per_frame, repeat=args.repeat)
    print(f"# bench_qwen: {env['model']}, random weights, sdpa | {env}")
    print(f"sample {len(clip.indices)} frames ({args.fps:g} fps) of a {seconds} s H.264 clip: {fmt(med(samples))} ms"
          f" | preprocess {fmt(med(pre))} ms | vision (tower + last-block saliency) {fmt(med(vis))} ms | "
          f"{feats.num_frames} temporal patches x {feats.tokens_per_frame} tokens = {total} video tokens")
    print("| ratio | video tokens (kept %) | prompt | segments | prune ms | prefill ms | prefill speedup | "
          "TTFT ms (est.) | decode tok/s | decode tok/s (--compile) | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['prefill_speedup']:.2f}x" if r["prefill_speedup"] else "–"
        dec = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "–"
        dec_g = f"{r['decode_tok_s_graph']:.1f}" if r["decode_tok_s_graph"] else "–"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        print(f"| {r['ratio']:.2f} | {r['video_tokens']} ({r['kept_pct']:.1f}%) | {r['prompt_tokens']} | "
              f"{r['segments']} | {fmt(r['prune_ms'], 2)} | {fmt(r['prefill_ms'])} | {speed} | "
              f"{r['ttft_ms_est']:.1f} | {dec} | {dec_g} | {peak} |")
    print("TTFT (est.) = median sample + preprocess + vision + prune + prefill of this table, as bench_ask.py.")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, sample_ms=med(samples), preprocess_ms=med(pre),
                                                  vision_ms=med(vis), rows=rows), indent=2, default=str))


if __name__ == "__main__":
    main()
