"""How a prompt gets into the KV cache before its answer is decoded: one small interface, three ways.

- `PlainPrefill`: the whole prompt into a fresh cache.
- `PrefixPrefill`: only the question's part, on top of a session's shared KV cache of the prompt up to the end of
  the video tokens (`prefill_prefix` makes it once per session), cropped back after the answer.
- `StagePrefill`: a pruning method's stage inside the LLM (HoliTom's inner merge; llm_stage.py runs it) runs in the
  prefill; the prompt then depends on the question all through, so nothing is shared.

A method with an LLM stage plugs in through `StagePrefill` alone: the session asks `prefill_for(stage)` and knows
nothing more of the method. Every prefill starts its clock once its cache exists, so the time charged to it is
the same for all three (and for Engine.timed_prefill, which times these same prefills).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fastvid_cli.decoding import crop_cache, new_cache, prefill
from fastvid_cli.llm_stage import prefill_with_stage
from fastvid_cli.models.interface import Assembled
from fastvid_cli.report import Clock


@dataclass
class Prefilled:
    """A prompt in a KV cache, ready to decode from."""

    logits: torch.Tensor  # (V,) the last prompt token's
    cache: Any
    started: float  # Clock.now() when the prefill began
    stage: Any = None  # what the LLM stage did (llm_stage's report: layer, length_after, note()), when one ran
    note: str | None = None  # the answer's note about it


class Prefill(Protocol):
    def run(self, model, asm: Assembled, clock: Clock) -> Prefilled:
        """Prefill `asm` (its embeddings and position ids) into this strategy's cache."""

    def release(self, cache) -> None:
        """The answer decoded from `cache` is done: give back what the strategy shares."""


class PlainPrefill:
    """The whole prompt into a fresh cache."""

    def run(self, model, asm: Assembled, clock: Clock) -> Prefilled:
        cache = new_cache(model)
        t0 = clock.now()
        return Prefilled(prefill(model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra()), cache, t0)

    def release(self, cache) -> None:
        pass


class PrefixPrefill:
    """The part of the prompt after the first `length` tokens, on top of `cache` that holds those (a session's
    shared video prefix); the cache is cropped back to them after the answer."""

    def __init__(self, cache, length: int):
        self.cache = cache
        self.length = length

    def run(self, model, asm: Assembled, clock: Clock) -> Prefilled:
        cut = self.length
        t0 = clock.now()
        logits = prefill(model, asm.inputs_embeds[:, cut:], asm.position_ids[..., cut:], self.cache,
                         asm.prefill_extra(cut))
        return Prefilled(logits, self.cache, t0)

    def release(self, cache) -> None:
        crop_cache(cache, self.length)


class StagePrefill:
    """The whole prompt into a fresh cache through a pruning method's stage inside the LLM (`stage`: what
    pruning.llm_stage built from the method's registry entry, e.g. HoliTom's inner merge before layer K)."""

    def __init__(self, stage):
        self.stage = stage

    def run(self, model, asm: Assembled, clock: Clock) -> Prefilled:
        cache = new_cache(model)
        t0 = clock.now()
        # the prompt's further LLM inputs (Qwen3-VL's DeepStack features) as PlainPrefill passes them
        logits, m = prefill_with_stage(model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, self.stage,
                                       extra=asm.prefill_extra(), video_rows=asm.video_rows)
        return Prefilled(logits, cache, t0, stage=m, note=m.note(asm.length))

    def release(self, cache) -> None:
        pass


def prefill_for(stage) -> Prefill:
    """The prefill of a whole prompt into a fresh cache: through the method's LLM `stage`, when it has one."""
    return StagePrefill(stage) if stage else PlainPrefill()


def prefill_prefix(model, asm: Assembled, clock: Clock) -> tuple[Any, int, float]:
    """The prompt up to the end of its video span into a fresh cache, for PrefixPrefill: (cache, its length, ms)."""
    cut = asm.video_span[1]
    cache = new_cache(model)
    t0 = clock.now()
    prefill(model, asm.inputs_embeds[:, :cut], asm.position_ids[..., :cut], cache, asm.prefill_extra(0, cut))
    return cache, cut, (clock.now() - t0) * 1e3
