"""On-disk cache of a video's sampled-and-encoded features, so `fastvid ask ... --ratio X` in a shell loop only
pays for sampling and the vision tower once per video.

Key: the file's identity (absolute path, size, mtime, and a hash of its first and last MiB, so an edited file
with a restored mtime still misses) plus everything that changes the features (model, frames, dtype, saliency
source, format version). Entries are written atomically (temp file + rename); an entry that cannot be read is
ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fastvid_cli.models.interface import VideoFeatures
from fastvid_cli.video import Clip

FORMAT = 2  # 2: entries carry attn_received (format-1 entries lack it, so their keys no longer match)
_MIB = 1 << 20


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(_MIB))
        if st.st_size > 2 * _MIB:
            f.seek(-_MIB, os.SEEK_END)
            h.update(f.read(_MIB))
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_sha256": h.hexdigest()}


def cache_key(video: str | os.PathLike, **settings: Any) -> str:
    blob = json.dumps({"format": FORMAT, "file": file_identity(video), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def contains(self, key: str) -> bool:
        """Whether an entry exists under `key` (it may still turn out unreadable: `load` then misses)."""
        return self._path(key).is_file()

    def load_tensors(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tensors on the CPU, metadata) of the entry under `key`, or None when there is none or it is unreadable."""
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["fastvid"])
        except Exception:  # corrupt, truncated, or from another format: a miss, rewritten later
            return None

    def store_tensors(self, key: str, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write an entry atomically (temp file + rename); a failure to write (a full disk) is ignored: the cache is
        an optimisation."""
        from safetensors.torch import save_file

        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                      metadata={"fastvid": json.dumps(meta, default=float)})
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def load(self, key: str, device) -> tuple[Clip, VideoFeatures] | None:
        got = self.load_tensors(key)
        if got is None:
            return None
        t, meta = got
        try:
            side = [t[f"side_{i}"] for i in range(int(meta.get("side_embeds", 0)))]
            attn = t.get("attn_received")
            clip = clip_from_meta(meta["clip"])
            feats = VideoFeatures(embeds=t["embeds"].to(device), saliency=t["saliency"].to(device),
                                  frame_features=t["frame_features"].to(device),
                                  extra_embeds=t["extra_embeds"].to(device), grid=tuple(meta["grid"]),
                                  saliency_source=meta["saliency_source"],
                                  attn_received=None if attn is None else attn.to(device),
                                  side_embeds=[x.to(device) for x in side], meta=dict(meta.get("meta") or {}))
            if feats.embeds.dim() != 3 or feats.saliency.shape != feats.embeds.shape[:2]:
                return None
            if feats.attn_received is not None and feats.attn_received.shape != feats.saliency.shape:
                return None
            return clip, feats
        except Exception:  # written by another format: a miss, rewritten later
            return None

    def store(self, key: str, clip: Clip, feats: VideoFeatures) -> None:
        meta = {"clip": clip_meta(clip), "grid": list(feats.grid), "saliency_source": feats.saliency_source,
                "side_embeds": len(feats.side_embeds), "meta": feats.meta}
        tensors = {"embeds": feats.embeds, "saliency": feats.saliency, "frame_features": feats.frame_features,
                   "extra_embeds": feats.extra_embeds}
        if feats.attn_received is not None:  # optional: a family without it stores none
            tensors["attn_received"] = feats.attn_received
        for i, x in enumerate(feats.side_embeds):  # Qwen3-VL DeepStack features
            tensors[f"side_{i}"] = x
        self.store_tensors(key, tensors, meta)


_CLIP_FIELDS = ("indices", "timestamps", "fps", "duration", "total_frames", "requested", "path", "width", "height",
                "rotation", "codec")


def clip_meta(clip: Clip) -> dict[str, Any]:
    """A clip's description without its frames (JSON)."""
    return {k: getattr(clip, k) for k in _CLIP_FIELDS}


def clip_from_meta(c: dict[str, Any]) -> Clip:
    """The clip `clip_meta` described, with no frames (an empty (T, 0, 0, 3) array)."""
    return Clip(frames=np.empty((len(c["indices"]), 0, 0, 3), np.uint8), **{k: c[k] for k in _CLIP_FIELDS})
