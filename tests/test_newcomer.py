"""What a new user meets on any machine: no library noise, fast one-line errors, clear offline/network failures,
an honest `doctor`, sensible CPU threads."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = REPO / "examples" / "demo.mp4"


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m fastvid_cli ARGS` in a fresh process, as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "fastvid_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def test_prefill_and_decode_raise_no_deprecation_warning(engine, index_video):
    """transformers 5.25 deprecates `past_key_values` in every forward call (a FutureWarning per call); the
    decode loops pass the KV cache under the keyword the installed version takes."""
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = engine.ask(str(index_video), "What?", frames=8, prune=PruneOptions(method="fastvid", ratio=0.5),
                            gen=GenerationOptions(max_new_tokens=4))
    assert report.new_tokens >= 1
    assert not [w for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))], \
        [str(w.message) for w in seen]


def test_a_normal_run_prints_no_library_warning():
    """The demo answer in a fresh process: stderr holds our progress and panel, never a library's warning."""
    res = run_cli("ask", DEMO_CLIP, "What colour is the circle?", "--model", "demo", "--device", "cpu",
                  "--max-new-tokens", "3", "--no-cache", env={"PYTHONWARNINGS": "always"})
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr and "warn(" not in res.stderr, res.stderr
    quiet = run_cli("ask", DEMO_CLIP, "What colour is the circle?", "--model", "demo", "--device", "cpu",
                    "--max-new-tokens", "3", "--no-cache", "--quiet", env={"PYTHONWARNINGS": "always"})
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip()
