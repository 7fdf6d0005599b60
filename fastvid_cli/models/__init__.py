"""Model families: the registry from a checkpoint's config model_type to the module of its family adapter.

Importing this package is cheap (no torch, no transformers): the CLI uses it for `fastvid models` and to check
`--model`, `--device`, `--dtype` and `--attn-implementation` before anything heavy is imported. A family's module
is imported when that family is asked for (`adapter_class`).

The package, by job:
  aliases.py     the alias table and `resolve_model` (what a --model value names)
  loading.py     device/dtype/attention options (checked without torch) and from_pretrained
  sampling.py    what --frames / --fps may ask of a family (checks shared by every family, uniform counts)
  interface.py   VideoFeatures, Prompt, Assembled and FamilyAdapter, the contract of a family
  llava_onevision.py, qwen_vl.py   one module per family; siglip_head.py  FastVID's SigLIP saliency head

Adding a family: write `models/<family>.py` with a `FamilyAdapter` subclass exported as `Adapter` (see
interface.FamilyAdapter for what it must provide and what it may override), and add one FAMILIES line per
config model_type it serves. Run settings (frames, fps, defaults) are resolved from it by `fastvid_cli.settings`.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING

from fastvid_cli import hub
from fastvid_cli.errors import ModelUnavailableError, UnknownModelError
from fastvid_cli.hub import ModelRef
from fastvid_cli.models.aliases import (ALIASES, DEFAULT_MODEL, DEMO_DIR, Alias, alias_ref,
                                        resolve_model)
from fastvid_cli.models.loading import (ATTN_IMPLEMENTATIONS, DEVICE_CHOICES, DTYPE_NAMES, check_attn_implementation,
                                        check_device_name, check_dtype_name)

if TYPE_CHECKING:
    from fastvid_cli.models.interface import FamilyAdapter

# model_type (from the checkpoint's config.json) -> the module whose `Adapter` serves it
FAMILIES: dict[str, str] = {
    "llava_onevision": "fastvid_cli.models.llava_onevision",
    "qwen2_vl": "fastvid_cli.models.qwen_vl",
    "qwen2_5_vl": "fastvid_cli.models.qwen_vl",
    "qwen3_vl": "fastvid_cli.models.qwen_vl",
    "qwen3_vl_moe": "fastvid_cli.models.qwen_vl",
}

__all__ = ["ALIASES", "ATTN_IMPLEMENTATIONS", "Alias", "DEFAULT_MODEL", "DEMO_DIR", "DEVICE_CHOICES", "DTYPE_NAMES",
           "FAMILIES", "ModelRef", "adapter_class", "alias_ref", "check_attn_implementation",
           "check_device_name", "check_dtype_name", "checkpoint_family", "resolve_model"]


def adapter_class(family: str | None, where: str | None = None) -> type[FamilyAdapter]:
    """The adapter class serving `family` (a config model_type); UnknownModelError for one we do not support
    (`where`: the checkpoint, for the message)."""
    if family not in FAMILIES:
        place = f" in {where}" if where else ""
        raise UnknownModelError(f"unsupported architecture '{family}'{place}", f"supported: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family]).Adapter


def checkpoint_family(ref: ModelRef) -> str | None:
    """config.json's model_type of a checkpoint, read as JSON (transformers' AutoConfig costs seconds of imports);
    downloads the file when it is missing and allowed. ModelUnavailableError when it cannot be read."""
    try:
        with open(hub.get_file(ref, "config.json"), encoding="utf-8") as f:
            family = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelUnavailableError(f"could not read config of {ref.display}: {e}") from None
    return family if isinstance(family, str) else None
