"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (model_type qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe).

Data path: frames picked by Qwen's sampling contract (`FramePlan`: --fps, default 2, with min/max frame bounds,
rounded to the temporal patch of 2, or --frames N) -> per-frame size by `smart_resize` under a total pixel budget
(multiples of patch*merge: 28 for Qwen2/2.5, 32 for Qwen3) -> own preprocessing and patchify, equal to the HF
Qwen video processors (bicubic + antialias on uint8, fused rescale+normalise, the last frame repeated to an even
count, rows in (t, h/2, w/2, 2, 2) order) -> the stock vision tower, run over chunks of temporal patches (its
attention never crosses a temporal patch, so chunks are exact).

FastVID's inputs (fastvid-spec.md §2.12): a "frame" is a temporal patch (2 sampled frames, N = h/2 * w/2 merged
tokens); its global feature is the mean of its merged tokens; the saliency of a merged token is the attention a
patch-mean query pays to the mean key of the token's 2x2 patches, from the LAST vision block's own q/k (after
its 2-D rotary), softmax over the patch's tokens, mean over heads. The q/k come from the block's input, caught by
a forward pre-hook, so this works with every attention implementation. Qwen3-VL's DeepStack features travel with
the tokens (`VideoFeatures.side_embeds`) and are pruned with the same indices.

FlashVID's (and HoliTom's) vision-attention input, `VideoFeatures.attn_received` (flashvid-spec §3): the attention
each merged token receives in the last vision block (`attention_received`), from the same caught input. It is a
`Deferred`: computed on first read, which only methods whose registry entry says `needs_attention` do.

Positions: the full prompt's M-RoPE ids come from the model's own `get_rope_index` (with `second_per_grid_ts`,
or Qwen3-VL's per-patch timestamp text, as the HF processors build them); the kept tokens keep their columns,
and the LLM gets (4, 1, L') ids: row 0 = arange(L') (masks only), rows 1-3 = the original T/H/W ids. Decoding
continues at the last column + 1, as if nothing had been pruned (transformers-notes.md §5.4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli.errors import InvalidOptionError, ModelUnavailableError, UnknownModelError, VideoDecodeError
from fastvid_cli.hub import ModelRef
from fastvid_cli.models import loading
from fastvid_cli.models.interface import Assembled, Deferred, FamilyAdapter, Prompt, VideoFeatures, chat_turns
from fastvid_cli.models.loading import device_of
from fastvid_cli.models.sampling import check_request
from fastvid_cli.preprocess import resize_frames

_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}
CLIP_MEAN_STD = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])  # Qwen2/2.5-VL
HALF_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # Qwen3-VL
# Frames at 2 fps (FastVID's Qwen2.5-VL evaluation, fastvid-spec.md §2.12-2.13); the pruning defaults of these
# families are the registry's (fastvid_cli.pruning, method family "qwen": FastVID's Qwen variant, ratio 0.27).
DEFAULTS: dict[str, Any] = dict(frames=None, fps=2.0)
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VIDEO_PAD, VISION_START, VISION_END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"


# ------------------------------------------------------------------------------------------ frame sampling
def _round_to(x: float, m: int) -> int:
    return round(x / m) * m


def _floor_to(x: float, m: int) -> int:
    return math.floor(x / m) * m


def _ceil_to(x: float, m: int) -> int:
    return math.ceil(x / m) * m


@dataclass(frozen=True)
class VideoBudget:
    """How much video the model sees: sampling rate and frame bounds, and the pixel budget per frame and in all.

    Pixel counts are in units of (patch*merge)² pixels, i.e. merged LLM tokens per temporal patch. The defaults
    are FastVID's Qwen2.5-VL evaluation (qwen-vl-utils with max_pixels = 16384*28², min_pixels = 16*28²): at most
    ~16k video tokens before pruning. qwen-vl-utils' own defaults would be 128..768 per frame, 115200 in all."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_tokens: int = 16  # per frame
    total_tokens: int = 16384  # all frames together
    frame_max_tokens: int | None = None  # per-frame cap (qwen-vl-utils: 768); None: only the total budget


BUDGET = VideoBudget()


@dataclass(frozen=True)
class FramePlan:
    """Qwen's frame-sampling contract (qwen-vl-utils' smart_nframes), an IndexPlan for video.sample_frames.

    With `frames`: that many, rounded to the temporal patch. Else `fps` frames per second of video, at least
    `min_frames` and at most `max_frames` (both rounded to the temporal patch), floored to the temporal patch.
    Never more than the video has. Indices: `torch.linspace(0, total-1, n).round()`, as qwen-vl-utils."""

    frames: int | None = None
    fps: float = BUDGET.fps
    min_frames: int = BUDGET.min_frames
    max_frames: int = BUDGET.max_frames
    temporal: int = 2

    def count(self, total: int, video_fps: float | None) -> int:
        """How many frames to sample from a video of `total` frames at `video_fps` (None: unknown, taken as 24
        like the HF Qwen3-VL processor)."""
        t = self.temporal
        if self.frames is not None:
            n = _round_to(self.frames, t)
        else:
            rate = video_fps if video_fps and video_fps > 0 else 24.0
            lo = _ceil_to(self.min_frames, t)
            hi = _floor_to(min(self.max_frames, total), t)
            n = _floor_to(min(max(total / rate * self.fps, lo), hi, total), t)
        n = min(n, _floor_to(total, t))
        return max(n, min(t, total), 1)

    def __call__(self, total: int, video_fps: float | None) -> list[int]:
        n = self.count(total, video_fps)
        return torch.linspace(0, total - 1, n).round().long().tolist()

    def key(self) -> dict[str, Any]:
        """What the plan asks for, for the feature-cache key."""
        if self.frames is not None:
            return {"frames": self.frames, "temporal": self.temporal}
        return {"fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames,
                "temporal": self.temporal}


def frame_plan(frames: int | None = None, fps: float | None = None, budget: VideoBudget = BUDGET) -> FramePlan:
    """The plan for `--frames` / `--fps` (at most one of them; neither: the budget's fps)."""
    check_request(frames, fps, by_rate=True)
    return FramePlan(frames=frames, fps=budget.fps if fps is None else float(fps), min_frames=budget.min_frames,
                     max_frames=budget.max_frames)


# ------------------------------------------------------------------------------------------ frame size
def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """Qwen's resize rule (qwen-vl-utils): both sides multiples of `factor`, aspect ratio kept as closely as
    possible, height*width within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise VideoDecodeError(f"the video's aspect ratio {max(height, width) / min(height, width):.0f}:1 is beyond "
                               "the 200:1 that Qwen-VL models accept")
    h = max(factor, _round_to(height, factor))
    w = max(factor, _round_to(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, _floor_to(height / beta, factor))
        w = max(factor, _floor_to(width / beta, factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = _ceil_to(height * beta, factor)
        w = _ceil_to(width * beta, factor)
    return h, w


def frame_pixel_bounds(n_frames: int, factor: int, budget: VideoBudget = BUDGET,
                       temporal: int = 2) -> tuple[int, int]:
    """(min, max) pixels of each frame of an `n_frames` clip: the total budget shared by the frames
    (qwen-vl-utils' fetch_video: max(total/n*temporal, 1.05*min), capped per frame when the budget says so)."""
    unit = factor * factor
    min_pixels = budget.min_tokens * unit
    per_frame = int(budget.total_tokens * unit / max(n_frames, 1) * temporal)
    if budget.frame_max_tokens is not None:
        per_frame = min(per_frame, budget.frame_max_tokens * unit)
    return min_pixels, max(per_frame, int(min_pixels * 1.05))


def frame_size(height: int, width: int, n_frames: int, factor: int, budget: VideoBudget = BUDGET,
               temporal: int = 2) -> tuple[int, int]:
    """Resized (height, width) of every frame of an `n_frames` clip (see frame_pixel_bounds, smart_resize)."""
    return smart_resize(height, width, factor, *frame_pixel_bounds(n_frames, factor, budget, temporal))


# ------------------------------------------------------------------------------------------ preprocessing


def normalize_fused(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(T,C,h,w) float 0..255 -> (x - 255*mean) / (255*std) in float32: the HF processors' fused rescale and
    normalise, in their operation order (so the values match bit for bit)."""
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device) * (1.0 / (1.0 / 255.0))
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device) * (1.0 / (1.0 / 255.0))
    return (x.float() - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


def patchify(x: torch.Tensor, patch: int, merge: int = 2, temporal: int = 2) -> tuple[torch.Tensor, tuple]:
    """(T,C,H,W) -> (pixel_values (t*h*w, C*temporal*patch*patch), (t, h, w) grid in patches), rows in the
    HF order (t, h/merge, w/merge, merge, merge) and each row (C, temporal, patch, patch). An odd frame count
    repeats the last frame."""
    T, C, H, W = x.shape
    if pad := -T % temporal:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    gt, gh, gw = x.shape[0] // temporal, H // patch, W // patch
    x = x.reshape(gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, C * temporal * patch * patch), (gt, gh, gw)


def grid_timestamps(indices: list[int], video_fps: float, temporal: int = 2) -> list[float]:
    """Seconds of each temporal patch as the Qwen3-VL processor writes them: the mean of the times of its first and
    last frame (the index list padded like the frames)."""
    idx = list(indices)
    if pad := -len(idx) % temporal:
        idx += [idx[-1]] * pad
    t = [i / video_fps for i in idx]
    return [(t[i] + t[i + temporal - 1]) / 2 for i in range(0, len(t), temporal)]


@dataclass
class QwenPixels:
    """A preprocessed clip: `values` (t*h*w, C*2*p*p) in the model dtype, its (t, h, w) patch `grid`, and the
    temporal facts the prompt needs (`meta`)."""

    values: torch.Tensor
    grid: tuple[int, int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_thw(self) -> torch.Tensor:
        return torch.tensor([list(self.grid)], dtype=torch.long)


# ------------------------------------------------------------------------------------------ saliency
def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The vision blocks' 2-D rotary on (S, heads, hd) float32 with (S, hd) cos/sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None].float() + rotated * sin[:, None].float()


def pooled_query_attention(attn, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], grids: int,
                           unit: int) -> torch.Tensor:
    """FastVID's Qwen saliency from one vision attention module's input: (grids, tokens) float32.

    `x` (S, C): the normalised hidden states the block's attention sees (S = grids * tokens * unit, in the
    tower's token order), `rope` its (cos, sin). Per head and temporal patch: the mean query of the patch,
    scored against the mean key of each merged token's `unit` patches; softmax over the tokens, mean over heads."""
    S = x.shape[0]
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(S, 3, heads, -1)
    cos, sin = rope
    q = _rotary(qkv[:, 0].float(), cos, sin)
    k = _rotary(qkv[:, 1].float(), cos, sin)
    hd = q.shape[-1]
    tokens = S // (grids * unit)
    q_mean = q.view(grids, tokens * unit, heads, hd).mean(dim=1)  # (T, H, hd)
    k_mean = k.view(grids, tokens, unit, heads, hd).mean(dim=2)  # (T, U, H, hd)
    logits = torch.einsum("thd,tuhd->thu", q_mean, k_mean) * hd ** -0.5
    return logits.softmax(dim=-1).mean(dim=1)


def attention_received(attn, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, unit: int,
                       budget: int = 1 << 26) -> torch.Tensor:
    """FlashVID's vision-attention input (flashvid-spec §3) from one vision attention module's input: (S/unit,)
    float32 in the tower's token order, one score per merged token.

    `x` (S, C): the normalised hidden states the block's attention sees, `rope` its (cos, sin), `cu_seqlens` the
    boundaries of its attention groups (what the block attends within: each temporal patch in a full-attention
    block, as Qwen2.5-VL's and Qwen3-VL's last blocks are; each window in a windowed one). Per group and head:
    P = softmax(q k^T / sqrt(hd)) from the block's own q/k after its 2-D rotary; each patch's score is the mean of
    its column over the group's queries and the heads (the attention it receives); a merged token's score is the
    mean over its `unit` (2x2) patches, which are consecutive in the tower's order. Groups of one size go through
    together, at most `budget` probabilities at a time; q/k are made group by group, so nothing of size S x S."""
    bounds = [int(b) for b in torch.as_tensor(cu_seqlens).tolist()]
    heads = attn.num_heads
    cos, sin = rope
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    i = 0
    while i < len(bounds) - 1:
        n = bounds[i + 1] - bounds[i]
        j = i + 1  # groups i..j-1: consecutive, all of n patches, at most `budget` probabilities together
        while j < len(bounds) - 1 and bounds[j + 1] - bounds[j] == n and (j + 1 - i) * heads * n * n <= budget:
            j += 1
        a, b = bounds[i], bounds[j]
        if n:
            qkv = attn.qkv(x[a:b]).reshape(b - a, 3, heads, -1)
            q = _rotary(qkv[:, 0].float(), cos[a:b], sin[a:b]).view(j - i, n, heads, -1)
            k = _rotary(qkv[:, 1].float(), cos[a:b], sin[a:b]).view(j - i, n, heads, -1)
            logits = torch.einsum("gqhd,gkhd->ghqk", q, k) * q.shape[-1] ** -0.5
            out[a:b] = logits.softmax(dim=-1).mean(dim=(1, 2)).reshape(-1)
        i = j
    return out.view(-1, unit).mean(dim=1)


def window_order(grids: int, h: int, w: int, window: int) -> torch.Tensor:
    """Qwen2.5-VL's windowed token order: (grids*h*w,) raster index of the merged token at each window-order
    position (windows of window x window merged tokens, raster over windows, raster inside each)."""
    idx = torch.arange(grids * h * w).view(grids, h, w)
    ph, pw = -h % window, -w % window
    idx = F.pad(idx, (0, pw, 0, ph), value=-1)
    nh, nw = (h + ph) // window, (w + pw) // window
    idx = idx.view(grids, nh, window, nw, window).permute(0, 1, 3, 2, 4).reshape(-1)
    return idx[idx >= 0]


class _AttentionTap:
    """Forward pre-hook on a vision attention module: keeps its input hidden states and rotary (cos, sin)."""

    def __init__(self, attn: torch.nn.Module):
        self.x: torch.Tensor | None = None
        self.rope = None
        self.cu_seqlens = None
        self.handle = attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.x = args[0] if args else kwargs["hidden_states"]
        self.rope = kwargs.get("position_embeddings")
        self.cu_seqlens = kwargs.get("cu_seqlens")

    def close(self) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------------------ DeepStack
@dataclass
class DeepStackInputs:
    """Qwen3-VL's DeepStack inputs for a pruned prompt: `mask` (1, L') True at the kept video tokens, `embeds`
    one (K, Ds) tensor per LLM layer, rows in the order of those tokens. Assembled.extra."""

    mask: torch.Tensor
    embeds: list[torch.Tensor]
    counts: list[int] = field(default_factory=list)  # host copy of mask's cumulative count, filled lazily

    def chunk(self, start: int, end: int) -> dict[str, Any] | None:
        """Keyword arguments of the language model for the tokens [start, end): None when none is visual."""
        if not self.counts:
            self.counts = [0] + self.mask[0].long().cumsum(0).tolist()
        lo, hi = self.counts[start], self.counts[end]
        if hi == lo:
            return None
        return {"visual_pos_masks": self.mask[:, start:end],
                "deepstack_visual_embeds": [e[lo:hi] for e in self.embeds]}


# ------------------------------------------------------------------------------------------ the adapter
class QwenVLAdapter(FamilyAdapter):
    defaults = DEFAULTS
    method_family = "qwen"  # which variant and defaults of each pruning method it runs (pruning.FAMILIES)
    # How much video the model sees (frame sampling and pixel budget). A class attribute, because the frame plan is
    # made before any model loads (`frame_plan`); another budget is a subclass.
    budget: ClassVar[VideoBudget] = BUDGET
    # Frames are not encoded alone (a temporal patch holds 2 of them): FamilyAdapter.frames_independent's False.

    def __init__(self, model, tokenizer, ref: ModelRef, *, family: str, mean, std, norm_source: str,
                 template: str | None, warnings_: list[str] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.ref = ref
        self.family = family
        self.config = model.config
        self.mean, self.std, self.norm_source = mean, std, norm_source
        self.template = template
        self.warnings = list(warnings_ or [])
        v = self.config.vision_config
        self.patch = int(v.patch_size)
        self.merge = int(v.spatial_merge_size)
        self.temporal = int(v.temporal_patch_size)
        self.factor = self.patch * self.merge
        self.window = (int(v.window_size) // self.merge // self.patch) if getattr(v, "window_size", None) else None
        self.image_size = 2 * self.factor  # the warm-up's frame size (the budget's minimum makes it bigger)
        self.video_token_id = int(self.config.video_token_id)
        self.image_token_id = int(self.config.image_token_id)
        core = model.model
        self.visual = core.visual
        self.vision_device = device_of(self.visual)
        self.embed_device = model.get_input_embeddings().weight.device
        self.dtype = next(model.parameters()).dtype
        self.timestamps = family.startswith("qwen3")  # per-patch "<t seconds>" blocks
        self.time_scaled = family == "qwen2_5_vl"  # temporal ids spaced by second_per_grid_ts
        self.saliency_source = "qwen-last-block: patch-mean query attention of the last vision block"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, ref: ModelRef, config, *, device: str, dtype: torch.dtype, attn_implementation: str,
             saliency_model: str | None = None, device_map: Any = None) -> "QwenVLAdapter":
        import transformers

        family = config.model_type
        if family not in _CLASSES:
            raise UnknownModelError(f"unsupported architecture '{family}' for the Qwen-VL adapter",
                                    f"supported: {', '.join(_CLASSES)}")
        model_class = getattr(transformers, _CLASSES[family])
        model, tokenizer = loading.load_pretrained(model_class, ref, device=device, dtype=dtype,
                                                      attn_implementation=attn_implementation, device_map=device_map)
        default = HALF_MEAN_STD if family.startswith("qwen3") else CLIP_MEAN_STD
        label = "default (0.5/0.5)" if family.startswith("qwen3") else "default (CLIP mean/std)"
        mean, std, norm_source = loading.read_mean_std(ref, default, label)
        template = tokenizer.chat_template or loading.processor_chat_template(ref)
        notes = []
        if saliency_model:
            notes.append("--saliency-model applies to LLaVA models; Qwen-VL saliency comes from its own last "
                         "vision block")
        return cls(model, tokenizer, ref, family=family, mean=mean, std=std, norm_source=norm_source,
                   template=template, warnings_=notes)

    # ------------------------------------------------------------------ sampling
    @classmethod
    def frame_plan(cls, frames: int | None = None, fps: float | None = None) -> FramePlan:
        """What `--frames` / `--fps` sample for this family (an IndexPlan for video.sample_frames)."""
        return frame_plan(frames, fps, cls.budget)

    def feature_settings(self) -> dict[str, Any]:
        """Everything besides the frames that changes the features (for the feature-cache key)."""
        return {"family": self.family, "budget": asdict(self.budget), "patch": self.patch, "merge": self.merge}

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, frames: np.ndarray | torch.Tensor, *, indices: list[int] | None = None,
                   video_fps: float | None = None, total_frames: int | None = None,
                   device: str | torch.device | None = None, chosen: bool = False) -> QwenPixels:
        """uint8 (T,H,W,3) frames -> QwenPixels (patchified pixel values on the vision device, grid, meta).

        `indices`, `video_fps`, `total_frames` (where the frames came from) give the temporal spacing that the
        M-RoPE ids (Qwen2.5-VL) or the timestamps (Qwen3-VL) need; without them the frames count as sampled at
        the budget's fps. `chosen`: the frames were chosen (`--select`), not evenly spaced: Qwen2.5-VL's temporal
        ids then follow each temporal patch's own time (`temporal_ids`), not a common spacing."""
        x = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
        T, H, W, _ = x.shape
        x = x.permute(0, 3, 1, 2)
        if device is None:
            device = self.vision_device if self.vision_device.type == "cuda" else x.device
        size = frame_size(H, W, T, self.factor, self.budget, self.temporal)
        x = normalize_fused(resize_frames(x.to(device, non_blocking=True), size), self.mean, self.std)
        values, grid = patchify(x, self.patch, self.merge, self.temporal)
        values = values.to(device=self.vision_device, dtype=self.dtype).contiguous()
        return QwenPixels(values, grid, self._time_meta(T, indices, video_fps, total_frames, chosen))

    def preprocess_clip(self, clip) -> QwenPixels:
        """A video.Clip -> QwenPixels, with the clip's frame indices and rate for the temporal positions."""
        return self.preprocess(clip.frames, indices=list(clip.indices), video_fps=clip.fps,
                               total_frames=clip.total_frames, chosen=bool(clip.chosen_from))

    def _time_meta(self, n: int, indices, video_fps, total_frames, chosen: bool = False) -> dict[str, Any]:
        """The sampled rate (qwen-vl-utils: n / total * video fps) and what the prompt derives from it."""
        if indices is None or not video_fps or not total_frames:
            rate = self.budget.fps
            indices, video_fps, chosen = [i * 1.0 for i in range(n)], rate, False
        else:
            rate = n / total_frames * video_fps
        meta: dict[str, Any] = {"sample_fps": rate}
        if self.time_scaled:
            meta["second_per_grid_ts"] = self.temporal / rate
            if chosen:
                # the stock ids are int(t * second_per_grid_ts * tokens_per_second): patch t's start time, when the
                # frames are evenly spaced; chosen frames are not, so each patch gets its own start's time
                tps = float(self.model.config.vision_config.tokens_per_second)
                meta["temporal_ids"] = [int((indices[t] - indices[0]) / video_fps * tps + 1e-6)
                                        for t in range(0, n, self.temporal)]
        if self.timestamps:
            meta["timestamps"] = grid_timestamps(list(indices), video_fps, self.temporal)
        return meta

    # ------------------------------------------------------------------ features
    @torch.inference_mode()
    def encode(self, pixels: QwenPixels, chunk_grids: int = 32) -> VideoFeatures:
        """QwenPixels -> VideoFeatures: embeds (T,N,D) per temporal patch in raster order, saliency (T,N),
        frame_features (T,D) = mean of each patch's tokens, side_embeds = DeepStack features (T,N,Ds) each."""
        T, gh, gw = pixels.grid
        h, w = gh // self.merge, gw // self.merge
        unit = self.merge * self.merge
        per_grid = gh * gw
        embeds, sal, deep, taps = [], [], [], []
        attn = self.visual.blocks[-1].attn
        for t0 in range(0, T, chunk_grids):
            tc = min(chunk_grids, T - t0)
            values = pixels.values[t0 * per_grid:(t0 + tc) * per_grid]
            thw = torch.tensor([[tc, gh, gw]], dtype=torch.long, device=self.vision_device)
            tap = _AttentionTap(attn)
            try:
                out = self.visual(values, grid_thw=thw)
            finally:
                tap.close()
            if tap.x is None or tap.rope is None:
                raise ModelUnavailableError("this transformers version's Qwen vision tower does not pass its rotary "
                                            "embeddings to the attention; FastVID's saliency needs them")
            scores = self._raster(pooled_query_attention(attn, tap.x, tap.rope, tc, unit), h, w)
            taps.append((tap.x, tap.rope, tap.cu_seqlens, tc))
            embeds.append(out.pooler_output.view(tc, h * w, -1))
            sal.append(scores)
            stack = getattr(out, "deepstack_features", None) or []
            deep.append([d.view(tc, h * w, -1) for d in stack])
        emb = torch.cat(embeds)
        side = [torch.cat(parts) for parts in zip(*deep)] if deep and deep[0] else []
        return VideoFeatures(embeds=emb, saliency=torch.cat(sal).to(emb.device), frame_features=emb.mean(dim=1),
                             extra_embeds=emb.new_zeros((0, emb.shape[-1])), grid=(h, w),
                             saliency_source=self.saliency_source, side_embeds=side, meta=dict(pixels.meta),
                             attn_received=Deferred(lambda: self._attention_received(taps, h, w, emb.device)))

    def _raster(self, scores: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(grids, h*w) scores in the tower's token order -> raster order (Qwen2.5-VL's window order undone)."""
        if self.window is None:
            return scores
        order = window_order(1, h, w, self.window).to(scores.device)
        return torch.empty_like(scores).index_copy_(1, order, scores)

    def _attention_received(self, taps: list, h: int, w: int, device: torch.device) -> torch.Tensor:
        """VideoFeatures.attn_received (T, h*w) from the last vision block's inputs that `encode` kept (one entry
        per chunk of temporal patches): `attention_received` of each, in raster order. Run on first read (only
        methods that rank by vision attention read it); the kept inputs are let go then."""
        attn = self.visual.blocks[-1].attn
        unit = self.merge * self.merge
        parts = [self._raster(attention_received(attn, x, rope, cu, unit).view(tc, h * w), h, w)
                 for x, rope, cu, tc in taps]
        taps.clear()
        return torch.cat(parts).to(device)

    # ------------------------------------------------------------------ prompt
    def build_prompt(self, question: str, system: str | None = None,
                     history: list[tuple[str, str]] | None = None) -> Prompt:
        """Chat-template prompt with one <|vision_start|><|video_pad|><|vision_end|>; ids split around the pad.
        `history`: earlier (question, answer) turns, the video in the first user turn (see interface.chat_turns)."""
        tok = self.tokenizer
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages += chat_turns(question, history)
        for template in (self.template, FALLBACK_TEMPLATE):
            if not template:
                continue
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                           chat_template=template)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            where = (ids == self.video_token_id).nonzero().flatten()
            if where.numel() == 1:
                v = int(where[0])
                return Prompt(prefix_ids=ids[:v], suffix_ids=ids[v + 1:], text=text)
            if where.numel() > 1:
                raise InvalidOptionError(f"the question or system prompt contains the token {VIDEO_PAD}")
        raise ModelUnavailableError(f"the chat template of {self.ref.display} has no video placeholder")

    def _span(self, feats: VideoFeatures) -> torch.Tensor:
        """Token ids that replace the single <|video_pad|>, as the HF processor expands it: F*N pads (Qwen2/2.5),
        or per temporal patch "<t seconds>" <|vision_start|> N pads <|vision_end|> (Qwen3-VL)."""
        F_, N = feats.num_frames, feats.tokens_per_frame
        pad = self.video_token_id
        if not self.timestamps:
            return torch.full((F_ * N,), pad, dtype=torch.long)
        tok = self.tokenizer
        start, end = tok.convert_tokens_to_ids(VISION_START), tok.convert_tokens_to_ids(VISION_END)
        stamps = feats.meta.get("timestamps") or grid_timestamps(list(range(2 * F_)), self.budget.fps,
                                                                 self.temporal)
        parts = []
        for t in stamps[:F_]:
            parts += tok(f"<{t:.1f} seconds>", add_special_tokens=False)["input_ids"] + [start] + [pad] * N + [end]
        return torch.tensor(parts, dtype=torch.long)

    def full_input_ids(self, prompt: Prompt, feats: VideoFeatures) -> torch.Tensor:
        """The unpruned prompt exactly as the HF processor builds it: (1, L) ids."""
        return torch.cat([prompt.prefix_ids, self._span(feats), prompt.suffix_ids])[None]

    def rope_kwargs(self, feats: VideoFeatures) -> dict[str, Any]:
        """`video_grid_thw` (+ `second_per_grid_ts`) as the processor returns them, for get_rope_index / generate."""
        thw = torch.tensor([[feats.num_frames, feats.grid[0] * self.merge, feats.grid[1] * self.merge]])
        kw: dict[str, Any] = {"video_grid_thw": thw}
        if self.time_scaled:
            kw["second_per_grid_ts"] = torch.tensor([feats.meta.get("second_per_grid_ts", 1.0)])
        return kw

    def mm_token_type_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The processor's modality ids: 0 text, 1 image, 2 video."""
        return (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()

    def full_positions(self, ids: torch.Tensor, feats: VideoFeatures) -> torch.Tensor:
        """(3, 1, L) M-RoPE ids of the full prompt from the model's own get_rope_index; for chosen frames on
        Qwen2.5-VL (`temporal_ids` in the features' meta) each temporal patch's id is its own time's."""
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=self.mm_token_type_ids(ids),
                                                 **self.rope_kwargs(feats))
        times = feats.meta.get("temporal_ids")
        if times is None:
            return pos
        # only the video tokens' temporal row changes: get_rope_index starts the text after a video at the video's
        # start + its spatial extent (5.17 and 5.2x alike), whatever its temporal ids
        video = (ids[0] == self.video_token_id).nonzero().flatten()
        per = video.numel() // len(times)
        own = torch.tensor(times, dtype=pos.dtype, device=pos.device).repeat_interleave(per)
        pos[0, 0, video] = pos[0, 0, video[0]] + own
        return pos

    # ------------------------------------------------------------------ splice
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.embed_device))

    @torch.inference_mode()
    def assemble(self, prompt: Prompt, feats: VideoFeatures, kept_embeds: torch.Tensor,
                 kept_index: torch.Tensor) -> Assembled:
        """Kept video tokens in their slots of the full prompt, every kept token with its ORIGINAL M-RoPE column:
        (4, 1, L') position ids, row 0 = arange(L'). `kept_index` may repeat a slot (FlashVID): each copy is a
        token of its own at the slot's position (the reference's layout, flashvid-spec §2.8)."""
        dev = self.embed_device
        ids = self.full_input_ids(prompt, feats)
        pos3 = self.full_positions(ids, feats)
        is_video = ids[0] == self.video_token_id
        video = is_video.nonzero().flatten()  # slot f*N+n is video[f*N+n]
        index = kept_index.to("cpu", torch.long)
        # the prompt's columns in order: every other token once, each kept slot's video token as often as it is kept
        # (the non-decreasing kept columns merge into the others by a stable sort; they never coincide)
        columns, order = torch.sort(torch.cat([(~is_video).nonzero().flatten(), video[index]]), stable=True)
        rows = (order >= int((~is_video).sum())).nonzero().flatten()  # where the kept video tokens land, in order
        kept_ids = ids[0, columns]
        embeds = self.embed_ids(kept_ids)
        embeds[rows.to(dev)] = kept_embeds.to(dev, embeds.dtype)
        L = int(kept_ids.numel())
        positions = torch.cat([torch.arange(L)[None, None], pos3[:, :, columns]]).to(dev)
        extra = None
        if feats.side_embeds:
            mask = torch.zeros((1, L), dtype=torch.bool)
            mask[0, rows] = True
            side = [s.reshape(-1, s.shape[-1]).index_select(0, kept_index.to(s.device)).to(dev, embeds.dtype)
                    for s in feats.side_embeds]
            extra = DeepStackInputs(mask.to(dev), side)
        span = (prompt.prefix_ids.numel(), L - prompt.suffix_ids.numel())
        # Qwen3-VL's span interleaves timestamp text and frame separators with the video tokens
        video_rows = rows.to(dev) if self.timestamps else None
        return Assembled(inputs_embeds=embeds[None], position_ids=positions, full_length=int(ids.shape[1]),
                         video_span=span, extra=extra, video_rows=video_rows)

    def generate_inputs(self, prompt: Prompt, feats: VideoFeatures, pixels: QwenPixels) -> dict[str, Any]:
        """What the stock `generate` takes for the unpruned prompt (as the HF processor would return it)."""
        ids = self.full_input_ids(prompt, feats)
        dev = self.embed_device
        kw = {k: v.to(dev) for k, v in self.rope_kwargs(feats).items()}
        return dict(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev),
                    pixel_values_videos=pixels.values, mm_token_type_ids=self.mm_token_type_ids(ids).to(dev), **kw)


Adapter = QwenVLAdapter  # what the registry (fastvid_cli.models.adapter_class) hands out for these families
