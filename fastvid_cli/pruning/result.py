"""What every pruning method returns, and the checks and budget rule the methods share.

Pure tensor code: no transformers, no I/O. A method module imports from here, never another method's private
helpers; a variant of one method (``fastvid_qwen`` of ``fastvid``) may use its method's own functions.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..errors import InvalidOptionError


@dataclass
class PruneResult:
    """The tokens a pruning method keeps, and how it chose them.

    ``embeds`` (K, D) in the input dtype and on the input device; ``index`` (K,) int64, the original flat
    slot ``f·N + n`` of each kept row, strictly increasing.

    ``compact`` (HoliTom's layout): the rows are in the method's own order and the LLM sees them at
    contiguous positions, the rest of the prompt right after them; ``index`` is then 0..K−1 and ``source``
    (K,) int64 holds the original slot each row stands for.
    """

    embeds: Tensor
    index: Tensor
    segments: list[int] = field(default_factory=list)  # temporal segments (or windows) in order; [] for none
    notes: list[str] = field(default_factory=list)  # adaptations of the arguments, human-readable
    merged: Tensor | None = None  # (K,) bool: True where the row is a merged context token
    salient: int = 0  # kept salient (ATS) tokens
    context: int = 0  # kept merged context (DTM) tokens
    budget: tuple[int, int, int] | None = None  # per frame (R, s, q)
    anchors: list[tuple[int, int]] = field(default_factory=list)  # (anchor frame, context tokens kept)
    similarities: list[float] = field(default_factory=list)  # adjacent-frame cosines (F−1) of the segmentation
    compact: bool = False  # re-indexed positions (see above)
    source: Tensor | None = None  # (K,) int64 original slots, when ``index`` is not that (compact)

    @property
    def kept(self) -> int:
        return int(self.index.shape[0])


def keep_all(embeds: Tensor, saliency: Tensor | None = None, frame_features: Tensor | None = None,
             ratio: float = 1.0, *, note: str | None = None, **_params) -> PruneResult:
    """Method "none" (and every method at ratio 1.0): keep every token unchanged. (F, N, D) -> PruneResult with
    index = arange(F·N)."""
    if not isinstance(embeds, Tensor) or embeds.dim() != 3:
        shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
        raise ValueError(f"embeds must have shape (frames, tokens, dim), got {shape}")
    F, N, D = embeds.shape
    index = torch.arange(F * N, device=embeds.device)
    return PruneResult(
        embeds=embeds.reshape(F * N, D),
        index=index,
        notes=[note] if note else [],
        merged=torch.zeros(F * N, dtype=torch.bool, device=embeds.device),
        salient=F * N,
    )


class LLMStage(Protocol):
    """A method's stage inside the LLM prefill (``MethodSpec.llm_stage`` builds one from the method's parameters).

    The prefill (``fastvid_cli.llm_stage``) runs the LLM layer by layer; before layer ``layer`` it hands the stage
    the video span's hidden states and the last prompt token's attention over them at layer ``layer``-1, and runs
    the remaining layers on what ``reduce`` returns, at the kept tokens' positions."""

    layer: int
    option: str  # the command-line option that asked for the stage, for messages
    label: str  # what the answer's notes call it

    def reduce(self, hidden: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """(V, D) hidden states, (V,) attention -> (kept (V',) int64 increasing indices into the span, (V', D) their
        hidden states from here on)."""
        ...


# ------------------------------------------------------------------------------------------ argument checks
def check_number(name: str, value, *, integer: bool = False):
    """``value`` as a float (an int with ``integer``); ``InvalidOptionError`` for anything else, NaN and bools."""
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise InvalidOptionError(f"{name} must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    if value != value:
        raise InvalidOptionError(f"{name} must be a number, got NaN")
    return value


def positive_int(label: str, value) -> int:
    """An integer >= 1; `label` is the name, optionally followed by what it means ("c (minimum …)")."""
    value = check_number(label.split()[0], value, integer=True)
    if value < 1:
        raise InvalidOptionError(f"{label} must be at least 1, got {value}")
    return value


def share(label: str, value) -> float:
    """A number in [0, 1]; `label` as for positive_int."""
    value = check_number(label.split()[0], value)
    if not 0.0 <= value <= 1.0:
        raise InvalidOptionError(f"{label} must be in [0, 1], got {value:g}")
    return value


def check_ratio(ratio) -> float:
    """``ratio`` as a float in (0, 1]; ``InvalidOptionError`` otherwise."""
    if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool):
        raise InvalidOptionError(f"ratio must be a number, got {ratio!r}")
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:  # NaN fails too
        raise InvalidOptionError(f"ratio must be in (0, 1], got {ratio:g}")
    return ratio


def check_embeds(embeds: Tensor) -> tuple[int, int, int]:
    """(F, N, D) of a non-empty float (frames, tokens, dim) tensor; ``ValueError`` otherwise."""
    if not isinstance(embeds, Tensor) or embeds.dim() != 3:
        shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
        raise ValueError(f"embeds must have shape (frames, tokens, dim), got {shape}")
    F, N, D = embeds.shape
    if F < 1 or N < 1 or D < 1:
        raise ValueError(f"embeds must be non-empty, got shape {tuple(embeds.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"embeds must be a float tensor, got {embeds.dtype}")
    return F, N, D


def check_inputs(embeds: Tensor, saliency: Tensor, frame_features: Tensor) -> tuple[int, int, int]:
    """(F, N, D) of embeds (F, N, D) with a saliency (F, N) and frame features (F, Dg ≥ 1); ``ValueError``
    otherwise."""
    F, N, D = check_embeds(embeds)
    if not isinstance(saliency, Tensor) or tuple(saliency.shape) != (F, N):
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must have shape (frames, tokens) = {(F, N)}, got {shape}")
    if not isinstance(frame_features, Tensor) or frame_features.dim() != 2 or frame_features.shape[0] != F:
        shape = tuple(frame_features.shape) if isinstance(frame_features, Tensor) else type(frame_features).__name__
        raise ValueError(f"frame_features must have shape ({F}, dim), got {shape}")
    if frame_features.shape[1] < 1:
        raise ValueError("frame_features must have at least one channel")
    return F, N, D


# ------------------------------------------------------------------------------------------ budget
def per_frame_budget(n_tokens: int, ratio: float) -> tuple[int, list[str]]:
    """FastVID's per-frame budget ``R = max(int(N·r), 1)``, which the baselines keep too, and a note when it was
    raised from 0."""
    R = max(int(n_tokens * ratio), 1)
    notes = []
    if int(n_tokens * ratio) == 0:
        notes.append(f"per-frame budget raised from 0 to 1 token: {n_tokens} tokens x ratio {ratio:g} < 1")
    return R, notes


__all__ = ["LLMStage", "PruneResult", "check_embeds", "check_inputs", "check_number", "check_ratio", "keep_all",
           "per_frame_budget", "positive_int", "share"]
