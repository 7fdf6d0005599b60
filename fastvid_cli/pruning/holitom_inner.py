"""HoliTom's inner-LLM stage (fastvid-spec.md §3.9, TV-H3): before LLM layer K, keep the video tokens the last
prompt token attends to most and merge every other one into its most similar kept token.

Pure tensor code, like every method module: the prefill that runs the LLM layer by layer and calls ``reduce``
before layer K lives outside this package (``fastvid_cli.llm_stage``). The registry builds the stage from the
``inner`` parameter ("K,R": ``--holitom-inner``) with ``inner_stage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .holitom import inner_keep, sequential_merge


def parse_inner(value: str | Sequence, option: str = "--holitom-inner") -> tuple[int, float]:
    """'K,R' (or an already parsed (K, R)) -> (K, R) with K >= 1 and 0 < R < 1; InvalidOptionError otherwise."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    try:
        k_text, r_text = text.split(",")
        k, r = int(k_text), float(r_text)
    except ValueError:
        raise InvalidOptionError(f"{option} must be K,R (a layer and a drop ratio, e.g. 18,0.5), got {text!r}")
    if k < 1 or not 0 < r < 1:
        raise InvalidOptionError(f"{option} K,R needs K >= 1 and 0 < R < 1, got {text!r}")
    return k, r


@dataclass(frozen=True)
class InnerMerge:
    """The stage as the layer-by-layer prefill runs it (the ``LLMStage`` contract of ``pruning.result``)."""

    layer: int  # K: runs before this LLM layer, on the last prompt token's attention at layer K-1
    drop_ratio: float  # R: the share of the video span merged away
    option: str = "--holitom-inner"  # what the user gave, for messages
    label: str = "HoliTom inner merge"

    def reduce(self, hidden: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """``hidden`` (V, D) the video span's hidden states entering layer K, ``attention`` (V,) the last prompt
        token's attention over them at layer K-1 -> (kept (V',) int64 span indices, increasing; (V', D) their new
        hidden states in ``hidden``'s dtype), V' = ``round(V·(1-R))`` (at least 1)."""
        n_vis = hidden.shape[0]
        keep_n = max(1, min(n_vis, inner_keep(n_vis, self.drop_ratio)))
        # ties: the lower index first (a stable sort of the negated scores)
        kept = torch.sort(-attention, stable=True).indices[:keep_n].sort().values
        unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
        target = (unit @ unit[kept].T).argmax(dim=1)  # (V,) position in `kept` of each token's target
        return kept, sequential_merge(hidden, kept, target).to(hidden.dtype)


def inner_stage(inner: str | Sequence, option: str = "--holitom-inner") -> InnerMerge:
    """The stage for the parameter value ``inner`` ("K,R" or (K, R))."""
    k, r = parse_inner(inner, option)
    return InnerMerge(k, r, option)


__all__ = ["InnerMerge", "inner_stage", "parse_inner"]
