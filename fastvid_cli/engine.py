"""The engine: owns a loaded model, answers questions about videos, and measures every stage.

One question = sample frames -> preprocess -> vision encode -> prune -> splice -> generate (streamed).
Every time reported is taken with the device synchronised at both ends, so GPU work is charged to the stage
that queued it. Decoding runs in a worker thread so the caller can print tokens as they arrive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import statistics
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from fastvid_cli import __version__, fast_decode, hub
from fastvid_cli.errors import InvalidOptionError, OutOfMemoryError
from fastvid_cli.hub import ModelRef
from fastvid_cli.models import adapter_class, check_attn_implementation, resolve_model
from fastvid_cli.decoding import (Sampling, StaticDecoder, TextStream, cache_length, crop_cache, decode,
                                  decode_batch, eos_ids, new_cache, prefill)
from fastvid_cli.inner_merge import check_supported as check_inner, prefill_inner
from fastvid_cli.report import Report
from fastvid_cli.settings import GenerationOptions, PruneOptions
from fastvid_cli.models.interface import Assembled, FamilyAdapter, VideoFeatures, merge_frame_chunks
from fastvid_cli.models.loading import dtype_name, resolve_device, resolve_dtype
from fastvid_cli.models.sampling import SamplePlan
from fastvid_cli.video import Clip, sample_frames

Stage = Callable[[str, str], None]  # (stage name, "start" | "done") progress callback


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


def _elapsed_ms(a, b) -> float:
    """ms between two Engine._mark()s (CUDA events: read after a synchronize)."""
    return a.elapsed_time(b) if isinstance(a, torch.cuda.Event) else (b - a) * 1e3


def _join(worker: threading.Thread) -> None:
    """Wait for `worker`, ignoring further Ctrl-C: it stops within a token once asked to."""
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt:
            continue


@contextlib.contextmanager
def _oom_guard():
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemoryError("out of GPU memory",
                               "try fewer --frames, a lower --ratio, or --dtype float16/bfloat16") from None


# Intra-op threads chosen by the user (`--threads`, or OMP_NUM_THREADS): then every CPU op uses them. Otherwise the
# model's forwards use torch's default (one per core) and the small CPU work (pruning: many small ops) runs on one
# thread, because OpenMP workers spinning on a busy machine cost far more than they save there: FastVID on the demo
# model's 16x64 tokens took 152 ms with 2 threads and 3.6 ms with 1 on a loaded 2-core CPU (benchmarks/RESULTS.md).
_user_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Use `n` intra-op threads for all CPU work (None: OMP_NUM_THREADS if set, else the defaults above)."""
    global _user_threads
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else None
    elif n < 1:
        raise InvalidOptionError(f"--threads must be >= 1 (got {n})")
    if n is not None:
        torch.set_num_threads(n)
    _user_threads = n


set_threads(None)


@contextlib.contextmanager
def small_cpu_work(device: torch.device):
    """Run a block of small ops on `device` with one intra-op thread when it is the CPU and the user chose no
    thread count; anywhere else, as is."""
    if device.type != "cpu" or _user_threads is not None or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Engine:
    """A loaded model family adapter plus the pipeline that answers questions with it."""

    def __init__(self, adapter: FamilyAdapter, *, model_name: str, device: str, dtype: torch.dtype,
                 attn_implementation: str):
        self.adapter = adapter
        self.model = adapter.model
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.model_source = model_name
        self.load_ms: float | None = None
        self.warmup_ms: float | None = None
        devs = {p.device for p in self.model.parameters()}
        self.clock = _Clock(list(devs))
        self.cuda = bool(self.clock.cuda)
        if self.cuda:
            # PyTorch picks cuDNN's attention for sdpa on Hopper; it builds a plan for every new (query, key) length
            # (0.3-0.7 s the first time a prompt length is seen, and every question has its own length) and costs
            # more host time per call than flash / memory-efficient attention. Measured with
            # benchmarks/diag_shapes.py (H100, 7B shape): per-question time 476 -> 155 ms eager, 131 -> 113 ms with
            # CUDA graphs, first-seen lengths 730-830 -> ~150 ms, full-token prefill 204 -> 182 ms.
            torch.backends.cuda.enable_cudnn_sdp(False)
        # The graph decoders, made on first use: "fused" (fast_decode.FusedDecoder: Qwen2/Qwen3 LLMs) and "static"
        # (decoding.StaticDecoder: any other model); `broken` says why one is not used any more, once it failed.
        self.decoders: dict[str, Any] = {}
        self.broken: dict[str, str] = {}
        # Encode frames on the GPU while the rest are still being decoded (see sample_and_encode). None: wherever
        # it pays, i.e. a CUDA vision tower (on the CPU the encoder would compete with the decoders for cores).
        self.pipeline: bool | None = None
        # Encode those groups through a captured CUDA graph (vision_graph.py): True, False, or why it failed.
        self.vision_graphs: bool | str = True
        self._vision_graph = None

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, model: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
             saliency_model: str | None = None, warmup: bool = True,
             on_stage: Stage | None = None) -> "Engine":
        on_stage = on_stage or (lambda *_: None)
        t0 = time.perf_counter()
        ref = resolve_model(model)
        config = hub.load_config(ref)
        family_adapter = adapter_class(getattr(config, "model_type", None), ref.display)
        want_auto = device.strip().lower() == "auto"
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        device_map = _auto_device_map(ref, torch_dtype) if (want_auto and dev.startswith("cuda")) else None
        check_attn_implementation(attn_implementation)
        on_stage("load", "start")
        with _oom_guard():
            adapter = family_adapter.load(
                ref, config, device=dev, dtype=torch_dtype, attn_implementation=attn_implementation,
                saliency_model=saliency_model, device_map=device_map)
        label = "auto (" + ", ".join(sorted({str(d) for d in device_map.values()})) + ")" if device_map else dev
        engine = cls(adapter, model_name=ref.display, device=label, dtype=torch_dtype,
                     attn_implementation=attn_implementation)
        engine.model_source = ref.source
        engine.load_ms = (time.perf_counter() - t0) * 1e3
        on_stage("load", "done")
        if warmup and engine.cuda:
            engine.warmup()
        return engine

    @property
    def defaults(self) -> dict[str, Any]:
        return self.adapter.defaults

    def warmup(self) -> None:
        """One tiny pass through every stage — resize, vision, the default pruning, prefill and a 2-token answer —
        so that the first timed run does not pay CUDA/cuBLAS initialisation, lazily loaded kernels (the first
        FastVID call in a process took ~150 ms on the H100 VM) or the fused decode step's kernel compilation."""
        t0 = time.perf_counter()
        size = self.adapter.image_size + 16  # not the model's size, so that the resize kernels run too
        frames = torch.zeros((2, size, size, 3), dtype=torch.uint8)
        with torch.inference_mode(), _oom_guard():
            feats = self.adapter.encode(self.adapter.preprocess(frames))
            self.prune(feats, PruneOptions(ratio=self.defaults["ratio"]), {})
            prompt = self.adapter.build_prompt("hi")
            flat = feats.embeds.flatten(0, 1)
            asm = self.adapter.assemble(prompt, feats, flat, torch.arange(flat.shape[0]))
            cache = new_cache(self.model)
            logits = prefill(self.model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra())
            # through the default decoder: on CUDA this compiles (or loads from Triton's cache) the fused step's
            # kernels now, inside the load, instead of in the first answer (2.3 s cold, 0.5 s cached, H200)
            self.decode(logits, cache, asm.next_position, GenerationOptions(max_new_tokens=2))
        self.clock.sync()
        self.warmup_ms = (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ stages
    def sample(self, video: str, frames) -> tuple[Clip, float]:
        """Sample `frames` (a count, or a frame plan from `frame_plan`) of `video`; (clip, ms)."""
        t0 = time.perf_counter()
        clip = sample_frames(video, frames)
        return clip, (time.perf_counter() - t0) * 1e3

    def frame_plan(self, frames: int | None = None, fps: float | None = None):
        """What to sample for --frames/--fps: a frame count (uniform frames; default: the family's), or the family's
        own IndexPlan (Qwen-VL: its fps contract; see video.sample_frames)."""
        return self.adapter.frame_plan(frames, fps)

    def _sampling_for(self, frames: int | None, fps: float | None, clip: Clip | None):
        """The frame request a session's features stand for (its feature-cache key). A given clip: its own count
        (families with a plan sample the same frames for the same count, whatever the rate that led to it)."""
        if clip is None:
            return self.frame_plan(frames, fps)
        plan = self.adapter.frame_plan(len(clip.indices), None)
        return plan if isinstance(plan, SamplePlan) else clip.requested

    def features(self, clip: Clip, timings: dict[str, float]) -> VideoFeatures:
        with torch.inference_mode(), _oom_guard():
            t0 = self.clock.now()
            pixels = self.adapter.preprocess_clip(clip)  # Qwen-VL reads the clip's timing too
            t1 = self.clock.now()
            feats = self.adapter.encode(pixels)
            t2 = self.clock.now()
        timings["preprocess"] = (t1 - t0) * 1e3
        timings["vision"] = (t2 - t1) * 1e3
        return feats

    def _pipelined(self) -> bool:
        if not self.adapter.frames_independent:
            return False
        if self.pipeline is not None:
            return self.pipeline
        return self.adapter.vision_device.type == "cuda"

    # Frames per encoder call while decoding goes on (the graph's fixed batch; without the graph, a larger backlog
    # goes in one call).
    PIPELINE_CHUNK = 8

    def sample_and_encode(self, video: str, frames, timings: dict[str, float],
                          on_stage: Stage) -> tuple[Clip, VideoFeatures]:
        """Sample `frames` of `video` on a worker thread and encode the frames in groups as they are decoded, so
        that preprocessing and the vision tower run during decoding instead of after it. Every frame is encoded
        alone by the family (frames_independent), so the groups only change which frames share a batch.

        On CUDA each group of PIPELINE_CHUNK frames is one replay of a captured graph (vision_graph.py): launching
        the encoder's kernels from Python while the decoder threads contend for the GIL would be slow.

        Timings: sample = decoding wall time; preprocess / vision = their summed GPU-stream time, mostly hidden
        (with the graph, preprocess is the upload and the GPU resize counts as vision); encode_after_sample = what
        was left to wait for after the last frame. If the frames handed out early are not the clip's final frames
        (sequential fallback, rotation), the clip is encoded again as usual."""
        ready: queue.SimpleQueue = queue.SimpleQueue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["clip"] = sample_frames(video, frames, on_frame=lambda slot, a: ready.put((slot, a)))
            except BaseException as e:  # noqa: BLE001 - raised on the calling thread
                box["error"] = e
            finally:
                box["t"] = time.perf_counter()
                ready.put(None)

        on_stage("sample", "start")
        t0 = time.perf_counter()
        worker = threading.Thread(target=work, daemon=True, name="fastvid-sample")
        worker.start()
        parts: list[tuple[list[int], list, VideoFeatures]] = []
        spans: list[tuple] = []  # per group: (start, uploaded/preprocessed, encoded) as CUDA events or host times
        try:
            with torch.inference_mode(), _oom_guard():
                pending: list = []
                done = False
                while not done:
                    item = ready.get()
                    while item is not None:  # take everything decoded by now
                        pending.append(item)
                        try:
                            item = ready.get_nowait()
                        except queue.Empty:
                            break
                    done = item is None
                    while pending and (done or len(pending) >= self.PIPELINE_CHUNK):
                        group, feats, span = self._encode_group(pending)
                        pending = pending[len(group):]
                        spans.append(span)
                        parts.append(([s for s, _ in group], [a for _, a in group], feats))
        finally:
            worker.join()
        on_stage("sample", "done")
        if "error" in box:
            raise box["error"]
        clip: Clip = box["clip"]
        on_stage("encode", "start")
        handed = [(s, a) for slots, arrays, _ in parts for s, a in zip(slots, arrays)]
        if len(handed) == len(clip.indices) and all(np.shares_memory(clip.frames[s], a) for s, a in handed):
            with torch.inference_mode(), _oom_guard():
                feats = merge_frame_chunks([(slots, f) for slots, _, f in parts], len(clip.indices))
            t_end = self.clock.now()
            timings["sample"] = (box["t"] - t0) * 1e3
            timings["preprocess"] = sum(_elapsed_ms(a, b) for a, b, _ in spans)
            timings["vision"] = sum(_elapsed_ms(b, c) for _, b, c in spans)
            timings["encode_after_sample"] = (t_end - box["t"]) * 1e3
        else:
            timings["sample"] = (box["t"] - t0) * 1e3
            feats = self.features(clip, timings)
        on_stage("encode", "done")
        return clip, feats

    def _graphed_encoder(self, frame_shape: tuple[int, ...]):
        """The CUDA-graph encoder of PIPELINE_CHUNK frames of this size (captured on first use, the last size
        kept), or None: not on CUDA, turned off, or its capture failed once (then groups are encoded eagerly)."""
        if self.adapter.vision_device.type != "cuda" or self.vision_graphs is not True:
            return None
        key = (self.PIPELINE_CHUNK, *frame_shape[:2])
        got = self._vision_graph
        if got is None or got[0] != key:
            from fastvid_cli.vision_graph import GraphedEncoder

            self._vision_graph = None
            try:
                got = (key, GraphedEncoder(self.adapter, *key))
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - encoding eagerly still works
                self.vision_graphs = f"{type(e).__name__}: {str(e).strip()[:120]}"
                return None
            self._vision_graph = got
        return got[1]

    def _encode_group(self, pending: list) -> tuple[list, VideoFeatures, tuple]:
        """Encode the first frames of `pending` ((slot, frame) pairs): PIPELINE_CHUNK of them through the graphed
        encoder, or all of them eagerly. Returns (the pairs taken, their features, timing marks)."""
        graphed = self._graphed_encoder(pending[0][1].shape)
        group = pending[:graphed.n] if graphed is not None else pending
        frames_u8 = np.stack([a for _, a in group])
        m0 = self._mark()
        if graphed is not None:  # upload only; resizing runs inside the graph (counted as vision)
            k = graphed.load(frames_u8)
            m1 = self._mark()
            feats = graphed.run(k)
        else:
            pixels = self.adapter.preprocess(frames_u8)
            m1 = self._mark()
            feats = self.adapter.encode(pixels)
        return group, feats, (m0, m1, self._mark())

    def _mark(self):
        """A timing mark on the vision device: a recorded CUDA event, or on the CPU (synchronous) a host time."""
        if self.adapter.vision_device.type != "cuda":
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.adapter.vision_device))
        return ev

    def prune(self, feats: VideoFeatures, opts: PruneOptions, timings: dict[str, float]):
        from fastvid_cli.pruning import accepts_attention, get_method

        # a family's own variant (FastVID on Qwen), else the registry's
        method = self.adapter.pruning_method(opts.method) or get_method(opts.method)
        # methods that rank tokens by last-layer vision attention get it (None: they fall back, with a note)
        extra = {"attn": feats.attn_received} if accepts_attention(method) else {}
        params = {k: v for k, v in opts.params.items() if k != "inner"}  # "inner": the LLM stage, not this one
        with torch.inference_mode(), _oom_guard(), small_cpu_work(feats.embeds.device):
            t0 = self.clock.now()
            result = method(feats.embeds, feats.saliency, feats.frame_features, opts.ratio, **params, **extra)
            t1 = self.clock.now()
        timings["prune"] = (t1 - t0) * 1e3
        return result

    # ------------------------------------------------------------------ decoding
    def decode(self, logits: torch.Tensor, cache, next_position: torch.Tensor, gen: GenerationOptions, *,
               on_token=None, stop: threading.Event | None = None, notes: list[str] | None = None):
        """Decode after a prefill into `cache`. When `gen.compile` asks for it (default: on CUDA): Qwen2/Qwen3 dense
        LLMs (LLaVA-OV, Qwen2/2.5/3-VL) through the fused CUDA-graph step (fast_decode), other models through the
        CUDA-graph StaticDecoder; else the eager loop, which is also the one used when `gen.margins` asks for logit
        margins. A failure falls back to eager (noted), and the engine stops trying that decoder."""
        notes = notes if notes is not None else []
        why = None
        fused = False
        if gen.margins and gen.compile is not False:  # only the eager loop measures margins
            if gen.compile:
                notes.append("--compile: logit margins are measured by the eager loop; decoded eagerly")
            gen = dataclasses.replace(gen, compile=False)
        if gen.compile is not False:  # None = on where it can run, silently off where it cannot
            why = ("--compile needs a CUDA device" if not self.cuda else
                   self.broken.get("static") or StaticDecoder.unsupported(self.model, cache))
            fused = why is None and "fused" not in self.broken and (
                self.decoders.get("fused") is not None or fast_decode.unsupported(self.model) is None)
            if why is None and not fused and cache_length(cache) + gen.max_new_tokens > StaticDecoder.MAX_TOKENS:
                why = (f"prompt + answer longer than {StaticDecoder.MAX_TOKENS} tokens (the graph attends over its "
                       "whole static buffer every step, slower than eager decoding at that length)")
        if gen.compile is not False and why is None:
            kind = "fused" if fused else "static"
            decoder = self.decoders.get(kind)
            if decoder is None:
                decoder = fast_decode.FusedDecoder(self.model) if fused else StaticDecoder(self.model)
                self.decoders[kind] = decoder
            res = decoder.decode(self.model, logits, cache, next_position, gen.sampling(), on_token=on_token,
                                 stop=stop)
            if res.fallback:
                self.decoders[kind] = None
                what = "fused decode step failed" if fused else "CUDA-graph capture failed"
                self.broken[kind] = f"{what} ({res.fallback})"
                notes.append(f"--compile: {self.broken[kind]}; decoded eagerly")
            return res
        if why and gen.compile:
            notes.append(f"--compile: {why}; decoded eagerly")
        return decode(self.model, logits, cache, next_position, gen.sampling(), on_token=on_token, stop=stop)

    # ------------------------------------------------------------------ prefill timing
    # Timed prefills of each prompt behind `ask --baseline` (compare times --repeat of them per setting).
    BASELINE_RUNS = 3

    def timed_prefill(self, asm: Assembled, inner: tuple[int, float] | None = None) -> float:
        """ms of a plain prefill of `asm` into a fresh cache (the measured-speedup measurement, same for every
        prompt); with `inner` (K, R) the prefill that merges video tokens before layer K (HoliTom's inner stage)."""
        with torch.inference_mode(), _oom_guard():
            cache = new_cache(self.model)
            t0 = self.clock.now()
            if inner:
                prefill_inner(self.model, asm.inputs_embeds, asm.position_ids, cache, asm.video_span, *inner)
            else:
                prefill(self.model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra())
            t1 = self.clock.now()
        return (t1 - t0) * 1e3

    def timed_prefills(self, prompts: list[tuple[Assembled, tuple[int, float] | None]], runs: int) -> list[list[float]]:
        """`runs` timed prefills of each prompt ((Assembled, inner) pairs, see `timed_prefill`), taken in rounds
        (A B …, A B …) so that drift and the load of other processes fall on every prompt alike; one list of ms per
        prompt. Every measured prefill speedup (`ask --baseline`, `compare`) is a ratio of medians of these."""
        times: list[list[float]] = [[] for _ in prompts]
        for _ in range(max(1, runs)):
            for i, (asm, inner) in enumerate(prompts):
                times[i].append(self.timed_prefill(asm, inner))
        return times

    # ------------------------------------------------------------------ one video, many questions
    def feature_cache_key(self, video: str, frames) -> str:
        """`frames`: a frame count or a frame plan (whose `key()` says what it samples)."""
        from fastvid_cli.feature_cache import cache_key

        sampling = frames.key() if isinstance(frames, SamplePlan) else frames
        return cache_key(video, model=self.model_source, frames=sampling, dtype=dtype_name(self.dtype),
                         saliency=self.adapter.saliency_source, image_size=self.adapter.image_size,
                         mean=self.adapter.mean, std=self.adapter.std, **self.adapter.feature_settings())

    def session(self, video: str, *, frames: int | None = None, prune: PruneOptions | None = None,
                clip: Clip | None = None, sample_ms: float | None = None, system: str | None = None,
                feature_cache=None, on_stage: Stage | None = None, fps: float | None = None) -> "VideoSession":
        """Sample, encode and prune `video` once; the session then answers any number of questions about it.

        `clip` may be given when frames were sampled elsewhere (e.g. on the main thread while the model loaded),
        with `sample_ms` the time that took. With a `feature_cache` (fastvid_cli.feature_cache.FeatureCache),
        sampled-and-encoded features are looked up first and stored after a miss. `fps`: the sampling rate of
        families that sample by rate (Qwen-VL; exclusive with `frames`)."""
        on_stage = on_stage or (lambda *_: None)
        prune = prune or PruneOptions(ratio=self.defaults["ratio"])
        frames = self._sampling_for(frames, fps, clip)
        timings: dict[str, float] = {}
        status, key, hit = "off", None, None
        if feature_cache is not None:
            on_stage("cache", "start")
            key = self.feature_cache_key(video, frames)
            hit = feature_cache.load(key, self.adapter.vision_device)
            status = "hit" if hit is not None else "miss"
            on_stage("cache", "done")
        if hit is not None:  # frames sampled by the caller (during the model load) are not needed
            clip, feats = hit
            timings.update(sample=0.0, preprocess=0.0, vision=0.0)
        else:
            if clip is None and self._pipelined():
                clip, feats = self.sample_and_encode(video, frames, timings, on_stage)
            else:
                if clip is None:
                    on_stage("sample", "start")
                    clip, sample_ms = self.sample(video, frames)
                    on_stage("sample", "done")
                timings["sample"] = sample_ms or 0.0
                on_stage("encode", "start")
                feats = self.features(clip, timings)
                on_stage("encode", "done")
            if feature_cache is not None:
                feature_cache.store(key, clip, feats)
        sess = self.session_from_features(video, clip, feats, prune, timings, system=system, on_stage=on_stage)
        sess.cache_status = status
        return sess

    def session_from_features(self, video: str, clip: Clip, feats: VideoFeatures, prune: PruneOptions,
                              timings: dict[str, float] | None = None, *, system: str | None = None,
                              on_stage: Stage | None = None) -> "VideoSession":
        """Prune already-encoded features with `prune` (e.g. one pruning setting after another in `compare`)."""
        on_stage = on_stage or (lambda *_: None)
        timings = dict(timings or {})
        on_stage("prune", "start")
        result = self.prune(feats, prune, timings)
        on_stage("prune", "done")
        return VideoSession(self, video, clip, feats, result, prune, timings, system)

    def ask(self, video: str, question: str, *, frames: int | None = None, prune: PruneOptions | None = None,
            gen: GenerationOptions | None = None, baseline: bool = False, clip: Clip | None = None,
            sample_ms: float | None = None, sample_wait_ms: float = 0.0, feature_cache=None,
            on_stage: Stage | None = None, on_text: Callable[[str], None] | None = None,
            stop: threading.Event | None = None, fps: float | None = None) -> Report:
        """Answer one question about one video (a session used once).

        When frames were sampled elsewhere (`clip`, `sample_ms`), `sample_wait_ms` is how long the caller still
        waited for them after the model was ready: only that wait counts towards TTFT, the rest overlapped."""
        gen = gen or GenerationOptions()
        gen.validate()
        if self.cuda:
            for i in self.clock.cuda:
                torch.cuda.reset_peak_memory_stats(i)
        t_start = time.perf_counter()
        sampled_here = clip is None
        sess = self.session(video, frames=frames, prune=prune, clip=clip, sample_ms=sample_ms, system=gen.system,
                            feature_cache=feature_cache, on_stage=on_stage, fps=fps)
        lead_ms = (time.perf_counter() - t_start) * 1e3 + (0.0 if sampled_here else sample_wait_ms)
        report = sess.answer(question, gen, baseline=baseline, on_stage=on_stage, on_text=on_text, stop=stop,
                             lead_ms=lead_ms, reuse_prefix=False)
        if not sampled_here:  # sampling overlapped the model load: only this wait after the load held the answer up
            report.timings_ms["sample_wait"] = round(sample_wait_ms, 3)
        return report


class VideoSession:
    """A video sampled, encoded and pruned once. FastVID is query-agnostic, so every question about the video
    shares the pruned tokens exactly, and with `reuse_prefix` also the KV cache of the prompt up to and including
    the video tokens (prefilled once, cropped back after each answer)."""

    def __init__(self, engine: Engine, video: str, clip: Clip, feats: VideoFeatures, result, prune: PruneOptions,
                 timings: dict[str, float], system: str | None):
        self.engine = engine
        self.video = video
        self.clip = clip
        self.feats = feats
        self.result = result
        self.prune_opts = prune
        self.timings = timings
        self.system = system
        self.prefix_ids: torch.Tensor | None = None
        self.prefix_cache = None
        self.prefix_len = 0
        self.prefix_ms: float | None = None
        self.notes: list[str] = []
        self.cache_status = "off"
        inner = prune.params.get("inner")
        self.inner: tuple[int, float] | None = (int(inner[0]), float(inner[1])) if inner else None
        if self.inner:
            check_inner(engine.model, self.inner[0])

    def _assemble(self, question: str, system: str | None, history: list[tuple[str, str]] | None = None):
        a = self.engine.adapter
        prompt = a.build_prompt(question, system, history) if history else a.build_prompt(question, system)
        with torch.inference_mode():
            asm = a.assemble(prompt, self.feats, self.result.embeds, self.result.index)
            if self.result.compact:  # the method re-indexes positions (HoliTom)
                asm = asm.reindexed()
        return prompt, asm

    def prefill_input(self, question: str, system: str | None = None) -> tuple[Assembled, tuple[int, float] | None]:
        """This question's prompt as Engine.timed_prefills takes it."""
        return self._assemble(question, system if system is not None else self.system)[1], self.inner

    def _prefix_for(self, prompt, asm: Assembled) -> bool:
        """Make sure the prefix KV cache exists and matches this prompt's prefix; False if it cannot be shared."""
        if self.prefix_ids is not None and not torch.equal(self.prefix_ids, prompt.prefix_ids):
            return False
        if self.prefix_cache is None:
            cut = asm.video_span[1]
            eng = self.engine
            with torch.inference_mode(), _oom_guard():
                cache = new_cache(eng.model)
                t0 = eng.clock.now()
                prefill(eng.model, asm.inputs_embeds[:, :cut], asm.position_ids[..., :cut], cache,
                        asm.prefill_extra(0, cut))
                self.prefix_ms = (eng.clock.now() - t0) * 1e3
            self.prefix_ids, self.prefix_cache, self.prefix_len = prompt.prefix_ids.clone(), cache, cut
        return True

    def report_base(self, question: str, asm: Assembled) -> Report:
        eng, clip, feats, result = self.engine, self.clip, self.feats, self.result
        r = Report(
            model=eng.model_name, video=self.video, question=question, method=self.prune_opts.method,
            ratio=self.prune_opts.ratio, params=dict(self.prune_opts.params), frames=len(clip.indices),
            frames_requested=clip.requested, frame_indices=list(clip.indices),
            frame_timestamps=[round(t, 4) for t in clip.timestamps], video_duration_s=round(clip.duration, 4),
            video_tokens_total=feats.num_frames * feats.tokens_per_frame, video_tokens_kept=int(result.index.numel()),
            prompt_tokens_total=asm.full_length, prompt_tokens_kept=asm.length, segments=list(result.segments),
            saliency_source=feats.saliency_source, device=eng.device, dtype=dtype_name(eng.dtype),
            attn_implementation=eng.attn_implementation, versions=versions(), cache=self.cache_status)
        r.notes.extend(eng.adapter.warnings)
        r.notes.extend(result.notes)
        r.notes.extend(self.notes)
        if clip.short:
            r.notes.append(f"the clip has only {clip.total_frames} frames; used all of them instead of "
                           f"{clip.requested}")
        return r

    # Most prompt+answer tokens (summed over rows) one batched decode holds in its replicated KV cache.
    BATCH_TOKENS = 65536

    def answer_many(self, questions: list[str], gen: GenerationOptions | None = None, *,
                    lead_ms: float | list[float] = 0.0, max_rows: int = 16,
                    histories: list[list[tuple[str, str]] | None] | None = None,
                    on_text: list[Callable[[str], None] | None] | None = None,
                    stops: list[threading.Event | None] | None = None) -> list[Report]:
        """Greedy answers to several questions about this video, decoded together in batches of up to `max_rows`
        rows on top of the shared prefix KV cache (see decoding.decode_batch); the same answers as `answer` one by
        one, at a fraction of the per-question cost. Falls back to one-by-one answering when batching does not
        apply (sampling, HoliTom's inner stage, a prompt prefix that differs from the shared one). `lead_ms` (work
        that these questions waited for; one value for all, or one per question) counts towards each row's TTFT.

        Per question (lists in the order of `questions`, entries may be None): `histories` earlier (question,
        answer) turns of its conversation (see `answer`); `on_text` receives its answer's text pieces as they are
        decoded (then the report's answer is their concatenation, as in `answer`; without it texts come at the
        end); `stops` set ends that answer after its current token (stop_reason "interrupted")."""
        gen = gen or GenerationOptions()
        gen.validate()
        n = len(questions)
        leads = list(lead_ms) if isinstance(lead_ms, (list, tuple)) else [lead_ms] * n
        histories = list(histories) if histories is not None else [None] * n
        sinks = list(on_text) if on_text is not None else [None] * n
        halts = list(stops) if stops is not None else [None] * n

        def one_by_one(idx: list[int]) -> list[Report]:
            return [self.answer(questions[i], gen, lead_ms=leads[i], history=histories[i], on_text=sinks[i],
                                stop=halts[i]) for i in idx]

        if gen.temperature > 0 or max_rows < 2 or n < 2 or self.inner:
            return one_by_one(list(range(n)))
        system = gen.system if gen.system is not None else self.system
        built = [self._assemble(q, system, h) for q, h in zip(questions, histories)]
        batchable = (self._prefix_for(*built[0])
                     and all(torch.equal(pr.prefix_ids, self.prefix_ids) for pr, _ in built)
                     # the questions carry no visual inputs of their own (Qwen3-VL's DeepStack is in the prefix)
                     and all(asm.prefill_extra(self.prefix_len) is None for _, asm in built))
        if not batchable:
            return one_by_one(list(range(n)))
        cut = self.prefix_len
        per_row = max(asm.length for _, asm in built) + gen.max_new_tokens
        rows = max(1, min(max_rows, self.BATCH_TOKENS // per_row))
        reports: list[Report] = []
        for start in range(0, n, rows):
            part = list(range(start, min(start + rows, n)))
            reports.extend(self._answer_rows([questions[i] for i in part], [built[i][1] for i in part], gen, cut,
                                             [leads[i] for i in part], [sinks[i] for i in part],
                                             [halts[i] for i in part], lambda: one_by_one(part)))
        return reports

    def _answer_rows(self, questions: list[str], asms: list[Assembled], gen: GenerationOptions, cut: int,
                     leads: list[float], sinks: list, halts: list, alone: Callable[[], list[Report]]) -> list[Report]:
        eng = self.engine
        eos = eos_ids(eng.model)
        streams = [_PieceSink(eng.adapter.tokenizer, eos, sink) if sink is not None else None for sink in sinks]

        def on_token(b: int, token: int, _t: float) -> None:
            if streams[b] is not None:
                streams[b].put(token)

        t_start = time.perf_counter()
        try:
            with torch.inference_mode():
                results, t_prefill = decode_batch(
                    eng.model, self.prefix_cache, [a.inputs_embeds[:, cut:] for a in asms],
                    [a.position_ids[..., cut:] for a in asms], gen.sampling(), clock=eng.clock.now,
                    on_token=on_token if any(streams) else None, stops=halts if any(halts) else None)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # one row at a time needs far less memory
            if any(s is not None and s.text for s in streams):
                raise OutOfMemoryError("out of GPU memory while generating",
                                       "try fewer --frames, a lower --ratio, or fewer --max-new-tokens") from None
            return alone()
        t_end = time.perf_counter()
        out = []
        for b, (q, asm, res, lead_ms) in enumerate(zip(questions, asms, results, leads)):
            report = self.report_base(q, asm)
            report.notes.append(f"answered together with {len(asms) - 1} other question(s) about this video "
                                "(batched decode on the shared video prefix)")
            if streams[b] is not None:
                report.answer = streams[b].finish()
            else:
                report.answer = eng.adapter.tokenizer.decode([t for t in res.token_ids if t not in eos],
                                                             skip_special_tokens=True)
            report.new_tokens, report.stop_reason, report.decode_mode = len(res.token_ids), res.stop_reason, res.mode
            report.set_margins(res.margins)
            times = res.token_times
            timings = dict(self.timings)
            timings["prefix_prefill"] = self.prefix_ms or 0.0
            timings["prefill"] = (times[0] - t_prefill) * 1e3
            timings["ttft"] = (times[0] - t_start) * 1e3 + lead_ms
            timings["decode"] = (times[-1] - times[0]) * 1e3
            if len(times) > 1 and times[-1] > times[0]:
                report.decode_tokens_per_s = round((len(times) - 1) / (times[-1] - times[0]), 2)
            timings["total"] = (t_end - t_start) * 1e3 + lead_ms
            if eng.cuda:
                report.peak_gpu_mem_mb = round(sum(torch.cuda.max_memory_allocated(i) for i in eng.clock.cuda)
                                               / 2**20, 1)
            report.prefill_speedup = round(eng.adapter.llm_prefill_flops(asm.full_length)
                                           / eng.adapter.llm_prefill_flops(asm.length), 3)
            report.timings_ms = {k: round(v, 3) for k, v in timings.items()}
            out.append(report)
        return out

    def answer(self, question: str, gen: GenerationOptions | None = None, *, baseline: bool = False,
               reuse_prefix: bool = True, lead_ms: float = 0.0, on_stage: Stage | None = None,
               on_text: Callable[[str], None] | None = None, stop: threading.Event | None = None,
               history: list[tuple[str, str]] | None = None) -> Report:
        """Answer `question`, streaming text pieces to `on_text`. `lead_ms` is work before this call that counts
        towards TTFT (sampling, encoding, pruning when the session was made for this one question). `history`:
        the earlier (question, answer) turns of a conversation about this video (the video sits in the first
        user turn, so the prompt prefix and its KV cache are the same as for a single question)."""
        eng = self.engine
        on_stage = on_stage or (lambda *_: None)
        gen = gen or GenerationOptions()
        gen.validate()
        stop = stop or threading.Event()
        t_start = time.perf_counter()
        prompt, asm = self._assemble(question, gen.system if gen.system is not None else self.system, history)
        report = self.report_base(question, asm)
        timings = dict(self.timings)
        # HoliTom's inner merge depends on the question (the last prompt token's attention): no shared prefix
        shared = reuse_prefix and not self.inner and self._prefix_for(prompt, asm)
        stream = TextStream(eng.adapter.tokenizer, eos_ids(eng.model))
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                with torch.inference_mode():
                    if shared:
                        cache, cut = self.prefix_cache, self.prefix_len
                        t0 = eng.clock.now()
                        logits = prefill(eng.model, asm.inputs_embeds[:, cut:], asm.position_ids[..., cut:], cache,
                                         asm.prefill_extra(cut))
                    elif self.inner:
                        cache = new_cache(eng.model)
                        t0 = eng.clock.now()
                        logits, box["inner"] = prefill_inner(eng.model, asm.inputs_embeds, asm.position_ids, cache,
                                                             asm.video_span, *self.inner)
                    else:
                        cache = new_cache(eng.model)
                        t0 = eng.clock.now()
                        logits = prefill(eng.model, asm.inputs_embeds, asm.position_ids, cache,
                                         asm.prefill_extra())
                    box["t_prefill"] = t0
                    try:
                        box["res"] = eng.decode(logits, cache, asm.next_position, gen, on_token=stream.put,
                                                stop=stop, notes=report.notes)
                    finally:
                        if shared:
                            crop_cache(cache, self.prefix_len)
            except BaseException as e:  # handed to the caller; never leave the consumer blocked
                box["error"] = e
            finally:
                stream.end()

        on_stage("prefill", "start")
        worker = threading.Thread(target=work, daemon=True, name="fastvid-decode")
        worker.start()
        started_decode = False
        pieces = iter(stream)
        while True:
            # Ctrl-C may land anywhere in here (also while a piece is printed): stop after the current token and
            # keep what was printed; the worker must have finished before we return (an interpreter that exits
            # under a running forward pass aborts)
            try:
                piece = next(pieces)
                report.answer += piece
                if not started_decode:
                    on_stage("prefill", "done")
                    on_stage("decode", "start")
                    started_decode = True
                if on_text is not None:
                    on_text(piece)
            except StopIteration:
                break
            except KeyboardInterrupt:
                stop.set()
                _join(worker)
                report.stop_reason = "interrupted"
        _join(worker)
        if "error" in box:
            err = box["error"]
            if isinstance(err, torch.OutOfMemoryError):
                raise OutOfMemoryError("out of GPU memory while generating",
                                       "try fewer --frames, a lower --ratio, or fewer --max-new-tokens") from None
            raise err
        if not started_decode:
            on_stage("prefill", "done")
            on_stage("decode", "start")
        on_stage("decode", "done")
        res = box["res"]
        t_end = time.perf_counter()
        if "inner" in box:
            m = box["inner"]
            report.notes.append(f"HoliTom inner merge before LLM layer {m.layer}: {m.visual_after} of "
                                f"{m.visual_before} video-span tokens kept from there on ({m.length_after} of "
                                f"{asm.length} prompt tokens in layers {m.layer}+)")
        times = res.token_times
        report.new_tokens = len(res.token_ids)
        report.decode_mode = res.mode
        report.set_margins(res.margins)
        if res.capture_ms is not None:
            timings["graph_capture"] = res.capture_ms
        report.stop_reason = "interrupted" if stop.is_set() else res.stop_reason
        if shared:
            timings["prefix_prefill"] = self.prefix_ms or 0.0
        if times:
            timings["prefill"] = (times[0] - box["t_prefill"]) * 1e3
            timings["ttft"] = (times[0] - t_start) * 1e3 + lead_ms
            # a CUDA-graph capture (first answer of a buffer size only) sits between tokens 1 and 2: reported apart
            span = times[-1] - times[0] - (res.capture_ms or 0.0) / 1e3
            timings["decode"] = span * 1e3
            if len(times) > 1 and span > 0:
                report.decode_tokens_per_s = round((len(times) - 1) / span, 2)
        timings["total"] = (t_end - t_start) * 1e3 + lead_ms
        if eng.cuda:
            report.peak_gpu_mem_mb = round(sum(torch.cuda.max_memory_allocated(i) for i in eng.clock.cuda) / 2**20, 1)
        if baseline and report.stop_reason != "interrupted":
            on_stage("baseline", "start")
            full = self.feats.embeds.flatten(0, 1)
            with torch.inference_mode():
                full_asm = eng.adapter.assemble(prompt, self.feats, full, torch.arange(full.shape[0]))
            eng.timed_prefill(full_asm)  # untimed, as compare's warm-up: the first prefill at the full length
            runs = eng.BASELINE_RUNS
            pruned, unpruned = eng.timed_prefills([(asm, self.inner), (full_asm, None)], runs)
            pruned_ms, base_ms = statistics.median(pruned), statistics.median(unpruned)
            report.baseline_prefill_ms = round(base_ms, 3)
            report.pruned_prefill_ms = round(pruned_ms, 3)
            report.prefill_timed_runs = runs
            report.prefill_speedup = round(base_ms / pruned_ms, 3) if pruned_ms > 0 else None
            report.prefill_speedup_measured = True
            on_stage("baseline", "done")
        else:
            full_flops = eng.adapter.llm_prefill_flops(asm.full_length)
            kept_flops = eng.adapter.llm_prefill_flops(asm.length)
            if "inner" in box:  # layers from K on ran on the merged sequence (every layer costs the same)
                m, n = box["inner"], len(eng.model.get_decoder().layers)
                kept_flops = (m.layer * kept_flops + (n - m.layer) * eng.adapter.llm_prefill_flops(m.length_after)) / n
            report.prefill_speedup = round(full_flops / kept_flops, 3)
            report.prefill_speedup_measured = False
        report.timings_ms = {k: round(v, 3) for k, v in timings.items()}
        return report

class _PieceSink:
    """Text pieces of one answer handed to a callback as its tokens arrive (batched decoding, where no consumer
    thread iterates a TextStream): the same pieces, and the same concatenated text, as `answer` streams."""

    def __init__(self, tokenizer, eos: set[int], sink: Callable[[str], None]):
        self.stream = TextStream(tokenizer, eos)
        self.sink = sink
        self.text = ""

    def _drain(self) -> None:
        while True:
            try:
                piece = self.stream.queue.get_nowait()
            except queue.Empty:
                return
            self.text += piece
            self.sink(piece)

    def put(self, token: int) -> None:
        self.stream.put(token)
        self._drain()

    def finish(self) -> str:
        self.stream.flush()
        self._drain()
        return self.text


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
