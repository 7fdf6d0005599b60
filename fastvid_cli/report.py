"""`Report`: everything one answer tells (what `ask --json` prints and the summary panel shows), as plain data.

No torch here: the client of `fastvid serve` rebuilds Reports from the server's JSON (`from_dict`), and batch/eval
records are made of their fields without importing the engine (`fastvid_cli.engine` re-exports Report).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Report:
    """Everything `ask --json` prints; also what the summary panel shows."""

    answer: str = ""
    model: str = ""
    video: str = ""
    question: str = ""
    method: str = ""
    ratio: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    frames: int = 0
    frames_requested: int = 0
    frame_indices: list[int] = field(default_factory=list)
    frame_timestamps: list[float] = field(default_factory=list)
    video_duration_s: float = 0.0
    video_tokens_total: int = 0
    video_tokens_kept: int = 0
    prompt_tokens_total: int = 0
    prompt_tokens_kept: int = 0
    segments: list[int] = field(default_factory=list)
    saliency_source: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    decode_tokens_per_s: float | None = None
    new_tokens: int = 0
    stop_reason: str = ""
    prefill_speedup: float | None = None
    prefill_speedup_measured: bool = False
    # --baseline: medians of `prefill_timed_runs` alternating timed prefills of the unpruned and the pruned prompt
    baseline_prefill_ms: float | None = None
    pruned_prefill_ms: float | None = None
    prefill_timed_runs: int | None = None
    peak_gpu_mem_mb: float | None = None
    device: str = ""
    dtype: str = ""
    attn_implementation: str = ""
    cache: str = "off"  # feature cache: hit | miss | off
    decode_mode: str = ""  # eager | cuda-graph | batched xN (answered with N-1 other questions, see answer_many)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # GenerationOptions.margins: per generated token (eos included), its logit minus the best other token's; an
    # answer whose smallest margin is near 0 can come out differently on another CPU/GPU or dtype. Deliberately not
    # a dataclass field: the fixed keys of `ask --json` and of batch records (dataclasses.fields) stay as they are,
    # and to_dict adds this one only when it was measured.
    logit_margins = None  # list[float] | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.logit_margins is not None:
            data["logit_margins"] = list(self.logit_margins)
        return data

    def set_margins(self, margins: list[float] | None) -> None:
        """Keep the margins of a decode (None: not measured) and say the smallest in a note."""
        if margins is None:
            return
        self.logit_margins = [round(m, 4) for m in margins]
        if margins:
            self.notes.append(f"logit margins per answer token (chosen minus runner-up): "
                              f"{' '.join(f'{m:.2f}' for m in margins)}; min {min(margins):.2f}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A Report from `to_dict()`'s output (e.g. sent by a server); keys that are not fields are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        report = cls(**{k: v for k, v in data.items() if k in names})
        if data.get("logit_margins") is not None:
            report.logit_margins = list(data["logit_margins"])
        return report
