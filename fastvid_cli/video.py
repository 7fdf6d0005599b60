"""Read N uniformly spaced frames from a video file with PyAV.

Only PyAV and numpy here: the model code receives plain uint8 arrays.

Strategy (measured in shared/docs/transformers-notes.md section 7): demux once without decoding to learn every
frame's presentation timestamp and the keyframes, pick the target indices, then decode sparsely - seek to the
target's keyframe only when the decoder is not already inside (or just before) that GOP, else decode forward. The
runs of frames that start with a seek are shared out to several decoders running in parallel (one per core, up to
_MAX_DECODERS), and only the kept frames are converted to RGB. The frames are bit-identical to a full sequential
decode that keeps the same indices; when anything about the stream makes that mapping uncertain (missing or
duplicate timestamps, frames the decoder never outputs), we fall back to a sequential decode, which is correct by
construction.
"""

from __future__ import annotations

import bisect
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

from .errors import InvalidOptionError, VideoDecodeError, VideoNotFoundError
from .gop_runs import MIN_SKIP, key_pos, plan_runs

__all__ = ["Clip", "sample_frames", "sample_indices", "decoder_support", "FrameSink", "DecoderDeclined"]

# Errors PyAV raises for unreadable input. FFmpegError covers every libav* error code (InvalidDataError,
# EOFError, PermissionError, ...); OSError covers Python-level I/O failures while reading the file.
_AV_ERRORS = (av.error.FFmpegError, OSError, EOFError)
_ATTACHED_PIC = int(av.stream.Disposition.attached_pic)
# Codecs whose non-reference pictures no other picture refers to (H.264: nal_ref_idc 0), so that the decoder may
# skip those that are not kept (AVDISCARD_NONREF) and still hand out the kept frames bit for bit. Not HEVC: its
# sub-layer non-reference pictures can be referred to by pictures of a higher temporal layer.
_SKIP_NONREF = frozenset({"h264"})
# Most decoders that decode runs of frames in parallel (see _decode_frames); each holds a file handle and its
# own reference-frame buffers, and beyond this many the runs of a 32-64 frame sample are too few to share.
_MAX_DECODERS = 8
# Stream.discard and Stream.index_entries are recent PyAV API (present in 18); pyproject allows av>=14.
_CAN_DISCARD = hasattr(av.stream, "Discard")


@dataclass
class Clip:
    """Frames sampled from one video.

    frames: uint8 (T, H, W, 3) RGB, display rotation already applied (T = len(indices)): a numpy array, or a
        torch tensor on the GPU when the frames were decoded there (video_gpu: NVDEC); None while `pending`.
    indices: 0-based indices of the sampled frames in presentation order, increasing.
    timestamps: seconds from the stream start of each sampled frame.
    fps: average frame rate, or None when the container does not say.
    duration: seconds.
    total_frames: exact number of frames in the stream (counted by demuxing, not read from the header).
    requested: the num_frames asked for.
    rotation: counter-clockwise degrees applied to upright the frames (0/90/180/270), the convention of PyAV's
        ``VideoFrame.rotation`` and ffprobe's display matrix; a phone's portrait clip tagged ``rotate=90`` reads 270.
    codec: FFmpeg decoder name (e.g. "h264", "vp9").
    decoder: which decoder produced the frames: "cpu" (FFmpeg in software, swscale's RGB) or "gpu" (NVDEC, RGB
        converted on the GPU by fastvid_cli.yuv).
    chosen_from: set when these frames were chosen out of that many sampled candidates (`--select`), so they are
        not the uniform sample a frame count names (the feature cache keys them by their indices).
    """

    frames: "np.ndarray | Any"
    indices: list[int]
    timestamps: list[float]
    fps: float | None
    duration: float
    total_frames: int
    requested: int
    path: str
    width: int
    height: int
    rotation: int
    codec: str
    decoder: str = "cpu"
    chosen_from: int | None = None

    @property
    def pending(self) -> bool:
        """The frames are chosen (indices, timestamps) but not decoded yet: `Engine.session` decodes them."""
        return self.frames is None

    @property
    def short(self) -> bool:
        """True when the video has fewer frames than requested (then every frame was returned)."""
        return self.total_frames < self.requested

    @property
    def span(self) -> tuple[float, float]:
        """(first, last) sampled timestamp in seconds."""
        return (self.timestamps[0], self.timestamps[-1])


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Uniform indices into ``total`` frames: ``np.linspace(0, total-1, n, dtype=int)`` (floor, lmms-eval's rule),
    with n = min(num_frames, total) so that a short clip yields each of its frames once."""
    n = min(num_frames, total)
    return np.linspace(0, total - 1, n, dtype=int).tolist()


# A model family's own frame-picking rule (e.g. Qwen's fps sampling): (exact frame count, average fps or None)
# -> increasing frame indices in [0, total). Given to sample_frames instead of a frame count.
IndexPlan = Callable[[int, "float | None"], Sequence[int]]


class ChosenFrames:
    """An IndexPlan of frame indices chosen beforehand (`--select`'s choice out of cached candidates)."""

    def __init__(self, indices: Sequence[int]):
        self.indices = [int(i) for i in indices]

    def __call__(self, total: int, video_fps: float | None) -> list[int]:
        return list(self.indices)


def _pick_indices(total: int, num_frames: "int | IndexPlan", fps: float | None) -> list[int]:
    """sample_indices for a frame count; the plan's own indices (checked) for an IndexPlan."""
    if not callable(num_frames):
        return sample_indices(total, num_frames)
    indices = [int(i) for i in num_frames(total, fps)]
    if not indices or any(b <= a for a, b in zip(indices, indices[1:])) or indices[0] < 0 or indices[-1] >= total:
        raise ValueError(f"a frame plan must give increasing indices in [0, {total}), got {indices[:8]}...")
    return indices


def sample_frames(path, num_frames: "int | IndexPlan", *, threads: int | None = None,
                  on_frame: "Callable[[int, np.ndarray], None] | None" = None, sink: "FrameSink | None" = None) -> Clip:
    """Decode ``num_frames`` uniformly spaced frames of the first video stream of ``path``.

    ``num_frames`` may instead be an IndexPlan: the frames at the indices it picks from the stream's exact frame
    count and average rate (then ``Clip.requested`` is the number it picked).

    Returns a :class:`Clip` whose ``frames`` are uint8 (n, H, W, 3) RGB with n = min(num_frames, total_frames).
    threads: decoding threads in all (parallel GOP decoders x FFmpeg threads each); None or 0: every core.
    on_frame(slot, frame): called from the decoding threads as each kept frame is ready (in the order they
    finish, not in slot order), with a view of the uint8 (H, W, 3) row it fills, so a caller can start work on
    frames before the last one is decoded. Only the sparse decoding path calls it; a frame handed out is final
    only if it shares memory with the returned ``Clip.frames[slot]`` (a fallback to sequential decoding or an
    upright rotation returns new arrays instead).

    sink: where the decoded frames go (default: software decoding into a numpy array, see FrameSink); a sink that
    cannot produce this clip raises DecoderDeclined (video_gpu then falls back to this default).

    Raises InvalidOptionError (num_frames < 1, threads < 0), VideoNotFoundError (no such path, or not a regular
    file), VideoDecodeError (not a video, no video stream, no decodable frame, truncated or corrupt data).
    """
    plan = callable(num_frames)
    if not plan and (isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1):
        raise InvalidOptionError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 0):
        raise InvalidOptionError(f"threads must be an integer >= 0, got {threads!r}")
    num_frames = num_frames if plan else int(num_frames)
    p, name = _existing_file(path)
    try:
        return _sample(p, name, num_frames, int(threads or 0), on_frame, sink or _SOFTWARE)
    except (VideoDecodeError, DecoderDeclined):
        raise
    except _AV_ERRORS as e:
        raise VideoDecodeError(f"cannot decode {name}: corrupt or truncated data ({_reason(e)})") from e


def probe_video(path) -> None:
    """Cheap validity check (milliseconds): the path is a file that PyAV opens and has a decodable video stream.

    Raises the same errors as sample_frames; lets callers fail fast before starting expensive work."""
    p, name = _existing_file(path)
    try:
        container, _ = _open_stream(p, name, 1)
    except VideoDecodeError:
        raise
    except _AV_ERRORS as e:
        raise VideoDecodeError(f"not a video or unreadable: {name} ({_reason(e)})") from e
    container.close()


def _existing_file(path) -> tuple[Path, str]:
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise VideoNotFoundError(f"video not found: {name}")
    if not p.is_file():
        raise VideoNotFoundError(f"not a regular file: {name}")
    return p, name


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def _open(p: Path, name: str):
    try:
        return av.open(str(p), mode="r")
    except _AV_ERRORS as e:
        raise VideoDecodeError(f"not a video or unreadable: {name} ({_reason(e)})") from e


def _pick_stream(container, name: str):
    """The first real video stream; cover art (attached_pic) is a one-image 'video' stream and does not count."""
    videos = [s for s in container.streams.video if not (int(s.disposition) & _ATTACHED_PIC)]
    if videos:
        return videos[0]
    if container.streams.video:
        raise VideoDecodeError(f"no video stream in {name} (only an attached picture, e.g. cover art)")
    if container.streams.audio:
        raise VideoDecodeError(f"no video stream in {name} (audio only)")
    raise VideoDecodeError(f"no video stream in {name}")


def _open_stream(p: Path, name: str, threads: int):
    """Open ``p`` and return (container, the video stream) ready to decode; the caller closes the container."""
    container = _open(p, name)
    try:
        stream = _pick_stream(container, name)
        if stream.codec_context is None:
            raise VideoDecodeError(f"no decoder for the video stream in {name} (unsupported codec)")
        if _CAN_DISCARD:
            for other in container.streams:
                if other.index != stream.index:
                    # The demuxer then skips other streams' payloads instead of reading them for nothing.
                    other.discard = av.stream.Discard.all
        # Must happen before the first decode opens the codec; 0 threads = FFmpeg picks (all cores).
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
    except BaseException:
        container.close()
        raise
    return container, stream


class DecoderDeclined(Exception):
    """A FrameSink cannot produce this clip (no hardware decoder for it, a software frame where a hardware one was
    expected, a device error, or decoded frames that disagree with the demuxed index); the message says which.
    Not a user error: the caller decodes the clip with the default sink instead."""


class FrameSink:
    """How the sparse decoder opens decoders and where it puts the frames it keeps.

    This default decodes in software (FFmpeg's threads) and converts each kept frame to RGB with swscale into one
    uint8 numpy array. video_gpu.NvdecSink decodes with NVDEC and keeps the frames on the GPU; both share the demux
    index, the frame plan, the runs and their split over parallel decoders, so they return the same frames."""

    name = "cpu"
    # On a disagreement with the demuxed index: decode sequentially (True), or raise DecoderDeclined.
    sequential_fallback = True
    # Decode with the container that was opened to demux the stream when one decoder is enough.
    reuse_demuxer = True
    # Let the decoder skip the non-reference frames it does not keep (codecs in _SKIP_NONREF): 32 frames of a 60 s
    # 720p x264-veryfast clip (B-frames) sampled 1.6x faster (RESULTS.md); the frames kept are the same bit for bit.
    skips_nonref = True

    def check(self, stream) -> None:
        """Raise DecoderDeclined early (before demuxing) when this sink cannot decode ``stream``."""

    def open(self, p: Path, name: str, threads: int):
        """(container, video stream) ready to decode; the caller closes the container."""
        return _open_stream(p, name, threads)

    def decoders(self, threads: int) -> int:
        """The most decoders to run in parallel for a thread budget (0: every core)."""
        return min(threads if threads > 0 else _cpu_count(), _MAX_DECODERS)

    def threads_each(self, threads: int, workers: int) -> int:
        """FFmpeg threads for each of ``workers`` parallel decoders."""
        return max(1, (threads if threads > 0 else _cpu_count()) // workers)

    def alloc(self, n: int, height: int, width: int):
        """Room for n frames of (height, width) RGB."""
        return np.empty((n, height, width, 3), np.uint8)

    def put(self, out, slot: int, frame):
        """Store the decoded ``frame`` as RGB in ``out[slot]``; returns that row."""
        out[slot] = _rgb(frame, out.shape[2], out.shape[1])
        return out[slot]

    def upright(self, frames, rotation) -> tuple[Any, int]:
        """(frames turned by the display rotation, the degrees applied)."""
        return _upright(frames, rotation)


_SOFTWARE = FrameSink()


@dataclass
class _Info:
    fps: float | None
    duration: float | None  # from the header; None when it does not say
    codec: str
    time_base: object  # Fraction
    start: int | None  # stream.start_time, in time_base units


def _sample(p: Path, name: str, num_frames: "int | IndexPlan", threads: int, on_frame=None,
            sink: FrameSink = _SOFTWARE) -> Clip:
    container, stream = _open_stream(p, name, threads)
    frames = None
    with container:
        info = _stream_info(stream, container)
        _check_complete(stream, p, name)
        sink.check(stream)
        pts, keys, exact = _demux_index(container, stream)
        if exact and pts:
            indices = _pick_indices(len(pts), num_frames, info.fps)
            got = _decode_frames(p, name, container, stream, pts, keys, indices, threads, on_frame, sink=sink)
            if got is not None:
                frames, rotation = got
                total = len(pts)

    if frames is None:
        # Timestamps unusable, or the decoder's output disagreed with the demuxed index: decode sequentially.
        if not sink.sequential_fallback:
            raise DecoderDeclined("the stream's timestamps do not identify its frames (sequential decoding needed)")
        frames, rotation, indices, pts, total, info = _sample_sequential(p, name, num_frames, threads)

    tb, fps = info.time_base, info.fps
    if pts:
        origin = info.start if info.start is not None else pts[0]
        timestamps = [float((pts[i] - origin) * tb) for i in indices]
        # The last frame's start plus one frame is as long as the clip plays. The header can say less: mp4 sums
        # sample durations in decode order, which with B-frames and a variable rate ends before the last pts.
        last_gap = float((pts[-1] - pts[-2]) * tb) if len(pts) > 1 else (1.0 / fps if fps else 0.0)
        played = float((pts[-1] - origin) * tb) + last_gap
        duration = played if info.duration is None else max(info.duration, played)
    else:  # no timestamps at all (raw elementary stream): assume a constant rate
        timestamps = [i / fps if fps else 0.0 for i in indices]
        duration = info.duration if info.duration is not None else (total / fps if fps else 0.0)

    frames, degrees = sink.upright(frames, rotation)
    return Clip(
        frames=frames,
        indices=[int(i) for i in indices],
        timestamps=timestamps,
        fps=fps,
        duration=float(duration),
        total_frames=int(total),
        requested=len(indices) if callable(num_frames) else num_frames,
        path=name,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
        rotation=degrees,
        codec=info.codec,
        decoder=sink.name,
    )


def _check_complete(stream, p: Path, name: str) -> None:
    """Reject a file cut short (an interrupted download) whose index (mp4/mov: every sample's byte range, read
    from the header) points past the end of the file. Containers without such an index (mkv, webm, ts) keep the
    frames that are present; a partial last packet is then dropped like FFmpeg drops it."""
    entries = getattr(stream, "index_entries", None)
    n = len(entries) if entries is not None else 0
    if n == 0:
        return
    size = p.stat().st_size
    # Samples are stored roughly in time order, so the last few entries hold the file's last video bytes.
    end = max(entries[k].pos + entries[k].size for k in range(max(0, n - 16), n))
    if end > size:
        raise VideoDecodeError(
            f"truncated or incomplete video: {name} (its index needs {end} bytes, the file has {size})"
        )


def _stream_info(stream, container) -> _Info:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    if stream.duration is not None and stream.duration > 0:
        duration = float(stream.duration * stream.time_base)  # None for mkv/webm
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / av.time_base
    else:
        duration = None
    return _Info(fps, duration, stream.codec_context.name, stream.time_base, stream.start_time)


def _demux_index(container, stream) -> tuple[list[int], list[int], bool]:
    """Read every packet of ``stream`` without decoding.

    Returns (presentation timestamps of all frames, sorted; keyframe timestamps, sorted; exact) where exact is
    False when the timestamps cannot identify frames (missing or duplicate pts, no keyframe flags).
    """
    pts: list[int] = []
    keys: list[int] = []
    missing = False
    for pkt in container.demux(stream):
        t = pkt.pts
        if t is None:
            if pkt.size == 0:
                continue  # PyAV's trailing flush packet
            t = pkt.dts  # e.g. raw elementary streams; only trustworthy if it matches the decoder's output
            if t is None:
                missing = True
                continue
        if pkt.is_keyframe:
            keys.append(t)
        if pkt.is_discard:
            continue  # the decoder drops these (mp4 edit lists): not frames of the clip, but valid seek points
        pts.append(t)
    if missing or not keys:
        return pts, keys, False
    pts.sort()
    keys.sort()
    return pts, keys, len(set(pts)) == len(pts)


def _decode_frames(p: Path, name: str, container, stream, pts: list[int], keys: list[int], indices: list[int],
                   threads: int, on_frame=None, sink: FrameSink = _SOFTWARE):
    """The frames at ``indices``, decoded sparsely on as many cores as ``threads`` allows (0: all).

    Frame threading alone scales poorly here: every seek flushes FFmpeg's frame-thread pipeline, and sparse
    sampling seeks once per target. So the targets are cut into the runs that _decode_sparse would decode after
    one seek each, and the runs are shared out to several decoders (each its own container, seeking
    independently, FFmpeg code that releases the GIL), each with an equal part of the thread budget. Every run is
    decoded exactly as the single decoder would decode it, so the frames are the same. One run, or threads=1:
    the single decoder on ``container`` (if the sink decodes with it). The sink says how many decoders and
    threads (FrameSink). Returns what _decode_sparse returns."""
    parts = sink.decoders(threads)
    runs, work = plan_runs(pts, keys, indices, parts=parts)
    workers = min(parts, len(runs))
    if workers <= 1 and sink.reuse_demuxer:
        return _decode_sparse(container, stream, pts, keys, indices, on_frame=on_frame, sink=sink)
    workers = max(workers, 1)
    per = sink.threads_each(threads, workers)
    # Longest run first to the least-loaded decoder; each decoder then visits its runs in file order.
    shares: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * workers
    for r in sorted(range(len(runs)), key=lambda r: (-work[r], r)):
        w = min(range(workers), key=lambda x: (load[x], x))
        shares[w].append(r)
        load[w] += work[r]
    slot_lists = [sorted(j for r in share for j in runs[r]) for share in shares]
    width, height = stream.codec_context.width, stream.codec_context.height
    if not (width and height):
        if not sink.reuse_demuxer:
            return None
        return _decode_sparse(container, stream, pts, keys, indices, sink=sink)
    out = sink.alloc(len(indices), height, width)

    def job(slots: list[int]):
        c, s = sink.open(p, name, per)
        with c:
            return _decode_sparse(c, s, pts, keys, [indices[j] for j in slots], out=out, slots=slots,
                                  on_frame=on_frame, sink=sink)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastvid-gop") as pool:
        results = list(pool.map(job, slot_lists))  # the first error is raised after every decoder has stopped
    if any(r is None for r in results):
        return None
    first = next(i for i, slots in enumerate(slot_lists) if slots and slots[0] == 0)
    return out, results[first][1]


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _decode_sparse(container, stream, pts: list[int], keys: list[int], indices: list[int],
                   out=None, slots: list[int] | None = None, on_frame=None, sink: FrameSink = _SOFTWARE):
    """Decode only what is needed to produce the frames at ``indices`` (increasing).

    Every frame the decoder hands out is checked against the demuxed list, so a packet that yields no frame or a
    seek that lands elsewhere is noticed instead of shifting the indices. Returns (uint8 (n, H, W, 3) RGB as
    stored (or whatever ``sink`` stores), rotation of the first frame), or None on any disagreement (the caller
    then decodes sequentially).
    With ``out`` (the stream's size) and ``slots``, frame j goes to ``out[slots[j]]`` instead; a first frame of
    another size then returns None (a resolution change: the sequential path handles it).
    """
    rotation = 0
    it = None
    pos = 0  # index in pts of the next frame the decoder should hand out; it only moves forward
    fresh = False  # just seeked: frames before the keyframe (open-GOP leading pictures) may come out first
    n_pts = len(pts)
    # the targets' pts when the decoder may skip the non-reference frames between them: the frames it hands out
    # may then jump ahead in pts, but only over frames whose packets it was allowed to skip (`skippable`), never
    # past the target, so a frame the index lists but no packet brings is still noticed
    wanted = ({pts[i] for i in indices} if sink.skips_nonref and stream.codec_context.name in _SKIP_NONREF
              else None)
    skippable: set[int] = set()
    for j, i in enumerate(indices):
        target = pts[i]
        key, k = key_pos(pts, keys, target)
        # Seek only when forward decoding would pass more than MIN_SKIP frames before the target's keyframe. A
        # seek flushes the decoder (its frame-thread pipeline and B-frame delay) and costs about as much as
        # decoding several frames: seeking into every next GOP made dense sampling of short-GOP clips ~1.6x
        # slower than decoding everything (measured: 320x240, GOP 12, 300 of 600 frames).
        if it is None or k - pos > MIN_SKIP:
            container.seek(key, stream=stream, backward=True, any_frame=False)
            it = container.decode(stream) if wanted is None else _decode_kept(container, stream, wanted, skippable)
            pos, fresh = k, True
        frame = None
        for f in it:
            fp = f.pts
            if fp is None:
                fp = f.dts  # packets without pts were listed by dts; frames then carry only that
                if fp is None:
                    return None
            if pos >= n_pts or fp != pts[pos]:
                if fresh and pos < n_pts and fp < pts[pos]:
                    continue
                if wanted is None or pos >= n_pts or not pts[pos] < fp <= target:
                    return None
                q = bisect.bisect_left(pts, fp)
                if pts[q] != fp or not skippable.issuperset(pts[pos:q]):
                    return None
                pos = q  # after non-reference frames the decoder skipped
            fresh = False
            pos += 1
            if fp == target:
                frame = f
                break
        if frame is None:
            return None  # the stream ended before the target (e.g. a partial last packet)
        if j == 0:
            rotation = frame.rotation
            if out is None:
                out = sink.alloc(len(indices), frame.height, frame.width)
            elif tuple(out.shape[1:3]) != (frame.height, frame.width):
                return None
        slot = slots[j] if slots is not None else j
        row = sink.put(out, slot, frame)
        if on_frame is not None:
            on_frame(slot, row)
    return out, rotation


def _decode_kept(container, stream, wanted: set[int], skippable: set[int]):
    """Decode `stream` on from where `container` stands, letting the decoder skip the non-reference frames whose
    pts are not in `wanted` (the setting is per packet: FFmpeg's frame threads take it as each packet is sent);
    the pts of the packets it was allowed to skip are added to `skippable`."""
    cc = stream.codec_context
    for packet in container.demux(stream):
        keep = packet.pts is None or packet.pts in wanted
        if not keep:
            skippable.add(packet.pts)
        cc.skip_frame = "DEFAULT" if keep else "NONREF"
        yield from packet.decode()


def _rgb(frame, width: int, height: int) -> np.ndarray:
    if frame.width == width and frame.height == height:
        return frame.to_ndarray(format="rgb24")
    # The resolution changed mid-stream: scale to the first frame's size so the clip stacks.
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def _sample_sequential(p: Path, name: str, num_frames: "int | IndexPlan", threads: int):
    """Fallback: count the frames the decoder outputs, then decode again keeping the wanted ones.

    Returns (frames uint8 (n, H, W, 3) as stored, rotation, indices, pts of every frame or [] when the decoder
    gives none, total, _Info).
    """
    container, stream = _open_stream(p, name, threads)
    with container:
        info = _stream_info(stream, container)
        frame_pts = [f.pts for f in container.decode(stream)]
    total = len(frame_pts)
    if total == 0:
        raise VideoDecodeError(f"no decodable video frames in {name}")
    indices = _pick_indices(total, num_frames, info.fps)

    out = None
    rotation = 0
    j = 0
    container, stream = _open_stream(p, name, threads)
    with container:
        for k, f in enumerate(container.decode(stream)):
            if k != indices[j]:
                continue
            if out is None:
                rotation = f.rotation
                out = np.empty((len(indices), f.height, f.width, 3), np.uint8)
            out[j] = _rgb(f, out.shape[2], out.shape[1])
            j += 1
            if j == len(indices):
                break
    if out is None or j != len(indices):
        raise VideoDecodeError(f"cannot decode {name}: the decoder's output changed between two passes")
    have_pts = None not in frame_pts
    return out, rotation, indices, (frame_pts if have_pts else []), total, info


def _upright(frames: np.ndarray, rotation) -> tuple[np.ndarray, int]:
    """Apply the display matrix's rotation (counter-clockwise degrees, any value) in steps of 90 degrees."""
    k = int(round((rotation or 0) / 90.0)) % 4
    if k == 0:
        return frames, 0
    # np.rot90 over (H, W) turns counter-clockwise, the display matrix's convention; copy to make it contiguous.
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))), 90 * k


def decoder_support() -> dict[str, bool]:
    """Which of the common video codecs this PyAV build can decode: codec name -> bool.

    FFmpeg's native "av1" decoder only drives hardware decoding, so av1 counts only with a software decoder
    (libdav1d or libaom-av1).
    """
    candidates = {
        "h264": ("h264",),
        "hevc": ("hevc",),
        "vp8": ("vp8", "libvpx"),
        "vp9": ("vp9", "libvpx-vp9"),
        "av1": ("libdav1d", "libaom-av1"),
        "mpeg4": ("mpeg4",),
        "mpeg2": ("mpeg2video",),
        "prores": ("prores",),
    }
    return {codec: any(_has_decoder(n) for n in names) for codec, names in candidates.items()}


def _has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except Exception:  # UnknownCodecError, or a build without the codec registry entry
        return False
    return True
