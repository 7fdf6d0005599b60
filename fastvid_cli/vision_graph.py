"""Work on a fixed number of frames, captured once as a CUDA graph and replayed.

Why: `Engine.sample_and_encode` encodes groups of frames while eight decoder threads are still running. Those
threads take Python's GIL in turns for every packet and frame, and launching the ~700 kernels of one SigLIP pass
from Python then crawls: on the H100 VM the encode of 32 frames took 141 ms of GPU-stream time in groups during
decoding against 76 ms in one pass after it (benchmarks/RESULTS.md). A graph replay is one call, however busy
the GIL is. The same holds for the frame selector's tower embedding `--select`'s candidates while they decode.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from fastvid_cli.models.interface import VideoFeatures, frames_slice


class FrameGraph:
    """`fn(frames)` for up to `n` uint8 (H, W, 3) frames of one size on `device`, replayed as one CUDA graph.
    Fewer frames than `n` run padded (the caller drops the extra rows' outputs): every call computes the same batch
    shape, so the kernels, and a frame's result, do not depend on how many came along."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], n: int, height: int, width: int, device: torch.device):
        self.n = n
        self.inp = torch.zeros((n, height, width, 3), dtype=torch.uint8, device=device)
        with torch.inference_mode():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: cuBLAS handles, resize weights and channel stats cached
                fn(self.inp)
                fn(self.inp)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.out = fn(self.inp)
        torch.cuda.synchronize(device)

    def load(self, frames) -> int:
        """Upload uint8 (k, H, W, 3), k <= n, into the graph's input (a numpy array, or a tensor already on the
        GPU: the GPU decoder's frames, copied on the device); returns k."""
        k = int(frames.shape[0])
        src = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
        self.inp[:k].copy_(src)
        return k

    def replay(self) -> Any:
        """Run the graph on what was loaded last; returns its outputs (overwritten by the next replay)."""
        self.graph.replay()
        return self.out


class GraphedEncoder(FrameGraph):
    """`adapter.encode(adapter.preprocess(frames))` as a FrameGraph."""

    def __init__(self, adapter, n: int, height: int, width: int):
        super().__init__(lambda x: adapter.encode(adapter.preprocess(x)), n, height, width, adapter.vision_device)

    def run(self, k: int) -> VideoFeatures:
        """Features of the k frames loaded last (copies: the next replay reuses the graph's outputs)."""
        return frames_slice(self.replay(), k)
