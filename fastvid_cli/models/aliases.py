"""Model aliases (`--model llava-ov-7b`) and what a `--model` value names: an alias, a local checkpoint folder or a
hub id. Torch-free: the CLI resolves `--model` before anything heavy is imported."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fastvid_cli.errors import UnknownModelError
from fastvid_cli.hub import ModelRef


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    family: str
    params: str
    frames: int | None  # default frame count; None: the family samples by rate (`fps`)
    notes: str = ""
    fps: float | None = None  # default sampling rate (Qwen-VL families), None for a fixed frame count

    @property
    def sampling(self) -> str:
        """The default sampling, for people: '32' frames or '2 fps'."""
        return f"{self.fps:g} fps" if self.frames is None and self.fps else str(self.frames)


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("llava-ov-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava_onevision", "0.9B", 32),
        Alias("llava-ov-7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision", "8.0B", 32,
              "the paper's main model"),
        Alias("llava-ov-72b", "llava-hf/llava-onevision-qwen2-72b-ov-hf", "llava_onevision", "73B", 32,
              "needs several GPUs: --device auto shards it"),
        Alias("llava-ov-0.5b-si", "llava-hf/llava-onevision-qwen2-0.5b-si-hf", "llava_onevision", "0.9B", 32,
              "single-image stage"),
        Alias("llava-ov-7b-si", "llava-hf/llava-onevision-qwen2-7b-si-hf", "llava_onevision", "8.0B", 32,
              "single-image stage"),
        Alias("llava-video-7b", "llava-hf/LLaVA-Video-7B-Qwen2-hf", "llava_onevision", "8.0B", 64,
              "LLaVA-Video in the OneVision layout (see README); 64 frames as in the paper"),
        Alias("qwen2-vl-2b", "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "2.2B", None, fps=2.0),
        Alias("qwen2-vl-7b", "Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "8.3B", None, fps=2.0),
        Alias("qwen2-vl-72b", "Qwen/Qwen2-VL-72B-Instruct", "qwen2_vl", "73B", None,
              "needs several GPUs: --device auto shards it", fps=2.0),
        Alias("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "3.8B", None, fps=2.0),
        Alias("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "8.3B", None,
              "the paper's Qwen model (FastVID Qwen variant, r=0.27)", fps=2.0),
        Alias("qwen2.5-vl-32b", "Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl", "33B", None,
              "needs a 80 GB GPU in bf16, or --device auto over several", fps=2.0),
        Alias("qwen2.5-vl-72b", "Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl", "73B", None,
              "needs several GPUs: --device auto shards it", fps=2.0),
        Alias("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl", "2.1B", None, fps=2.0),
        Alias("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl", "4.4B", None, fps=2.0),
        Alias("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", "8.8B", None, fps=2.0),
        Alias("qwen3-vl-32b", "Qwen/Qwen3-VL-32B-Instruct", "qwen3_vl", "33B", None,
              "needs a 80 GB GPU in bf16, or --device auto over several", fps=2.0),
        Alias("qwen3-vl-30b-a3b", "Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe", "31B", None,
              "mixture of experts, 3B active", fps=2.0),
        Alias("demo", "fastvid_cli/demo/weights", "llava_onevision", "8M", 16,
              "tiny demo model shipped in the package: runs offline on any CPU (synthetic shapes videos only)"),
    ]
}

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo" / "weights"

DEFAULT_MODEL = "llava-ov-7b"


def resolve_model(name: str) -> ModelRef:
    """Map an alias, a local folder or a hub id (`org/name`) to a ModelRef; reject anything else."""
    name = name.strip()
    if not name:
        raise UnknownModelError("empty --model")
    if name == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise UnknownModelError("the demo model's weights are missing from this installation",
                                    f"expected them in {DEMO_DIR}")
        return ModelRef(str(DEMO_DIR), "demo", True)
    if name in ALIASES:
        return ModelRef(ALIASES[name].repo, name, False)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            inside = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
            if inside:
                raise UnknownModelError(f"{name} is a folder of checkpoints, not a checkpoint: pass one of its "
                                        f"subfolders, e.g. --model {path / inside[0]}",
                                        f"checkpoints in it: {', '.join(inside)}")
            raise UnknownModelError(f"{name} is a folder but has no config.json: not a model checkpoint")
        return ModelRef(str(path.resolve()), None, True)
    if path.exists():
        raise UnknownModelError(f"{name} is a file; --model takes an alias, a hub id or a checkpoint folder")
    parts = name.split("/")
    looks_like_repo = len(parts) == 2 and all(parts) and not name.startswith((".", "~", os.sep))
    if not looks_like_repo:
        known = ", ".join(ALIASES)
        raise UnknownModelError(f"unknown model '{name}'", f"use an alias ({known}), a hub id like org/name, "
                                "or a local checkpoint folder; `fastvid models` lists them")
    return ModelRef(name, None, False)


def alias_ref(alias: Alias) -> ModelRef:
    """Where an alias points (the demo model is a folder inside the package, the rest are hub ids)."""
    if alias.name == "demo":
        return ModelRef(str(DEMO_DIR), "demo", True)
    return ModelRef(alias.repo, alias.name, False)


