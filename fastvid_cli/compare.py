"""`fastvid compare`: one video, one question, several pruning settings, every cell measured.

The model loads once and the video is sampled and encoded once; after an untimed warm-up, each setting is
pruned and answered `repeat` times and the medians are reported. The prefill column is timed apart, as
`ask --baseline` times it: `repeat` plain prefills of every setting's prompt, taken in rounds over the settings
(Engine.timed_prefills). Speedups are measured against the unpruned row (method none, ratio 1.0), which always
runs unless the caller opts out.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions


@dataclass
class CompareRow:
    method: str
    ratio: float
    video_tokens_kept: int
    video_tokens_total: int
    prompt_tokens_kept: int
    segments: int
    prune_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_tokens_per_s: float | None
    new_tokens: int
    answer: str
    prefill_speedup: float | None = None
    ttft_speedup: float | None = None
    is_baseline: bool = False
    runs: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def kept_pct(self) -> float:
        return 100.0 * self.video_tokens_kept / self.video_tokens_total if self.video_tokens_total else 0.0


def settings(methods: list[str], ratios: list[float], baseline: bool) -> list[tuple[str, float]]:
    """(method, ratio) pairs in table order: the unpruned baseline first, then methods x ratios (high to low)."""
    from fastvid_cli.pruning import spec_of

    out: list[tuple[str, float]] = [("none", 1.0)] if baseline else []
    for m in methods:
        if spec_of(m).keeps_all:
            if ("none", 1.0) not in out:
                out.append(("none", 1.0))
            continue
        for r in sorted(set(ratios), reverse=True):
            if r >= 1.0:  # ratio 1.0 keeps everything: the same run as the baseline
                if ("none", 1.0) not in out:
                    out.append(("none", 1.0))
                continue
            out.append((m, r))
    return out


def run_compare(engine: Engine, video: str, question: str, *, methods: list[str], ratios: list[float],
                params: dict[str, Any], frames: int, repeat: int, gen: GenerationOptions, baseline: bool = True,
                clip=None, sample_ms: float | None = None, feature_cache=None,
                on_row: Callable[[CompareRow], None] | None = None) -> dict[str, Any]:
    """`params`: the method options given (by flag, or by parameter name); each row's method takes those that are
    its own, the family's defaults for the rest (pruning.resolve_params)."""
    from fastvid_cli.pruning import resolve_params, spec_of

    family = engine.defaults["method_family"]
    first = engine.session(video, frames=frames, prune=PruneOptions(method="none", ratio=1.0), clip=clip,
                           sample_ms=sample_ms, system=gen.system, feature_cache=feature_cache)
    shared = {k: first.timings.get(k, 0.0) for k in ("sample", "preprocess", "vision")}
    warm = GenerationOptions(max_new_tokens=2, system=gen.system, compile=gen.compile)
    first.answer(question, warm, reuse_prefix=False)  # untimed: first kernels, allocator growth
    rows: list[CompareRow] = []
    prompts = []  # each row's prompt, for the timed prefills
    for method, ratio in settings(methods, ratios, baseline):
        opts = PruneOptions(method=method, ratio=ratio, params=resolve_params(method, family, params))
        prune_ms, ttft_ms, tps, reports = [], [], [], []
        for _ in range(max(1, repeat)):
            sess = engine.session_from_features(video, first.clip, first.feats, opts, system=gen.system)
            r = sess.answer(question, gen, reuse_prefix=False, lead_ms=sess.timings["prune"])
            reports.append(r)
            prune_ms.append(sess.timings["prune"])
            ttft_ms.append(r.timings_ms.get("ttft", 0.0))
            if r.decode_tokens_per_s:
                tps.append(r.decode_tokens_per_s)
            if r.stop_reason == "interrupted":
                raise KeyboardInterrupt
        prompts.append(sess.prefill_input(question, gen.system))
        last = reports[-1]
        row = CompareRow(method=method, ratio=ratio, video_tokens_kept=last.video_tokens_kept,
                         video_tokens_total=last.video_tokens_total, prompt_tokens_kept=last.prompt_tokens_kept,
                         segments=len(last.segments), prune_ms=statistics.median(prune_ms),
                         prefill_ms=0.0, ttft_ms=statistics.median(ttft_ms),
                         decode_tokens_per_s=statistics.median(tps) if tps else None, new_tokens=last.new_tokens,
                         answer=last.answer, runs=len(reports),
                         is_baseline=spec_of(method).keeps_all and ratio >= 1.0,
                         notes=[n for n in last.notes if n not in engine.adapter.warnings])
        rows.append(row)
    for row, times in zip(rows, engine.timed_prefills(prompts, repeat)):
        row.prefill_ms = statistics.median(times)
    base = next((r for r in rows if r.is_baseline), None)
    for row in rows:
        if base is not None and row.prefill_ms > 0 and row.ttft_ms > 0:
            row.prefill_speedup = round(base.prefill_ms / row.prefill_ms, 3)
            row.ttft_speedup = round(base.ttft_ms / row.ttft_ms, 3)
        if on_row is not None:
            on_row(row)
    return {"video": video, "question": question, "model": engine.model_name, "frames": len(first.clip.indices),
            "repeat": repeat, "shared_ms": {k: round(v, 3) for k, v in shared.items()}, "cache": first.cache_status,
            "device": engine.device, "dtype": str(engine.dtype).replace("torch.", ""),
            "saliency_source": first.feats.saliency_source,
            "frame_decoder": first.clip.decoder if first.cache_status != "hit" else "",
            "notes": list(engine.adapter.warnings) + [n for n in first.notes if "fell back" in n],
            "rows": [asdict(r) | {"kept_pct": round(r.kept_pct, 2)} for r in rows]}
