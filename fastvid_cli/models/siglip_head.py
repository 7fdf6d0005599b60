"""FastVID's saliency source for SigLIP towers: the attention-pooling (MAP) head of the original SigLIP.

LLaVA-OneVision checkpoints drop SigLIP's last layer and its head, but FastVID scores tokens with that head
applied to the LLaVA tower output: the probe's attention over the patches (averaged over heads) is the token
saliency, and the pooled probe vector is the per-frame global feature. Only `post_layernorm` and `head` are
needed (~30 MB of a 3.5 GB checkpoint), so we read just those tensors lazily with safetensors and keep an
extracted copy in our cache, which later runs load in milliseconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from fastvid_cli import hub
from fastvid_cli.errors import ModelUnavailableError
from fastvid_cli.hub import ModelRef

DEFAULT_SALIENCY_MODEL = "google/siglip-so400m-patch14-384"
FALLBACK = "fallback"
OWN_HEAD_FILE = "saliency_head.safetensors"  # a model folder holding this file brings its own saliency head

_KEEP = re.compile(r"^(?:.*\.)?(post_layernorm\.(?:weight|bias)|head\.(?:probe|attention\..+|layernorm\..+|mlp\..+))$")


class SaliencyHead(nn.Module):
    """post_layernorm + SigLIP MAP head; forward returns (attention over patches (B,P), pooled (B,Dg))."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(self, tower_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.post_layernorm(tower_out)
        probe = self.head.probe.expand(h.shape[0], -1, -1)
        # The stock head discards the attention weights; call its MultiheadAttention ourselves to keep them.
        out, weights = self.head.attention(probe, h, h, need_weights=True, average_attn_weights=True)
        pooled = out + self.head.mlp(self.head.layernorm(out))
        return weights[:, 0], pooled[:, 0]


def _vision_config_dict(cfg: dict) -> dict:
    return cfg.get("vision_config") or cfg


def _extracted_path(source: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", source.strip("/"))
    return hub.fastvid_cache_dir() / "saliency" / f"{safe}.safetensors"


def _find_weights(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelUnavailableError(f"no .safetensors weights in {folder} (safetensors only)")
    return files


def _extract(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read only post_layernorm + head tensors (vision tower's, not the text model's) from safetensors files."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key.startswith("text_model."):
                    continue
                m = _KEEP.match(key)
                if m and m.group(1) not in found:
                    found[m.group(1)] = st.get_tensor(key)
    if "head.probe" not in found or "post_layernorm.weight" not in found:
        raise ModelUnavailableError("saliency weights have no SigLIP attention-pooling head (head.probe)")
    return found


def write_head(path: Path, head: "SaliencyHead", vcfg: dict) -> None:
    """Save a head in the extracted format (e.g. as a model folder's own saliency_head.safetensors)."""
    _write_extracted(path, {k: v.detach().cpu() for k, v in head.state_dict().items()}, vcfg)


def _write_extracted(path: Path, tensors: dict[str, torch.Tensor], vcfg: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    meta = {"vision_config": json.dumps(vcfg)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry


def _read_extracted(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            vcfg = json.loads((st.metadata() or {}).get("vision_config", "{}"))
            return {k: st.get_tensor(k) for k in st.keys()}, vcfg
    except Exception:
        return None  # corrupt or stale: re-extract


def _source_tensors(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    local = Path(source).expanduser()
    if local.is_file() and local.suffix == ".safetensors":
        cfg_path = local.parent / "config.json"
        vcfg = _vision_config_dict(json.loads(cfg_path.read_text())) if cfg_path.is_file() else {}
        return _extract([local]), vcfg
    if local.is_dir():
        own = local / OWN_HEAD_FILE
        if own.is_file():  # a checkpoint that ships its own head (the demo model)
            hit = _read_extracted(own)
            if hit is None:
                raise ModelUnavailableError(f"unreadable saliency head {own}")
            return hit
        cfg_path = local / "config.json"
        vcfg = _vision_config_dict(json.loads(cfg_path.read_text())) if cfg_path.is_file() else {}
        return _extract(_find_weights(local)), vcfg
    cached = _extracted_path(source)
    if cached.is_file():
        hit = _read_extracted(cached)
        if hit is not None:
            return hit
    ref = ModelRef(source, None, False)
    cfg = hub.read_json(ref, "config.json") or {}
    index = hub.read_json(ref, "model.safetensors.index.json")
    if index:  # sharded: fetch only the shards that hold the head
        shards = sorted({f for k, f in index.get("weight_map", {}).items()
                         if _KEEP.match(k) and not k.startswith("text_model.")})
        files = [Path(hub.get_file(ref, s)) for s in shards]
    else:
        files = [Path(hub.get_file(ref, "model.safetensors"))]
    tensors, vcfg = _extract(files), _vision_config_dict(cfg)
    _write_extracted(cached, tensors, vcfg)
    return tensors, vcfg


def load_saliency_head(source: str, tower_hidden: int, device, dtype) -> SaliencyHead:
    """Build the head from `source` (hub id, checkpoint folder or .safetensors file) on `device` in `dtype`.

    Raises ModelUnavailableError when the weights cannot be had, or do not fit the tower's width."""
    from transformers import SiglipVisionConfig

    tensors, vcfg = _source_tensors(source)
    hidden = int(tensors["head.probe"].shape[-1])
    if hidden != tower_hidden:
        raise ModelUnavailableError(f"saliency head {source} has width {hidden}, the vision tower {tower_hidden}")
    cfg = SiglipVisionConfig(
        hidden_size=hidden,
        intermediate_size=int(tensors["head.mlp.fc1.weight"].shape[0]),
        num_attention_heads=int(vcfg.get("num_attention_heads", 16)),
        layer_norm_eps=float(vcfg.get("layer_norm_eps", 1e-6)),
        hidden_act=vcfg.get("hidden_act", "gelu_pytorch_tanh"),
    )
    head = SaliencyHead(cfg)
    missing, unexpected = head.load_state_dict(tensors, strict=False)
    if missing:
        raise ModelUnavailableError(f"saliency weights in {source} lack {', '.join(missing[:3])}")
    return head.to(device=device, dtype=dtype).eval()
