"""Model families, aliases and name resolution.

Importing this module is cheap (no torch, no transformers): the CLI uses it for `fastvid models` and for
validating `--model` before anything heavy is imported.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fastvid_cli.errors import UnknownModelError

# model_type (from the checkpoint's config.json) -> adapter module in fastvid_cli.models
FAMILIES: dict[str, str] = {
    "llava_onevision": "fastvid_cli.models.llava_onevision",
}


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    family: str
    params: str
    frames: int
    notes: str = ""


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
              "LLaVA-Video converted to the OneVision class (one newline per video)"),
        Alias("demo", "fastvid_cli/demo/weights", "llava_onevision", "6M", 16,
              "tiny demo model shipped in the package: runs offline on any CPU (synthetic shapes videos only)"),
    ]
}

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo" / "weights"

DEFAULT_MODEL = "llava-ov-7b"


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, resolved: a hub id or a local folder, plus the alias it came from."""

    source: str  # hub repo id or absolute local folder
    alias: str | None
    is_local: bool

    @property
    def display(self) -> str:
        return self.alias or self.source


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


def alias_table() -> list[dict]:
    return [asdict(a) for a in ALIASES.values()]
