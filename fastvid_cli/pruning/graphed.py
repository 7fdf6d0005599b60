"""Replay a pure, fixed-shape tensor function as a CUDA graph, one graph per key (shapes and settings).

For pruning steps made of many small kernels (FlashVID: a few hundred launches of microseconds each), launching
them one by one from Python costs more than running them; a captured graph launches them all at once. The function
must not wait for the device (no ``.item()``, ``.tolist()``, ``nonzero``, boolean indexing) and must not copy from
the host; its outputs live in the graph's memory and are overwritten by the next replay of the same key, so callers
read or copy them before calling again. Off the GPU (or with ``enabled(False)``, or if capturing fails) the
function just runs.

Memory: every cached graph keeps its intermediates (FlashVID at 32x196x3584 bf16: a few hundred MB); at most
``MAX_GRAPHS`` are kept, least recently used dropped first.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

MAX_GRAPHS = 4
_enabled = os.environ.get("FASTVID_CUDA_GRAPHS", "1") != "0"
_graphs: OrderedDict[Hashable, tuple] = OrderedDict()
_failed: dict[Hashable, str] = {}
_lock = threading.Lock()


def enabled(flag: bool | None = None) -> bool:
    """Whether CUDA inputs run through captured graphs; ``flag`` sets it (also ``FASTVID_CUDA_GRAPHS=0``)."""
    global _enabled
    if flag is not None:
        _enabled = bool(flag)
    return _enabled


def failures() -> dict[Hashable, str]:
    """Keys whose capture failed (they run eagerly), with the error."""
    return dict(_failed)


def clear() -> None:
    """Drop every cached graph (their memory goes back to the allocator)."""
    with _lock:
        _graphs.clear()
        _failed.clear()


def run(key: Hashable, fn: Callable, inputs: Sequence[Tensor], args: Sequence = (),
        consume: Callable | None = None):
    """``consume(fn(*inputs, *args))`` (or the outputs themselves without ``consume``); on CUDA inputs, by
    replaying the graph captured for ``key`` (captured on first use, after one eager warm-up run on a side
    stream). ``key`` must determine every shape, dtype and host value the function's work depends on; ``inputs``
    are copied into the graph's own input buffers. ``consume`` runs before another thread can replay the same
    graph (it must not keep the outputs: copy what it returns), outside inference mode."""
    consume = consume or (lambda out: out)
    device = inputs[0].device
    if device.type != "cuda" or not _enabled or key in _failed or torch.cuda.is_current_stream_capturing():
        return consume(fn(*inputs, *args))
    full_key = (key, str(device), tuple((tuple(x.shape), x.dtype) for x in inputs))
    with _lock:
        with torch.inference_mode():
            entry = _graphs.get(full_key)
            if entry is None:
                try:
                    entry = _capture(fn, inputs, args, device)
                except Exception as exc:  # noqa: BLE001 - any capture problem: run eagerly from now on
                    _failed[key] = f"{type(exc).__name__}: {exc}"
                    torch.cuda.synchronize(device)
                    entry = None
                if entry is not None:
                    _graphs[full_key] = entry
                    while len(_graphs) > MAX_GRAPHS:
                        _graphs.popitem(last=False)
            else:
                _graphs.move_to_end(full_key)
                for buffer, x in zip(entry[1], inputs):
                    buffer.copy_(x, non_blocking=True)
            if entry is not None:
                entry[0].replay()
        if entry is None:
            return consume(fn(*inputs, *args))
        return consume(entry[2])


def _capture(fn: Callable, inputs: Sequence[Tensor], args: Sequence, device: torch.device) -> tuple:
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up: lazy initialisations and library handles outside the capture
        fn(*static, *args)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static, *args)
    return graph, static, out
