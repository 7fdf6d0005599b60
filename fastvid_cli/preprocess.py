"""Device-agnostic image preprocessing that reproduces torch's CPU uint8 resize exactly.

The HF video processors (through torchvision) resize uint8 frames with torch's uint8 bicubic+antialias kernel.
That kernel is integer arithmetic: per axis it computes PIL-style antialiased Keys-cubic weights (a = -0.5) in
double, rounds them to int16 at the largest precision ``p`` under which the axis's largest weight still fits, and
each output sample is ``clamp((sum(w_int * x) + 2**(p-1)) >> p, 0, 255)``. It resizes the width first and rounds
to uint8 before resizing the height. A float ``F.interpolate`` on the GPU skips both roundings and differs by up to
~15 grey levels on noisy frames.

Here the same integer sums are computed with matrix products, so they run on any device: each axis is a dense
(out, in) matrix of the int16 weights, split into a high and a low byte (``w = 256*hi + lo``) so that every
operand of the float32 matmul is an integer of at most 8 significant bits and every partial sum stays below
2**24. The products are then exact even when the matmul runs in TF32, the sum is recombined in int32, shifted
and clamped like the uint8 kernel. The result equals the CPU uint8 kernel bit for bit (tests/test_preprocess.py).

    resize_bicubic_aa(frames uint8 (T,3,H,W), (h, w)) -> float32 (T,3,h,w), integer values 0..255
    normalize(x 0..255, mean, std) -> (x/255 - mean) / std
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_bicubic_aa", "resize_frames", "normalize", "axis_weights"]

_CUBIC_A = -0.5  # Keys' a for the antialiased filter (PIL, torch's uint8 and antialias=True kernels)
_INTERP_SIZE = 4  # bicubic
_MAX_PRECISION = 22
# Frames per matmul: bounds the float32 temporaries (16 frames of 720p ~ 180 MB) without costing launches.
_CHUNK = 16


def _cubic(x: np.ndarray) -> np.ndarray:
    """The antialiased bicubic filter, evaluated in the operation order of torch's HelperInterpCubic::aa_filter."""
    a = _CUBIC_A
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=64)
def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, int]:
    """torch's uint8 antialiased-bicubic weights for one axis (align_corners=False, no explicit scale).

    Returns (int64 (out_size, in_size) dense matrix of the int16 weights, precision p): output sample i is
    ``(W[i] @ x + 2**(p-1)) >> p``, clamped to 0..255. Read-only; cached per (in_size, out_size)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1 (got {in_size} -> {out_size})")
    scale = in_size / out_size  # double, as area_pixel_compute_scale<double>
    support = (_INTERP_SIZE * 0.5) * scale if scale >= 1.0 else _INTERP_SIZE * 0.5
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    i = np.arange(out_size, dtype=np.float64)
    center = scale * (i + 0.5)
    # C casts truncate toward zero; both bounds are then clipped like the kernel does.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin, 0, taps)
    j = np.arange(taps, dtype=np.int64)
    valid = j[None, :] < xsize[:, None]
    arg = ((j[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * invscale
    w = np.where(valid, _cubic(arg), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(taps):  # sequential, like the kernel's loop (numpy's pairwise sum could differ in the last ulp)
        total += w[:, k]
    safe = np.where(total != 0.0, total, 1.0)
    w = np.where((total != 0.0)[:, None], w / safe[:, None], w)
    wt_max = float(max(w.max(), 0.0))
    precision = 0
    while precision < _MAX_PRECISION and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * float(1 << precision)
    q = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int64)  # half away from zero
    dense = np.zeros((out_size, in_size), dtype=np.int64)
    rows = np.repeat(np.arange(out_size), taps)
    cols = (xmin[:, None] + j[None, :]).reshape(-1)
    keep = valid.reshape(-1)
    dense[rows[keep], cols[keep]] = q.reshape(-1)[keep]
    dense.setflags(write=False)
    return dense, precision


_DEVICE_CACHE: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


def _device_cached(key: tuple, make):
    """`make()`'s result, made once per key (a key names its device): the tensors the GPU preprocessing needs
    are uploaded once, not per call (and a CUDA graph that captures the preprocessing could not upload)."""
    with _LOCK:
        hit = _DEVICE_CACHE.get(key)
    if hit is None:
        hit = make()
        with _LOCK:
            if len(_DEVICE_CACHE) > 64:
                _DEVICE_CACHE.clear()
            _DEVICE_CACHE[key] = hit
    return hit


def _split_weights(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """float32 (2*out, in) on `device`: rows [0, out) the high bytes, rows [out, 2*out) the low bytes (0..255)."""

    def make() -> tuple[torch.Tensor, int]:
        dense, p = axis_weights(in_size, out_size)
        hi = np.floor_divide(dense, 256)  # -128..127: |w| < 2**15
        lo = dense - 256 * hi  # 0..255
        return torch.from_numpy(np.concatenate([hi, lo]).astype(np.float32)).to(device), p

    return _device_cached(("resize", in_size, out_size, str(device)), make)


def _exact_in_float32(in_size: int, out_size: int) -> bool:
    """Every partial sum of the split matmul stays below 2**24 (float32 integers are exact up to there). True
    for any downscale up to ~64x; beyond it (thousands of taps) the caller uses the CPU kernel."""
    dense, _ = axis_weights(in_size, out_size)
    hi = np.floor_divide(dense, 256)
    lo = dense - 256 * hi
    worst = 255 * max(int(np.abs(hi).sum(axis=1).max()), int(lo.sum(axis=1).max()))
    return worst < 2**24


def _finish(hi: torch.Tensor, lo: torch.Tensor, precision: int) -> torch.Tensor:
    """Integer sums in float32 (exact) -> the uint8 kernel's rounding: clamp((256*hi + lo + half) >> p, 0, 255)."""
    acc = hi.to(torch.int32) * 256 + lo.to(torch.int32)
    if precision > 0:
        acc = torch.bitwise_right_shift(acc + (1 << (precision - 1)), precision)  # arithmetic shift = floor
    return acc.clamp_(0, 255)


def _resize_width(x: torch.Tensor, out_w: int) -> torch.Tensor:
    """(N, H, W) integer-valued float32 -> (N, H, out_w) float32 0..255."""
    wts, p = _split_weights(x.shape[-1], out_w, x.device)
    y = torch.matmul(x, wts.t())  # (N, H, 2*out_w)
    return _finish(y[..., :out_w], y[..., out_w:], p).to(torch.float32)


def _resize_height(x: torch.Tensor, out_h: int) -> torch.Tensor:
    """(N, H, W) integer-valued float32 -> (N, out_h, W) float32 0..255."""
    wts, p = _split_weights(x.shape[-2], out_h, x.device)
    y = torch.matmul(wts, x)  # (N, 2*out_h, W)
    return _finish(y[:, :out_h], y[:, out_h:], p).to(torch.float32)


def resize_bicubic_aa(frames: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize uint8 frames (T, C, H, W) (any strides, any device) to (T, C, h, w), bicubic with antialias.

    Returns float32 with integer values 0..255 on the frames' device, equal to
    ``F.interpolate(frames.cpu(), size, mode="bicubic", antialias=True).float()`` (torch's uint8 kernel, the one
    torchvision and the HF processors use). Runs as matmuls, so it is fast on a GPU; on a CPU the uint8 kernel
    itself is faster. (A downscale beyond ~64x, whose sums float32 could not hold exactly, runs that CPU kernel.)"""
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(f"expected uint8 (T, C, H, W) frames, got {frames.dtype} {tuple(frames.shape)}")
    out_h, out_w = int(size[0]), int(size[1])
    T, C, H, W = frames.shape
    if not (_exact_in_float32(W, out_w) and _exact_in_float32(H, out_h)):
        cpu = F.interpolate(frames.cpu(), size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
        return cpu.to(device=frames.device, dtype=torch.float32)
    out = torch.empty((T, C, out_h, out_w), dtype=torch.float32, device=frames.device)
    for s in range(0, T, _CHUNK):
        x = frames[s:s + _CHUNK].reshape(-1, H, W).to(torch.float32)
        if W != out_w:  # width first, rounded to uint8 values, as the uint8 kernel does
            x = _resize_width(x, out_w)
        if H != out_h:
            x = _resize_height(x, out_h)
        out[s:s + _CHUNK] = x.view(-1, C, out_h, out_w)
    return out


def resize_frames(frames: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(T,3,H,W) uint8 -> float32 (T,3,h,w), integer values 0..255, bicubic + antialias exactly as torchvision (and
    so the HF processors) compute it: torch's uint8 kernel on CPU, its matmul form (``resize_bicubic_aa``, equal
    bit for bit) on other devices. Same size: unchanged, as torchvision returns it. A plain float interpolate would
    differ by up to ~15 grey levels on noisy frames."""
    if tuple(frames.shape[-2:]) == tuple(int(v) for v in size):
        return frames.float()
    if frames.device.type == "cpu":
        return F.interpolate(frames, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).float()
    return resize_bicubic_aa(frames, size)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(T, C, h, w) float 0..255 -> ``(x / 255 - mean) / std`` per channel, float32 (the HF processors' rescale
    and normalise, in the same operation order as our CPU path, so CPU and GPU results agree)."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    m, s = _device_cached(("stats", mean, std, str(x.device)), lambda: tuple(
        torch.tensor(v, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) for v in (mean, std)))
    return (x.to(torch.float32) * (1.0 / 255.0) - m) / s
