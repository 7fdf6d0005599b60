"""What `--select` costs on the GPU, against the TTFT of a 7B answer (issue 16's goal: <= 25 % of the 7B TTFT).

    python benchmarks/bench_select.py [--candidates 128] [--select 32] [--repeat 5] [--decoder cpu,gpu]
                                      [--selectors so400m-384,so400m-224,base-224] [--out results.json]

Random weights, full-size shapes, no download: SigLIP text-image models (both towers) in fp16 and a
LLaVA-OneVision-7B-shaped model in bf16 (bench_ask.build_7b_shaped). Selector shapes:
  so400m-384  google/siglip-so400m-patch14-384 (the default selector): 27 layers x 1152, 729 patches a frame
  so400m-224  google/siglip-so400m-patch14-224: the same tower at 224 px, 256 patches a frame
  base-224    google/siglip-base-patch16-224: 12 layers x 768, 196 patches a frame
Clip: the synthetic 60 s 1280x720 30 fps H.264 clip of bench_ask. For each decoder (the engine's and the
candidates'), medians of --repeat (min-max):

  ttft_uniform        `ask` on K uniform frames: sample + encode (overlapped) + FastVID r=0.1 + prefill to the first
                      token; ttft_uniform_r1: the same at r=1.0 (no pruning), the other denominator
  sample_candidates   decoding the M candidates (wall time; the selector embeds them meanwhile, in groups of 16
                      through its captured CUDA graph)
  embed_after_decode  what embedding had left once the last candidate was decoded
  score_and_select    cosine + BOLT + cutting the clip (the question was embedded while the frames decoded)
  ttft_selected       the three above + `ask` on the K chosen frames (they reuse the decoded candidates)
  ttft_selected_cached  the video asked about again: the candidates' embeddings come from the feature cache, so
                      only the question is embedded; the choice reaches `ask` pending and the engine decodes the K
                      chosen frames through its pipelined sampler (encoding them while they decode)
Overhead = ttft_selected - ttft_uniform, also as a share of ttft_uniform (and of ttft_uniform_r1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import cached_clip, environment, med, random_modules  # noqa: E402
from bench_ask import build_7b_shaped, write_clip  # noqa: E402
from fastvid_cli.engine import GenerationOptions, PruneOptions  # noqa: E402
from fastvid_cli.feature_cache import FeatureCache  # noqa: E402
from fastvid_cli.frame_choice import choose, sample_candidates  # noqa: E402
from fastvid_cli.frame_scorer import SiglipScorer  # noqa: E402
from fastvid_cli.settings import SelectOptions  # noqa: E402

QUESTION = "What does the person put on the table after opening the fridge?"


class _Ids:
    """Stands in for SigLIP's sentencepiece tokenizer (not needed for timing): 64 token ids, as padded."""

    def __call__(self, texts, **_):
        return {"input_ids": torch.randint(0, 32000, (len(texts), 64))}


SELECTOR_SHAPES = {  # name: (hidden, mlp, layers, heads, image size, patch)
    "so400m-384": (1152, 4304, 27, 16, 384, 14),
    "so400m-224": (1152, 4304, 27, 16, 224, 14),
    "base-224": (768, 3072, 12, 12, 224, 16),
    "tiny": (64, 128, 2, 2, 56, 14),
}


def build_selector(shape: str, device: str, dtype: torch.dtype) -> SiglipScorer:
    """A SigLIP text-image model of `shape` (SELECTOR_SHAPES) with random weights."""
    from transformers import SiglipConfig, SiglipModel

    hidden, mlp, layers, heads, size, patch = SELECTOR_SHAPES[shape]
    tower = dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads)
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=32000, max_position_embeddings=64, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=1, projection_size=hidden),
                       vision_config=dict(tower, image_size=size, patch_size=patch))
    (model,) = random_modules(device, dtype, lambda: SiglipModel(cfg))
    return SiglipScorer(model.eval(), _Ids(), f"siglip {shape} (random)", size, [0.5] * 3, [0.5] * 3,
                        torch.device(device), dtype)


def build_tiny_engine():
    """--tiny: the tests' tiny random LLaVA-OneVision on the CPU (checks that the script runs, times nothing)."""
    from fastvid_cli.engine import Engine
    from fastvid_cli.tiny import save_llava_checkpoint

    folder = save_llava_checkpoint(Path(tempfile.mkdtemp()) / "tiny-llava")
    return Engine.load(str(folder), device="cpu", dtype="float32", saliency_model="fallback")


def measure(engine, video: str, scorer, opts: SelectOptions, decoder: str, repeat: int, sync) -> dict:
    """Medians of the rows above for one decoder and one selector."""
    gen = GenerationOptions(max_new_tokens=1)
    engine.set_decoder(decoder)
    sample_candidates(video, opts, scorer, decoder=decoder, texts=[QUESTION])  # untimed: first batch, kernels
    engine.ask(video, QUESTION, frames=opts.k, prune=PruneOptions(ratio=0.1), gen=gen)
    rows: dict[str, list[float]] = {k: [] for k in ("ttft_uniform", "ttft_uniform_r1", "sample_candidates",
                                                    "embed_after_decode", "score_and_select", "selection",
                                                    "ttft_selected", "ttft_selected_cached")}
    cache = FeatureCache(tempfile.mkdtemp(prefix="bench-select-cache-"))
    sample_candidates(video, opts, scorer, decoder=decoder, cache=cache)  # the entry the cached rows read
    for _ in range(repeat):
        sync()
        for key, ratio in (("ttft_uniform", 0.1), ("ttft_uniform_r1", 1.0)):
            rows[key].append(engine.ask(video, QUESTION, frames=opts.k, prune=PruneOptions(ratio=ratio),
                                        gen=gen).timings_ms["ttft"])
        sync()
        t0 = time.perf_counter()
        cands = sample_candidates(video, opts, scorer, decoder=decoder, texts=[QUESTION])
        clip, info = choose(cands, QUESTION, opts)
        sync()
        sel_ms = (time.perf_counter() - t0) * 1e3
        r2 = engine.ask(video, QUESTION, prune=PruneOptions(ratio=0.1), gen=gen, clip=clip, sample_ms=0.0)
        rows["sample_candidates"].append(info["timings_ms"]["sample_candidates"])
        rows["embed_after_decode"].append(info["timings_ms"]["embed_frames"])
        rows["score_and_select"].append(info["timings_ms"]["score_and_select"])
        rows["selection"].append(sel_ms)
        rows["ttft_selected"].append(sel_ms + r2.timings_ms["ttft"])
        sync()
        t0 = time.perf_counter()
        cands = sample_candidates(video, opts, scorer, decoder=decoder, texts=[QUESTION], cache=cache)
        clip, info = choose(cands, QUESTION, opts)
        sync()
        sel_ms = (time.perf_counter() - t0) * 1e3
        assert info["cached"], "the candidate cache missed"
        r3 = engine.ask(video, QUESTION, prune=PruneOptions(ratio=0.1), gen=gen, clip=clip, sample_ms=0.0)
        rows["ttft_selected_cached"].append(sel_ms + r3.timings_ms["ttft"])
    return {"decoder": engine.decoder, "rows": rows, "medians": {k: med(v) for k, v in rows.items()},
            "timeline": timeline(video, opts, scorer, decoder, sync)}


def timeline(video: str, opts: SelectOptions, scorer, decoder: str, sync) -> dict:
    """Where the embedding time goes, in one more run: when each group reached the selector and how long its
    embedding took (ms from the start of sampling), when decoding ended, and the same candidates embedded again
    alone (all decoded already: the selector's own throughput, with nothing to overlap)."""
    groups = []
    embed = scorer.embed_frames

    def timed(frames):
        a = time.perf_counter()
        out = embed(frames)
        groups.append((round((a - t0) * 1e3, 1), round((time.perf_counter() - t0) * 1e3, 1), len(frames)))
        return out

    scorer.embed_frames = timed
    try:
        sync()
        t0 = time.perf_counter()
        cands = sample_candidates(video, opts, scorer, decoder=decoder)
        sync()
    finally:
        scorer.embed_frames = embed
    frames = cands.clip.frames
    alone = []
    for _ in range(3):
        sync()
        a = time.perf_counter()
        scorer.embed_frames(frames)
        sync()
        alone.append((time.perf_counter() - a) * 1e3)
    return {"decoded_at_ms": round(cands.sample_ms, 1), "groups_ms": groups, "embed_alone_ms": med(alone)[0],
            "frames": len(frames)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--select", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny random models and a 4 s clip")
    ap.add_argument("--decoder", default="cpu", help="comma-separated: cpu (PyAV) and/or gpu (NVDEC, frames stay "
                    "on the GPU) - both the engine's and the candidates' decoder")
    ap.add_argument("--selectors", default="so400m-384", help="comma-separated shapes: " + ", ".join(SELECTOR_SHAPES))
    args = ap.parse_args()
    decoders = [d.strip() for d in args.decoder.split(",") if d.strip()]
    shapes = [s.strip() for s in args.selectors.split(",") if s.strip()]
    if args.tiny:
        device, dtype, shapes, decoders = "cpu", torch.float32, ["tiny"], ["cpu"]
        video = args.video or write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=4, size=(320, 180))
        engine = build_tiny_engine()
    else:
        from fastvid_cli.video_gpu import share_primary_context

        share_primary_context(0)  # before the models take the GPU, as Engine.load does: NVDEC needs it
        device, dtype = "cuda", torch.float16
        video = args.video or cached_clip(60)  # the 60 s 720p clip the other benchmarks share (written once)
        engine = build_7b_shaped(device, torch.bfloat16)
        engine.warmup()
    opts = SelectOptions(k=args.select, candidates=args.candidates)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    env = environment(device)
    what = ("TINY SMOKE RUN (tiny random models, 4 s 320x180 clip, CPU): times mean nothing" if args.tiny else
            "60 s 1280x720 clip; selector fp16, answer LLaVA-OV-7B-shaped bf16, FastVID r=0.1")
    print(f"# bench_select: {args.candidates} candidates -> {args.select} frames; {what} | {env}", flush=True)
    results = []
    for shape in shapes:
        scorer = build_selector(shape, device, dtype)
        for decoder in decoders:
            got = measure(engine, video, scorer, opts, decoder, args.repeat, sync)
            m = got["medians"]
            over = m["ttft_selected"][0] - m["ttft_uniform"][0]
            over_cached = m["ttft_selected_cached"][0] - m["ttft_uniform"][0]
            got["selector_graph"] = scorer.graphs  # True: the captured tower ran; else why not
            got.update(overhead_cached_ms=over_cached, overhead_cached_share=over_cached / m["ttft_uniform"][0],
                       selector=shape, overhead_ms=over, overhead_share=over / m["ttft_uniform"][0],
                       overhead_share_r1=over / m["ttft_uniform_r1"][0])
            results.append(got)
            graph = "CUDA graph" if scorer.graphs is True else f"eager ({scorer.graphs})"
            print(f"\n## selector {shape} ({graph}), decoder {got['decoder']}\n| stage | ms (median) | min-max |\n"
                  "|---|---|---|")
            for k, (mid, lo, hi) in m.items():
                print(f"| {k} | {mid:.1f} | {lo:.1f}-{hi:.1f} |")
            print(f"selection overhead on TTFT: {over:.1f} ms = {100 * got['overhead_share']:.1f} % of the uniform "
                  f"TTFT at r=0.1 ({'within' if got['overhead_share'] <= 0.25 else 'OVER'} the 25 % goal), "
                  f"{100 * got['overhead_share_r1']:.1f} % of it at r=1.0; asked again (cached candidates): "
                  f"{over_cached:.1f} ms = {100 * got['overhead_cached_share']:.1f} %", flush=True)
            tl = got["timeline"]
            print(f"timeline (one more run): decoding ended at {tl['decoded_at_ms']} ms; groups (start, end, frames) "
                  f"{tl['groups_ms']}; the {tl['frames']} decoded candidates embedded again alone: "
                  f"{tl['embed_alone_ms']:.1f} ms", flush=True)
        del scorer
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, candidates=args.candidates, select=args.select,
                                                  results=results), indent=2))


if __name__ == "__main__":
    main()
