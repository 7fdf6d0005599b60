"""What every model family adapter produces and shares: feature containers, prompt pieces, device/dtype rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastvid_cli.errors import InvalidOptionError


@dataclass
class VideoFeatures:
    """Everything pruning needs from one video, on the model's device.

    embeds (F,N,D): LLM-input video tokens, frame-major, row-major inside a frame.
    saliency (F,N): per-token importance (FastVID's ATS score).
    frame_features (F,Dg): one global vector per frame (FastVID's DySeg feature).
    extra_embeds (E,D): tokens of the video span that are never pruned and follow the F*N grid (OneVision's
    single trailing newline).
    """

    embeds: torch.Tensor
    saliency: torch.Tensor
    frame_features: torch.Tensor
    extra_embeds: torch.Tensor
    grid: tuple[int, int]
    saliency_source: str

    @property
    def num_frames(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def total_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame + int(self.extra_embeds.shape[0])


@dataclass
class Prompt:
    """A tokenised prompt split around the video span: prefix ids, [video span], suffix ids (1-D, on CPU)."""

    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor
    text: str = ""

    @property
    def text_tokens(self) -> int:
        return int(self.prefix_ids.numel() + self.suffix_ids.numel())


@dataclass
class Assembled:
    """The LLM input after pruning: embeddings with the ORIGINAL position ids of every kept token."""

    inputs_embeds: torch.Tensor  # (1, L', D)
    position_ids: torch.Tensor  # (1, L') int64, strictly increasing, gaps where tokens were pruned
    full_length: int  # L: the prompt length before pruning
    video_span: tuple[int, int] = field(default=(0, 0))  # [start, end) of the video span in the kept sequence

    @property
    def length(self) -> int:
        return int(self.inputs_embeds.shape[1])

    @property
    def next_position(self) -> torch.Tensor:
        """Position ids of the first generated token: the last column + 1 ((1,1), or (R,1,1) for M-RoPE rows).
        The prompt always ends in unpruned text, so this continues after the UNPRUNED length."""
        return self.position_ids[..., -1:] + 1


def resolve_device(device: str) -> str:
    """'auto' | 'cuda' | 'cuda:N' | 'cpu' -> a concrete device string ('auto' stays 'auto' only for sharding)."""
    device = device.strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidOptionError(f"--device {device}: CUDA is not available on this machine", "use --device cpu")
        if ":" in device:
            idx = device.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise InvalidOptionError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    raise InvalidOptionError(f"--device must be auto, cpu, cuda or cuda:N (got '{device}')")


_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    dtype = dtype.strip().lower()
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise InvalidOptionError(f"--dtype must be auto, bfloat16, float16 or float32 (got '{dtype}')")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
