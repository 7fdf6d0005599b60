"""`fastvid doctor`: what is installed and reachable, gathered for the table (cli.doctor) or `--json`.

Like the CLI, importing this module imports no torch; torch is imported (if installed) when the check runs.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastvid_cli import __version__


def doctor_info() -> dict[str, Any]:
    """What `fastvid doctor` reports: versions, devices and memory, caches, cached models, saliency weights, PyAV
    decoders, decode kernels and whether the hub is reachable (a dict, as `doctor --json` prints it)."""
    from fastvid_cli import hub
    from fastvid_cli.models import ALIASES, ModelRef, alias_ref
    from fastvid_cli.models.siglip_head import DEFAULT_SALIENCY_MODEL, _extracted_path

    vers: dict[str, str] = {"fastvid": __version__}
    for dist in ("torch", "transformers", "accelerate", "av", "typer", "rich", "huggingface_hub", "safetensors"):
        try:  # the installed distribution's metadata: not every package has a __version__ (rich has none)
            vers[dist] = version(dist)
        except PackageNotFoundError:
            vers[dist] = "MISSING"
    gpus = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "free_gb": free / 2**30,
                             "total_gb": total / 2**30})
    except Exception:
        pass
    cached = [a.name for a in ALIASES.values() if hub.is_cached(alias_ref(a))]
    extracted = _extracted_path(DEFAULT_SALIENCY_MODEL)
    if extracted.is_file():
        sal = f"{DEFAULT_SALIENCY_MODEL}: extracted head at {extracted}"
    elif hub.is_cached(ModelRef(DEFAULT_SALIENCY_MODEL, None, False)):
        sal = f"{DEFAULT_SALIENCY_MODEL}: in the HF cache (head is extracted on first use)"
    else:
        sal = (f"{DEFAULT_SALIENCY_MODEL}: NOT cached (FastVID falls back to last-layer attention; "
               f"hf download {DEFAULT_SALIENCY_MODEL} model.safetensors config.json)")
    try:
        from fastvid_cli.video import decoder_support

        decoders = decoder_support()
    except Exception:
        decoders = {}
    try:
        from fastvid_cli.video_gpu import nvdec_status

        nvdec = dict(nvdec_status(0))
    except Exception as e:  # noqa: BLE001 - doctor reports, never fails
        nvdec = {"available": False, "reason": f"{type(e).__name__}: {e}", "codecs": []}
    if hub.is_offline():
        network = "not checked (offline mode)"
    else:
        from huggingface_hub import constants

        why = hub._why_unreachable(constants.ENDPOINT)
        network = f"{constants.ENDPOINT} reachable" if why is None else f"{why}: use --offline, or download first"
    if importlib.util.find_spec("triton") is not None:
        kernels = f"Triton {version('triton')} kernels (on CUDA; compiled once per machine, then cached)"
    else:
        kernels = "plain torch kernels (Triton is not installed; CUDA wheels of torch bring it)"
    return {"versions": vers, "python": platform.python_version(), "cpu_cores": os.cpu_count(), "gpus": gpus,
            "hf_cache": hub.cache_dir(), "fastvid_cache": str(hub.fastvid_cache_dir()), "offline": hub.is_offline(),
            "cached_models": cached, "saliency_weights": sal, "decoders": decoders, "nvdec": nvdec,
            "fused_decode": kernels,
            "network": network}
