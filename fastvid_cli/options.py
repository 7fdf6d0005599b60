"""Command-line options shared by `ask`, `compare` and `batch`: one definition, one help text, one default.

Typer reads these OptionInfo objects as parameter defaults and never mutates them, so one instance can serve
several commands. Like cli.py, this module imports no torch.
"""

from __future__ import annotations

import typer

MODEL_HELP = "Alias (see `fastvid models`), hub id (org/name) or local checkpoint folder."

MODEL = typer.Option("llava-ov-7b", "--model", "-m", help=MODEL_HELP, rich_help_panel="Model")
DEVICE = typer.Option("auto", help="auto | cuda | cuda:N | cpu. auto shards a model too big for one GPU across all "
                                   "GPUs (accelerate device_map).", rich_help_panel="Model")
DTYPE = typer.Option("auto", help="auto | bfloat16 | float16 | float32 (auto: bf16 on GPU, fp32 on CPU).",
                     rich_help_panel="Model")
ATTN = typer.Option("sdpa", help="sdpa | eager | flash_attention_2.", rich_help_panel="Model")
SALIENCY = typer.Option(
    None, help="SigLIP checkpoint (hub id, folder or .safetensors) whose attention-pooling head gives FastVID's "
               "saliency; default google/siglip-so400m-patch14-384, falling back (with a warning) to last-layer "
               "attention when unavailable. 'fallback' forces the fallback.", rich_help_panel="Model")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads for torch's work (default: one per core for the "
                                                      "model, one for pruning; OMP_NUM_THREADS sets it too).",
                       rich_help_panel="Model")
OFFLINE = typer.Option(False, "--offline", help="Never touch the network (same as HF_HUB_OFFLINE=1).",
                       rich_help_panel="Model")

FRAMES = typer.Option(None, "--frames", "-n", min=1, max=4096,
                      help="Frames to sample uniformly (default: the model's, 32 for LLaVA-OV; Qwen-VL models sample "
                           "by --fps unless this is given, rounded to an even count).",
                      rich_help_panel="Video")
FPS = typer.Option(None, "--fps", min=0.0, help="Qwen-VL models: frames per second to sample (default 2), at least 4 "
                                                "and at most 768 frames, an even count; exclusive with --frames.",
                   rich_help_panel="Video")
CACHE_DIR = typer.Option(None, help="Where sampled-and-encoded video features are cached (default: "
                                    "~/.cache/fastvid/features, or $FASTVID_CACHE/features).",
                         rich_help_panel="Video")
NO_CACHE = typer.Option(False, "--no-cache", help="Do not read or write the feature cache.", rich_help_panel="Video")

METHOD = typer.Option("fastvid", help="Pruning method: fastvid | holitom (HoliTom's temporal windows + spatial "
                                      "merge, re-indexed positions) | holitom-orig (the same, kept tokens at their "
                                      "original positions) | none | uniform (per-frame average pooling to the "
                                      "same budget) | random (seeded).", rich_help_panel="Pruning")
RATIO = typer.Option(None, "--ratio", "-r", help="Retention ratio in (0, 1]; 1.0 keeps every token (default: the "
                                                 "model's, 0.10 for LLaVA-OV).", rich_help_panel="Pruning")
DYSEG_C = typer.Option(None, min=1, help="DySeg: minimum number of segments (8).", rich_help_panel="Pruning")
DYSEG_TAU = typer.Option(None, help="DySeg: cut where adjacent-frame similarity < tau (0.9).",
                         rich_help_panel="Pruning")
STPRUNE_D = typer.Option(None, min=0.0, max=1.0, help="Share of each frame's budget for merged context tokens "
                                                      "(0.4).", rich_help_panel="Pruning")
DTM_P = typer.Option(None, min=1, help="Anchor-frame period inside a segment (4).", rich_help_panel="Pruning")
DTM_BETA = typer.Option(None, min=0.0, max=1.0, help="Lower bound of the anchor's weight in a merge (0.6).",
                        rich_help_panel="Pruning")
DYSEG_IGNORE = typer.Option(None, min=0.0, max=1.0, help="FastVID on Qwen-VL: in a segment, temporal patches this "
                                                         "similar to the next (>=) are near-duplicates and only the "
                                                         "last of a run keeps tokens (0.95).",
                            rich_help_panel="Pruning")

MAX_NEW_TOKENS = typer.Option(512, min=1, help="Most tokens to generate.", rich_help_panel="Generation")
TEMPERATURE = typer.Option(0.0, min=0.0, help="0 = greedy.", rich_help_panel="Generation")
TOP_P = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0).",
                     rich_help_panel="Generation")
SEED = typer.Option(None, help="Seed for sampling (each answer starts from it).", rich_help_panel="Generation")
SYSTEM = typer.Option(None, help="System prompt.", rich_help_panel="Generation")
HOLITOM_INNER = typer.Option(None, "--holitom-inner", metavar="K,R",
                             help="HoliTom's inner-LLM stage (with --method holitom/holitom-orig): before LLM "
                                  "layer K, keep the share 1-R of the video tokens the last prompt token attends to "
                                  "most and merge the rest into them (the reference used 18,0.5 on 7B). Each "
                                  "question then prefills alone (no shared video prefix) and decodes eagerly.",
                             rich_help_panel="Pruning")
COMPILE = typer.Option(None, "--compile/--no-compile",
                       help="Decode on a static KV cache with each step replayed as one CUDA graph (captured once "
                            "per buffer size, well under a second; greedy tokens as the eager loop). Default: on "
                            "when running on CUDA.", rich_help_panel="Generation")

DEBUG = typer.Option(False, "--debug", help="Show tracebacks.", rich_help_panel="Output")
