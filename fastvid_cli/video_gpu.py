"""Frame sampling on the GPU: NVDEC decodes (through PyAV's hwaccel), the frames stay in GPU memory, and the
NV12/P010 -> RGB conversion runs there in torch (fastvid_cli.yuv), so the clip's frames are a CUDA uint8 tensor
(T, H, W, 3) that the GPU preprocessing takes as is (no host round trip).

What PyAV 18 allows (av/codec/hwaccel.py, av/video/plane.py): ``av.open(path, hwaccel=HWAccel("cuda",
is_hw_owned=True, allow_software_fallback=False))`` opens the stream's decoder with an FFmpeg CUDA device context;
with ``is_hw_owned`` the decoded frames are not downloaded: ``frame.format.name == "cuda"``, ``frame.sw_format`` is
nv12 (8-bit) or p010le/p016le (10/12-bit), and each plane exports itself through DLPack (luma (H, W), chroma
(H//2, W//2, 2), pitched; uint8 or uint16) for ``torch.from_dlpack``. PyAV refuses a DLPack ``stream`` argument, so
the capsule is taken with ``plane.__dlpack__()`` and the work is ordered on CUDA's legacy default stream, the one
FFmpeg copies decoded surfaces on and torch's default stream. ``allow_software_fallback=False`` makes FFmpeg fail
instead of quietly decoding in software; a software frame is still checked for and declined.

The frame plan is the CPU path's (video.py: demux once, same indices, same GOP runs split over parallel decoders);
only the FrameSink differs. Anything the hardware path cannot do raises video.DecoderDeclined and `sample_clip`
decodes the clip on the CPU instead, with a note saying why.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np

from fastvid_cli.errors import InvalidOptionError, VideoDecodeError, VideoNotFoundError
from fastvid_cli import video
from fastvid_cli.video import Clip, DecoderDeclined, FrameSink, _pick_stream

__all__ = ["DECODERS", "NvdecSink", "nvdec_status", "resolve_decoder", "sample_clip", "frame_planes"]

DECODERS = ("auto", "cpu", "gpu")
# Decoders of FFmpeg with an NVDEC hwaccel, by the codec name the CPU path reports (Clip.codec). AV1 is missing on
# purpose: PyAV opens a stream with the first registered decoder, libdav1d, which has no hardware config (FFmpeg's
# native "av1" decoder, the one NVDEC drives, cannot be chosen through av.open).
NVDEC_CODECS = ("h264", "hevc", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "vc1")
# Parallel NVDEC sessions: decoding is on the NVDEC engines, each session's CPU work (demux, bitstream parsing,
# PyAV) is GIL-bound Python in part; an H100 has 7 NVDEC engines. Override with FASTVID_NVDEC_SESSIONS.
_DEFAULT_SESSIONS = 4


def _sessions() -> int:
    env = os.environ.get("FASTVID_NVDEC_SESSIONS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else _DEFAULT_SESSIONS


_BLOCKING_SYNC = 0x4  # CU_CTX_SCHED_BLOCKING_SYNC: the flags FFmpeg's CUDA device context wants on the primary context


def share_primary_context(device_index: int = 0) -> str:
    """Let FFmpeg's NVDEC contexts share the device's primary CUDA context with torch. FFmpeg (PyAV 18) opens its
    CUDA device on the primary context with CU_CTX_SCHED_BLOCKING_SYNC and refuses with ENOTSUP ("Operation not
    supported") when that context is already active with other flags, as torch leaves it (measured on an H100:
    every open failed once torch had touched the GPU, and worked after this). So before CUDA is first used in the
    process, set those flags; torch then runs on the same context (its synchronisations block instead of spin).
    Returns "set", "already" (active with the right flags), "late" (active with other flags: NVDEC cannot open
    here), or "no driver"."""
    import ctypes

    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no driver"
    dev, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    if cu.cuInit(0) != 0 or cu.cuDeviceGet(ctypes.byref(dev), int(device_index)) != 0:
        return "no driver"
    if cu.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) != 0:
        return "no driver"
    if active.value:
        return "already" if flags.value & 0x7 == _BLOCKING_SYNC else "late"
    set_flags = getattr(cu, "cuDevicePrimaryCtxSetFlags_v2", None) or cu.cuDevicePrimaryCtxSetFlags
    return "set" if set_flags(dev, _BLOCKING_SYNC) == 0 else "no driver"


@functools.lru_cache(maxsize=8)
def nvdec_status(device_index: int = 0) -> dict[str, Any]:
    """Whether NVDEC decoding through PyAV works here: {"available": bool, "reason": why not (or ""), "codecs":
    codec names whose FFmpeg decoder has a CUDA hwaccel (whether the GPU itself takes a given stream is known only
    when it decodes it: profiles, sizes and bit depths vary by GPU)}. Creates one CUDA device context; cached."""
    codecs = [c for c in NVDEC_CODECS if _has_cuda_config(c)]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return {"available": False, "reason": "torch is not installed", "codecs": codecs}
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if "cuda" not in hwdevices_available():
        return {"available": False, "reason": "this PyAV/FFmpeg build has no CUDA hwaccel", "codecs": []}
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device", "codecs": codecs}
    if not codecs:
        return {"available": False, "reason": "no decoder of this FFmpeg build has an NVDEC hwaccel", "codecs": []}
    shared = share_primary_context(device_index)
    try:
        HWAccel("cuda", device=str(device_index), allow_software_fallback=False, is_hw_owned=True).create(
            av.codec.Codec(codecs[0], "r"))
    except Exception as e:  # noqa: BLE001 - any failure means: no NVDEC here
        late = (" — CUDA was already in use with other context flags: NVDEC must be set up before the model "
                "is loaded on the GPU") if shared == "late" else ""
        return {"available": False, "reason": f"cannot create a CUDA decoding context ({_reason(e)}){late}",
                "codecs": codecs}
    return {"available": True, "reason": "", "codecs": codecs}


def _has_cuda_config(codec: str) -> bool:
    try:
        configs = av.codec.Codec(codec, "r").hardware_configs
    except Exception:  # noqa: BLE001 - codec not in this build
        return False
    return any(c.device_type.name == "cuda" and c.is_supported for c in configs)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(f"{type(e).__name__}: {text}".split())[:200]


def resolve_decoder(decoder: str, device: Any = None) -> str:
    """"cpu" or "gpu" for a --decoder value. auto = cpu: measured on an H100 host (16 cores, 2026-12-07,
    benchmarks/RESULTS.md) NVDEC through PyAV sampled 32 frames of a 1-minute 720p clip in 814 ms against the CPU
    decoders' 220 ms (1080p: 1209 vs 442 ms), so it is used only when asked for. "gpu" (on `device`, the vision
    device; None: cuda:0 if there is one) where NVDEC is unavailable is a user error (InvalidOptionError, exit 2).
    Whether the codec of a given clip is supported is decided per clip."""
    decoder = (decoder or "auto").strip().lower()
    if decoder not in DECODERS:
        raise InvalidOptionError(f"--decoder must be one of {', '.join(DECODERS)} (got {decoder!r})")
    if decoder in ("cpu", "auto"):
        return "cpu"
    index = _cuda_index(device)
    status = nvdec_status(index) if index is not None else {"available": False, "reason": "the model runs on the CPU"}
    if not status["available"]:
        raise InvalidOptionError(f"--decoder gpu: NVDEC is not available ({status['reason']})")
    return "gpu"


def _cuda_index(device: Any) -> int | None:
    """The CUDA device index of `device` (None: the current CUDA device if there is one), or None if not CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_available() else None
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)


def frame_planes(frame) -> tuple[Any, Any, int]:
    """(luma (H, W), chroma (H//2, W//2, 2) as torch tensors sharing the frame's memory, significant bits) of an
    NV12 / P010 / P016 frame: a CUDA frame of NVDEC, or a software frame in one of those formats (what the tests
    convert on the CPU). Raises DecoderDeclined for any other format."""
    import torch

    fmt = frame.sw_format.name if frame.format.name == "cuda" else frame.format.name
    bits = {"nv12": 8, "p010le": 10, "p016le": 16}.get(fmt)
    if bits is None:
        raise DecoderDeclined(f"NVDEC gave {fmt} frames (only nv12 / p010le / p016le are converted)")
    # plane.__dlpack__() without a stream: PyAV refuses the stream torch.from_dlpack(plane) would pass.
    y = torch.from_dlpack(frame.planes[0].__dlpack__())
    uv = torch.from_dlpack(frame.planes[1].__dlpack__())
    return y, uv, bits


class NvdecSink(FrameSink):
    """Decode with NVDEC (one CUDA device context per decoder) and convert each kept frame to RGB on the GPU
    into a CUDA uint8 (T, H, W, 3) tensor. `sessions`: the most decoders running in parallel (each its own
    container, hw context and thread)."""

    name = "gpu"
    sequential_fallback = False
    reuse_demuxer = False  # the demuxing container is a software one; decoders open with the hwaccel
    skips_nonref = False  # not measured with NVDEC yet: every frame is decoded

    def __init__(self, device: Any = None, sessions: int | None = None):
        import torch

        index = _cuda_index(device)
        if index is None:
            raise DecoderDeclined("not a CUDA device")
        self.device = torch.device("cuda", index)
        self.sessions = max(1, int(sessions or _sessions()))
        self._lock = threading.Lock()
        self._specs: dict[tuple, Any] = {}

    def check(self, stream) -> None:
        name = stream.codec_context.name if stream.codec_context is not None else "?"
        if name not in nvdec_status(self.device.index)["codecs"]:
            raise DecoderDeclined(f"no NVDEC decoder for {name}")

    def open(self, p: Path, name: str, threads: int):
        from av.codec.hwaccel import HWAccel

        hw = HWAccel("cuda", device=str(self.device.index), allow_software_fallback=False, is_hw_owned=True)
        try:
            container = av.open(str(p), mode="r", hwaccel=hw)
        except Exception as e:  # noqa: BLE001 - no hw decoder for the stream, or the device refused
            raise DecoderDeclined(f"NVDEC cannot open the stream ({_reason(e)})") from e
        try:
            stream = _pick_stream(container, name)
            ctx = stream.codec_context
            if ctx is None or not ctx.is_hwaccel:
                raise DecoderDeclined(f"no NVDEC decoder for {ctx.name if ctx else 'this codec'}")
            for other in container.streams:
                if other.index != stream.index:
                    other.discard = av.stream.Discard.all
            # NVDEC does the decoding; one FFmpeg thread parses. Frame threads would only add reordering delay.
            ctx.thread_type = "NONE"
            ctx.thread_count = 1
        except BaseException:
            container.close()
            raise
        return container, stream

    def decoders(self, threads: int) -> int:
        return self.sessions

    def threads_each(self, threads: int, workers: int) -> int:
        return 1

    def alloc(self, n: int, height: int, width: int):
        import torch

        return torch.empty((n, height, width, 3), dtype=torch.uint8, device=self.device)

    def put(self, out, slot: int, frame):
        import torch

        from fastvid_cli.yuv import colour_spec, nv12_to_rgb

        if frame.format.name != "cuda":
            raise DecoderDeclined(f"the decoder returned a software ({frame.format.name}) frame, not a CUDA one")
        if (frame.height, frame.width) != tuple(out.shape[1:3]):
            raise DecoderDeclined("the resolution changes mid-stream")
        y, uv, bits = frame_planes(frame)
        spec = colour_spec(frame.colorspace, frame.color_range, bits)
        # FFmpeg copies NVDEC's surfaces into the frame on the legacy default stream: convert on it too, so the
        # conversion waits for the copy and FFmpeg's reuse of the buffer waits for the conversion.
        with torch.cuda.device(self.device), torch.cuda.stream(torch.cuda.default_stream(self.device)):
            nv12_to_rgb(y, uv, spec, out=out[slot])
        return out[slot]

    def upright(self, frames, rotation) -> tuple[Any, int]:
        import torch

        k = int(round((rotation or 0) / 90.0)) % 4
        if k == 0:
            return frames, 0
        return torch.rot90(frames, k, dims=(1, 2)).contiguous(), 90 * k


def sample_clip(path, num_frames, *, decoder: str = "auto", device: Any = None, threads: int | None = None,
                on_frame: Callable[[int, Any], None] | None = None, notes: list[str] | None = None,
                sessions: int | None = None) -> Clip:
    """video.sample_frames with the decoder --decoder asks for: "cpu" (software, numpy frames), "gpu" (NVDEC,
    CUDA tensor frames; InvalidOptionError when NVDEC is not available), "auto" (cpu: see resolve_decoder). A GPU
    attempt that fails for any reason other than a bad input
    file (codec or profile the GPU does not take, device error, index disagreement) decodes the clip on the CPU
    instead and adds one line to `notes`; Clip.decoder says which ran. Frames handed to `on_frame` before such a
    fallback are not the clip's (the CPU decode hands out its own)."""
    kind = resolve_decoder(decoder, device)
    if kind == "gpu":
        try:
            sink = NvdecSink(device, sessions)
            return video.sample_frames(path, num_frames, threads=threads, on_frame=on_frame, sink=sink)
        except DecoderDeclined as e:
            why = str(e)
        except VideoNotFoundError:
            raise
        except (VideoDecodeError, RuntimeError, ValueError, TypeError, NotImplementedError, av.error.FFmpegError) as e:
            # A decode error here is NVDEC refusing the stream (a profile, size or codec the GPU does not take) as
            # often as a broken file; CUDA errors surface as RuntimeError. The CPU path still answers, and a file
            # that is really broken fails there too, with its proper message.
            why = e.one_line() if isinstance(e, VideoDecodeError) else _reason(e)
        if notes is not None:
            notes.append(f"GPU decoding (NVDEC) fell back to the CPU: {why}")
    # through the module, so that one name (video.sample_frames) samples every clip, patched or not
    return video.sample_frames(path, num_frames, threads=threads, on_frame=on_frame)


def to_numpy_frames(frames) -> np.ndarray:
    """A clip's frames as a uint8 numpy array, wherever they are."""
    if isinstance(frames, np.ndarray):
        return frames
    return frames.detach().cpu().numpy()
