"""What every model family adapter produces and shares: feature containers, prompt pieces, device/dtype rules."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.models import check_device_name, check_dtype_name


@dataclass
class VideoFeatures:
    """Everything pruning needs from one video, on the model's device.

    embeds (F,N,D): LLM-input video tokens, frame-major, row-major inside a frame.
    saliency (F,N): per-token importance (FastVID's ATS score).
    frame_features (F,Dg): one global vector per frame (FastVID's DySeg feature).
    extra_embeds (E,D): tokens of the video span that are never pruned and follow the F*N grid (OneVision's
    single trailing newline).
    attn_received (F,N) or None: mean attention each token receives (over heads and queries) in the last vision
    layer, pooled to the token grid as saliency is (HoliTom's dynamic-token score); None where a family or an
    old cache entry has none.
    side_embeds [(F,N,Ds), ...]: per-token features that travel with the tokens and are pruned with the same
    kept indices, never merged (Qwen3-VL's DeepStack features, one tensor per LLM layer they are added to).
    meta: JSON-able facts the prompt needs besides the tokens (Qwen: the temporal spacing of the grids).
    """

    embeds: torch.Tensor
    saliency: torch.Tensor
    frame_features: torch.Tensor
    extra_embeds: torch.Tensor
    grid: tuple[int, int]
    saliency_source: str
    attn_received: torch.Tensor | None = None
    side_embeds: list[torch.Tensor] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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


def chat_turns(question: str, history: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """The user/assistant messages of a conversation about one video, for a chat template: the video in the first
    user turn, then the earlier (question, answer) pairs of `history`, then `question`. Without history: one user
    turn, video + question (what every single question gets)."""
    turns = list(history or [])
    messages: list[dict[str, Any]] = []
    for i, (asked, answered) in enumerate(turns):
        content = ([{"type": "video"}] if i == 0 else []) + [{"type": "text", "text": asked}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    content = ([] if turns else [{"type": "video"}]) + [{"type": "text", "text": question}]
    messages.append({"role": "user", "content": content})
    return messages


@dataclass
class Assembled:
    """The LLM input after pruning: embeddings with the ORIGINAL position ids of every kept token."""

    inputs_embeds: torch.Tensor  # (1, L', D)
    position_ids: torch.Tensor  # (1, L') int64, strictly increasing, gaps where tokens were pruned
    full_length: int  # L: the prompt length before pruning
    video_span: tuple[int, int] = field(default=(0, 0))  # [start, end) of the video span in the kept sequence
    # Further inputs of the LLM prefill beyond embeddings and positions (Qwen3-VL: the DeepStack features of the
    # kept tokens): an object whose `.chunk(start, end)` gives the keyword arguments of decoding.prefill for the
    # tokens [start, end) of this sequence (None when that chunk needs none). See `prefill_extra`.
    extra: Any = None

    @property
    def length(self) -> int:
        return int(self.inputs_embeds.shape[1])

    @property
    def next_position(self) -> torch.Tensor:
        """Position ids of the first generated token: the last column + 1 ((1,1), or (R,1,1) for M-RoPE rows).
        The prompt always ends in unpruned text, so this continues after the UNPRUNED length."""
        return self.position_ids[..., -1:] + 1

    def prefill_extra(self, start: int = 0, end: int | None = None) -> dict[str, Any] | None:
        """Keyword arguments for prefilling the tokens [start, end) of this sequence (None: nothing extra)."""
        if self.extra is None:
            return None
        return self.extra.chunk(start, self.length if end is None else end)

    def reindexed(self) -> "Assembled":
        """The same tokens at contiguous positions 0..L'−1, for methods that re-index instead of keeping original
        positions (HoliTom); decoding then continues at L'. Only for 1-D position ids."""
        if self.position_ids.dim() != 2 or self.position_ids.shape[0] != 1:
            raise InvalidOptionError("this pruning method re-indexes positions, which needs 1-D position ids; "
                                     "this model uses multi-row (M-RoPE) positions",
                                     "use a method that keeps original positions")
        pos = torch.arange(self.length, device=self.position_ids.device)[None]
        return replace(self, position_ids=pos)


def prefill_flops(text_config, length: int) -> float:
    """Matmul FLOPs of an LLM prefill of `length` tokens (GQA projections, causal attention, gated MLP; for a
    mixture of experts, the experts each token runs)."""
    t = text_config
    d, layers = t.hidden_size, t.num_hidden_layers
    m = t.intermediate_size
    if getattr(t, "moe_intermediate_size", None) and getattr(t, "num_experts_per_tok", None):
        m = t.moe_intermediate_size * t.num_experts_per_tok
    heads = t.num_attention_heads
    kv = getattr(t, "num_key_value_heads", None) or heads
    hd = getattr(t, "head_dim", None) or d // heads
    L = float(length)
    proj = 2 * L * d * (heads * hd + 2 * kv * hd) + 2 * L * heads * hd * d
    attn = 2 * L * L * heads * hd  # QK^T and AV, each 2*L*L*hd per head, halved by the causal mask
    mlp = 6 * L * d * m
    return layers * (proj + attn + mlp)


def resolve_device(device: str) -> str:
    """'auto' | 'cuda' | 'cuda:N' | 'cpu' -> a concrete device string ('auto' stays 'auto' only for sharding)."""
    device = check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise InvalidOptionError(f"--device {device}: CUDA is not available on this machine", "use --device cpu")
    if ":" in device and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
        raise InvalidOptionError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    dtype = check_dtype_name(dtype)
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def merge_frame_chunks(parts: list[tuple[list[int], VideoFeatures]], total: int) -> VideoFeatures:
    """One VideoFeatures in frame order from features encoded in groups of frames (`parts`: each group's frame
    positions, and its features in that order). Only for families whose frames are encoded independently."""
    order = torch.tensor([s for slots, _ in parts for s in slots])
    if sorted(order.tolist()) != list(range(total)):
        raise ValueError(f"frame groups do not cover frames 0..{total - 1} exactly once")
    where = torch.empty_like(order)
    where[order] = torch.arange(total)

    def cat(get):
        xs = [get(f) for _, f in parts]
        if any(x is None for x in xs):
            return None
        return torch.cat(xs)[where.to(xs[0].device)]

    first = parts[0][1]
    sides = [cat(lambda f, i=i: f.side_embeds[i]) for i in range(len(first.side_embeds))]
    return VideoFeatures(embeds=cat(lambda f: f.embeds), saliency=cat(lambda f: f.saliency),
                         frame_features=cat(lambda f: f.frame_features), extra_embeds=first.extra_embeds,
                         grid=first.grid, saliency_source=first.saliency_source,
                         attn_received=cat(lambda f: f.attn_received), side_embeds=sides, meta=dict(first.meta))


def frames_slice(feats: VideoFeatures, k: int) -> VideoFeatures:
    """The features of the first `k` frames, as copies (per-frame tensors sliced, the rest shared)."""
    def cut(x):
        return None if x is None else x[:k].clone()

    return replace(feats, embeds=cut(feats.embeds), saliency=cut(feats.saliency),
                   frame_features=cut(feats.frame_features), attn_received=cut(feats.attn_received),
                   side_embeds=[cut(x) for x in feats.side_embeds], meta=dict(feats.meta))
