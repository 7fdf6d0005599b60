"""Decoding the next video's frames on a background thread while the current one is answered (FramePrefetcher)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastvid_cli.batch.groups import Group

def features_cached(engine, fcache, group: Group) -> bool:
    """Whether the feature cache holds `group`'s video at its frames (the key `Engine.session` looks up)."""
    try:
        return fcache.contains(engine.feature_cache_key(group.path, engine.frame_plan(group.frames, group.fps)))
    except Exception:  # noqa: BLE001 - unreadable file, bad request: the session finds out and says so
        return False


class FramePrefetcher:
    """Samples the frames of each group's video on one background thread, one group ahead of the answers.

    `take(k)` hands out group k's frames (waiting if they are not ready) and starts sampling group k+1, so the next
    video is decoded on the CPU while the GPU answers this one's questions; at most two clips are held at a time.
    Decoding is mostly FFmpeg code that releases the GIL, so it costs the answering thread little.

    What the records then say: timings_ms.sample is how long the background decode took, timings_ms.sample_wait
    how long the answering thread still waited for it (only that wait counts towards the first row's TTFT), as
    `ask` reports sampling that overlapped the model load.

    `skip(group)` (set once the model is loaded, with a feature cache): True for a group whose features are cached;
    its frames are not decoded, and `take` hands out no clip for it."""

    def __init__(self, groups: list[Group], decoder: str = "cpu", device: Any = None):
        from concurrent.futures import ThreadPoolExecutor

        self.groups = groups
        self.decoder, self.device = decoder, device  # video_gpu.sample_clip's (decoder already resolved)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvid-prefetch")
        self.futures: dict[int, Any] = {}
        self.started: list[int] = []  # group indices in the order sampling was started (tests read it)
        self.skip: Callable[[Group], bool] | None = None
        self._submit(0)

    def _submit(self, k: int) -> None:
        if k < len(self.groups) and k not in self.futures:
            if self.skip is not None and self.skip(self.groups[k]):
                from concurrent.futures import Future

                self.futures[k] = done = Future()
                done.set_result((None, 0.0))
                return
            self.started.append(k)
            self.futures[k] = self.pool.submit(self._sample, self.groups[k])

    def _sample(self, group: Group):
        from fastvid_cli.video_gpu import sample_clip

        # One core fewer than the machine has: the answering thread keeps one to launch GPU work from.
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        t0 = time.perf_counter()
        clip = sample_clip(group.path, group.sampling if group.sampling is not None else group.frames,
                           threads=max(1, cores - 1), decoder=self.decoder, device=self.device)
        return clip, (time.perf_counter() - t0) * 1e3

    def take(self, k: int) -> "Prefetched":
        """Group k's frames: (clip, sample_ms, wait_ms) or the exception sampling raised; clip None if skipped."""
        self._submit(k)  # not started yet (groups skipped): start now
        fut = self.futures.pop(k)
        self._submit(k + 1)  # queued behind k on the single worker: decoded while k is answered
        t0 = time.perf_counter()
        try:
            clip, sample_ms = fut.result()
        except Exception as e:  # handed to the caller, which records it like an inline sampling error
            return Prefetched(None, 0.0, (time.perf_counter() - t0) * 1e3, e)
        return Prefetched(clip, sample_ms, (time.perf_counter() - t0) * 1e3, None)

    def close(self) -> None:
        """Drop queued work and wait for a decode in flight (an interpreter exiting under PyAV code can abort)."""
        for fut in self.futures.values():
            fut.cancel()
        self.futures.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Prefetched:
    clip: Any  # fastvid_cli.video.Clip, or None when sampling failed or was skipped (features cached)
    sample_ms: float
    wait_ms: float
    error: BaseException | None

