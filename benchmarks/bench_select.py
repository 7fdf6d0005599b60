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

from _common import environment, med, random_modules  # noqa: E402
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


def build_so400m(device: str, dtype: torch.dtype) -> SiglipScorer:
    from transformers import SiglipConfig, SiglipModel

    tower = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=32000, max_position_embeddings=64, projection_size=1152),
                       vision_config=dict(tower, image_size=384, patch_size=14))
    (model,) = random_modules(device, dtype, lambda: SiglipModel(cfg))
    return SiglipScorer(model, _Ids(), "siglip-so400m-shaped (random)", 384, [0.5] * 3, [0.5] * 3,
                        torch.device(device), dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--select", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cuda"
    video = args.video or write_clip(str(Path(tempfile.mkdtemp()) / "clip720p.mp4"))
    engine = build_7b_shaped(device, torch.bfloat16)
    engine.warmup()
    scorer = build_so400m(device, torch.float16)
    opts = SelectOptions(k=args.select, candidates=args.candidates)
    gen = GenerationOptions(max_new_tokens=1)
    # one untimed round of each path: kernels, allocator, the scorer's first batch
    sample_candidates(video, opts, scorer)
    engine.ask(video, QUESTION, frames=args.select, prune=PruneOptions(ratio=0.1), gen=gen)
    rows: dict[str, list[float]] = {k: [] for k in ("sample_candidates", "embed_frames", "score_and_select",
                                                    "selection", "ttft_uniform", "ttft_selected")}
    for _ in range(args.repeat):
        torch.cuda.synchronize()
        r = engine.ask(video, QUESTION, frames=args.select, prune=PruneOptions(ratio=0.1), gen=gen)
        rows["ttft_uniform"].append(r.timings_ms["ttft"])
        t0 = time.perf_counter()
        cands = sample_candidates(video, opts, scorer)
        clip, info = choose(cands, QUESTION, opts)
        torch.cuda.synchronize()
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
    print(f"# bench_select: {args.candidates} candidates -> {args.select} frames of a 60 s 1280x720 clip; "
          f"selector so400m-shaped fp16, answer LLaVA-OV-7B-shaped bf16, FastVID r=0.1 | {env}")
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
