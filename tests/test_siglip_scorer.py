"""The SigLIP frame selector (`--selector PATH`, frame_scorer.SiglipScorer) on a tiny random checkpoint with the
real file layout: frames and texts come out as unit vectors whatever the batching; on CUDA its tower runs as a
captured graph (groups of GRAPH_CHUNK frames) that embeds exactly as the eager tower does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvid_cli.frame_choice import sample_candidates
from fastvid_cli.frame_scorer import FRAME_CHUNK, GRAPH_CHUNK, SiglipScorer, load_scorer
from fastvid_cli.settings import SelectOptions
from fastvid_cli.tiny import save_siglip_selector
from tests.videogen import write_video


@pytest.fixture(scope="module")
def selector(tmp_path_factory):
    return save_siglip_selector(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 70, 3), dtype=np.uint8)


def test_a_local_siglip_folder_embeds_frames_and_texts_as_unit_vectors(selector):
    scorer = load_scorer(str(selector), "cpu")
    assert isinstance(scorer, SiglipScorer) and scorer.image_size == 56
    assert scorer.group() is None  # eager on the CPU: CPU-decoded candidates are embedded once all are decoded
    frames = _frames(FRAME_CHUNK + 5)  # more than one chunk
    e = scorer.embed_frames(frames)
    assert e.shape == (FRAME_CHUNK + 5, 32) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(len(e)), atol=1e-5)
    one_by_one = torch.cat([scorer.embed_frames(frames[i:i + 1]) for i in (0, FRAME_CHUNK, FRAME_CHUNK + 4)])
    assert torch.allclose(one_by_one, e[[0, FRAME_CHUNK, FRAME_CHUNK + 4]], atol=1e-5)
    assert (e[0] - e[1]).abs().max() > 1e-3  # different frames, different embeddings
    t = scorer.embed_texts(["a red square", "a blue circle"])
    assert t.shape == (2, 32) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    assert scorer.identity()["weights"].startswith("model.safetensors:")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_graphed_tower_embeds_as_the_eager_one_and_in_groups_while_decoding(selector, tmp_path):
    graphed = load_scorer(str(selector), "cuda", torch.float32)
    eager = load_scorer(str(selector), "cuda", torch.float32)
    eager.graphs = False
    assert graphed.group() == GRAPH_CHUNK and eager.group() is None
    frames = _frames(2 * GRAPH_CHUNK + 3)  # full groups and a padded one
    a, b = graphed.embed_frames(frames), eager.embed_frames(frames)
    assert graphed.graphs is True, graphed.graphs
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    from_gpu = graphed.embed_frames(torch.from_numpy(frames).cuda())  # NVDEC's frames: already on the GPU
    assert torch.allclose(from_gpu, a, atol=1e-6)

    video = str(tmp_path / "clip.mp4")
    write_video(video, _frames(120, seed=1)[:, :32, :64], fps=25, gop=20)
    sizes = []
    real = graphed.embed_frames
    graphed.embed_frames = lambda f: (sizes.append(len(f)), real(f))[1]
    cands = sample_candidates(video, SelectOptions(k=8, candidates=3 * GRAPH_CHUNK), graphed)
    assert max(sizes) <= GRAPH_CHUNK and sum(sizes) >= 3 * GRAPH_CHUNK
    assert torch.allclose(cands.embeds, eager.embed_frames(cands.clip.frames), atol=1e-4)
