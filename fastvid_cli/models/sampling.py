"""What `--frames` / `--fps` may ask of a model family: the checks every family shares, and uniform sampling.

A family samples a video either uniformly (a frame count: `uniform_count`) or by its own plan (Qwen-VL: a rate
with frame bounds), an object that picks the frame indices itself (`SamplePlan`). Both answer to the same checks
(`check_request`), so `ask`, `compare`, `batch` and `eval` reject the same requests with the same words.

Torch-free: the model registry and the run-settings resolver (`fastvid_cli.settings`) use it before torch loads.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

from fastvid_cli.errors import InvalidOptionError

# Frames a uniformly sampling model takes when neither the user, its alias nor its family says otherwise (also the
# count asked for before a checkpoint's family is known; its load then says what is wrong with it).
UNIFORM_FRAMES = 32


@runtime_checkable
class SamplePlan(Protocol):
    """A family's own choice of frames: a `video.IndexPlan` (frame indices from the stream's frame count and average
    rate) that can also say what it asks for, for the feature-cache key."""

    def __call__(self, total: int, video_fps: float | None) -> Sequence[int]: ...

    def key(self) -> dict[str, Any]: ...


def check_request(frames: int | None, fps: float | None, *, by_rate: bool) -> None:
    """The checks of a frame request, for a family that samples by rate (`by_rate`) or uniformly."""
    if fps is not None and not by_rate:
        raise InvalidOptionError("--fps applies to the Qwen-VL families; this model samples --frames uniformly")
    if frames is not None and fps is not None:
        raise InvalidOptionError("--frames and --fps exclude each other", "give one: a frame count or a rate")
    if frames is not None and frames < 1:
        raise InvalidOptionError(f"--frames must be >= 1 (got {frames})")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise InvalidOptionError(f"--fps must be > 0 (got {fps})")


def uniform_count(frames: int | None, fps: float | None, default: int) -> int:
    """Uniform sampling: the count asked for, else `default`; a rate means nothing here."""
    check_request(frames, fps, by_rate=False)
    return frames or default
