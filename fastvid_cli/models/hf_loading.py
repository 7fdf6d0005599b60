"""Loading a family's stock transformers classes, shared by every adapter.

Cache first, like `fastvid_cli.hub`: a local folder, or a hub id already in the cache, loads with
`local_files_only=True` (no network round trip); offline mode never touches the network. Every loading failure a
user can cause becomes one ModelUnavailableError line.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from fastvid_cli import hub
from fastvid_cli.errors import ModelUnavailableError
from fastvid_cli.models import ModelRef

# Files where a checkpoint keeps its (video) processor settings, most specific first.
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (where its inputs must go)."""
    return next(module.parameters()).device


def load_pretrained(model_class, ref: ModelRef, *, device: str, dtype: torch.dtype, attn_implementation: str,
                    device_map: Any = None):
    """(model in eval mode on `device` or spread by `device_map`, tokenizer) of `ref` with `model_class`."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own display shows the load stage
    local_only = ref.is_local or hub.is_cached(ref) or hub.is_offline()
    if not local_only:
        hub.ensure_reachable(ref.source)
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
                  trust_remote_code=False, local_files_only=local_only)
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_class.from_pretrained(ref.source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(ref.source, local_files_only=local_only,
                                                      trust_remote_code=False)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailableError(f"could not load {ref.display}: {first}",
                                    None if ref.is_local else hub.download_hint(ref.source)) from None
    if device_map is None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def read_mean_std(ref: ModelRef, default: tuple[list[float], list[float]],
                  default_label: str) -> tuple[list[float], list[float], str]:
    """The checkpoint's normalisation constants (mean, std, which file said so), else `default`."""
    for name in PROCESSOR_FILES:
        cfg = hub.read_json(ref, name)
        if not cfg:
            continue
        for block in (cfg, cfg.get("video_processor") or {}, cfg.get("image_processor") or {}):
            if "image_mean" in block and "image_std" in block:
                return list(block["image_mean"]), list(block["image_std"]), name
    return list(default[0]), list(default[1]), default_label


def processor_chat_template(ref: ModelRef) -> str | None:
    """The chat template a checkpoint ships with its processor (chat_template.jinja / chat_template.json), for
    tokenizers that carry none themselves."""
    path = hub.get_file(ref, "chat_template.jinja", required=False)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            pass
    data = hub.read_json(ref, "chat_template.json")
    template = data.get("chat_template") if data else None
    return template if isinstance(template, str) else None
