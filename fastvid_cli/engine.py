"""The engine: owns a loaded model, answers questions about videos, and measures every stage.

One question = sample frames -> preprocess -> vision encode -> prune -> splice -> generate (streamed).
Every time reported is taken with the device synchronised at both ends, so GPU work is charged to the stage
that queued it. Decoding runs in a worker thread so the caller can print tokens as they arrive.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch

from fastvid_cli import __version__, hub
from fastvid_cli.errors import FastVidError, InvalidOptionError, OutOfMemoryError, UnknownModelError
from fastvid_cli.models import FAMILIES, ModelRef, resolve_model
from fastvid_cli.models.base import Assembled, VideoFeatures, dtype_name, resolve_device, resolve_dtype
from fastvid_cli.video import Clip, sample_frames

Stage = Callable[[str, str], None]  # (stage name, "start" | "done") progress callback


@dataclass
class GenerationOptions:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidOptionError(f"--max-new-tokens must be >= 1 (got {self.max_new_tokens})")
        if not (self.temperature >= 0):
            raise InvalidOptionError(f"--temperature must be >= 0 (got {self.temperature})")
        if not (0 < self.top_p <= 1):
            raise InvalidOptionError(f"--top-p must be in (0, 1] (got {self.top_p})")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature > 0:
            return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=None)
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@dataclass
class PruneOptions:
    method: str = "fastvid"
    ratio: float = 0.10
    params: dict[str, Any] = field(default_factory=dict)  # c, tau, d, p, beta, ...


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
    baseline_prefill_ms: float | None = None
    peak_gpu_mem_mb: float | None = None
    device: str = ""
    dtype: str = ""
    attn_implementation: str = ""
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def versions() -> dict[str, str]:
    import transformers

    return {"fastvid": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


class _Clock:
    """Synchronised wall-clock stage timer."""

    def __init__(self, devices: list[torch.device]):
        self.cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})

    def sync(self) -> None:
        for i in self.cuda:
            torch.cuda.synchronize(i)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


class _StopFlag:
    """A stopping criterion the main thread can trip (Ctrl-C) to end generation after the current step."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _timed_streamer_class():
    from transformers import TextIteratorStreamer

    class TimedStreamer(TextIteratorStreamer):
        """Streams text token by token (not word by word) and records the host time of every generated token.

        The time is taken at `put`, when the token exists, not when text is released. Text is held back only
        while it ends in an incomplete UTF-8 sequence (at most 3 tokens), so a multi-byte character is never
        printed in halves."""

        def __init__(self, tokenizer, **kw):
            super().__init__(tokenizer, skip_prompt=True, **kw)
            self.token_times: list[float] = []
            self.pending = 0

        def put(self, value):
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            now = time.perf_counter()
            ids = value.tolist()
            self.token_times.extend([now] * len(ids))
            self.token_cache.extend(ids)
            self.pending += len(ids)
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd") and self.pending < 4:
                return
            piece = text[self.print_len:]
            self.pending = 0
            if text.endswith("\n"):  # start a fresh cache so decoding stays O(line), not O(answer)
                self.token_cache, self.print_len = [], 0
            else:
                self.print_len = len(text)
            if piece:
                self.on_finalized_text(piece)

    return TimedStreamer


@contextlib.contextmanager
def _oom_guard():
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemoryError("out of GPU memory",
                               "try fewer --frames, a lower --ratio, or --dtype float16/bfloat16") from None


class Engine:
    """A loaded model family adapter plus the pipeline that answers questions with it."""

    def __init__(self, adapter, *, model_name: str, device: str, dtype: torch.dtype, attn_implementation: str):
        self.adapter = adapter
        self.model = adapter.model
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.load_ms: float | None = None
        self.warmup_ms: float | None = None
        devs = {p.device for p in self.model.parameters()}
        self.clock = _Clock(list(devs))
        self.cuda = bool(self.clock.cuda)

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, model: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
             saliency_model: str | None = None, warmup: bool = True,
             on_stage: Stage | None = None) -> "Engine":
        on_stage = on_stage or (lambda *_: None)
        t0 = time.perf_counter()
        ref = resolve_model(model)
        config = hub.load_config(ref)
        family = getattr(config, "model_type", None)
        if family not in FAMILIES:
            raise UnknownModelError(f"unsupported architecture '{family}' in {ref.display}",
                                    f"supported: {', '.join(FAMILIES)}")
        want_auto = device.strip().lower() == "auto"
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        device_map = _auto_device_map(ref, torch_dtype) if (want_auto and dev.startswith("cuda")) else None
        if attn_implementation not in {"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"}:
            raise InvalidOptionError(f"--attn-implementation must be sdpa, eager or flash_attention_2 "
                                     f"(got '{attn_implementation}')")
        module = importlib.import_module(FAMILIES[family])
        on_stage("load", "start")
        with _oom_guard():
            adapter = module.LlavaOnevisionAdapter.load(
                ref, config, device=dev, dtype=torch_dtype, attn_implementation=attn_implementation,
                saliency_model=saliency_model, device_map=device_map)
        label = "auto (" + ", ".join(sorted({str(d) for d in device_map.values()})) + ")" if device_map else dev
        engine = cls(adapter, model_name=ref.display, device=label, dtype=torch_dtype,
                     attn_implementation=attn_implementation)
        engine.load_ms = (time.perf_counter() - t0) * 1e3
        on_stage("load", "done")
        if warmup and engine.cuda:
            engine.warmup()
        return engine

    @property
    def defaults(self) -> dict[str, Any]:
        return self.adapter.defaults

    def warmup(self) -> None:
        """One tiny vision pass and one short generate, so the first timed run does not pay CUDA/cuBLAS init."""
        t0 = time.perf_counter()
        size = self.adapter.image_size
        frames = torch.zeros((2, size, size, 3), dtype=torch.uint8)
        with torch.inference_mode(), _oom_guard():
            feats = self.adapter.encode(self.adapter.preprocess(frames))
            prompt = self.adapter.build_prompt("hi")
            flat = feats.embeds.flatten(0, 1)
            asm = self.adapter.assemble(prompt, feats, flat, torch.arange(flat.shape[0]))
            self.model.generate(inputs_embeds=asm.inputs_embeds, attention_mask=self._mask(asm),
                                position_ids=asm.position_ids, max_new_tokens=2, do_sample=False,
                                temperature=None, top_p=None, top_k=None)
        self.clock.sync()
        self.warmup_ms = (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ stages
    def sample(self, video: str, frames: int) -> tuple[Clip, float]:
        t0 = time.perf_counter()
        clip = sample_frames(video, frames)
        return clip, (time.perf_counter() - t0) * 1e3

    def features(self, clip: Clip, timings: dict[str, float]) -> VideoFeatures:
        with torch.inference_mode(), _oom_guard():
            t0 = self.clock.now()
            pixels = self.adapter.preprocess(clip.frames)
            t1 = self.clock.now()
            feats = self.adapter.encode(pixels)
            t2 = self.clock.now()
        timings["preprocess"] = (t1 - t0) * 1e3
        timings["vision"] = (t2 - t1) * 1e3
        return feats

    def prune(self, feats: VideoFeatures, opts: PruneOptions, timings: dict[str, float]):
        from fastvid_cli.pruning import get_method

        method = get_method(opts.method)
        with torch.inference_mode(), _oom_guard():
            t0 = self.clock.now()
            result = method(feats.embeds, feats.saliency, feats.frame_features, opts.ratio, **opts.params)
            t1 = self.clock.now()
        timings["prune"] = (t1 - t0) * 1e3
        return result

    @staticmethod
    def _mask(asm: Assembled) -> torch.Tensor:
        return torch.ones(asm.inputs_embeds.shape[:2], dtype=torch.long, device=asm.inputs_embeds.device)

    def stream(self, asm: Assembled, gen: GenerationOptions, stop: _StopFlag | None = None) -> "_Generation":
        """Start generating in a worker thread; iterate the returned object for text pieces."""
        return _Generation(self, asm, gen, stop or _StopFlag())

    def timed_prefill(self, asm: Assembled) -> float:
        """ms from the generate call to the first token, for a 1-token generate (the baseline measurement)."""
        streamer = _timed_streamer_class()(self.adapter.tokenizer)
        with torch.inference_mode(), _oom_guard():
            t0 = self.clock.now()
            self.model.generate(inputs_embeds=asm.inputs_embeds, attention_mask=self._mask(asm),
                                position_ids=asm.position_ids, max_new_tokens=1, do_sample=False,
                                temperature=None, top_p=None, top_k=None, streamer=streamer)
        return (streamer.token_times[0] - t0) * 1e3

    # ------------------------------------------------------------------ the whole question
    def ask(self, video: str, question: str, *, frames: int | None = None, prune: PruneOptions | None = None,
            gen: GenerationOptions | None = None, baseline: bool = False, clip: Clip | None = None,
            sample_ms: float | None = None, sample_wait_ms: float = 0.0, on_stage: Stage | None = None,
            on_text: Callable[[str], None] | None = None, stop: _StopFlag | None = None) -> Report:
        """Answer one question.

        `clip` may be given when frames were sampled elsewhere (e.g. on the main thread while the model loaded):
        then `sample_ms` is how long sampling took and `sample_wait_ms` how long the caller still waited for it
        after the model was ready; only that wait counts towards TTFT, since the rest overlapped the load."""
        on_stage = on_stage or (lambda *_: None)
        on_text = on_text or (lambda _: None)
        gen = gen or GenerationOptions()
        gen.validate()
        prune = prune or PruneOptions(ratio=self.defaults["ratio"])
        frames = frames or self.defaults["frames"]
        if self.cuda:
            for i in self.clock.cuda:
                torch.cuda.reset_peak_memory_stats(i)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        if clip is None:
            on_stage("sample", "start")
            clip, sample_ms = self.sample(video, frames)
            on_stage("sample", "done")
            sample_wait_ms = 0.0  # sampling already lies inside [t_start, first token]
        timings["sample"] = sample_ms or 0.0
        on_stage("encode", "start")
        feats = self.features(clip, timings)
        on_stage("encode", "done")
        on_stage("prune", "start")
        result = self.prune(feats, prune, timings)
        on_stage("prune", "done")
        prompt = self.adapter.build_prompt(question, gen.system)
        with torch.inference_mode():
            asm = self.adapter.assemble(prompt, feats, result.embeds, result.index)
        report = Report(
            model=self.model_name, video=video, question=question, method=prune.method, ratio=prune.ratio,
            params=dict(prune.params), frames=len(clip.indices), frames_requested=clip.requested,
            frame_indices=list(clip.indices), frame_timestamps=[round(t, 4) for t in clip.timestamps],
            video_duration_s=round(clip.duration, 4),
            video_tokens_total=feats.num_frames * feats.tokens_per_frame,
            video_tokens_kept=int(result.index.numel()), prompt_tokens_total=asm.full_length,
            prompt_tokens_kept=asm.length, segments=list(result.segments), saliency_source=feats.saliency_source,
            device=self.device, dtype=dtype_name(self.dtype), attn_implementation=self.attn_implementation,
            versions=versions(),
        )
        report.notes.extend(self.adapter.warnings)
        report.notes.extend(result.notes)
        if clip.short:
            report.notes.append(f"the clip has only {clip.total_frames} frames; used all of them "
                                f"instead of {clip.requested}")
        on_stage("prefill", "start")
        run = self.stream(asm, gen, stop)
        first = True
        for piece in run:
            if first and run.first_token_time is not None:
                on_stage("prefill", "done")
                on_stage("decode", "start")
                first = False
            on_text(piece)
            report.answer += piece
        run.join()
        if first:
            on_stage("prefill", "done")
            on_stage("decode", "start")
        on_stage("decode", "done")
        t_end = time.perf_counter()
        times = run.token_times
        report.new_tokens = len(times)
        report.stop_reason = run.stop_reason
        if times:
            timings["prefill"] = (times[0] - run.start_time) * 1e3
            timings["ttft"] = (times[0] - t_start) * 1e3 + sample_wait_ms
            timings["decode"] = (times[-1] - times[0]) * 1e3
            if len(times) > 1 and times[-1] > times[0]:
                report.decode_tokens_per_s = round((len(times) - 1) / (times[-1] - times[0]), 2)
        timings["total"] = (t_end - t_start) * 1e3 + sample_wait_ms
        if self.cuda:
            report.peak_gpu_mem_mb = round(sum(torch.cuda.max_memory_allocated(i) for i in self.clock.cuda) / 2**20, 1)
        if baseline and not run.interrupted:
            on_stage("baseline", "start")
            full = feats.embeds.flatten(0, 1)
            with torch.inference_mode():
                full_asm = self.adapter.assemble(prompt, feats, full, torch.arange(full.shape[0]))
            # Time the pruned prefill again the same way, so both numbers come from identical 1-token runs.
            pruned_ms = min(self.timed_prefill(asm), self.timed_prefill(asm))
            base_ms = min(self.timed_prefill(full_asm), self.timed_prefill(full_asm))
            report.baseline_prefill_ms = round(base_ms, 3)
            timings["prefill_1tok"] = pruned_ms
            report.prefill_speedup = round(base_ms / pruned_ms, 3) if pruned_ms > 0 else None
            report.prefill_speedup_measured = True
            on_stage("baseline", "done")
        else:
            full_flops = self.adapter.llm_prefill_flops(asm.full_length)
            kept_flops = self.adapter.llm_prefill_flops(asm.length)
            report.prefill_speedup = round(full_flops / kept_flops, 3)
            report.prefill_speedup_measured = False
        report.timings_ms = {k: round(v, 3) for k, v in timings.items()}
        return report


class _Generation:
    """A running `generate` in a worker thread; iterating yields text pieces as they are decoded."""

    def __init__(self, engine: Engine, asm: Assembled, gen: GenerationOptions, stop: _StopFlag):
        from transformers import StoppingCriteriaList

        self.engine = engine
        self.stop = stop
        self.streamer = _timed_streamer_class()(engine.adapter.tokenizer, timeout=None, skip_special_tokens=True)
        self.error: BaseException | None = None
        self.interrupted = False
        self.output = None
        self.max_new_tokens = gen.max_new_tokens
        if gen.seed is not None:
            torch.manual_seed(gen.seed)
        kwargs = dict(inputs_embeds=asm.inputs_embeds, attention_mask=engine._mask(asm),
                      position_ids=asm.position_ids, max_new_tokens=gen.max_new_tokens, streamer=self.streamer,
                      stopping_criteria=StoppingCriteriaList([stop]), **gen.generate_kwargs())
        self.start_time = engine.clock.now()
        self.thread = threading.Thread(target=self._work, args=(kwargs,), daemon=True)
        self.thread.start()

    def _work(self, kwargs):
        try:
            with torch.inference_mode():
                self.output = self.engine.model.generate(**kwargs)
        except BaseException as e:  # never leave the consumer blocked on the queue
            self.error = e
            self.streamer.end()

    @property
    def token_times(self) -> list[float]:
        return self.streamer.token_times

    @property
    def first_token_time(self) -> float | None:
        return self.streamer.token_times[0] if self.streamer.token_times else None

    @property
    def stop_reason(self) -> str:
        if self.interrupted:
            return "interrupted"
        if len(self.token_times) >= self.max_new_tokens:
            return "max_new_tokens"
        return "eos"

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self.streamer:
                yield piece
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.event.set()
            self.thread.join()
            # Flush what the streamer still holds, so the partial answer is complete up to the last token.
            while not self.streamer.text_queue.empty():
                piece = self.streamer.text_queue.get_nowait()
                if piece is not self.streamer.stop_signal and piece:
                    yield piece
            return

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            err = self.error
            if isinstance(err, torch.OutOfMemoryError):
                raise OutOfMemoryError("out of GPU memory while generating",
                                       "try fewer --frames, a lower --ratio, or --max-new-tokens") from None
            if isinstance(err, FastVidError):
                raise err
            raise err


def _auto_device_map(ref: ModelRef, dtype: torch.dtype):
    """'auto' placement: one GPU when the weights fit its free memory, else accelerate's device_map="auto"."""
    if torch.cuda.device_count() < 2:
        return None
    size = _checkpoint_bytes(ref)
    if size is None:
        return None
    free, _ = torch.cuda.mem_get_info(0)
    # Leave room for activations and the KV cache of a long video prompt.
    if size * 1.2 < free:
        return None
    return "auto"


def _checkpoint_bytes(ref: ModelRef) -> int | None:
    index = hub.read_json(ref, "model.safetensors.index.json")
    if index and isinstance(index.get("metadata"), dict) and index["metadata"].get("total_size"):
        return int(index["metadata"]["total_size"])
    return None
