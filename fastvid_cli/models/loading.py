"""Loading a checkpoint: the device, dtype and attention options, and the stock transformers classes behind them.

The option checks (`check_device_name`, `check_dtype_name`, `check_attn_implementation`) need no torch, so the CLI
runs them before torch is imported (seconds); importing this module imports no torch either. Resolving those
options against the machine (`resolve_device`, `resolve_dtype`) and loading weights import torch when called.

Cache first, like `fastvid_cli.hub`: a local folder, or a hub id already in the cache, loads with
`local_files_only=True` (no network round trip); offline mode never touches the network. Every loading failure a
user can cause becomes one ModelUnavailableError line.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from fastvid_cli import hub
from fastvid_cli.errors import InvalidOptionError, ModelUnavailableError
from fastvid_cli.hub import ModelRef

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_NAMES = {"auto": "auto", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "half": "float16", "float32": "float32", "fp32": "float32"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# Files where a checkpoint keeps its (video) processor settings, most specific first.
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")


# ------------------------------------------------------------------------------------------ options, without torch
def check_device_name(device: str) -> str:
    """`--device`, normalised, checked for its form only (whether CUDA is there is known once torch is imported)."""
    d = device.strip().lower()
    if d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise InvalidOptionError(f"--device must be {DEVICE_CHOICES} (got '{device}')")


def check_dtype_name(dtype: str) -> str:
    """`--dtype` as its canonical name (auto, bfloat16, float16, float32)."""
    try:
        return DTYPE_NAMES[dtype.strip().lower()]
    except KeyError:
        raise InvalidOptionError(f"--dtype must be auto, bfloat16, float16 or float32 (got '{dtype}')") from None


def check_attn_implementation(name: str) -> str:
    """`--attn-implementation`: a known kernel whose package is installed. flash attention without the
    flash-attn package is a usage error with the install command, not a crash inside transformers."""
    import importlib.util

    if name not in ATTN_IMPLEMENTATIONS:
        raise InvalidOptionError(f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)} "
                                 f"(got '{name}')")
    package = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise InvalidOptionError(f"--attn-implementation {name} needs the flash-attn package, which is not "
                                 "installed", "pip install flash-attn --no-build-isolation (CUDA only), or use "
                                 "--attn-implementation sdpa (the default)")
    return name


# ------------------------------------------------------------------------------------------ options, on this machine
def resolve_device(device: str) -> str:
    """'auto' | 'cuda' | 'cuda:N' | 'cpu' -> a concrete device string ('auto' stays 'auto' only for sharding)."""
    import torch

    device = check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise InvalidOptionError(f"--device {device}: CUDA is not available on this machine", "use --device cpu")
    if ":" in device and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
        raise InvalidOptionError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    import torch

    dtype = check_dtype_name(dtype)
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (where its inputs must go)."""
    return next(module.parameters()).device


# ------------------------------------------------------------------------------------------ weights and files
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
