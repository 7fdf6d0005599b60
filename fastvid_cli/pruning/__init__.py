"""Video-token pruning methods: pure tensor code, looked up by name in one registry.

Every method is a callable ``(embeds (F,N,D), saliency (F,N), frame_features (F,Dg), ratio, **params)
-> PruneResult`` living in its own module of this package; ``REGISTRY[name]`` says where, with its default
parameters. A method with an ``attn`` keyword also gets the mean attention each token receives in the last vision
layer, (F,N) or None (see ``accepts_attention``).

Importing this package imports no torch: the CLI checks ``--method`` against ``method_names()`` before anything
heavy loads. The functions themselves are imported on first use (``get_method``), or directly from their modules
(``from fastvid_cli.pruning.fastvid import fastvid``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidOptionError

PruneMethod = Callable[..., Any]  # -> pruning.result.PruneResult


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method: where its function lives, fixed keyword arguments, and its default parameters."""

    name: str
    target: str  # "module:function" inside this package
    defaults: dict[str, Any]
    fixed: dict[str, Any] = field(default_factory=dict)  # keyword arguments this entry always passes

    @functools.cached_property
    def function(self) -> PruneMethod:
        module, attr = self.target.split(":")
        fn = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        return functools.partial(fn, **self.fixed) if self.fixed else fn


# In registry order (the order `--help`, compare and eval list them). holitom's tau is left out of its defaults:
# it follows the ratio, as the reference scripts (holitom.default_tau).
REGISTRY: dict[str, MethodSpec] = {s.name: s for s in [
    MethodSpec("fastvid", "fastvid:fastvid", dict(ratio=0.10, c=8, tau=0.9, d=0.4, p=4, beta=0.6, k=4)),
    MethodSpec("none", "result:keep_all", dict(ratio=1.0)),
    # baseline: average pooling to FastVID's per-frame budget
    MethodSpec("uniform", "uniform:uniform", dict(ratio=0.1)),
    # baseline: seeded random tokens at FastVID's per-frame budget
    MethodSpec("random", "random_keep:random_keep", dict(ratio=0.1, seed=0)),
    # HoliTom's outer stages (temporal windows + spatial merge), re-indexed positions
    MethodSpec("holitom", "holitom:holitom", dict(ratio=0.10, beta=0.6, k=7, max_window=1024, positions="compact")),
    # the same tokens kept at their original slots and positions (FastVID-style): a model that was never shown
    # re-indexed video tokens reads these correctly (benchmarks/RESULTS.md, the demo model's count questions)
    MethodSpec("holitom-orig", "holitom:holitom", dict(ratio=0.10, beta=0.6, k=7, max_window=1024,
                                                      positions="original"), fixed=dict(positions="original")),
]}

DEFAULTS: dict[str, dict[str, Any]] = {name: spec.defaults for name, spec in REGISTRY.items()}


def method_names() -> list[str]:
    """Names of the registered pruning methods, in registry order."""
    return list(REGISTRY)


def get_method(name: str) -> PruneMethod:
    """The pruning method called ``name``; ``InvalidOptionError`` naming the known ones otherwise."""
    try:
        return REGISTRY[name].function
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise InvalidOptionError(f"unknown pruning method {name!r}", hint=f"known: {known}") from None


@functools.cache
def accepts_attention(method: PruneMethod) -> bool:
    """Whether ``method`` takes the last vision layer's attention received as the keyword ``attn``."""
    return "attn" in inspect.signature(method).parameters


__all__ = ["DEFAULTS", "MethodSpec", "PruneMethod", "REGISTRY", "accepts_attention", "get_method", "method_names"]
