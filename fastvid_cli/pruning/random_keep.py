"""Random token keeping: a control baseline at FastVID's token budget.

Pure tensor code: no transformers, no I/O. Each frame keeps ``R = max(int(N·r), 1)`` of its N tokens, drawn
uniformly without replacement from a private ``torch.Generator`` seeded with ``seed``: the global RNG is neither
read nor advanced, and the draw is made on the CPU, so a seed selects the same tokens on every device and dtype.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .result import PruneResult, check_embeds, check_ratio, keep_all, per_frame_budget


def random_slots(F: int, N: int, R: int, seed: int) -> Tensor:
    """(F, R) int64 CPU tensor: the token indices each frame keeps, increasing along each row.

    One (F, N) uniform draw from a generator seeded with ``seed``; frame f keeps its R smallest draws (ties,
    which are practically impossible, by the lowest index). Frame f's choice depends only on ``seed``, f and N.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.rand((F, N), generator=gen)
    keep = torch.sort(draws, dim=1, stable=True).indices[:, :R]
    return torch.sort(keep, dim=1).values


@torch.no_grad()
def random_keep(embeds: Tensor, saliency: Tensor | None = None, frame_features: Tensor | None = None,
                ratio: float = 0.1, seed: int = 0) -> PruneResult:
    """Keep R = max(int(N·r), 1) random tokens of every frame, unchanged.

    ``embeds`` (F, N, D); ``saliency`` and ``frame_features`` are accepted for the common interface and
    ignored; ``seed``: a non-negative integer. Returns a ``PruneResult`` with exactly F·R rows (F·N at ratio
    1.0), ``index`` = the kept slots ``f·N + n``, strictly increasing, on the device and in the dtype of
    ``embeds``. ``InvalidOptionError`` for a ratio outside (0, 1] or a bad seed.
    """
    F, N, D = check_embeds(embeds)
    ratio = check_ratio(ratio)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InvalidOptionError(f"seed must be a non-negative integer, got {seed!r}")
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    R, notes = per_frame_budget(N, ratio)
    device = embeds.device
    slots = random_slots(F, N, R, int(seed)) + torch.arange(0, F * N, N)[:, None]
    index = slots.reshape(-1).to(device)
    return PruneResult(embeds=embeds.reshape(F * N, D).index_select(0, index), index=index, notes=notes,
                       merged=torch.zeros(F * R, dtype=torch.bool, device=device))
