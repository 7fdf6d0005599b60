"""fastvid_cli.video: exact uniform frame sampling with PyAV, checked against pixel-encoded frame indices and against
a plain sequential decode (the ground truth the sparse, seeking decoder must reproduce bit for bit)."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from videogen import (
    decode_index,
    index_frames,
    reference_decode,
    text_as_video,
    truncated_copy,
    write_audio_only,
    write_video,
)

import fastvid_cli.video as video
from fastvid_cli import gop_runs
from fastvid_cli.errors import InvalidOptionError, VideoDecodeError, VideoNotFoundError
from fastvid_cli.video import Clip, decoder_support, sample_frames

H, W = 96, 128  # x264 emits no B-frames at all at 64x48, even when forced; 128x96 it does


def linspace_floor(total: int, n: int) -> list[int]:
    return [int(x) for x in np.linspace(0, total - 1, n, dtype=int)]


# --- generated clips (module scope: written once, a few hundred ms in all) ---


@pytest.fixture(scope="module")
def vdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def frames120() -> np.ndarray:
    return index_frames(120, H, W)


@pytest.fixture(scope="module")
def mp4_bframes(vdir, frames120) -> Path:
    return Path(write_video(vdir / "bframes.mp4", frames120, fps=24, bframes=3))


@pytest.fixture(scope="module")
def mkv_bframes(vdir, frames120) -> Path:
    return Path(write_video(vdir / "bframes.mkv", frames120, fps=24, bframes=3))


@pytest.fixture(scope="module")
def webm_vp9(vdir, frames120) -> Path:
    return Path(write_video(vdir / "vp9.webm", frames120, fps=24, codec="libvpx-vp9"))


@pytest.fixture(scope="module")
def gop12(vdir) -> Path:
    """240 frames, a keyframe exactly every 12 frames, B-frames: many GOPs to seek between."""
    return Path(write_video(vdir / "gop12.mp4", index_frames(240, H, W), fps=24, bframes=2, gop=12))


@pytest.fixture
def no_fallback(monkeypatch):
    """Well-formed clips must take the sparse path: fail if the sequential fallback runs."""

    def forbidden(*a, **k):
        raise AssertionError("sequential fallback used on a well-formed clip")

    monkeypatch.setattr(video, "_sample_sequential", forbidden)


class CountingContainer:
    """Wraps an InputContainer to count seeks and frames the decoder hands out."""

    def __init__(self, container):
        self._c = container
        self.seeks = 0
        self.decoded = 0

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __enter__(self):
        self._c.__enter__()
        return self

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)

    def seek(self, *a, **k):
        self.seeks += 1
        return self._c.seek(*a, **k)

    def decode(self, *a, **k):
        for f in self._c.decode(*a, **k):
            self.decoded += 1
            yield f

    def demux(self, *a, **k):  # packets decoded one by one (H.264 skipping non-reference frames) count too
        for packet in self._c.demux(*a, **k):
            yield CountingPacket(packet, self)


class CountingPacket:
    def __init__(self, packet, owner: CountingContainer):
        self._p, self._owner = packet, owner

    def __getattr__(self, name):
        return getattr(self._p, name)

    def decode(self):
        frames = self._p.decode()
        self._owner.decoded += len(frames)
        return frames


@pytest.fixture
def counting(monkeypatch):
    opened: list[CountingContainer] = []
    real_open = video._open

    def counting_open(p, name):
        c = CountingContainer(real_open(p, name))
        opened.append(c)
        return c

    monkeypatch.setattr(video, "_open", counting_open)
    return opened


def assert_exact(clip: Clip, path, total: int, n: int):
    """Indices are lmms-eval's linspace floor, each frame shows its own index, and the pixels equal a sequential
    decode of the same indices."""
    want = linspace_floor(total, min(n, total))
    assert clip.total_frames == total
    assert clip.indices == want
    assert [decode_index(f) for f in clip.frames] == want
    ref, _ = reference_decode(path, want)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == ref.shape
    assert np.array_equal(clip.frames, ref)


# --- the generated clips really have the properties the tests rely on ---


def test_bframe_clip_really_reorders(mp4_bframes):
    with av.open(str(mp4_bframes)) as c:
        s = c.streams.video[0]
        decode_order_pts = [p.pts for p in c.demux(s) if p.size]
    # Presentation order differs from decode order: pts go backwards somewhere in the packet sequence.
    assert any(b < a for a, b in zip(decode_order_pts, decode_order_pts[1:]))
    with av.open(str(mp4_bframes)) as c:
        types = [f.pict_type for f in c.decode(video=0)]
    assert types.count(PictureType.B) >= 30


@pytest.mark.parametrize("fixture", ["mkv_bframes", "webm_vp9"])
def test_mkv_webm_header_has_no_frame_count(request, fixture):
    with av.open(str(request.getfixturevalue(fixture))) as c:
        assert c.streams.video[0].frames == 0  # so the count must come from demuxing


def test_gop12_clip_has_a_keyframe_every_12_frames(gop12):
    with av.open(str(gop12)) as c:
        s = c.streams.video[0]
        pkts = sorted((p.pts, p.is_keyframe) for p in c.demux(s) if p.size)
    assert [i for i, (_, key) in enumerate(pkts) if key] == list(range(0, 240, 12))


# --- exact sampling ---


@pytest.mark.parametrize("fixture", ["mp4_bframes", "mkv_bframes", "webm_vp9"])
@pytest.mark.parametrize("n", [1, 7, 32, 119, 120])
def test_uniform_sampling_is_exact(request, no_fallback, fixture, n):
    path = request.getfixturevalue(fixture)
    clip = sample_frames(path, n)
    assert_exact(clip, path, 120, n)
    assert clip.requested == n and not clip.short
    assert (clip.height, clip.width) == (H, W) and clip.rotation == 0
    assert clip.path == str(path)


@pytest.mark.parametrize("fixture,codec", [("mp4_bframes", "h264"), ("mkv_bframes", "h264"), ("webm_vp9", "vp9")])
def test_metadata(request, fixture, codec):
    clip = sample_frames(request.getfixturevalue(fixture), 8)
    assert clip.codec == codec
    assert clip.fps == pytest.approx(24.0)
    assert clip.duration == pytest.approx(5.0, abs=0.05)
    # Constant 24 fps: timestamp = index / 24 (mkv stores milliseconds, so allow 1 ms).
    assert clip.timestamps == pytest.approx([i / 24 for i in clip.indices], abs=1e-3)
    assert all(b > a for a, b in zip(clip.timestamps, clip.timestamps[1:]))
    assert clip.span == (clip.timestamps[0], clip.timestamps[-1])
    assert clip.span[0] == 0.0 and clip.span[1] == pytest.approx(119 / 24, abs=1e-3)


def test_one_frame_is_frame_zero(no_fallback, mp4_bframes):
    clip = sample_frames(mp4_bframes, 1)
    assert clip.indices == [0] and clip.timestamps == [0.0] and clip.frames.shape == (1, H, W, 3)
    assert decode_index(clip.frames[0]) == 0
    assert clip.span == (0.0, 0.0)


def test_numpy_integer_and_str_path_accepted(mp4_bframes):
    clip = sample_frames(str(mp4_bframes), np.int64(4))
    assert clip.indices == linspace_floor(120, 4) and clip.requested == 4 and isinstance(clip.requested, int)


def test_short_clip_returns_every_frame(no_fallback, vdir):
    path = write_video(vdir / "short.mp4", index_frames(10, H, W), fps=24, bframes=3)
    clip = sample_frames(path, 32)
    assert clip.short and clip.requested == 32 and clip.total_frames == 10
    assert clip.indices == list(range(10))
    assert [decode_index(f) for f in clip.frames] == list(range(10))
    assert np.array_equal(clip.frames, reference_decode(path)[0])
    assert not sample_frames(path, 10).short


# --- GOP-aware seeking ---


def test_sparse_sampling_seeks_and_skips_most_frames(no_fallback, counting, gop12):
    clip = sample_frames(gop12, 5)
    assert_exact(clip, gop12, 240, 5)
    # Targets 0, 59, 119, 179, 239 lie in 5 different GOPs far apart: one seek each, and from each keyframe only
    # up to the target (< 12 frames) is decoded, instead of all 240 - counted over every decoder, however many
    # decode in parallel.
    assert sum(c.seeks for c in counting) == 5
    assert sum(c.decoded for c in counting) <= 5 * 12


@pytest.mark.parametrize("n", [12, 60, 200, 238])
def test_dense_sampling_decodes_at_most_one_pass(no_fallback, counting, gop12, n):
    clip = sample_frames(gop12, n)
    assert_exact(clip, gop12, 240, n)
    # Never more work than one sequential pass, over all parallel decoders together: no GOP is decoded twice, and
    # no seek into a GOP that forward decoding reaches within a few frames.
    assert sum(c.decoded for c in counting) <= 240
    assert sum(c.seeks for c in counting) <= 1 + 240 // (12 + gop_runs.MIN_SKIP)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_runs_are_shared_out_to_parallel_decoders(no_fallback, counting, gop12, threads):
    """With a thread budget of N, up to N decoders (each its own container) decode disjoint runs of GOPs; the
    frames are those of one decoder, and the work is split, not repeated."""
    clip = sample_frames(gop12, 8, threads=threads)
    assert_exact(clip, gop12, 240, 8)
    decoders = [c for c in counting if c.decoded]
    assert len(decoders) == min(threads, 8)  # 8 targets in 8 GOPs = 8 runs
    assert sum(c.seeks for c in counting) == 8
    assert sum(c.decoded for c in counting) <= 8 * 12
    single = sample_frames(gop12, 8, threads=1)
    assert np.array_equal(clip.frames, single.frames) and clip.indices == single.indices


@pytest.mark.parametrize("fixture", ["mp4_bframes", "mkv_bframes"])
@pytest.mark.parametrize("threads", [1, 4])
def test_h264_nonreference_frames_between_targets_are_skipped(request, no_fallback, counting, monkeypatch,
                                                               fixture, threads):
    """H.264 non-reference frames that are not kept are skipped by the decoder (never referred to, so the kept
    frames are bit for bit those of a full decode): fewer frames come out for the same clip."""
    path = request.getfixturevalue(fixture)
    clip = sample_frames(path, 10, threads=threads)
    assert_exact(clip, path, 120, 10)
    skipping = sum(c.decoded for c in counting)
    counting.clear()
    monkeypatch.setattr(video.FrameSink, "skips_nonref", False)
    full = sample_frames(path, 10, threads=threads)
    assert np.array_equal(full.frames, clip.frames) and full.indices == clip.indices
    assert skipping < sum(c.decoded for c in counting) - 20  # ~50 of the 120 frames are non-reference B-frames


def test_a_long_run_is_cut_at_keyframes_for_parallel_decoders(no_fallback, counting, gop12):
    """20 of 240 frames (GOP 12): one decoder decodes straight through (a seek would cost more than the few
    frames it skips), so the targets form one run; with 4 decoders the run is cut at keyframes into about equal
    parts, so no decoder decodes much more than a quarter. Same frames, no more work in all."""
    clip = sample_frames(gop12, 20, threads=4)
    assert_exact(clip, gop12, 240, 20)
    decoders = [c for c in counting if c.decoded]
    assert len(decoders) == 4
    assert max(c.decoded for c in decoders) <= 240 // 4 + 12
    assert sum(c.decoded for c in counting) <= 240
    assert gop_runs.plan_runs(list(range(240)), list(range(0, 240, 12)), clip.indices)[1] == [240]  # one run alone


@pytest.mark.parametrize("threads", [1, 4])
def test_frames_are_handed_out_as_they_are_decoded(no_fallback, gop12, threads):
    """on_frame sees every kept frame once, as the final array row it fills (so early work on it stays valid)."""
    seen = []
    clip = sample_frames(gop12, 10, threads=threads, on_frame=lambda slot, a: seen.append((slot, a)))
    assert sorted(s for s, _ in seen) == list(range(10))
    for slot, a in seen:
        assert np.shares_memory(a, clip.frames[slot]) and np.array_equal(a, clip.frames[slot])
    assert [decode_index(clip.frames[s]) for s in range(10)] == clip.indices


def test_frames_handed_out_before_a_fallback_are_not_the_clips(vdir, monkeypatch):
    """If the sparse path gives up, the sequential decode returns new arrays: a caller can tell."""
    path = write_video(vdir / "fb.mp4", index_frames(48, H, W), fps=24, gop=12)

    def give_up(*args, **kw):
        args[-1](0, np.zeros((H, W, 3), np.uint8))  # one frame handed out, then the sparse path gives up
        return None

    monkeypatch.setattr(video, "_decode_frames", give_up)
    seen = []
    clip = sample_frames(path, 4, on_frame=lambda slot, a: seen.append((slot, a)))
    assert seen and not any(np.shares_memory(a, clip.frames) for _, a in seen)
    assert [decode_index(f) for f in clip.frames] == clip.indices


# --- variable frame rate ---


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate(no_fallback, vdir, ext):
    rng = random.Random(7)
    gaps = [rng.choice([17, 33, 40, 100, 250]) for _ in range(89)]
    vfr_pts = [0] + list(np.cumsum(gaps).tolist())
    path = write_video(vdir / f"vfr.{ext}", index_frames(90, H, W), vfr_pts=vfr_pts, bframes=3)
    clip = sample_frames(path, 16)
    assert_exact(clip, path, 90, 16)
    assert clip.timestamps == pytest.approx([vfr_pts[i] / 1000 for i in clip.indices], abs=1e-9)
    assert clip.duration >= vfr_pts[-1] / 1000
    # A constant-rate assumption (index / fps) would put the frames elsewhere.
    assert clip.fps is not None
    assert clip.timestamps != pytest.approx([i / clip.fps for i in clip.indices], abs=0.02)


# --- rotation ---


@pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
    reason=f"PyAV {av.__version__} cannot write a display matrix (VideoStream.set_display_rotation needs PyAV 18)",
)
@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_display_rotation_is_applied(vdir, ext, degrees):
    upright = index_frames(24, H, W)
    k = degrees // 90
    # Store the frames turned clockwise and tag them "show me turned counter-clockwise by `degrees`".
    stored = np.ascontiguousarray(np.rot90(upright, -k, axes=(1, 2)))
    path = write_video(vdir / f"rot{degrees}.{ext}", stored, rotation=degrees, bframes=3)
    clip = sample_frames(path, 6)
    assert clip.rotation == degrees
    assert clip.frames.shape == (6, H, W, 3) and (clip.height, clip.width) == (H, W)
    assert [decode_index(f) for f in clip.frames] == clip.indices  # upright: the bands read correctly
    ref, _ = reference_decode(path, clip.indices)
    assert np.array_equal(clip.frames, np.rot90(ref, k, axes=(1, 2)))
    assert clip.frames.flags["C_CONTIGUOUS"]


# --- fallback path (no usable timestamps) ---


def test_raw_h264_without_timestamps_falls_back_to_sequential(vdir, frames120):
    path = write_video(vdir / "raw.h264", frames120, bframes=3)
    with av.open(str(path)) as c:
        assert all(p.pts is None for p in c.demux(video=0))  # the premise: an elementary stream has no pts
    clip = sample_frames(path, 9)
    assert_exact(clip, path, 120, 9)
    assert clip.fps and clip.timestamps == pytest.approx([i / clip.fps for i in clip.indices])
    assert clip.duration == pytest.approx(120 / clip.fps)


def test_forced_fallback_matches_sparse_path(monkeypatch, mp4_bframes):
    sparse = sample_frames(mp4_bframes, 11)
    monkeypatch.setattr(video, "_decode_sparse", lambda *a, **k: None)
    seq = sample_frames(mp4_bframes, 11)
    assert seq.indices == sparse.indices and seq.total_frames == sparse.total_frames == 120
    assert np.array_equal(seq.frames, sparse.frames)
    assert seq.timestamps == pytest.approx(sparse.timestamps)
    assert (seq.fps, seq.duration, seq.codec) == (sparse.fps, sparse.duration, sparse.codec)


def test_frame_missing_from_decoder_output_falls_back(monkeypatch, mkv_bframes):
    """A packet that yields no frame (a VP8 alt-ref frame stored alone, a partial last packet) makes the demuxed
    count too high; the sparse decoder must notice that a target never comes out, not take the next frame."""
    real = video._demux_index

    def with_phantom(container, stream):
        pts, keys, exact = real(container, stream)
        phantom = (pts[60] + pts[61]) // 2  # between two real frames
        return sorted(pts + [phantom]), keys, exact

    monkeypatch.setattr(video, "_demux_index", with_phantom)
    clip = sample_frames(mkv_bframes, 16)
    assert_exact(clip, mkv_bframes, 120, 16)  # the decoder's 120 frames, not the 121 the packets suggested


def test_threads_option(mp4_bframes):
    a = sample_frames(mp4_bframes, 9, threads=1)
    b = sample_frames(mp4_bframes, 9, threads=0)
    assert np.array_equal(a.frames, b.frames)
    with pytest.raises(InvalidOptionError):
        sample_frames(mp4_bframes, 9, threads=-1)


# --- real clips ---

REAL = [
    # name, frames, (height, width), stream.frames from the header
    ("bikes.mp4", 250, (272, 640), 250),
    ("carphone_pristine.mp4", 120, (144, 176), 120),
    ("big_buck_bunny_432_433.webm", 24, (720, 1280), 0),
]


@pytest.mark.parametrize("name,total,hw,header_frames", REAL)
def test_real_clips(no_fallback, shared_videos, name, total, hw, header_frames):
    path = shared_videos / name
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == header_frames
    clip = sample_frames(path, 32)
    n = min(32, total)
    want = linspace_floor(total, n)
    assert clip.total_frames == total and clip.indices == want
    assert clip.frames.shape == (n, *hw, 3) and (clip.height, clip.width) == hw
    assert clip.short == (total < 32)
    ref, _ = reference_decode(path, want)
    assert np.array_equal(clip.frames, ref)
    assert all(b > a for a, b in zip(clip.timestamps, clip.timestamps[1:]))
    assert clip.duration == pytest.approx(total / clip.fps, rel=0.02)


# --- errors ---


def assert_one_line(err: Exception, path) -> None:
    text = str(err)
    assert "\n" not in text
    assert Path(path).name in text


def test_missing_path(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFoundError) as e:
        sample_frames(path, 8)
    assert e.value.exit_code == 3
    assert str(e.value) == f"video not found: {path}"


def test_directory(tmp_path):
    with pytest.raises(VideoNotFoundError) as e:
        sample_frames(tmp_path, 8)
    assert e.value.exit_code == 3
    assert str(e.value) == f"not a regular file: {tmp_path}"


def _empty(d: Path) -> Path:
    p = d / "empty.mp4"
    p.write_bytes(b"")
    return p


def _truncated_mp4(d: Path) -> Path:
    src = write_video(d / "full.mp4", index_frames(48, H, W), bframes=3)  # moov atom at the end: lost
    return Path(truncated_copy(src, d / "cut.mp4"))


def _truncated_faststart_mp4(d: Path) -> Path:
    src = write_video(d / "full_fs.mp4", index_frames(48, H, W), bframes=3, faststart=True)  # moov kept
    return Path(truncated_copy(src, d / "cut_fs.mp4"))


BROKEN = {
    "empty": (_empty, "not a video or unreadable"),
    "text": (lambda d: Path(text_as_video(d / "notes.mp4")), "not a video or unreadable"),
    "m4a": (lambda d: Path(write_audio_only(d / "tone.m4a")), "audio only"),
    "wav": (lambda d: Path(write_audio_only(d / "tone.wav")), "audio only"),
    "mp3_cover_art": (lambda d: Path(write_audio_only(d / "song.mp3", cover_art=True)), "attached picture"),
    "truncated_mp4": (_truncated_mp4, "not a video or unreadable"),
    "truncated_faststart_mp4": (_truncated_faststart_mp4, "truncated or incomplete video"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_inputs_raise_decode_error(tmp_path, kind):
    make, phrase = BROKEN[kind]
    path = make(tmp_path)
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(path, 8)
    assert e.value.exit_code == 4
    assert_one_line(e.value, path)
    assert phrase in str(e.value)


def test_cover_art_really_is_a_video_stream(tmp_path):
    path = write_audio_only(tmp_path / "song.mp3", cover_art=True)
    with av.open(str(path)) as c:
        (s,) = c.streams.video  # the premise: FFmpeg shows the picture as a video stream
        assert s.disposition & av.stream.Disposition.attached_pic


def test_corrupt_payload_never_leaks_av_errors(tmp_path):
    src = write_video(tmp_path / "ok.mp4", index_frames(48, H, W), bframes=3, faststart=True)
    data = bytearray(Path(src).read_bytes())
    rnd = random.Random(3)
    for i in range(len(data) // 2, len(data)):  # same size, so the index stays consistent; the payload is noise
        data[i] = rnd.randrange(256)
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(bytes(data))
    try:
        clip = sample_frames(bad, 8)
    except VideoDecodeError as e:
        assert_one_line(e, bad)
    else:
        assert clip.frames.shape[0] == len(clip.indices)


@pytest.mark.parametrize("n", [0, -3, 2.5, True, None])
def test_bad_num_frames(mp4_bframes, n):
    with pytest.raises(InvalidOptionError) as e:
        sample_frames(mp4_bframes, n)
    assert e.value.exit_code == 2


def test_bad_num_frames_is_checked_before_the_path(tmp_path):
    with pytest.raises(InvalidOptionError):
        sample_frames(tmp_path / "nope.mp4", 0)


# --- doctor ---


def test_decoder_support():
    support = decoder_support()
    assert {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"} <= set(support)
    assert all(isinstance(v, bool) for v in support.values())
    assert support["h264"] is True
    assert support["vp9"] is True  # the PyPI wheel decodes VP9 (webm tests above depend on it)
