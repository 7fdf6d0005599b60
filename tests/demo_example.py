"""The README's demo example, shared by test_demo.py and test_eval.py: examples/demo.mp4, its question and answer,
and the demo model asked about it under any pruning setting with its logit margins.

A test asserts the demo model's exact answer only together with its margins: the smallest gap between the chosen
token's logit and the runner-up's over all answer steps must be at least MIN_MARGIN. A smaller one is a decision
that another CPU's float32 kernels can flip (the previous example answered `yellow` instead of `red` on some AMD
machines at fastvid 0.1, where its first token won by 0.07). benchmarks/diag_demo_margins.py prints the table.
"""

from __future__ import annotations

import functools
from pathlib import Path

DEMO_CLIP = Path(__file__).resolve().parents[1] / "examples" / "demo.mp4"
SEED, QA = 2_000_000, 2  # synth.generate(SEED)[1][QA]: held out (training < 800_000, test split 1_000_000+)
ANSWER = "circle"
QUESTION = "What shape is the blue object? Answer the question using a single word or phrase."  # as the README types it
MIN_MARGIN = 2.0  # measured: >= 9.0 everywhere, fp32 CPU and bf16 GPU (benchmarks/RESULTS.md; issue #18: >= 2.0)
RATIOS = (1.0, 0.5, 0.25, 0.1, 0.05)
METHODS = ("fastvid", "holitom", "holitom-orig", "uniform", "random")


@functools.cache
def _encoded():
    """The demo model and the clip's features, made once per test session (a few seconds on a CPU)."""
    from fastvid_cli.engine import Engine, PruneOptions

    engine = Engine.load("demo", device="cpu")
    sess = engine.session(str(DEMO_CLIP), prune=PruneOptions(method="none", ratio=1.0))
    return engine, sess.clip, sess.feats


def ask(question: str, method: str, ratio: float) -> tuple[str, list[float], str]:
    """(answer, logit margins of every generated token, stop reason) as `fastvid ask --model demo --method M
    --ratio R --margins` gives them (one prefill of the whole prompt; FastVID with the family's defaults)."""
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    engine, clip, feats = _encoded()
    params = {k: engine.defaults[k] for k in ("c", "tau", "d", "p", "beta") if k in engine.defaults}
    prune = PruneOptions(method=method, ratio=1.0 if method == "none" else ratio,
                         params=params if method == "fastvid" else {})
    sess = engine.session_from_features(str(DEMO_CLIP), clip, feats, prune)
    r = sess.answer(question, GenerationOptions(max_new_tokens=16, margins=True), reuse_prefix=False)
    return r.answer, r.logit_margins, r.stop_reason
