"""Per-stage timings of `fastvid ask` on a LLaVA-OneVision-7B-SHAPED model with random weights (no download).

    python benchmarks/bench_ask.py [--frames 32] [--repeat 5] [--ratios 1.0,0.5,0.25,0.1] [--out results.json]

Builds SigLIP-so400m (26 layers) + Qwen2-7B (28 layers, d=3584) at full size in bf16 on the GPU, plus a
so400m-shaped saliency head, and runs the real pipeline (frame sampling of a synthetic 1280x720 H.264 clip,
own preprocessing, layer-wise vision encoding, FastVID pruning, prefill, decode) for each ratio. Speed does not
depend on weight values. Prints a table (medians over --repeat, min-max in brackets) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import measure_setting, med, random_modules  # noqa: E402
from fastvid_cli.decoding import Sampling, decode, new_cache, prefill  # noqa: E402
from fastvid_cli.engine import Engine, PruneOptions, versions  # noqa: E402
from fastvid_cli.models import ModelRef  # noqa: E402
from fastvid_cli.models.llava_onevision import LlavaOnevisionAdapter  # noqa: E402
from fastvid_cli.models.siglip_head import SaliencyHead  # noqa: E402
from fastvid_cli.tiny import byte_tokenizer  # noqa: E402
from fastvid_cli.video import sample_frames  # noqa: E402


def build_7b_shaped(device: str, dtype: torch.dtype):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    tok = byte_tokenizer()
    vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                  num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False)
    text = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                rope_theta=1000000.0, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", image_grid_pinpoints=[[384, 384]])
    cfg._attn_implementation = "sdpa"
    head_cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                  layer_norm_eps=1e-6)
    model, head = random_modules(device, dtype, lambda: LlavaOnevisionForConditionalGeneration(cfg),
                                 lambda: SaliencyHead(head_cfg))
    model.generation_config.eos_token_id = None  # random weights: never stop early, decode a fixed count
    model.generation_config.pad_token_id = tok.pad_token_id
    adapter = LlavaOnevisionAdapter(model, tok, ModelRef("llava-ov-7b-shaped", None, True), mean=[0.5] * 3,
                                    std=[0.5] * 3, norm_source="bench", saliency_head=head,
                                    saliency_source="siglip-head (random, so400m shape)", warnings_=[])
    return Engine(adapter, model_name="llava-ov-7b-shaped", device=device, dtype=dtype, attn_implementation="sdpa")


def write_clip(path: str, seconds: int = 60, fps: int = 30, size=(1280, 720)) -> str:
    """Encode the synthetic clip in a child process, then pause: on the VM we measured on, the host stayed slow
    (decode at a third of its speed) for a while after x264 encoding ran in the benchmark's own process."""
    import subprocess

    if not Path(path).exists():
        subprocess.run([sys.executable, __file__, "--write-clip", path, str(seconds), str(fps), str(size[0]),
                        str(size[1])], check=True)
        time.sleep(3.0)
    return path


ULTRAFAST = {"preset": "ultrafast", "crf": "23", "g": "250"}  # the benchmarks' clip: no B-frames


def _write_clip_here(path: str, seconds: int, fps: int, size, options: dict[str, str] = ULTRAFAST) -> str:
    """The synthetic clip (a random 8x8-block image scrolling 4 px a frame), encoded by x264 with `options`."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = dict(options)
        for i in range(seconds * fps):
            img = np.roll(base, shift=i * 4, axis=1)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ratios", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device, dtype = "cuda", torch.bfloat16
    t0 = time.perf_counter()
    engine = build_7b_shaped(device, dtype)
    build_s = time.perf_counter() - t0
    engine.warmup()
    video = args.video or write_clip(str(Path(tempfile.mkdtemp()) / "clip720p.mp4"))
    samples = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        clip = sample_frames(video, args.frames)
        samples.append((time.perf_counter() - t) * 1e3)
    a = engine.adapter
    pre, vis = [], []
    for _ in range(args.repeat):
        tm = {}
        feats = engine.features(clip, tm)
        pre.append(tm["preprocess"])
        vis.append(tm["vision"])
    prompt = a.build_prompt("What happens in this video? Describe it in detail.")
    rows = []
    base_prefill = None
    for ratio in [float(r) for r in args.ratios.split(",")]:
        opts = PruneOptions(method="none" if ratio >= 1 else "fastvid", ratio=ratio,
                            params={} if ratio >= 1 else dict(c=8, tau=0.9, d=0.4, p=4, beta=0.6))
        res, asm, prune_ms, prefill_ms, peak = measure_setting(engine, feats, opts, prompt, args.repeat)
        # decode: steady-state tokens/s of our decode loop (dynamic cache) after this prompt; one untimed run first
        for n in (8, args.decode_tokens):
            with torch.inference_mode():
                cache = new_cache(a.model)
                logits = prefill(a.model, asm.inputs_embeds, asm.position_ids, cache)
                dec = decode(a.model, logits, cache, asm.full_length, Sampling(max_new_tokens=n))
        tt = dec.token_times
        tok_s = (len(tt) - 1) / (tt[-1] - tt[0])
        pf = med(prefill_ms)
        if base_prefill is None and ratio >= 1:
            base_prefill = pf[0]
        ttft = statistics.median(samples) + statistics.median(pre) + statistics.median(vis) + med(prune_ms)[0] + pf[0]
        rows.append(dict(ratio=ratio, video_tokens=int(res.index.numel()), prompt_tokens=asm.length,
                         full_prompt_tokens=asm.full_length, segments=len(res.segments), prune_ms=med(prune_ms),
                         prefill_ms=pf, ttft_ms_est=ttft, decode_tok_s=tok_s, peak_gib=peak,
                         notes=res.notes))
    for r in rows:
        r["prefill_speedup"] = (base_prefill / r["prefill_ms"][0]) if base_prefill else None
    env = dict(device=torch.cuda.get_device_name(0), python=platform.python_version(), **versions(),
               date=time.strftime("%Y-%m-%d"), build_s=round(build_s, 1), frames=args.frames, repeat=args.repeat)
    print(f"# bench_ask: LLaVA-OV-7B-shaped, random bf16 weights, sdpa | {env}")
    print(f"sample {args.frames} frames of a 60 s 1280x720 H.264 clip: {med(samples)[0]:.1f} ms "
          f"[{med(samples)[1]:.1f}-{med(samples)[2]:.1f}] | preprocess {med(pre)[0]:.1f} ms | "
          f"vision (SigLIP+proj+pool+saliency head) {med(vis)[0]:.1f} ms [{med(vis)[1]:.1f}-{med(vis)[2]:.1f}]")
    print("| ratio | video tokens | prompt | segments | prune ms | prefill ms | prefill speedup | TTFT ms | "
          "decode tok/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']:.2f} | {r['video_tokens']} | {r['prompt_tokens']} | {r['segments']} | "
              f"{r['prune_ms'][0]:.2f} [{r['prune_ms'][1]:.2f}-{r['prune_ms'][2]:.2f}] | "
              f"{r['prefill_ms'][0]:.1f} [{r['prefill_ms'][1]:.1f}-{r['prefill_ms'][2]:.1f}] | "
              f"{r['prefill_speedup']:.2f}x | {r['ttft_ms_est']:.1f} | {r['decode_tok_s']:.1f} | {r['peak_gib']:.1f} |")
        for n in r["notes"]:
            print(f"  note (r={r['ratio']}): {n}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, sample_ms=med(samples), preprocess_ms=med(pre),
                                                  vision_ms=med(vis), rows=rows), indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--write-clip":
        _write_clip_here(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), (int(sys.argv[5]), int(sys.argv[6])))
    else:
        main()
