"""Count the tensor ops and the host<->device waits of one FlashVID pre-LLM call (torch.profiler on the CPU).

    python benchmarks/profile_prune_flashvid.py                      # 32x196x3584, r = 0.10 and 0.25, "scenes"
    python benchmarks/profile_prune_flashvid.py --impl tests/flashvid_reference.py   # the pre-issue-15 code
    python benchmarks/profile_prune_flashvid.py --list               # also every op with its count

Counts are device-independent enough to guide GPU work: every op listed (views and metadata aside) is one or more
kernel launches on a GPU, and every "wait" is a point where the host must read a device value (``.item()``,
``.tolist()``, ``int(t)``/``float(t)``/``bool(t)``/``if t`` — all ``aten::_local_scalar_dense`` — ``nonzero``,
``masked_select``, boolean indexing, ``unique``, ``bincount``, a copy to the host). ``tolist`` and ``numpy`` of a
CPU tensor dispatch no op, so they are counted by wrapping them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune_flashvid import make_inputs  # noqa: E402
from fastvid_cli.pruning.flashvid import FAMILY_VARIANTS  # noqa: E402

# ops that only make a new view or read metadata: no kernel on a GPU
VIEWS = {"aten::view", "aten::_unsafe_view", "aten::expand", "aten::slice", "aten::select", "aten::t",
         "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::as_strided", "aten::split",
         "aten::split_with_sizes", "aten::unbind", "aten::diagonal", "aten::alias", "aten::detach", "aten::reshape",
         "aten::narrow", "aten::view_as", "aten::expand_as", "aten::lift_fresh", "aten::resolve_conj",
         "aten::resolve_neg", "aten::result_type", "aten::empty", "aten::empty_like", "aten::empty_strided",
         "aten::chunk", "aten::contiguous", "aten::numpy_T", "aten::flatten", "aten::unflatten",
         "aten::is_nonzero", "aten::_reshape_alias", "aten::squeeze_", "aten::unsqueeze_", "aten::set_"}
WAITS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique", "aten::_unique2",
         "aten::unique_consecutive", "aten::bincount", "aten::nonzero_static"}


def load_flashvid(path: str | None):
    if path is None:
        from fastvid_cli.pruning.flashvid import flashvid
        return flashvid
    spec = importlib.util.spec_from_file_location("flashvid_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.flashvid


class HostReads:
    """Counts ``Tensor.tolist`` / ``Tensor.numpy`` calls while active (they dispatch no op on the CPU)."""

    def __init__(self):
        self.count = Counter()

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}
        for name, fn in self.saved.items():
            def wrapper(t, *a, _fn=fn, _name=name, **k):
                self.count[f"Tensor.{_name}"] += 1
                return _fn(t, *a, **k)
            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(torch.Tensor, name, fn)


def top_level_ops(prof) -> Counter:
    """Op names called from Python (not the ops they call inside): one launch or more each on a GPU."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    counts = Counter()
    for e in events:
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            counts[e.name] += 1
    return counts


def profile_call(flashvid, embeds, attn, ratio, params):
    flashvid(embeds, None, None, ratio, attn=attn, **params)  # warm caches (noise streams, dtype probes)
    with HostReads() as reads, profile(activities=[ProfilerActivity.CPU]) as prof:
        result = flashvid(embeds, None, None, ratio, attn=attn, **params)
    ops = top_level_ops(prof)
    # waits inside composite ops count too (e.g. a boolean index calls nonzero)
    all_ops = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    waits = Counter({k: v for k, v in all_ops.items() if k in WAITS}) + reads.count
    return result, ops, waits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", help="a file defining flashvid() to profile instead of the package's")
    parser.add_argument("--shape", default="32x196x3584")
    parser.add_argument("--ratios", default="0.10,0.25")
    parser.add_argument("--scenario", default="scenes")
    parser.add_argument("--family", choices=sorted(FAMILY_VARIANTS), default="llava_onevision")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--list", action="store_true", help="print every op with its count")
    args = parser.parse_args(argv)
    flashvid = load_flashvid(args.impl)
    F, N, D = (int(v) for v in args.shape.lower().split("x"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    embeds, attn = make_inputs(F, N, D, dtype, torch.device("cpu"), args.scenario)
    params = FAMILY_VARIANTS[args.family]
    print(f"flashvid op profile: {args.impl or 'fastvid_cli.pruning.flashvid'}, {args.shape} {args.dtype}, "
          f"{args.scenario}, {args.family}")
    for ratio in (float(r) for r in args.ratios.split(",")):
        result, ops, waits = profile_call(flashvid, embeds, attn, ratio, params)
        kernels = Counter({k: v for k, v in ops.items() if k not in VIEWS})
        views = sum(v for k, v in ops.items() if k in VIEWS)
        print(f"r={ratio:.2f}: segments {result.segments}, kept {result.kept}, budget {result.budget}")
        print(f"  ops called from Python: {sum(kernels.values())} computing (~kernel launches), {views} views/metadata")
        print(f"  host waits: {sum(waits.values())}  " + ", ".join(f"{k} x{v}" for k, v in sorted(waits.items())))
        if args.list:
            for name, n in kernels.most_common():
                print(f"    {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
