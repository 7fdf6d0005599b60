"""fastvid_cli.video_gpu on a machine without NVDEC (this CPU box: PyAV's FFmpeg lists a `cuda` hwdevice, but there
is no CUDA device): the --decoder choice, the fallback to the CPU when the hardware part fails, and the shared
sparse plan driven through a sink that stores frames the way the GPU sink does (NV12 planes -> torch conversion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvid_cli import video_gpu
from fastvid_cli.errors import InvalidOptionError, VideoNotFoundError
from fastvid_cli.video import DecoderDeclined, FrameSink, sample_frames
from fastvid_cli.video_gpu import NvdecSink, frame_planes, nvdec_status, resolve_decoder, sample_clip
from fastvid_cli.yuv import colour_spec, nv12_to_rgb
from videogen import decode_index, index_frames, write_video


@pytest.fixture(scope="module")
def bclip(tmp_path_factory):
    """120 frames of 128x96 with B-frames and GOP 12: several runs for several decoders."""
    path = tmp_path_factory.mktemp("gpu") / "b.mp4"
    return write_video(path, index_frames(120, 96, 128), gop=12, bframes=3)


def test_nvdec_status_says_why_not():
    """Without a CUDA device NVDEC is unavailable, with the reason; where it is available (the GPU machine, where
    this file also runs) there is no reason to give and H.264 is among its codecs."""
    status = nvdec_status(0)
    if not torch.cuda.is_available():
        assert status["available"] is False
    if status["available"]:
        assert not status["reason"] and "h264" in status["codecs"]
    else:
        assert status["reason"] and ("h264" in status["codecs"] or status["codecs"] == [])


def test_auto_is_cpu_without_nvdec_and_gpu_is_a_usage_error():
    assert resolve_decoder("auto", "cpu") == "cpu"
    assert resolve_decoder("auto", None) == "cpu"
    assert resolve_decoder("cpu", "cuda:0") == "cpu"  # cpu never asks the hardware
    with pytest.raises(InvalidOptionError, match="--decoder gpu: NVDEC is not available"):
        resolve_decoder("gpu", "cpu")
    with pytest.raises(InvalidOptionError, match="--decoder must be one of"):
        resolve_decoder("nvdec")


def test_auto_stays_on_the_cpu_even_where_nvdec_works(monkeypatch):
    """NVDEC was measured 3-4x slower than the CPU decoders on an H100 host: only --decoder gpu uses it."""
    monkeypatch.setattr(video_gpu, "nvdec_status", lambda index=0: {"available": True, "reason": "", "codecs": ["h264"]})
    monkeypatch.setattr(video_gpu, "_cuda_index", lambda device: 0)
    assert resolve_decoder("auto", "cuda:0") == "cpu" and resolve_decoder("gpu", "cuda:0") == "gpu"


def test_auto_samples_on_the_cpu_like_sample_frames(bclip):
    notes: list[str] = []
    clip = sample_clip(bclip, 8, decoder="auto", notes=notes)
    ref = sample_frames(bclip, 8)
    assert clip.decoder == "cpu" and notes == []
    assert clip.indices == ref.indices and np.array_equal(clip.frames, ref.frames)


class _FailingSink(FrameSink):
    """Decodes in software but fails like the hardware can: at open, or at the k-th frame."""

    name = "gpu"
    sequential_fallback = False
    reuse_demuxer = False

    def __init__(self, fail_at: int | None, error: BaseException):
        self.fail_at, self.error, self.seen = fail_at, error, 0

    def open(self, p, name, threads):
        if self.fail_at is None:
            raise self.error
        return super().open(p, name, threads)

    def put(self, out, slot, frame):
        self.seen += 1
        if self.seen > self.fail_at:
            raise self.error
        return super().put(out, slot, frame)


@pytest.mark.parametrize("fail_at,error", [
    (None, DecoderDeclined("NVDEC cannot open the stream (no hardware)")),
    (3, DecoderDeclined("the decoder returned a software (yuv420p) frame, not a CUDA one")),
    (0, RuntimeError("CUDA error: an illegal memory access was encountered")),
], ids=["at-open", "software-frame", "cuda-error"])
def test_a_hardware_failure_falls_back_to_the_cpu_with_a_note(bclip, monkeypatch, fail_at, error):
    monkeypatch.setattr(video_gpu, "resolve_decoder", lambda decoder, device=None: "gpu")
    monkeypatch.setattr(video_gpu, "NvdecSink", lambda device, sessions: _FailingSink(fail_at, error))
    notes: list[str] = []
    clip = sample_clip(bclip, 16, decoder="gpu", notes=notes)
    ref = sample_frames(bclip, 16)
    assert clip.decoder == "cpu" and np.array_equal(clip.frames, ref.frames)
    assert len(notes) == 1 and notes[0].startswith("GPU decoding (NVDEC) fell back to the CPU: ")
    assert str(error).split(" (")[0] in notes[0]


def test_a_missing_file_is_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(video_gpu, "resolve_decoder", lambda decoder, device=None: "gpu")
    with pytest.raises(VideoNotFoundError):
        sample_clip(tmp_path / "nope.mp4", 8, decoder="gpu", notes=[])


def test_the_nvdec_sink_needs_a_cuda_device():
    with pytest.raises(DecoderDeclined):
        NvdecSink("cpu")


class _Nv12Sink(FrameSink):
    """NvdecSink's storage path on the CPU: frames repacked to NV12 by PyAV, read through DLPack and converted by
    fastvid_cli.yuv into a torch tensor; parallel decoders as the GPU sink runs them (several sessions)."""

    name = "gpu"
    sequential_fallback = False
    reuse_demuxer = False

    def decoders(self, threads):
        return 4

    def threads_each(self, threads, workers):
        return 1

    def alloc(self, n, height, width):
        return torch.empty((n, height, width, 3), dtype=torch.uint8)

    def put(self, out, slot, frame):
        y, uv, bits = frame_planes(frame.reformat(format="nv12"))
        nv12_to_rgb(y, uv, colour_spec(frame.colorspace, frame.color_range, bits), out=out[slot])
        return out[slot]

    upright = NvdecSink.upright


@pytest.mark.parametrize("rotation", [0, 90])
def test_the_gpu_sinks_plan_gives_the_cpu_paths_frames(tmp_path, rotation):
    """Same frame indices, timestamps and (8-bit, even height) the same pixels as the CPU path, through four
    parallel decoders with B-frames, and the display rotation applied on the tensor."""
    path = write_video(tmp_path / f"r{rotation}.mp4", index_frames(120, 96, 128), gop=12, bframes=3,
                       rotation=rotation or None)
    handed = []
    got = sample_frames(path, 16, sink=_Nv12Sink(), on_frame=lambda s, a: handed.append(s))
    ref = sample_frames(path, 16)
    assert got.decoder == "gpu" and isinstance(got.frames, torch.Tensor)
    assert got.indices == ref.indices and got.timestamps == ref.timestamps and got.rotation == ref.rotation
    assert np.array_equal(got.frames.numpy(), ref.frames)
    assert sorted(handed) == list(range(16))
    if rotation == 0:
        assert [decode_index(f) for f in got.frames.numpy()] == got.indices


def test_a_sink_without_sequential_fallback_declines_unusable_timestamps(bclip, monkeypatch):
    from fastvid_cli import video

    monkeypatch.setattr(video, "_decode_frames", lambda *a, **k: None)  # the decoder disagreed with the index
    with pytest.raises(DecoderDeclined, match="sequential"):
        sample_frames(bclip, 8, sink=_Nv12Sink())


def test_engine_rejects_gpu_decoder_without_nvdec_and_reports_cpu(engine, index_video):
    with pytest.raises(InvalidOptionError):
        engine.set_decoder("gpu")
    assert engine.set_decoder("auto") == "cpu"
    report = engine.ask(str(index_video), "What happens?", frames=8,
                        gen=__import__("fastvid_cli.engine", fromlist=["GenerationOptions"]).GenerationOptions(
                            max_new_tokens=2))
    assert report.frame_decoder == "cpu" and report.to_dict()["frame_decoder"] == "cpu"


def test_cli_decoder_gpu_without_nvdec_is_a_one_line_usage_error(tiny_llava, tiny_saliency, index_video):
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    result = CliRunner().invoke(app, ["ask", str(index_video), "Q?", "--model", str(tiny_llava), "--saliency-model",
                                      str(tiny_saliency), "--device", "cpu", "--no-cache", "--decoder", "gpu"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error")]
    assert lines == ["error: --decoder gpu: NVDEC is not available (the model runs on the CPU)"]
    assert "Traceback" not in result.stderr
