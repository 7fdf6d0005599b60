"""The contract between the engine and a model family: what a family produces (VideoFeatures, Prompt, Assembled)
and what it must provide (FamilyAdapter), its optional capabilities declared with their defaults.

Data path: uint8 frames -> `preprocess` (the family's pixel input) -> `encode` -> VideoFeatures -> pruning (pure
tensors, elsewhere) -> `assemble` (kept tokens spliced into `build_prompt`'s prompt, ORIGINAL position ids) -> the
engine's prefill and decode over the stock transformers modules.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.models.sampling import SamplePlan, uniform_count

if TYPE_CHECKING:
    from typing import Self

    import numpy as np

    from fastvid_cli.hub import ModelRef
    from fastvid_cli.video import Clip


# ------------------------------------------------------------------------------------------ what a family produces

class Deferred:
    """A feature that costs work only its readers need (Qwen-VL's vision attention): `fn()` gives the tensor. A
    family may store one in a deferred field of VideoFeatures; the first read of the field runs it once."""

    def __init__(self, fn: Callable[[], torch.Tensor | None]):
        self.fn = fn

    def __call__(self) -> torch.Tensor | None:
        with torch.inference_mode():
            return self.fn()


class _DeferredField:
    """A dataclass field that holds a tensor, None, or a `Deferred` that turns into its tensor on first read."""

    def __set_name__(self, owner, name: str):
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:  # the dataclass asks for the default
            return None
        value = obj.__dict__.get(self.slot)
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class VideoFeatures:
    """Everything pruning needs from one video, on the model's device.

    embeds (F,N,D): LLM-input video tokens, frame-major, row-major inside a frame.
    saliency (F,N): per-token importance (FastVID's ATS score).
    frame_features (F,Dg): one global vector per frame (FastVID's DySeg feature).
    extra_embeds (E,D): tokens of the video span that are never pruned and follow the F*N grid (OneVision's
    single trailing newline).
    attn_received (F,N) or None: mean attention each token receives (over heads and queries) in the last vision
    layer, pooled to the token grid as saliency is (HoliTom's dynamic-token score, FlashVID's ADTS weight); None
    where a family or an old cache entry has none. A family may set a `Deferred` instead, computed on the first
    read: the engine reads it only for methods whose registry entry says `needs_attention` (and the feature cache
    when it stores an entry, so that entries serve every method).
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
    attn_received: torch.Tensor | None = _DeferredField()  # type: ignore[assignment]
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
    # (V,) int64 ascending: the sequence positions of the video tokens, where the span also holds other tokens
    # (Qwen3-VL: per temporal patch a timestamp and <|vision_start|> ... <|vision_end|>); None: the whole span is
    # video. What a method's LLM stage may reduce (llm_stage.prefill_with_stage).
    video_rows: torch.Tensor | None = None

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


# ------------------------------------------------------------------------------------------ cost model
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


# ------------------------------------------------------------------------------------------ what a family provides
class FamilyAdapter(abc.ABC):
    """One model family: how its checkpoints load, what its vision tower makes of frames, and where the video tokens
    go in its prompt. One subclass per family, in its own module of `fastvid_cli.models` (exported there as
    `Adapter`), with one `FAMILIES` line in `fastvid_cli/models/__init__.py` per config model_type it serves.

    Required: the abstract methods, `defaults`, and the attributes listed below, set when the family loads.
    Optional: the capabilities after them; their defaults fit a family like LLaVA-OneVision (uniform frame
    counts, the clip encoded at once, no feature settings beyond the common ones, the common prefill cost
    model). The engine calls every member unconditionally; a family overrides what differs.
    """

    # ------------------------------------------------------------------ required data
    # How the family samples video, known without loading a checkpoint: `frames` (the default count, or None when
    # the family samples by rate, which then gives `fps`).
    defaults: ClassVar[dict[str, Any]]
    # Which variant and defaults of each pruning method it runs (`fastvid_cli.pruning.FAMILIES`, e.g. "llava",
    # "qwen"): the registry knows the methods, the family only says which kind of model it is.
    method_family: ClassVar[str]

    # Set by every family when it loads (see `load`):
    family: str  # config.json's model_type this adapter was loaded for
    ref: ModelRef
    model: Any  # the stock transformers model (eval mode)
    tokenizer: Any
    config: Any  # the model's transformers config
    dtype: torch.dtype
    vision_device: torch.device  # where pixels go (timing marks, the CUDA-graph encoder, pipelining)
    embed_device: torch.device  # where the LLM's input embeddings are
    image_size: int  # a frame side the vision tower takes (the warm-up's frames; part of the feature-cache key)
    mean: list[float]  # pixel normalisation (part of the feature-cache key)
    std: list[float]
    saliency_source: str  # what VideoFeatures.saliency is, in words (reports)
    warnings: list[str]  # what the load wants the user to know (printed once, and a note in every report)

    # ------------------------------------------------------------------ required methods
    @classmethod
    @abc.abstractmethod
    def load(cls, ref: ModelRef, config, *, device: str, dtype: torch.dtype, attn_implementation: str,
             saliency_model: str | None = None, device_map: Any = None) -> Self:
        """The family's model and tokenizer from `ref` (its transformers `config` already read), on `device` or
        spread by `device_map`. `saliency_model`: the user's --saliency-model (a family without one says in
        `warnings` that it is ignored)."""

    @abc.abstractmethod
    def preprocess(self, frames: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> Any:
        """uint8 (T,H,W,3) frames -> what `encode` takes, on the vision device in the model dtype. `device`: where
        the resize runs (None: the vision device when it is a GPU, else the CPU)."""

    @abc.abstractmethod
    def encode(self, pixels: Any) -> VideoFeatures:
        """`preprocess`'s output -> VideoFeatures of the clip (embeds (F,N,D), saliency (F,N), frame_features
        (F,Dg), ...)."""

    @abc.abstractmethod
    def build_prompt(self, question: str, system: str | None = None,
                     history: list[tuple[str, str]] | None = None) -> Prompt:
        """The chat-template prompt with one video placeholder, its token ids split around it. `history`: earlier
        (question, answer) turns of a conversation about the video (`chat_turns` lays them out: the video in the
        first user turn, so the prompt prefix up to the video is that of a single question)."""

    @abc.abstractmethod
    def assemble(self, prompt: Prompt, feats: VideoFeatures, kept_embeds: torch.Tensor,
                 kept_index: torch.Tensor) -> Assembled:
        """The LLM input: kept video tokens (K,D) at their flat slots `kept_index` (K,) in [0, F*N), strictly
        increasing, spliced between the prompt's text embeddings, every token at its ORIGINAL position id."""

    # ------------------------------------------------------------------ optional capabilities
    # True when every frame is encoded alone (no attention or pooling across frames), so that frames can be encoded
    # in any groups and put back in order: the engine then encodes them while the rest are still being decoded.
    frames_independent: ClassVar[bool] = False

    @classmethod
    def frame_plan(cls, frames: int | None = None, fps: float | None = None) -> int | SamplePlan:
        """What `--frames` / `--fps` sample of a video (`video.sample_frames` takes either): a frame count, or the
        family's own plan. A class method: the CLI, batch and eval ask before the model loads.
        Default: uniform frames, `frames` or the family's default count; `--fps` is a usage error."""
        return uniform_count(frames, fps, cls.defaults["frames"])

    def preprocess_clip(self, clip: Clip) -> Any:
        """`preprocess` for a sampled clip. Default: its frames alone; a family whose prompt depends on when the
        frames were taken (Qwen-VL's temporal positions) reads the clip's indices and rate here."""
        return self.preprocess(clip.frames)

    def feature_settings(self) -> dict[str, Any]:
        """Whatever else shapes this family's features besides the model, frames, dtype, saliency source, image size
        and mean/std (JSON-able; part of the feature-cache key). Default: nothing."""
        return {}

    def llm_prefill_flops(self, length: int) -> float:
        """Matmul FLOPs of an LLM prefill of `length` tokens: the estimated-speedup model. Default: `prefill_flops`
        of the model's text config."""
        return prefill_flops(self.config.text_config, length)
