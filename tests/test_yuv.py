"""fastvid_cli.yuv: the GPU path's NV12/P010 -> RGB conversion against PyAV's own rgb24 conversion (swscale, what
the CPU path returns), run here on the CPU with frames PyAV decodes in software and repacks to nv12 / p010le (the
formats NVDEC hands out) and reads through the same DLPack export the CUDA frames use.

Measured (this test, av 18.1 / FFmpeg 8, x86-64), grey levels |ours - PyAV| over all pixels and channels:
    8-bit, even height (swscale's unscaled fast path, which yuv.py reproduces in integers):
        BT.601 / BT.709 / BT.2020 / FCC / SMPTE 240M, limited and full range, synthetic and real clips: max 0
    10-bit (HEVC Main10 -> p010le; swscale's general scaler): mean 1.87, max 31 at the synthetic clip's hard
        colour edges
    odd height (VP9 121x97, 8-bit; general scaler; chroma one row and column short, as DLPack exports it): mean
        1.95, max 85 (at the hard edges)
The asserted bounds are those numbers with a margin.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from conftest import SHARED_VIDEOS
from fastvid_cli.video_gpu import frame_planes
from fastvid_cli.yuv import ColourSpec, colour_spec, nv12_to_rgb, swscale_coefficients
from videogen import index_frames


def write_clip(path, frames, codec="libx264", pix_fmt="yuv420p", colorspace=None, color_range=None):
    T, H, W, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
        if color_range is not None:
            s.codec_context.color_range = color_range
        if codec == "libx265":
            s.options = {"x265-params": "log-level=error"}
        elif codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def differences(path, fmt: str, limit: int = 4):
    """|ours - PyAV rgb24| (int arrays) for the first `limit` frames, the frames repacked to `fmt` (nv12 or p010le)
    and converted with the tags of the decoded frame; plus the ColourSpec used."""
    out, spec = [], None
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i == limit:
                break
            ref = f.to_ndarray(format="rgb24").astype(np.int32)
            y, uv, bits = frame_planes(f.reformat(format=fmt))
            spec = colour_spec(f.colorspace, f.color_range, bits)
            ours = nv12_to_rgb(y, uv, spec).numpy().astype(np.int32)
            out.append(np.abs(ours - ref))
    return np.stack(out), spec


TAGGED = [  # (name, AVColorSpace, AVColorRange, the matrix swscale uses, full range)
    ("untagged", None, None, "bt601", False),
    ("bt709", 1, 1, "bt709", False),
    ("bt2020", 9, 1, "bt2020", False),
    ("fcc", 4, 1, "fcc", False),
    ("smpte240m", 7, 1, "smpte240m", False),
    ("bt470bg_full", 5, 2, "bt601", True),
    ("bt709_full", 1, 2, "bt709", True),
]


@pytest.mark.parametrize("name,cs,rng,matrix,full", TAGGED, ids=[t[0] for t in TAGGED])
def test_8bit_matches_pyav_exactly(tmp_path, name, cs, rng, matrix, full):
    path = write_clip(tmp_path / f"{name}.mp4", index_frames(4, 96, 128), colorspace=cs, color_range=rng)
    diff, spec = differences(path, "nv12")
    assert (spec.matrix, spec.full_range) == (matrix, full)
    assert diff.max() == 0, f"{name}: max {diff.max()} mean {diff.mean():.3f}"


def test_untagged_hd_is_bt601_like_swscale(tmp_path):
    """swscale does not pick the matrix by resolution: an untagged 720p frame converts with BT.601 (the CPU path's
    frames, which the GPU path must match), and BT.709 would differ."""
    path = write_clip(tmp_path / "hd.mp4", index_frames(2, 720, 1280))
    diff, spec = differences(path, "nv12", limit=1)
    assert spec.matrix == "bt601" and diff.max() == 0
    with av.open(str(path)) as c:
        f = next(c.decode(c.streams.video[0]))
        y, uv, _ = frame_planes(f.reformat(format="nv12"))
        as709 = nv12_to_rgb(y, uv, ColourSpec("bt709", False)).numpy().astype(np.int32)
        assert np.abs(as709 - f.to_ndarray(format="rgb24").astype(np.int32)).max() > 5


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "big_buck_bunny_432_433.webm"])
def test_real_clips_match_pyav_exactly(name):
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    diff, _ = differences(path, "nv12")
    assert diff.max() == 0


def test_10bit_p010_within_bound(tmp_path):
    path = write_clip(tmp_path / "main10.mp4", index_frames(4, 96, 128), codec="libx265", pix_fmt="yuv420p10le")
    diff, spec = differences(path, "p010le")
    assert spec.bits == 10
    assert diff.mean() < 2.5 and diff.max() <= 64, f"max {diff.max()} mean {diff.mean():.3f}"


def test_odd_size_with_short_chroma_plane_within_bound(tmp_path):
    """DLPack exports the chroma of an odd-sized frame as (H//2, W//2, 2): the last row/column is repeated."""
    path = write_clip(tmp_path / "odd.webm", index_frames(4, 97, 121), codec="libvpx-vp9")
    with av.open(str(path)) as c:
        f = next(c.decode(c.streams.video[0]))
        _, uv, _ = frame_planes(f.reformat(format="nv12"))
        assert tuple(uv.shape) == (48, 60, 2)  # one short of ceil(97/2) x ceil(121/2)
    diff, _ = differences(path, "nv12")
    assert diff.mean() < 3.0 and diff.max() <= 96, f"max {diff.max()} mean {diff.mean():.3f}"


def test_coefficients_are_swscales_table():
    """The constants rebuilt from Kr/Kb equal ff_yuv2rgb_coeffs' rows passed through ff_yuv2rgb_c_init_tables:
    e.g. BT.601 limited: crv 104597 -> 12769 (x 2**13 / 2**16, rounded), cy 255/219 -> 9539, y offset 128."""
    cy, yo, crv, cbu, cgu, cgv = swscale_coefficients(ColourSpec("bt601", False))
    assert (cy, yo) == (9539, 128)
    assert (crv, cbu, cgu, cgv) == (round(104597 / 8), round(132201 / 8), -round(25675 / 8), -round(53279 / 8))


def test_conversion_writes_into_a_slot_and_keeps_its_dtype():
    y = torch.full((4, 6), 16, dtype=torch.uint8)
    uv = torch.full((2, 3, 2), 128, dtype=torch.uint8)
    out = torch.full((2, 4, 6, 3), 7, dtype=torch.uint8)
    got = nv12_to_rgb(y, uv, ColourSpec("bt709", False), out=out[1])
    assert got.data_ptr() == out[1].data_ptr()
    assert out[1].eq(0).all() and out[0].eq(7).all()  # limited-range black is 0 0 0


def measured_table(tmp_path) -> list[tuple[str, int, float]]:
    """(case, max, mean) for the report: python -c 'from test_yuv import *; ...'."""
    rows = []
    for name, cs, rng, _, _ in TAGGED:
        d, _ = differences(write_clip(tmp_path / f"{name}.mp4", index_frames(4, 96, 128), colorspace=cs,
                                      color_range=rng), "nv12")
        rows.append((name, int(d.max()), float(d.mean())))
    d, _ = differences(write_clip(tmp_path / "m10.mp4", index_frames(4, 96, 128), codec="libx265",
                                  pix_fmt="yuv420p10le"), "p010le")
    rows.append(("10-bit p010", int(d.max()), float(d.mean())))
    d, _ = differences(write_clip(tmp_path / "odd.webm", index_frames(4, 97, 121), codec="libvpx-vp9"), "nv12")
    rows.append(("odd 121x97", int(d.max()), float(d.mean())))
    return rows
