"""fastvid_cli.preprocess: the matmul resize (what CUDA runs) equals torch's CPU uint8 bicubic+antialias kernel (what
torchvision and the HF processors run) bit for bit, on noise and on real frames, for down- and upscaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvid_cli.preprocess import axis_weights, normalize, resize_bicubic_aa

SIZES = [
    ((720, 1280), (384, 384)),  # 720p -> SigLIP 384: both axes down, non-square in
    ((240, 320), (384, 384)),  # both up
    ((720, 1280), (448, 784)),  # Qwen-style grid size
    ((272, 640), (384, 384)),  # height up, width down
    ((1080, 1920), (224, 224)),  # strong downscale: many taps
    ((97, 131), (53, 211)),  # odd sizes, mixed
    ((384, 384), (384, 384)),  # identity
    ((480, 640), (480, 320)),  # one axis only
]


def uint8_kernel(frames: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(frames, size=size, mode="bicubic", antialias=True, align_corners=False).float()


def noise(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels-last strides, as frames decoded to (T, H, W, 3) and permuted arrive
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)


@pytest.mark.parametrize("src,dst", SIZES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in SIZES])
def test_equals_uint8_kernel_on_noise(src, dst):
    x = noise(3, *src, seed=src[0] + dst[1])
    ref = uint8_kernel(x, dst)
    ours = resize_bicubic_aa(x, dst)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, *dst)
    assert torch.equal(ours, ref)
    assert torch.equal(resize_bicubic_aa(x.contiguous(), dst), ref)  # any input strides


def test_noise_is_where_a_float_resize_is_wrong():
    """The reason for this module: the float path (what a GPU interpolate does) is several grey levels off."""
    x = noise(2, 240, 320)
    ref = uint8_kernel(x, (384, 384))
    flt = F.interpolate(x.float(), size=(384, 384), mode="bicubic", antialias=True).clamp(0, 255).round()
    assert (flt - ref).abs().max() > 5
    assert torch.equal(resize_bicubic_aa(x, (384, 384)), ref)


def test_equals_uint8_kernel_on_real_frames(shared_videos):
    from fastvid_cli.video import sample_frames

    for name, sizes in (("bikes.mp4", [(384, 384), (280, 644)]), ("carphone_pristine.mp4", [(384, 384)]),
                        ("big_buck_bunny_432_433.webm", [(384, 384), (448, 784)])):
        frames = torch.from_numpy(sample_frames(str(shared_videos / name), 6).frames).permute(0, 3, 1, 2)
        for size in sizes:
            assert torch.equal(resize_bicubic_aa(frames, size), uint8_kernel(frames, size)), (name, size)


def test_many_frames_are_chunked_consistently():
    x = noise(37, 60, 90)  # more than one chunk of frames
    assert torch.equal(resize_bicubic_aa(x, (50, 70)), uint8_kernel(x, (50, 70)))


def test_axis_weights_are_normalised_integers():
    for n_in, n_out in ((1280, 384), (240, 384), (384, 384), (7, 3)):
        w, p = axis_weights(n_in, n_out)
        assert w.shape == (n_out, n_in) and w.dtype == np.int64
        assert np.abs(w).max() < 2**15  # int16 weights
        sums = w.sum(axis=1)
        assert np.all(np.abs(sums - 2**p) <= w.shape[1])  # each row sums to 1.0 at precision p, up to rounding
    w, p = axis_weights(384, 384)
    assert np.array_equal(w, np.eye(384, dtype=np.int64) * 2**p)  # same size: identity


def test_normalize_matches_adapter_cpu_path(tiny_llava):
    """The GPU path (matmul resize + normalize) gives the very values of the adapter's CPU path."""
    from fastvid_cli.engine import Engine

    eng = Engine.load(str(tiny_llava), device="cpu", dtype="float32", saliency_model="fallback", warmup=False)
    a = eng.adapter
    frames = noise(4, 90, 160).permute(0, 2, 3, 1).numpy()
    cpu = a.preprocess(frames)
    s = a.image_size
    gpu_style = normalize(resize_bicubic_aa(torch.from_numpy(frames).permute(0, 3, 1, 2), (s, s)), a.mean, a.std)
    assert torch.equal(cpu, gpu_style)


def test_rejects_non_uint8():
    with pytest.raises(ValueError):
        resize_bicubic_aa(torch.zeros(1, 3, 8, 8), (4, 4))


def test_extreme_downscale_is_still_exact():
    """90x still fits float32's exact integers; at 150x the split matmul could leave them and the CPU kernel
    takes over: the same values either way."""
    from fastvid_cli.preprocess import _exact_in_float32

    x = noise(1, 4, 9000)
    assert _exact_in_float32(9000, 100) and not _exact_in_float32(9000, 60)
    for size in ((2, 100), (2, 60)):
        assert torch.equal(resize_bicubic_aa(x, size), uint8_kernel(x, size))
