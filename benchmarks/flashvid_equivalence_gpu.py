"""Run FlashVID's equivalence test (tests/test_pruning_flashvid_equivalence.py) on the GPU, fastest checks first, so a
time-limited device call reports as much as it can: with pytest when it is installed, else through a minimal
stand-in for the few ``pytest`` names the module uses (parametrize, skipif, skip).

    FASTVID_TEST_DEVICE=cuda python benchmarks/flashvid_equivalence_gpu.py
"""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
MODULE = TESTS / "test_pruning_flashvid_equivalence.py"
ORDER = ["test_cuda_graph_equals_eager", "test_larger_shapes_match", "test_matches_the_previous_implementation"]


def with_pytest() -> int:
    import pytest

    ids = [f"{MODULE}::{name}" for name in ORDER]
    return pytest.main(["-x", "-v", "-p", "no:cacheprovider", *ids])


class _Skip(Exception):
    pass


def _stand_in() -> types.ModuleType:
    """``pytest`` as the test module uses it: marks record their arguments, ``skip`` raises."""
    stub = types.ModuleType("pytest")

    def parametrize(name, values):
        def mark(fn):
            fn.params = (name, list(values))
            return fn
        return mark

    def skipif(cond, reason=""):
        def mark(fn):
            fn.skip_reason = reason if cond else None
            return fn
        return mark

    def skip(reason="", allow_module_level=False):
        raise _Skip(reason)

    stub.mark = types.SimpleNamespace(parametrize=parametrize, skipif=skipif)
    stub.skip = skip
    stub.fail = lambda msg="": (_ for _ in ()).throw(AssertionError(msg))
    return stub


def without_pytest() -> int:
    sys.modules["pytest"] = _stand_in()
    sys.path[:0] = [str(TESTS), str(ROOT)]
    import test_pruning_flashvid_equivalence as mod

    for name in ORDER:
        fn = getattr(mod, name)
        if getattr(fn, "skip_reason", None):
            print(f"{name} SKIPPED ({fn.skip_reason})")
            continue
        arg, values = getattr(fn, "params", (None, [None]))
        for value in values:
            t0 = time.perf_counter()
            try:
                fn(value) if arg else fn()
            except _Skip as exc:
                print(f"{name}[{value}] SKIPPED ({exc})")
                continue
            except Exception as exc:  # noqa: BLE001 - report the first failure and stop, as pytest -x
                print(f"{name}[{value}] FAILED: {type(exc).__name__}: {exc}")
                return 1
            print(f"{name}[{value}] PASSED ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("FASTVID_TEST_DEVICE", "cuda")
    try:
        import pytest  # noqa: F401
    except ImportError:
        sys.exit(without_pytest())
    sys.exit(with_pytest())
