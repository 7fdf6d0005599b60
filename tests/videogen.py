"""Synthetic test media written with PyAV: clips whose pixels encode their own frame index, plus broken inputs.

Frame layout (H, W), used by :func:`index_frames` / :func:`decode_index`::

    +---------+---------+---------+   top 3/4: three flat bands, the base-16 digits of the index
    | i//256  | i//16%16|  i%16   |   (level = 16 + 14 * digit, so 16..226: a step of 14 survives
    +---------+---------+---------+    yuv420p + lossy coding, and flat blocks code almost exactly)
    |  moving texture (ignored)   |   bottom 1/4: gives the encoder real motion (B-frames, P-frames)
    +-----------------------------+

The layout is asymmetric (left/right and top/bottom differ), so a frame shown rotated or mirrored decodes to
a wrong index or fails the band check.
"""

from __future__ import annotations

import math
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LEVEL0 = 16
STEP = 14
DIGITS = 3  # base-16 digits: up to 4096 frames


def index_frames(T: int, H: int, W: int) -> np.ndarray:
    """Frames 0..T-1 as uint8 (T, H, W, 3) RGB whose flat bands encode each frame's index (see module doc)."""
    if T > 16**DIGITS:
        raise ValueError(f"at most {16 ** DIGITS} frames")
    out = np.zeros((T, H, W, 3), np.uint8)
    top = _top_rows(H)
    idx = np.arange(T)
    for d, (x0, x1) in enumerate(_bands(W)):
        digit = (idx // 16 ** (DIGITS - 1 - d)) % 16
        out[:, :top, x0:x1] = (LEVEL0 + STEP * digit).astype(np.uint8)[:, None, None, None]
    # A texture that moves 2 px per frame: fixed seed, so every call returns the same clip.
    rng = np.random.default_rng(1234)
    tex = rng.integers(0, 256, size=(H - top, W + 2 * T, 3), dtype=np.uint8)
    for i in range(T):
        out[i, top:] = tex[:, 2 * i : 2 * i + W]
    return out


def decode_index(frame: np.ndarray) -> int:
    """Read back the index from an upright (H, W, 3) frame made by :func:`index_frames` (after lossy coding).

    Raises ValueError when the bands are not flat digit levels (e.g. the frame is rotated or not ours).
    """
    H, W = frame.shape[:2]
    top = _top_rows(H)
    value = 0
    for x0, x1 in _bands(W):
        # Stay away from band edges: chroma subsampling and the DCT blur them.
        mx = max((x1 - x0) // 4, 1)
        my = max(top // 4, 1)
        region = frame[my : top - my, x0 + mx : x1 - mx].astype(np.float64)
        level = (region.mean() - LEVEL0) / STEP
        digit = round(level)
        if abs(level - digit) > 0.3 or not 0 <= digit < 16 or region.std() > 4:
            raise ValueError(f"not an index band (mean level {level:.2f}, std {region.std():.1f})")
        value = value * 16 + digit
    return value


def _top_rows(H: int) -> int:
    return (3 * H // 4) // 2 * 2


def _bands(W: int) -> list[tuple[int, int]]:
    edges = [round(W * k / DIGITS) for k in range(DIGITS + 1)]
    return list(zip(edges[:-1], edges[1:]))


def write_video(
    path,
    frames: np.ndarray,
    fps: int = 24,
    codec: str = "libx264",
    *,
    bframes: int | None = None,
    gop: int | None = None,
    vfr_pts: list[int] | None = None,
    rotation: int | None = None,
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
):
    """Write uint8 (T, H, W, 3) RGB ``frames`` (H, W even) with PyAV; the container follows the extension.

    bframes: x264 ``bf`` (max consecutive B-frames); gop: keyframe interval (``g``, also ``keyint_min`` so that
    keyframes fall exactly every ``gop`` frames); vfr_pts: explicit presentation times in a 1/1000 time base (one
    int per frame, strictly increasing) for a variable-frame-rate clip; rotation: counter-clockwise display
    rotation in degrees, stored as the container's display matrix (``VideoStream.set_display_rotation``, new in
    PyAV 18; works for mp4/mov/mkv/webm. A legacy ``rotate`` stream metadata tag is silently dropped by this
    FFmpeg's mp4/mov muxer - checked); faststart: mp4 with the moov atom first. Returns ``path``.
    """
    path = str(path)
    T, H, W, _ = frames.shape
    if vfr_pts is not None and len(vfr_pts) != T:
        raise ValueError("vfr_pts needs one pts per frame")
    options = {}
    if faststart:
        options["movflags"] = "+faststart"
    with av.open(path, mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        opts: dict[str, str] = {}
        if codec == "libx264":
            # medium is x264's default and decides B-frames adaptively; low crf keeps the index bands exact.
            opts.update(preset="medium", crf="16")
            if bframes is not None:
                opts["bf"] = str(bframes)
                if bframes:
                    # b-adapt=0: always use bf B-frames. With adaptive placement x264 used few or none on this
                    # content, and a "B-frame" test clip would silently have no reordering. At 64x48 x264 emits no
                    # B-frames even when forced: use 128x96 or more for B-frame clips.
                    opts["x264-params"] = "b-adapt=0"
        elif codec == "libvpx-vp9":
            opts.update(crf="20", **{"b:v": "0", "deadline": "realtime", "cpu-used": "8"})
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                opts["keyint_min"] = str(gop)
                opts["sc_threshold"] = "0"  # no extra keyframes on scene cuts: keyframes exactly every gop
        stream.options = opts
        if vfr_pts is not None:
            tb = Fraction(1, 1000)
            stream.codec_context.time_base = tb
            stream.time_base = tb
        if rotation:
            stream.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if vfr_pts is not None:
                frame.pts = int(vfr_pts[i])
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed (B-)frames
            container.mux(packet)
    return path


def _sine_frames(rate: int, seconds: float, layout: str = "mono", fmt: str = "s16", chunk: int = 1024):
    n = int(rate * seconds)
    t = np.arange(n) / rate
    pcm = (0.3 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
    for start in range(0, n, chunk):
        part = pcm[start : start + chunk][None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        yield frame


def write_audio_only(path, seconds: float = 0.5, cover_art: bool = False):
    """Write a short 440 Hz sine (codec chosen by extension: .m4a/.mp4 aac, .mp3 mp3, .wav pcm).

    cover_art=True (mp3 only) adds a PNG as an attached picture: FFmpeg then shows a *video* stream with
    ``disposition.attached_pic`` that is not a video.
    """
    path = str(path)
    ext = Path(path).suffix.lower()
    codec = {".m4a": "aac", ".mp4": "aac", ".mp3": "libmp3lame", ".wav": "pcm_s16le"}[ext]
    rate = 44100
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        pic = None
        if cover_art:
            if ext != ".mp3":
                raise ValueError("cover_art is only written for .mp3")
            pic = container.add_stream("png")
            pic.width, pic.height, pic.pix_fmt = 16, 16, "rgb24"
            pic.disposition = av.stream.Disposition.attached_pic
            container.start_encoding()
            packet = av.Packet(_png_bytes(16, 16))
            packet.stream = pic
            packet.pts = packet.dts = 0
            container.mux(packet)
        for frame in _sine_frames(rate, seconds):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _png_bytes(w: int, h: int) -> bytes:
    """A minimal RGB PNG (gradient), built by hand so no image library is needed."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 16 % 256, y * 16 % 256, 128)) for x in range(w)) for y in range(h)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def truncated_copy(src, dst, fraction: float = 0.4):
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (an interrupted download). Returns ``dst``."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


def text_as_video(path):
    """A plain text file with a video extension. Returns ``path``."""
    Path(path).write_text("this is not a video\n" * 50)
    return path


def reference_decode(path, indices=None) -> tuple[np.ndarray, list[int]]:
    """Decode every frame of the first video stream in order, no seeking: the ground truth for sparse decoding.

    Returns (frames uint8 (n, H, W, 3) RGB as stored - no rotation applied, pts of every decoded frame);
    ``frames`` keeps only ``indices`` when given, else every frame.
    """
    keep = None if indices is None else set(int(i) for i in indices)
    out, pts = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            pts.append(frame.pts)
            if keep is None or i in keep:
                out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out), pts
