"""What an answer reports and how its numbers are taken: the Report (`ask --json`, batch/eval records, the summary
panel), the synchronised clock every stage time is read from, and the assembly of an answer's timings and
prefill speedup (measured by `--baseline`, else estimated from the FLOPs model). `Stage` is the progress
callback every stage reports its start and end through.

Timings (ms, `Report.timings_ms`, in this order): the session's stages (sample, preprocess, vision,
encode_after_sample, prune), then graph_capture (a CUDA-graph capture between tokens 1 and 2, reported apart from
decode), prefix_prefill (the shared video prefix, prefilled once per session), prefill (start of the prefill to
the first token), ttft (from the call to the first token), decode (first to last token), total (the call); ttft
and total include the earlier work the caller counts in. `ask` adds sample_wait when frames were sampled beside
the model load.

No torch at import: the client of `fastvid serve` rebuilds Reports from the server's JSON (`Report.from_dict`),
and batch/eval records are made of their fields without importing the engine. The few functions that need torch
import it when called.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from fastvid_cli import __version__

Stage = Callable[[str, str], None]  # (stage name, "start" | "done") progress callback


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
    frame_decoder: str = ""  # which decoder sampled the frames: cpu (FFmpeg in software) | gpu (NVDEC) | "" (cached)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # GenerationOptions.margins: per generated token (eos included), its logit minus the best other token's; an
    # answer whose smallest margin is near 0 can come out differently on another CPU/GPU or dtype. Deliberately not
    # a dataclass field: the fixed keys of `ask --json` and of batch records (dataclasses.fields) stay as they are,
    # and to_dict adds this one only when it was measured.
    logit_margins = None  # list[float] | None
    # --select: how the frames were chosen (frame_choice.choose's record: chosen timestamps and scores, every
    # candidate's, the rule and its parameters, times). Like logit_margins, in to_dict only when there is one.
    selection = None  # dict | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.logit_margins is not None:
            data["logit_margins"] = list(self.logit_margins)
        if self.selection is not None:
            data["selection"] = dict(self.selection)
        return data

    def set_margins(self, margins: list[float] | None) -> None:
        """Keep the margins of a decode (None: not measured) and say the smallest in a note."""
        if margins is None:
            return
        self.logit_margins = [round(m, 4) for m in margins]
        if margins:
            self.notes.append(f"logit margins per answer token (chosen minus runner-up): "
                              f"{' '.join(f'{m:.2f}' for m in margins)}; min {min(margins):.2f}")

    def set_measured_speedup(self, pruned_ms: list[float], unpruned_ms: list[float], runs: int) -> None:
        """--baseline: the medians of `runs` timed prefills of the pruned and of the unpruned prompt, and their
        ratio as the (measured) prefill speedup."""
        pruned, base = statistics.median(pruned_ms), statistics.median(unpruned_ms)
        self.baseline_prefill_ms = round(base, 3)
        self.pruned_prefill_ms = round(pruned, 3)
        self.prefill_timed_runs = runs
        self.prefill_speedup = round(base / pruned, 3) if pruned > 0 else None
        self.prefill_speedup_measured = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A Report from `to_dict()`'s output (e.g. sent by a server); keys that are not fields are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        report = cls(**{k: v for k, v in data.items() if k in names})
        if data.get("logit_margins") is not None:
            report.logit_margins = list(data["logit_margins"])
        if data.get("selection") is not None:
            report.selection = dict(data["selection"])
        return report


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"fastvid": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


class Clock:
    """Synchronised wall-clock stage timer."""

    def __init__(self, devices: list):  # torch.device
        self.cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})

    def sync(self) -> None:
        if not self.cuda:
            return
        import torch

        for i in self.cuda:
            torch.cuda.synchronize(i)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def elapsed_ms(a, b) -> float:
    """ms between two timing marks (encoding.PipelinedEncoder: CUDA events, read after a synchronize; or host
    times)."""
    return (b - a) * 1e3 if isinstance(a, float) else a.elapsed_time(b)


def peak_gpu_mem_mb(cuda: list[int]) -> float:
    """Peak allocated memory summed over the CUDA devices `cuda` (indices), in MiB."""
    import torch

    return round(sum(torch.cuda.max_memory_allocated(i) for i in cuda) / 2**20, 1)


def fill_timings(report: Report, timings: dict[str, float], token_times: list[float], *, t_start: float,
                 t_prefill: float, t_end: float, lead_ms: float, capture_ms: float | None = None,
                 prefix_ms: float | None = None) -> None:
    """Add what one answer took to `timings` (the session's stage times; see the module docstring) and store them
    rounded on `report`, with its decode rate. `token_times`: when each token came (perf_counter s); `t_prefill`:
    when the prefill started, `t_start` / `t_end`: the call; `capture_ms`: a graph capture inside the decode;
    `prefix_ms`: the shared prefix's prefill, when the answer continued it."""
    times = token_times
    if capture_ms is not None:
        timings["graph_capture"] = capture_ms
    if prefix_ms is not None:
        timings["prefix_prefill"] = prefix_ms
    if times:
        timings["prefill"] = (times[0] - t_prefill) * 1e3
        timings["ttft"] = (times[0] - t_start) * 1e3 + lead_ms
        span = times[-1] - times[0] - (capture_ms or 0.0) / 1e3
        timings["decode"] = span * 1e3
        if len(times) > 1 and span > 0:
            report.decode_tokens_per_s = round((len(times) - 1) / span, 2)
    timings["total"] = (t_end - t_start) * 1e3 + lead_ms
    report.timings_ms = {k: round(v, 3) for k, v in timings.items()}


def estimated_prefill_speedup(adapter, asm, stage=None) -> float:
    """The LLM prefill speedup of the pruned prompt `asm` (models.interface.Assembled) over the unpruned one by the
    family's FLOPs model. `stage`: what a method's stage inside the LLM did (prefill.Prefilled.stage): from its
    layer on, every layer ran on its shorter sequence (each layer costs the same)."""
    full_flops = adapter.llm_prefill_flops(asm.full_length)
    kept_flops = adapter.llm_prefill_flops(asm.length)
    if stage is not None:
        m, n = stage, len(adapter.model.get_decoder().layers)
        kept_flops = (m.layer * kept_flops + (n - m.layer) * adapter.llm_prefill_flops(m.length_after)) / n
    return round(full_flops / kept_flops, 3)
