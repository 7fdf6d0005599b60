"""Sample a video and encode its frames at the same time: frames are preprocessed and run through the vision tower
in groups as the decoders hand them over, so that little vision work is left once the last frame is decoded.

Only for families that encode every frame alone (FamilyAdapter.frames_independent): the groups then change which
frames share a batch, not the features. On CUDA each group is one replay of a captured graph (vision_graph.py):
launching the encoder's kernels from Python while the decoder threads contend for the GIL would be slow.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from fastvid_cli.errors import oom_guard
from fastvid_cli.models.interface import VideoFeatures, merge_frame_chunks
from fastvid_cli.report import Clock, Stage, elapsed_ms
from fastvid_cli.video import Clip, sample_frames


class PipelinedEncoder:
    """Encodes a model's frames in groups while the rest of the clip is still being sampled."""

    def __init__(self, adapter, clock: Clock):
        self.adapter = adapter
        self.clock = clock
        # Encode the groups through a captured CUDA graph (vision_graph.py): True, False, or why it failed.
        self.graphs: bool | str = True
        self._graph = None  # (its key, the GraphedEncoder) of the last frame size seen

    def sample_and_encode(self, video: str, frames, timings: dict[str, float], on_stage: Stage, *, chunk: int,
                          encode_clip: Callable[[Clip, dict[str, float]], VideoFeatures],
                          sampler: Callable[..., Clip] | None = None) -> tuple[Clip, VideoFeatures]:
        """Sample `frames` of `video` on a worker thread and encode the frames in groups of up to `chunk` as they
        are decoded (the graph's fixed batch; without the graph, a larger backlog goes in one call).

        Timings: sample = decoding wall time; preprocess / vision = their summed GPU-stream time, mostly hidden
        (with the graph, preprocess is the upload and the GPU resize counts as vision); encode_after_sample = what
        was left to wait for after the last frame. If the frames handed out early are not the clip's final frames
        (sequential fallback, rotation), the clip is encoded again by `encode_clip` (which adds its own timings).
        `sampler(video, frames, on_frame=...)` samples (default video.sample_frames; the engine passes its decoder's,
        whose frames may be CUDA tensors)."""
        on_stage("sample", "start")
        t0 = time.perf_counter()
        box, parts, spans = self._sample_in_groups(video, frames, chunk, sampler or sample_frames)
        on_stage("sample", "done")
        if "error" in box:
            raise box["error"]
        clip: Clip = box["clip"]
        on_stage("encode", "start")
        if handed_whole(clip, [(s, a) for slots, arrays, _ in parts for s, a in zip(slots, arrays)]):
            with torch.inference_mode(), oom_guard():
                feats = merge_frame_chunks([(slots, f) for slots, _, f in parts], len(clip.indices))
            t_end = self.clock.now()
            timings["sample"] = (box["t"] - t0) * 1e3
            timings["preprocess"] = sum(elapsed_ms(a, b) for a, b, _ in spans)
            timings["vision"] = sum(elapsed_ms(b, c) for _, b, c in spans)
            timings["encode_after_sample"] = (t_end - box["t"]) * 1e3
        else:
            timings["sample"] = (box["t"] - t0) * 1e3
            feats = encode_clip(clip, timings)
        on_stage("encode", "done")
        return clip, feats

    def _sample_in_groups(self, video: str, frames, chunk: int, sampler) -> tuple[dict[str, Any], list, list]:
        """Sample on a "fastvid-sample" thread and encode what it hands over. Returns (box: the clip, or the error
        the sampler raised, and "t" when it ended; the groups: (slots, frames, features); their timing marks)."""
        parts: list[tuple[list[int], list, VideoFeatures]] = []
        spans: list[tuple] = []  # per group: (start, uploaded/preprocessed, encoded) as CUDA events or host times

        def take(pending: list) -> int:
            group, feats, span = self._encode_group(pending, chunk)
            spans.append(span)
            parts.append(([s for s, _ in group], [a for _, a in group], feats))
            return len(group)

        with torch.inference_mode(), oom_guard():
            box = decode_in_groups(lambda on_frame: sampler(video, frames, on_frame=on_frame), chunk, take)
        return box, parts, spans

    def _graphed_encoder(self, chunk: int, frame_shape: tuple[int, ...]):
        """The CUDA-graph encoder of `chunk` frames of this size (captured on first use, the last size kept), or
        None: not on CUDA, turned off, or its capture failed once (then groups are encoded eagerly)."""
        if self.adapter.vision_device.type != "cuda" or self.graphs is not True:
            return None
        key = (chunk, *frame_shape[:2])
        got = self._graph
        if got is None or got[0] != key:
            from fastvid_cli.vision_graph import GraphedEncoder

            self._graph = None
            try:
                got = (key, GraphedEncoder(self.adapter, *key))
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - encoding eagerly still works
                self.graphs = f"{type(e).__name__}: {str(e).strip()[:120]}"
                return None
            self._graph = got
        return got[1]

    def _encode_group(self, pending: list, chunk: int) -> tuple[list, VideoFeatures, tuple]:
        """Encode the first frames of `pending` ((slot, frame) pairs): `chunk` of them through the graphed encoder,
        or all of them eagerly. Returns (the pairs taken, their features, timing marks)."""
        graphed = self._graphed_encoder(chunk, pending[0][1].shape)
        group = pending[:graphed.n] if graphed is not None else pending
        frames_u8 = stack_frames([a for _, a in group])
        m0 = self._mark()
        if graphed is not None:  # upload only; resizing runs inside the graph (counted as vision)
            k = graphed.load(frames_u8)
            m1 = self._mark()
            feats = graphed.run(k)
        else:
            pixels = self.adapter.preprocess(frames_u8)
            m1 = self._mark()
            feats = self.adapter.encode(pixels)
        return group, feats, (m0, m1, self._mark())

    def _mark(self):
        """A timing mark on the vision device: a recorded CUDA event, or on the CPU (synchronous) a host time."""
        if self.adapter.vision_device.type != "cuda":
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.adapter.vision_device))
        return ev


def decode_in_groups(sample: Callable[[Callable[[int, Any], None]], Clip], chunk: int,
                     take: Callable[[list], int]) -> dict[str, Any]:
    """Run `sample(on_frame)` (a sampler handing each decoded frame over as `on_frame(slot, frame)`) on a
    "fastvid-sample" thread, and on this thread call `take(pending)` with the (slot, frame) pairs handed over and not
    yet taken whenever there are `chunk` of them (with what is left once sampling ended); `take` returns how many
    of the first pairs it used. Returns {"clip": the sampler's clip} or {"error": what it raised}, and "t": when
    sampling ended (perf_counter). An exception of `take` propagates once the sampler has finished."""
    ready: queue.SimpleQueue = queue.SimpleQueue()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["clip"] = sample(lambda slot, a: ready.put((slot, a)))
        except BaseException as e:  # noqa: BLE001 - raised on the calling thread
            box["error"] = e
        finally:
            box["t"] = time.perf_counter()
            ready.put(None)

    worker = threading.Thread(target=work, daemon=True, name="fastvid-sample")
    worker.start()
    try:
        pending: list = []
        done = False
        while not done:
            item = ready.get()
            while item is not None:  # take everything decoded by now
                pending.append(item)
                try:
                    item = ready.get_nowait()
                except queue.Empty:
                    break
            done = item is None
            while pending and (done or len(pending) >= chunk):
                pending = pending[max(1, take(pending)):]
    finally:
        worker.join()
    return box


def handed_whole(clip: Clip, handed: list[tuple[int, Any]]) -> bool:
    """Whether the frames handed over while sampling ((slot, frame) pairs) are exactly the clip's final frames
    (not so after a sequential fallback or a rotation, which make new arrays)."""
    return len(handed) == len(clip.indices) and all(same_memory(clip.frames[s], a) for s, a in handed)


def same_memory(a, b) -> bool:
    """Whether two frames (numpy arrays, or torch tensors of the GPU decoder) are the same memory."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.shares_memory(a, b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape == b.shape
    return False


def stack_frames(frames: list):
    """uint8 (H, W, 3) frames -> (k, H, W, 3), numpy or torch as they come."""
    return torch.stack(frames) if isinstance(frames[0], torch.Tensor) else np.stack(frames)
