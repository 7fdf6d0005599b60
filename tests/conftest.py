"""Shared test setup: a hermetic Hugging Face environment, tiny checkpoints and test videos."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Hermetic hub: never touch the network or the user's caches. Must run before huggingface_hub is imported.
_HF_TMP = tempfile.mkdtemp(prefix="fastvid-tests-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_TMP
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_TMP, "hub")
os.environ["FASTVID_CACHE"] = os.path.join(_HF_TMP, "fastvid")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"


# --- model fixtures ---
@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny random LLaVA-OneVision checkpoint folder with the real 27x27 -> 14x14 token layout."""
    from fastvid_cli.tiny import save_llava_checkpoint

    return save_llava_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llava-ov")


@pytest.fixture(scope="session")
def tiny_saliency(tmp_path_factory) -> Path:
    """A tiny SigLIP vision checkpoint with its attention-pooling head (FastVID's saliency source)."""
    from fastvid_cli.tiny import save_saliency_checkpoint

    return save_saliency_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-siglip")


@pytest.fixture(scope="module")
def engine(tiny_llava, tiny_saliency):
    """The tiny LLaVA-OneVision model loaded on the CPU with its saliency head; one per test module, since tests
    change engine state (decoders, pipeline switches) under monkeypatch."""
    from fastvid_cli.engine import Engine

    return Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model=str(tiny_saliency))


@pytest.fixture(scope="session")
def index_video(tmp_path_factory) -> Path:
    """A 48-frame 64x48 H.264 clip whose frames encode their own index (see videogen.index_frames)."""
    from videogen import index_frames, write_video

    path = tmp_path_factory.mktemp("vid") / "index.mp4"
    return Path(write_video(str(path), index_frames(48, 48, 64), fps=24))


# --- video fixtures ---


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """Folder of small real clips (bikes.mp4, carphone_pristine.mp4, big_buck_bunny_432_433.webm)."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real test clips not found: {SHARED_VIDEOS} is absent")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def qwen_checkpoints(tmp_path_factory):
    """kind ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") -> a tiny random checkpoint folder, built on first use."""
    from fastvid_cli.tiny import save_qwen_checkpoint

    root, made = tmp_path_factory.mktemp("qwen"), {}

    def get(kind: str):
        if kind not in made:
            made[kind] = save_qwen_checkpoint(root / kind, kind)
        return made[kind]

    return get


@pytest.fixture(scope="module")
def qwen_engines(qwen_checkpoints):
    """kind -> an Engine on that tiny checkpoint (CPU, float32), loaded on first use in the module."""
    from fastvid_cli.engine import Engine

    made = {}

    def get(kind: str):
        if kind not in made:
            made[kind] = Engine.load(str(qwen_checkpoints(kind)), device="cpu", dtype="float32")
        return made[kind]

    return get
