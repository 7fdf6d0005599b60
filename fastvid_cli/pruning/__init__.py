"""Video-token pruning methods: pure tensor code, looked up by name.

Every method is a callable ``(embeds (F,N,D), saliency (F,N), frame_features (F,Dg), ratio, **params)
-> PruneResult``; ``DEFAULTS[name]`` holds its default parameters. A method with an ``attn`` keyword also gets
the mean attention each token receives in the last vision layer, (F,N) or None (see ``accepts_attention``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from ..errors import InvalidOptionError
from .density import dpc_scores, topk_lowest_index
from .fastvid import PruneResult, expected_kept, fastvid, keep_all, prune_fastvid
from .holitom import expected_kept_holitom, holitom
from .random_keep import random_keep
from .uniform import uniform

PruneMethod = Callable[..., PruneResult]

METHODS: dict[str, PruneMethod] = {
    "fastvid": fastvid,
    "none": keep_all,
    "uniform": uniform,  # baseline: average pooling to FastVID's per-frame budget
    "random": random_keep,  # baseline: seeded random tokens at FastVID's per-frame budget
    "holitom": holitom,  # HoliTom's outer stages (temporal windows + spatial merge), re-indexed positions
    # the same tokens kept at their original slots and positions (FastVID-style): a model that was never shown
    # re-indexed video tokens reads these correctly (benchmarks/RESULTS.md, the demo model's count questions)
    "holitom-orig": functools.partial(holitom, positions="original"),
}

# holitom's tau is left out: by default it follows the ratio, as the reference scripts (holitom.default_tau).
DEFAULTS: dict[str, dict[str, float | int | str]] = {
    "fastvid": dict(ratio=0.10, c=8, tau=0.9, d=0.4, p=4, beta=0.6, k=4),
    "none": dict(ratio=1.0),
    "uniform": dict(ratio=0.1),
    "random": dict(ratio=0.1, seed=0),
    "holitom": dict(ratio=0.10, beta=0.6, k=7, max_window=1024, positions="compact"),
    "holitom-orig": dict(ratio=0.10, beta=0.6, k=7, max_window=1024, positions="original"),
}


def method_names() -> list[str]:
    """Names of the registered pruning methods, in registry order."""
    return list(METHODS)


@functools.cache
def accepts_attention(method: PruneMethod) -> bool:
    """Whether ``method`` takes the last vision layer's attention received as the keyword ``attn``."""
    return "attn" in inspect.signature(method).parameters


def get_method(name: str) -> PruneMethod:
    """The pruning method called ``name``; ``InvalidOptionError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(METHODS))
        raise InvalidOptionError(f"unknown pruning method {name!r}", hint=f"known: {known}") from None


__all__ = [
    "DEFAULTS",
    "METHODS",
    "PruneMethod",
    "PruneResult",
    "accepts_attention",
    "dpc_scores",
    "expected_kept",
    "expected_kept_holitom",
    "fastvid",
    "get_method",
    "holitom",
    "keep_all",
    "method_names",
    "prune_fastvid",
    "random_keep",
    "topk_lowest_index",
    "uniform",
]
