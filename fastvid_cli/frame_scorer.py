"""Frame scorers: how relevant each video frame is to a text, for `--select` and `fastvid find`.

A scorer embeds frames (uint8 (T,H,W,3)) and texts into one space; a frame's score for a text is the cosine of
the two embeddings (what BOLT uses). Two kinds:

  SiglipScorer  a SigLIP text-image checkpoint (default google/siglip-so400m-patch14-384, the checkpoint whose
                attention-pooling head FastVID's saliency already reads): its vision model (pooled output) and
                text model (texts padded to 64 tokens, as SigLIP was trained). Selection needs both whole towers,
                so unlike the saliency head nothing is extracted: the checkpoint's files are read from the
                Hugging Face cache (downloaded once when allowed), and `--offline` without them is a one-line
                error that names the files to download.
  DemoScorer    the demo model's selector (`fastvid_cli.demo.text_tower`): the demo's own vision tower and the
                small text tower trained against it; a model folder holding `text_tower.safetensors` brings it.

Which one (`selector_source`): `--selector` (a hub id, a folder, or "demo"); else the model folder's own
selector when it has one (the demo); else the SigLIP default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli import hub
from fastvid_cli.errors import ModelUnavailableError
from fastvid_cli.hub import HubUnreachableError, ModelRef

DEFAULT_SELECTOR = "google/siglip-so400m-patch14-384"
DEMO_SELECTOR = "demo"
OWN_SELECTOR_FILE = "text_tower.safetensors"  # a model folder holding this brings its own selector (the demo)
SIGLIP_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
                "spiece.model", "special_tokens_map.json")
TEXT_LENGTH = 64  # SigLIP's text towers were trained on texts padded to 64 tokens
FRAME_CHUNK = 32
# Frames per replay of the SigLIP tower's CUDA graph: small enough that the last group, embedded after the last
# candidate decoded, adds little (so400m at 384 px: ~12k tokens a replay).
GRAPH_CHUNK = 16


def selector_source(selector: str | None, model_ref: ModelRef | None = None) -> str:
    """What scores the frames: `selector` ("demo" names the demo's own), else the model folder's own selector when
    it has one, else DEFAULT_SELECTOR."""
    from fastvid_cli.models import DEMO_DIR

    if selector:
        s = selector.strip()
        return str(DEMO_DIR) if s == DEMO_SELECTOR else s
    if model_ref is not None and model_ref.is_local and (Path(model_ref.source) / OWN_SELECTOR_FILE).is_file():
        return str(model_ref.source)
    return DEFAULT_SELECTOR


class FrameScorer:
    """Embeds frames and texts into one space; a frame's score for a text is the cosine of the two."""

    source: str
    device: torch.device

    def identity(self) -> dict:
        """What makes this scorer's embeddings what they are (for the candidate cache)."""
        raise NotImplementedError

    def embed_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (T,H,W,3), numpy or a tensor (NVDEC frames on the GPU) -> float32 (T,D) unit vectors (on the
        CPU)."""
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """texts -> float32 (Q,D) unit vectors (on the CPU)."""
        raise NotImplementedError

    def group(self) -> int | None:
        """Frames per `embed_frames` call that cost no Python-side launches (a CUDA-graph replay), so that embedding
        groups while CPU decoder threads hold the GIL does not slow either down; None when this scorer has none."""
        return None


class DemoScorer(FrameScorer):
    def __init__(self, folder: Path, device: torch.device):
        from fastvid_cli.demo import text_tower

        self.source = str(folder)
        self.device = device
        self._tt = text_tower
        self.tower = text_tower.load_tower(folder).to(device)
        self.heads = text_tower.load(folder / OWN_SELECTOR_FILE).to(device)

    def identity(self) -> dict:
        return {"kind": "demo", "source": self.source, "weights": _file_ids(Path(self.source), (
            OWN_SELECTOR_FILE, "model.safetensors"))}

    @torch.inference_mode()
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(frames), FRAME_CHUNK):
            pixels = self._tt.preprocess(_tensor(frames[i:i + FRAME_CHUNK])).to(self.device)
            out.append(self.heads.frame(self._tt.tower_tokens(self.tower, pixels)).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.heads.text(list(texts)).float().cpu()


class SiglipScorer(FrameScorer):
    def __init__(self, model, tokenizer, source: str, image_size: int, mean, std, device: torch.device,
                 dtype: torch.dtype, weights: str = ""):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.image_size, self.mean, self.std = image_size, mean, std
        self.device, self.dtype = device, dtype
        self.weights = weights  # the weight file's identity (size, mtime); "" for random weights (benchmarks)
        # On CUDA the tower runs as a captured graph of GRAPH_CHUNK frames (vision_graph.FrameGraph, one per frame
        # size, the last one kept): True, False (off), or why its capture failed (then it runs eagerly).
        self.graphs: bool | str = device.type == "cuda"
        self._graph = None  # ((height, width), FrameGraph)

    def identity(self) -> dict:
        return {"kind": "siglip", "source": self.source, "weights": self.weights, "size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "dtype": str(self.dtype).removeprefix("torch.")}

    def group(self) -> int | None:
        return GRAPH_CHUNK if self.graphs is True else None

    def _tower(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n,H,W,3) on the scorer's device -> float32 (n,D) unit vectors there."""
        from fastvid_cli.preprocess import normalize, resize_frames

        x = normalize(resize_frames(frames.permute(0, 3, 1, 2), (self.image_size, self.image_size)), self.mean,
                      self.std)
        pooled = self.model.vision_model(pixel_values=x.to(self.dtype)).pooler_output
        return F.normalize(pooled.float(), dim=-1)

    def _graph_for(self, height: int, width: int):
        """The captured tower for frames of this size, or None (not on CUDA, turned off, or its capture failed)."""
        if self.graphs is not True:
            return None
        if self._graph is None or self._graph[0] != (height, width):
            from fastvid_cli.vision_graph import FrameGraph

            self._graph = None
            try:
                self._graph = ((height, width), FrameGraph(self._tower, GRAPH_CHUNK, height, width, self.device))
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - the eager tower still works
                self.graphs = f"{type(e).__name__}: {str(e).strip()[:120]}"
                return None
        return self._graph[1]

    @torch.inference_mode()
    def embed_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        graph = self._graph_for(int(frames.shape[1]), int(frames.shape[2])) if len(frames) else None
        step = graph.n if graph is not None else FRAME_CHUNK
        out = []
        for i in range(0, len(frames), step):
            part = frames[i:i + step]
            if graph is not None:
                k = graph.load(part)
                out.append(graph.replay()[:k].cpu())
            else:
                out.append(self._tower(_tensor(part).to(self.device, non_blocking=True)).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             return_tensors="pt")["input_ids"].to(self.device)
        pooled = self.model.text_model(input_ids=ids).pooler_output
        return F.normalize(pooled.float(), dim=-1).cpu()


def _file_ids(folder: Path, names: tuple[str, ...]) -> str:
    """Size and mtime of each file (a changed weight file changes a scorer's identity)."""
    out = []
    for name in names:
        st = (folder / name).resolve().stat()
        out.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(out)


def _tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames


def _unavailable(source: str, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"the frame selector {source} is not available here ({why})",
        f"download it on a connected machine with: hf download {source} {' '.join(SIGLIP_FILES)}; or pass "
        f"--selector with a local SigLIP folder")


def _siglip_folder(source: str) -> str:
    """A local folder holding the SigLIP checkpoint's files: `source` itself, or its snapshot in the hub cache
    (downloaded file by file when missing and allowed)."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(f"--selector {source}: no config.json in that folder")
        return str(local)
    if local.suffix or source.startswith((".", "/", "~")):
        raise ModelUnavailableError(f"--selector {source}: no such folder")
    ref = ModelRef(source, None, False)
    try:
        config = hub.get_file(ref, "config.json")
        for name in SIGLIP_FILES[1:]:
            hub.get_file(ref, name, required=name in ("model.safetensors", "spiece.model"))
    except HubUnreachableError as e:
        raise _unavailable(source, e.message) from None
    except ModelUnavailableError as e:
        raise _unavailable(source, e.message.split(" (")[0]) from None
    return os.path.dirname(config)


def _load_siglip(source: str, device: torch.device, dtype: torch.dtype) -> SiglipScorer:
    import json

    from transformers import AutoTokenizer, SiglipModel

    folder = _siglip_folder(source)
    try:
        model = SiglipModel.from_pretrained(folder, dtype=dtype, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelUnavailableError(f"--selector {source}: not a SigLIP text-image checkpoint ({first})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except ImportError as e:  # SigLIP's tokenizer is a sentencepiece model
        raise ModelUnavailableError(f"the frame selector's tokenizer needs a package that is missing ({e})",
                                    "pip install sentencepiece protobuf") from None
    pre = Path(folder) / "preprocessor_config.json"
    cfg = json.loads(pre.read_text()) if pre.is_file() else {}
    size = cfg.get("size", {}).get("height") or int(model.config.vision_config.image_size)
    mean, std = cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3)
    return SiglipScorer(model.to(device).eval(), tokenizer, source, int(size), mean, std, device, dtype,
                        _file_ids(Path(folder), ("model.safetensors",)))


def import_classes() -> None:
    """Import the transformers classes the scorers use, on this thread: call it before another thread starts
    importing transformers (the model load beside `ask`'s selection), since two threads importing the same lazy
    transformers module at once can see it half initialised."""
    from transformers import AutoTokenizer, SiglipModel, SiglipVisionConfig, SiglipVisionModel  # noqa: F401


def load_scorer(source: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> FrameScorer:
    """The scorer at `source` (see `selector_source`) on `device`. ModelUnavailableError (exit 6, one line saying
    what to download) when its weights are not here and cannot be fetched: never a silent fallback."""
    dev = torch.device(device)
    folder = Path(source).expanduser()
    if folder.is_dir() and (folder / OWN_SELECTOR_FILE).is_file():
        return DemoScorer(folder, dev)
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    return _load_siglip(source, dev, dtype)
