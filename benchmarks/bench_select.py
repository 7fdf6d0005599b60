"""What `--select` costs on the GPU, against the TTFT of a 7B answer (issue 16's goal: <= 25 % of the 7B TTFT).

    python benchmarks/bench_select.py [--candidates 128] [--select 32] [--repeat 5] [--out results.json]

Random weights, full-size shapes, no download: a SigLIP-so400m text-image model (both towers, 27 layers each, 384 px,
the default selector's shape) in fp16 and a LLaVA-OneVision-7B-shaped model in bf16 (bench_ask.build_7b_shaped).
Clip: the synthetic 60 s 1280x720 30 fps H.264 clip of bench_ask. Measured, medians of --repeat (min-max):

  sample_candidates  decode M candidate frames (PyAV, sparse seeks)          frame_choice.sample_candidates
  embed_frames       SigLIP vision tower on the M frames, batched on the GPU  (part of the same call)
  score_and_select   text tower on the question + cosine + BOLT + the clip   frame_choice.choose
  ttft_uniform       `ask` on K uniform frames: sample + encode + FastVID r=0.1 + prefill to the first token
  ttft_selected      `ask` on the K chosen frames (they reuse the decoded candidates: no sampling) + the three
                     selection stages above
Overhead = ttft_selected - ttft_uniform, also as a share of ttft_uniform.
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
from fastvid_cli.frame_choice import choose, sample_candidates  # noqa: E402
from fastvid_cli.frame_scorer import SiglipScorer  # noqa: E402
from fastvid_cli.settings import SelectOptions  # noqa: E402

QUESTION = "What does the person put on the table after opening the fridge?"


class _Ids:
    """Stands in for SigLIP's sentencepiece tokenizer (not needed for timing): 64 token ids, as padded."""

    def __call__(self, texts, **_):
        return {"input_ids": torch.randint(0, 32000, (len(texts), 64))}


def build_so400m(device: str, dtype: torch.dtype, tiny: bool = False) -> SiglipScorer:
    """SigLIP so400m's shape with random weights (`tiny`: a 2-layer, 64-wide stand-in, for a CPU smoke run)."""
    from transformers import SiglipConfig, SiglipModel

    if tiny:
        tower, size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2), 56
    else:
        tower, size = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16), 384
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=32000, max_position_embeddings=64, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=1, projection_size=tower["hidden_size"]),
                       vision_config=dict(tower, image_size=size, patch_size=14))
    (model,) = random_modules(device, dtype, lambda: SiglipModel(cfg))
    return SiglipScorer(model, _Ids(), "siglip-so400m-shaped (random)" if not tiny else "tiny siglip (random)",
                        size, [0.5] * 3, [0.5] * 3, torch.device(device), dtype)


def build_tiny_engine():
    """--tiny: the tests' tiny random LLaVA-OneVision on the CPU (checks that the script runs, times nothing)."""
    from fastvid_cli.engine import Engine
    from fastvid_cli.tiny import save_llava_checkpoint

    folder = save_llava_checkpoint(Path(tempfile.mkdtemp()) / "tiny-llava")
    return Engine.load(str(folder), device="cpu", dtype="float32", saliency_model="fallback")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--select", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny random models and a 4 s clip")
    ap.add_argument("--decoder", choices=("cpu", "gpu"), default="cpu",
                    help="how the candidates are decoded: cpu (PyAV) or gpu (NVDEC, frames stay on the GPU)")
    args = ap.parse_args()
    if args.tiny:
        device = "cpu"
        video = args.video or write_clip(str(Path(tempfile.mkdtemp()) / "clip.mp4"), seconds=4, size=(320, 180))
        engine = build_tiny_engine()
        scorer = build_so400m(device, torch.float32, tiny=True)
    else:
        from fastvid_cli.video_gpu import share_primary_context

        share_primary_context(0)  # before the models take the GPU, as Engine.load does: NVDEC may decode candidates
        device = "cuda"
        video = args.video or cached_clip(60)  # the 60 s 720p clip the other benchmarks share (written once)
        engine = build_7b_shaped(device, torch.bfloat16)
        engine.warmup()
        scorer = build_so400m(device, torch.float16)
    opts = SelectOptions(k=args.select, candidates=args.candidates)
    gen = GenerationOptions(max_new_tokens=1)
    # one untimed round of each path: kernels, allocator, the scorer's first batch
    sample_candidates(video, opts, scorer, decoder=args.decoder)
    engine.ask(video, QUESTION, frames=args.select, prune=PruneOptions(ratio=0.1), gen=gen)
    rows: dict[str, list[float]] = {k: [] for k in ("sample_candidates", "embed_frames", "score_and_select",
                                                    "selection", "ttft_uniform", "ttft_selected")}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(args.repeat):
        sync()
        r = engine.ask(video, QUESTION, frames=args.select, prune=PruneOptions(ratio=0.1), gen=gen)
        rows["ttft_uniform"].append(r.timings_ms["ttft"])
        t0 = time.perf_counter()
        cands = sample_candidates(video, opts, scorer, decoder=args.decoder)
        clip, info = choose(cands, QUESTION, opts)
        sync()
        sel_ms = (time.perf_counter() - t0) * 1e3
        r2 = engine.ask(video, QUESTION, prune=PruneOptions(ratio=0.1), gen=gen, clip=clip, sample_ms=0.0)
        for k in ("sample_candidates", "embed_frames", "score_and_select"):
            rows[k].append(info["timings_ms"][k])
        rows["selection"].append(sel_ms)
        rows["ttft_selected"].append(sel_ms + r2.timings_ms["ttft"])
    env = environment(device)
    m = {k: med(v) for k, v in rows.items()}
    over = m["ttft_selected"][0] - m["ttft_uniform"][0]
    share = over / m["ttft_uniform"][0]
    what = ("TINY SMOKE RUN (tiny random models, 4 s 320x180 clip, CPU): times mean nothing" if args.tiny else
            "60 s 1280x720 clip; selector so400m-shaped fp16, answer LLaVA-OV-7B-shaped bf16, FastVID r=0.1")
    print(f"# bench_select: {args.candidates} candidates -> {args.select} frames; {what} | {env}")
    print("| stage | ms (median) | min-max |")
    print("|---|---|---|")
    for k, (mid, lo, hi) in m.items():
        print(f"| {k} | {mid:.1f} | {lo:.1f}-{hi:.1f} |")
    print(f"selection overhead on TTFT: {over:.1f} ms = {100 * share:.1f} % of the uniform TTFT "
          f"({'within' if share <= 0.25 else 'OVER'} the 25 % goal)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, candidates=args.candidates, select=args.select,
                                                  medians={k: v[0] for k, v in m.items()}, rows=rows,
                                                  overhead_ms=over, overhead_share=share), indent=2))


if __name__ == "__main__":
    main()
