"""The engine: owns a loaded model and answers questions about videos with it, measuring every stage.

One question = sample frames -> preprocess -> vision encode -> prune -> splice -> generate (streamed). This module
loads the model and runs the stages up to pruning; the rest lives beside it: `encoding` (frames encoded while the
video is still being sampled), `session` (a pruned video and the questions about it: prefix KV cache, answer,
answer_many), `prefill` (plain / shared-prefix / LLM-stage prefill), `decoders` (which decode loop runs) and
`report` (Report, the synchronised clock, timings and the prefill speedup). Every time reported is taken with the
device synchronised at both ends, so GPU work is charged to the stage that queued it.

The names callers import from here stay importable here: Engine, Report, GenerationOptions, PruneOptions,
VideoSession, set_threads, versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Callable

import torch

from fastvid_cli import hub
from fastvid_cli.decoders import DecoderChoice
from fastvid_cli.decoding import new_cache, prefill
from fastvid_cli.encoding import PipelinedEncoder
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.errors import oom_guard as _oom_guard  # the name Engine.prune has always used
from fastvid_cli.hub import ModelRef
from fastvid_cli.models import adapter_class, check_attn_implementation, resolve_model
from fastvid_cli.models.interface import Assembled, FamilyAdapter, VideoFeatures
from fastvid_cli.models.loading import dtype_name, resolve_device, resolve_dtype
from fastvid_cli.models.sampling import SamplePlan
from fastvid_cli.prefill import prefill_for
from fastvid_cli.report import Clock, Report, Stage, versions
from fastvid_cli.session import VideoSession
from fastvid_cli.settings import GenerationOptions, PruneOptions
from fastvid_cli.video import ChosenFrames, Clip
from fastvid_cli.video_gpu import resolve_decoder, sample_clip

__all__ = ["Engine", "GenerationOptions", "PruneOptions", "Report", "Stage", "VideoSession", "set_threads",
           "small_cpu_work", "versions"]


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

    remote = False  # remote.RemoteEngine stands in for it with --server (batch, eval)

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
        self.clock = Clock(list(devs))
        self.cuda = bool(self.clock.cuda)
        if self.cuda:
            # PyTorch picks cuDNN's attention for sdpa on Hopper; it builds a plan for every new (query, key) length
            # (0.3-0.7 s the first time a prompt length is seen, and every question has its own length) and costs
            # more host time per call than flash / memory-efficient attention. Measured with
            # benchmarks/diag_shapes.py (H100, 7B shape): per-question time 476 -> 155 ms eager, 131 -> 113 ms with
            # CUDA graphs, first-seen lengths 730-830 -> ~150 ms, full-token prefill 204 -> 182 ms.
            torch.backends.cuda.enable_cudnn_sdp(False)
        # The eager loop or a graph decoder (made on first use and kept) for each answer; see decoders.py.
        self.decoding = DecoderChoice(self.model)
        # Encode frames on the GPU while the rest are still being decoded (see sample_and_encode). None: wherever
        # it pays, i.e. a CUDA vision tower (on the CPU the encoder would compete with the decoders for cores).
        self.pipeline: bool | None = None
        self.encoder = PipelinedEncoder(adapter, self.clock)
        # Which decoder samples frames (--decoder): "cpu", or "gpu" (NVDEC, frames kept on the vision device);
        # set_decoder resolves "auto". Fallbacks of the GPU decoder to the CPU for one clip are noted per session.
        self.decoder = "cpu"

    # ------------------------------------------------------------------ load
    def set_decoder(self, decoder: str = "auto") -> str:
        """Use --decoder `decoder` (cpu | gpu | auto) to sample frames: auto is gpu when the vision tower is on a
        CUDA device with NVDEC, else cpu; gpu without NVDEC raises InvalidOptionError. Returns what it chose."""
        self.decoder = resolve_decoder(decoder, self.adapter.vision_device)
        return self.decoder

    def sample_clip(self, video: str, frames, *, on_frame=None, notes: list[str] | None = None) -> Clip:
        """Sample `frames` of `video` with this engine's decoder (video_gpu.sample_clip: a GPU failure falls back to
        the CPU with a line in `notes`)."""
        return sample_clip(video, frames, decoder=self.decoder, device=self.adapter.vision_device, on_frame=on_frame,
                           notes=notes)

    @classmethod
    def load(cls, model: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
             saliency_model: str | None = None, warmup: bool = True,
             on_stage: Stage | None = None, decoder: str = "auto") -> "Engine":
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
        if dev.startswith("cuda") and (decoder or "auto").strip().lower() == "gpu":
            # before the model touches the GPU: NVDEC's contexts can then share torch's (see the function)
            from fastvid_cli.video_gpu import share_primary_context

            share_primary_context(int(dev.partition(":")[2] or 0))
        on_stage("load", "start")
        with _oom_guard():
            adapter = family_adapter.load(
                ref, config, device=dev, dtype=torch_dtype, attn_implementation=attn_implementation,
                saliency_model=saliency_model, device_map=device_map)
        label = "auto (" + ", ".join(sorted({str(d) for d in device_map.values()})) + ")" if device_map else dev
        engine = cls(adapter, model_name=ref.display, device=label, dtype=torch_dtype,
                     attn_implementation=attn_implementation)
        engine.model_source = ref.source
        engine.set_decoder(decoder)
        engine.load_ms = (time.perf_counter() - t0) * 1e3
        on_stage("load", "done")
        if warmup and engine.cuda:
            engine.warmup()
        return engine

    @property
    def defaults(self) -> dict[str, Any]:
        """The family's frames/fps (its adapter's), its method family, the default method and ratio, and that
        method's settings on the family (pruning.family_defaults)."""
        from fastvid_cli.pruning import family_defaults

        return {**self.adapter.defaults, **family_defaults(self.adapter.method_family)}

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
    def sample(self, video: str, frames, notes: list[str] | None = None) -> tuple[Clip, float]:
        """Sample `frames` (a count, or a frame plan from `frame_plan`) of `video`; (clip, ms). GPU frames are
        ready when this returns (the clock synchronises), so the time is the decoder's."""
        t0 = time.perf_counter()
        clip = self.sample_clip(video, frames, notes=notes)
        if clip.decoder == "gpu":
            self.clock.sync()
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
        if clip.chosen_from:  # --select: the frames chosen for a question, not a uniform sample of that count
            return {"chosen": list(clip.indices), "of": clip.chosen_from}
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
        """Sample `frames` of `video` on a worker thread and encode the frames in groups of PIPELINE_CHUNK as they
        are decoded (encoding.PipelinedEncoder, which says what the timings then mean); (clip, features)."""
        return self.encoder.sample_and_encode(video, frames, timings, on_stage, chunk=self.PIPELINE_CHUNK,
                                              encode_clip=self.features, sampler=self.sample_clip)

    def prune(self, feats: VideoFeatures, opts: PruneOptions, timings: dict[str, float]):
        from fastvid_cli import pruning

        family = self.adapter.method_family
        method = pruning.method_for(opts.method, family)  # the family's variant, if the method has one
        # methods that rank tokens by last-layer vision attention get it (None: they fall back, with a note)
        extra = {"attn": feats.attn_received} if pruning.spec_of(opts.method).needs_attention else {}
        params = pruning.function_params(opts.method, family, opts.params)  # less its LLM stage's
        with torch.inference_mode(), _oom_guard(), small_cpu_work(feats.embeds.device):
            t0 = self.clock.now()
            result = method(feats.embeds, feats.saliency, feats.frame_features, opts.ratio, **params, **extra)
            t1 = self.clock.now()
        timings["prune"] = (t1 - t0) * 1e3
        return result

    # ------------------------------------------------------------------ decoding
    def decode(self, logits: torch.Tensor, cache, next_position: torch.Tensor, gen: GenerationOptions, *,
               on_token=None, stop: threading.Event | None = None, notes: list[str] | None = None):
        """Decode after a prefill into `cache` with the loop decoders.DecoderChoice picks: a CUDA-graph decoder
        when `gen.compile` asks for it (default: on CUDA), else the eager loop; fallbacks are noted in `notes`."""
        return self.decoding.decode(logits, cache, next_position, gen, cuda=self.cuda, on_token=on_token, stop=stop,
                                    notes=notes)

    def decode_rows(self, pre, gen: GenerationOptions, *, on_token=None, stops=None, notes: list[str] | None = None):
        """Decode the rows of a batched prefill (decoding.prefill_rows) together with the loop
        decoders.DecoderChoice.decode_rows picks: the fused B-row step where `decode` would take the fused step,
        else the eager batched loop; fallbacks are noted in `notes`."""
        return self.decoding.decode_rows(pre, gen, cuda=self.cuda, on_token=on_token, stops=stops, notes=notes)

    @property
    def decoders(self) -> dict[str, Any]:
        """The graph decoders made so far ("fused", "fused-rows", "static"; None once one failed)."""
        return self.decoding.decoders

    @property
    def broken(self) -> dict[str, str]:
        """Why a graph decoder is not used any more, by kind."""
        return self.decoding.broken

    @property
    def vision_graphs(self) -> bool | str:
        """Whether frame groups are encoded through a captured CUDA graph: True, False, or why its capture failed."""
        return self.encoder.graphs

    # ------------------------------------------------------------------ prefill timing
    # Timed prefills of each prompt behind `ask --baseline` (compare times --repeat of them per setting).
    BASELINE_RUNS = 3

    def timed_prefill(self, asm: Assembled, inner=None) -> float:
        """ms of a plain prefill of `asm` into a fresh cache (the measured-speedup measurement, same for every
        prompt); with `inner` (a method's LLM stage, pruning.result.LLMStage) the prefill that runs it."""
        with torch.inference_mode(), _oom_guard():
            done = prefill_for(inner).run(self.model, asm, self.clock)
            t1 = self.clock.now()
        return (t1 - done.started) * 1e3

    def timed_prefills(self, prompts: list[tuple[Assembled, Any]], runs: int) -> list[list[float]]:
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
        with `sample_ms` the time that took; a `pending` clip (`--select`'s choice out of cached candidates) is
        decoded here, like a frame count, at its indices (sample_ms: what choosing took). With a `feature_cache`
        (fastvid_cli.feature_cache.FeatureCache), sampled-and-encoded features are looked up first and stored
        after a miss. `fps`: the sampling rate of
        families that sample by rate (Qwen-VL; exclusive with `frames`)."""
        on_stage = on_stage or (lambda *_: None)
        prune = prune or PruneOptions(ratio=self.defaults["ratio"])
        frames = self._sampling_for(frames, fps, clip)
        timings: dict[str, float] = {}
        status, key, hit = "off", None, None
        notes: list[str] = []
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
            chosen = clip if clip is not None and clip.pending else None  # --select's choice, still to decode
            plan = ChosenFrames(chosen.indices) if chosen is not None else frames
            if (clip is None or chosen is not None) and self._pipelined():
                clip, feats = self.encoder.sample_and_encode(
                    video, plan, timings, on_stage, chunk=self.PIPELINE_CHUNK, encode_clip=self.features,
                    sampler=lambda v, f, on_frame: self.sample_clip(v, f, on_frame=on_frame, notes=notes))
                if chosen is not None:  # what choosing them took before (e.g. reading the cached candidates)
                    timings["sample"] += sample_ms or 0.0
            else:
                if clip is None or chosen is not None:
                    on_stage("sample", "start")
                    clip, took = self.sample(video, plan, notes)
                    sample_ms = took + ((sample_ms or 0.0) if chosen is not None else 0.0)
                    on_stage("sample", "done")
                timings["sample"] = sample_ms or 0.0
                on_stage("encode", "start")
                feats = self.features(clip, timings)
                on_stage("encode", "done")
            if chosen is not None:
                clip = dataclasses.replace(clip, requested=chosen.requested, chosen_from=chosen.chosen_from)
            if feature_cache is not None:
                feature_cache.store(key, clip, feats)
        sess = self.session_from_features(video, clip, feats, prune, timings, system=system, on_stage=on_stage)
        sess.cache_status = status
        sess.notes.extend(notes)
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
