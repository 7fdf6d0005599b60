"""One video sampled, encoded and pruned once, and the questions asked about it.

`VideoSession.answer` goes the way gpt-fast's generate does: build the prompt, prefill it (prefill.py: on the
shared video-prefix KV cache, plain, or through a pruning method's stage inside the LLM), decode the answer
(decoders.py) on a worker thread while this thread streams its text, then fill in the report (report.py).
`answer_many` decodes several questions together on the shared prefix; `answer_across` decodes questions about
different videos (different sessions) together, each prefilled on its own session's prefix.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastvid_cli.decoding import DecodeResult, RowStack, TextStream, eos_ids, prefill_rows
from fastvid_cli.errors import OutOfMemoryError, oom_guard
from fastvid_cli.llm_stage import fit_stage
from fastvid_cli.models.interface import Assembled, VideoFeatures
from fastvid_cli.models.loading import dtype_name
from fastvid_cli.prefill import Prefill, Prefilled, PrefixPrefill, prefill_for, prefill_prefix
from fastvid_cli.report import Report, Stage, estimated_prefill_speedup, fill_timings, peak_gpu_mem_mb, versions
from fastvid_cli.settings import GenerationOptions, PruneOptions
from fastvid_cli.video import Clip


def _join(worker: threading.Thread) -> None:
    """Wait for `worker`, ignoring further Ctrl-C: it stops within a token once asked to."""
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt:
            continue


def stream_from_worker(work: Callable[[], Any], stream: TextStream, on_piece: Callable[[str], None],
                       stop: threading.Event) -> Any:
    """Run `work` (which feeds `stream` and ends nothing itself) on a "fastvid-decode" thread, handing each piece of
    text to `on_piece` on this thread as it comes; return what `work` returned, or raise what it raised.

    Ctrl-C may land anywhere in here (also inside `on_piece`, while a piece is printed): `stop` is set, so the
    worker stops after the current token, and the pieces it still produced are handed on. The worker has always
    finished when this returns: an interpreter that exits under a running forward pass aborts."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as e:  # handed to the caller; never leave the consumer blocked
            box["error"] = e
        finally:
            stream.end()

    worker = threading.Thread(target=run, daemon=True, name="fastvid-decode")
    worker.start()
    pieces = iter(stream)
    while True:
        try:
            on_piece(next(pieces))
        except StopIteration:
            break
        except KeyboardInterrupt:
            stop.set()
            _join(worker)
    _join(worker)
    if "error" in box:
        raise box["error"]
    return box["result"]


class VideoSession:
    """A video sampled, encoded and pruned once. FastVID is query-agnostic, so every question about the video
    shares the pruned tokens exactly, and with `reuse_prefix` also the KV cache of the prompt up to and including
    the video tokens (prefilled once, cropped back after each answer)."""

    def __init__(self, engine, video: str, clip: Clip, feats: VideoFeatures, result, prune: PruneOptions,
                 timings: dict[str, float], system: str | None):
        self.engine = engine  # the engine.Engine that made this session
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
        from fastvid_cli.pruning import llm_stage

        # the method's stage inside the LLM prefill (HoliTom's inner merge), when its parameters ask for one
        self.inner = llm_stage(prune.method, engine.adapter.method_family, prune.params, ratio=prune.ratio)
        if self.inner:
            self.inner, note = fit_stage(engine.model, self.inner)
            if note:
                self.notes.append(note)

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
            eng = self.engine
            with torch.inference_mode(), oom_guard():
                cache, cut, self.prefix_ms = prefill_prefix(eng.model, asm, eng.clock)
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
            attn_implementation=eng.attn_implementation, versions=versions(), cache=self.cache_status,
            frame_decoder=clip.decoder if self.cache_status != "hit" else "")
        r.notes.extend(eng.adapter.warnings)
        r.notes.extend(result.notes)
        r.notes.extend(self.notes)
        if clip.short:
            r.notes.append(f"the clip has only {clip.total_frames} frames; used all of them instead of "
                           f"{clip.requested}")
        return r

    # ------------------------------------------------------------------ one question
    def answer(self, question: str, gen: GenerationOptions | None = None, *, baseline: bool = False,
               reuse_prefix: bool = True, lead_ms: float = 0.0, on_stage: Stage | None = None,
               on_text: Callable[[str], None] | None = None, stop: threading.Event | None = None,
               history: list[tuple[str, str]] | None = None) -> Report:
        """Answer `question`, streaming text pieces to `on_text`. `lead_ms` is work before this call that counts
        towards TTFT (sampling, encoding, pruning when the session was made for this one question). `history`:
        the earlier (question, answer) turns of a conversation about this video (the video sits in the first
        user turn, so the prompt prefix and its KV cache are the same as for a single question)."""
        on_stage = on_stage or (lambda *_: None)
        gen = gen or GenerationOptions()
        gen.validate()
        stop = stop or threading.Event()
        t_start = time.perf_counter()
        prompt, asm = self._assemble(question, gen.system if gen.system is not None else self.system, history)
        report = self.report_base(question, asm)
        how = self._choose_prefill(prompt, asm, reuse_prefix)
        pre, res = self._decode_streamed(asm, how, gen, report, stop, on_stage, on_text)
        self._fill_in(report, pre, res, stop, t_start, lead_ms, shared=isinstance(how, PrefixPrefill))
        if baseline and report.stop_reason != "interrupted":
            self._measure_speedup(prompt, asm, report, on_stage)
        else:
            report.prefill_speedup = estimated_prefill_speedup(self.engine.adapter, asm, pre.stage)
            report.prefill_speedup_measured = False
        return report

    def _choose_prefill(self, prompt, asm: Assembled, reuse_prefix: bool) -> Prefill:
        """How this question's prompt is prefilled: on the shared prefix cache when it may and can be (made now,
        on first use), else into a fresh cache (through the method's LLM stage, when it has one)."""
        # an LLM stage depends on the question (HoliTom's: the last prompt token's attention): no shared prefix
        if reuse_prefix and not self.inner and self._prefix_for(prompt, asm):
            return PrefixPrefill(self.prefix_cache, self.prefix_len)
        return prefill_for(self.inner)

    def _decode_streamed(self, asm: Assembled, how: Prefill, gen: GenerationOptions, report: Report,
                         stop: threading.Event, on_stage: Stage,
                         on_text: Callable[[str], None] | None) -> tuple[Prefilled, DecodeResult]:
        """Prefill and decode on the worker thread while the answer's text goes into `report.answer` and to
        `on_text` here; the stages prefill and decode are over when the first piece comes and at the end."""
        stream = TextStream(self.engine.adapter.tokenizer, eos_ids(self.engine.model))
        started_decode = False

        def on_piece(piece: str) -> None:
            nonlocal started_decode
            report.answer += piece
            if not started_decode:
                on_stage("prefill", "done")
                on_stage("decode", "start")
                started_decode = True
            if on_text is not None:
                on_text(piece)

        on_stage("prefill", "start")
        pre, res = stream_from_worker(lambda: self._generate(asm, how, gen, stream.put, stop, report.notes),
                                      stream, on_piece, stop)
        if not started_decode:
            on_stage("prefill", "done")
            on_stage("decode", "start")
        on_stage("decode", "done")
        return pre, res

    def _generate(self, asm: Assembled, how: Prefill, gen: GenerationOptions, on_token, stop: threading.Event,
                  notes: list[str]) -> tuple[Prefilled, DecodeResult]:
        """The worker thread's job: prefill `asm` the way `how` says, then decode from its last token's logits."""
        eng = self.engine
        try:
            with torch.inference_mode():
                pre = how.run(eng.model, asm, eng.clock)
                try:
                    res = eng.decode(pre.logits, pre.cache, asm.next_position, gen, on_token=on_token, stop=stop,
                                     notes=notes)
                finally:
                    how.release(pre.cache)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError("out of GPU memory while generating",
                                   "try fewer --frames, a lower --ratio, or fewer --max-new-tokens") from None
        return pre, res

    def _fill_in(self, report: Report, pre: Prefilled, res: DecodeResult, stop: threading.Event, t_start: float,
                 lead_ms: float, *, shared: bool) -> None:
        """What the decode gave (tokens, mode, margins, why it stopped), the answer's timings and peak memory."""
        eng = self.engine
        t_end = time.perf_counter()
        if pre.note:
            report.notes.append(pre.note)
        report.new_tokens = len(res.token_ids)
        report.decode_mode = res.mode
        report.set_margins(res.margins)
        report.stop_reason = "interrupted" if stop.is_set() else res.stop_reason
        fill_timings(report, dict(self.timings), res.token_times, t_start=t_start, t_prefill=pre.started,
                     t_end=t_end, lead_ms=lead_ms, capture_ms=res.capture_ms,
                     prefix_ms=(self.prefix_ms or 0.0) if shared else None)
        if eng.cuda:
            report.peak_gpu_mem_mb = peak_gpu_mem_mb(eng.clock.cuda)

    def _measure_speedup(self, prompt, asm: Assembled, report: Report, on_stage: Stage) -> None:
        """--baseline: time prefills of the unpruned prompt against this one's, alternating, as compare does."""
        eng = self.engine
        on_stage("baseline", "start")
        full = self.feats.embeds.flatten(0, 1)
        with torch.inference_mode():
            full_asm = eng.adapter.assemble(prompt, self.feats, full, torch.arange(full.shape[0]))
        eng.timed_prefill(full_asm)  # untimed, as compare's warm-up: the first prefill at the full length
        runs = eng.BASELINE_RUNS
        pruned, unpruned = eng.timed_prefills([(asm, self.inner), (full_asm, None)], runs)
        report.set_measured_speedup(pruned, unpruned, runs)
        on_stage("baseline", "done")

    # ------------------------------------------------------------------ many questions
    # Most prompt+answer tokens (summed over rows) one batched decode holds in its replicated KV cache.
    BATCH_TOKENS = 65536

    def answer_many(self, questions: list[str], gen: GenerationOptions | None = None, *,
                    lead_ms: float | list[float] = 0.0, max_rows: int = 16,
                    histories: list[list[tuple[str, str]] | None] | None = None,
                    on_text: list[Callable[[str], None] | None] | None = None,
                    stops: list[threading.Event | None] | None = None) -> list[Report]:
        """Greedy answers to several questions about this video, decoded together in batches of up to `max_rows`
        rows on top of the shared prefix KV cache (decoding.prefill_rows, then Engine.decode_rows: the fused B-row
        CUDA-graph step where a single answer would take the fused step, else the eager batched loop); the same answers as `answer` one by
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
            if len(part) == 1:  # a last row alone: the one-answer decoder (whose graphs exist) answers it
                reports.extend(one_by_one(part))
                continue
            reports.extend(self._answer_rows([questions[i] for i in part], [built[i][1] for i in part], gen, cut,
                                             [leads[i] for i in part], [sinks[i] for i in part],
                                             [halts[i] for i in part], lambda part=part: one_by_one(part)))
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
        notes: list[str] = []
        try:
            with torch.inference_mode():
                pre = prefill_rows(eng.model, self.prefix_cache, [a.inputs_embeds[:, cut:] for a in asms],
                                   [a.position_ids[..., cut:] for a in asms], clock=eng.clock.now)
                t_prefill = pre.started
                results = eng.decode_rows(pre, gen, on_token=on_token if any(streams) else None,
                                          stops=halts if any(halts) else None, notes=notes)
                del pre  # the rows' KV cache: freed before the reports are made
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
            report.notes.extend(notes)
            if streams[b] is not None:
                report.answer = streams[b].finish()
            else:
                report.answer = eng.adapter.tokenizer.decode([t for t in res.token_ids if t not in eos],
                                                             skip_special_tokens=True)
            report.new_tokens, report.stop_reason, report.decode_mode = len(res.token_ids), res.stop_reason, res.mode
            report.set_margins(res.margins)
            fill_timings(report, dict(self.timings), res.token_times, t_start=t_start, t_prefill=t_prefill,
                         t_end=t_end, lead_ms=lead_ms, capture_ms=res.capture_ms, prefix_ms=self.prefix_ms or 0.0)
            if eng.cuda:
                report.peak_gpu_mem_mb = peak_gpu_mem_mb(eng.clock.cuda)
            report.prefill_speedup = estimated_prefill_speedup(eng.adapter, asm)
            out.append(report)
        return out


@dataclass
class Ask:
    """One question for `answer_across`: about `session`'s video, with the arguments `VideoSession.answer` takes."""

    session: VideoSession
    question: str
    history: list[tuple[str, str]] | None = None
    lead_ms: float = 0.0
    on_text: Callable[[str], None] | None = None
    stop: threading.Event | None = None


def answer_across(asks: list[Ask], gen: GenerationOptions | None = None, *,
                  max_rows: int = 16) -> list[Report | Exception]:
    """Greedy answers to questions about different videos (sessions of one engine), decoded together: each prompt is
    prefilled on its own, on its session's shared prefix KV cache as `answer` does, its cache copied into a row of one
    left-padded batched cache (decoding.RowStack), and the rows decode together through Engine.decode_rows (the fused
    B-row step on CUDA, else the eager batched loop), up to `max_rows` rows at a time. The answers are those of
    `answer` one by one; text streams to each ask's `on_text`, and its `stop` ends its row alone.

    One entry per ask, in order: its Report, or the exception its own prompt raised (assembling or prefilling it), so
    that one bad request fails alone. A failure of the batched decode itself is raised (no row's text is lost: the
    caller knows which asks already streamed). Sampling, a method's LLM stage, or fewer than two asks answer one by
    one."""
    gen = gen or GenerationOptions()
    gen.validate()
    out: list[Report | Exception | None] = [None] * len(asks)
    if gen.temperature > 0 or max_rows < 2 or len(asks) < 2 or any(a.session.inner for a in asks):
        for i, a in enumerate(asks):
            out[i] = _answer_alone(a, gen)
        return out
    built: list[Any] = [None] * len(asks)  # (prompt, Assembled) of each ask
    for i, a in enumerate(asks):
        sess = a.session
        try:
            built[i] = sess._assemble(a.question, gen.system if gen.system is not None else sess.system, a.history)
        except Exception as e:  # noqa: BLE001 - this ask's own failure
            out[i] = e
    todo = [i for i in range(len(asks)) if out[i] is None]
    per_row = max((built[i][1].length for i in todo), default=0) + gen.max_new_tokens
    rows = max(2, min(max_rows, VideoSession.BATCH_TOKENS // per_row))
    for start in range(0, len(todo), rows):
        part = todo[start:start + rows]
        for i, r in zip(part, _answer_stack([asks[i] for i in part], [built[i] for i in part], gen)):
            out[i] = r
    return out


def _answer_alone(a: Ask, gen: GenerationOptions) -> Report | Exception:
    try:
        return a.session.answer(a.question, gen, lead_ms=a.lead_ms, on_text=a.on_text, stop=a.stop,
                                history=a.history)
    except Exception as e:  # noqa: BLE001 - this ask's own failure
        return e


def _answer_stack(asks: list[Ask], built: list[tuple[Any, Assembled]],
                  gen: GenerationOptions) -> list[Report | Exception]:
    """`answer_across` for one batch of asks, with each one's (prompt, Assembled)."""
    if len(asks) == 1:
        return [_answer_alone(asks[0], gen)]
    eng = asks[0].session.engine
    out: list[Report | Exception | None] = [None] * len(asks)
    stack = RowStack([asm.length for _, asm in built])
    t_start = time.perf_counter()
    started: list[float] = [0.0] * len(asks)
    shared: list[bool] = [False] * len(asks)
    notes: list[list[str]] = [[] for _ in asks]
    for b, a in enumerate(asks):
        sess, (prompt, asm) = a.session, built[b]
        try:
            with torch.inference_mode(), oom_guard():
                how = sess._choose_prefill(prompt, asm, True)
                pre = how.run(eng.model, asm, eng.clock)
                try:
                    stack.put(b, pre.cache, pre.logits, asm.next_position)
                finally:
                    how.release(pre.cache)
        except Exception as e:  # noqa: BLE001 - this ask's own failure
            out[b] = e
            continue
        started[b], shared[b] = pre.started, isinstance(how, PrefixPrefill)
        if pre.note:
            notes[b].append(pre.note)
    keep = [b for b in range(len(asks)) if out[b] is None]
    if len(keep) < 2:  # nothing left to batch: the one-answer path (its prefill again) answers a lone survivor
        for b in keep:
            out[b] = _answer_alone(asks[b], gen)
        return out
    eos = eos_ids(eng.model)
    streams = [_PieceSink(eng.adapter.tokenizer, eos, asks[b].on_text) if asks[b].on_text is not None else None
               for b in keep]

    def on_token(r: int, token: int, _t: float) -> None:
        if streams[r] is not None:
            streams[r].put(token)

    halts = [asks[b].stop for b in keep]
    decode_notes: list[str] = []
    try:
        with torch.inference_mode():
            pre = stack.rows(eng.model, keep, min(started[b] for b in keep))
            del stack
            results = eng.decode_rows(pre, gen, on_token=on_token if any(streams) else None,
                                      stops=halts if any(halts) else None, notes=decode_notes)
            del pre
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise OutOfMemoryError("out of GPU memory while generating",
                               "try fewer --frames, a lower --ratio, or fewer --max-new-tokens") from None
    t_end = time.perf_counter()
    for r, (b, res) in enumerate(zip(keep, results)):
        a = asks[b]
        sess, asm = a.session, built[b][1]
        report = sess.report_base(a.question, asm)
        report.notes.append(f"answered together with {len(keep) - 1} other question(s) about other videos (each "
                            "prefilled on its own, then one batched decode)")
        report.notes.extend(notes[b] + decode_notes)
        if streams[r] is not None:
            report.answer = streams[r].finish()
        else:
            report.answer = eng.adapter.tokenizer.decode([t for t in res.token_ids if t not in eos],
                                                         skip_special_tokens=True)
        report.new_tokens, report.decode_mode = len(res.token_ids), res.mode
        report.stop_reason = "interrupted" if a.stop is not None and a.stop.is_set() else res.stop_reason
        report.set_margins(res.margins)
        fill_timings(report, dict(sess.timings), res.token_times, t_start=t_start, t_prefill=started[b], t_end=t_end,
                     lead_ms=a.lead_ms, capture_ms=res.capture_ms,
                     prefix_ms=(sess.prefix_ms or 0.0) if shared[b] else None)
        if eng.cuda:
            report.peak_gpu_mem_mb = peak_gpu_mem_mb(eng.clock.cuda)
        report.prefill_speedup = estimated_prefill_speedup(eng.adapter, asm)
        report.prefill_speedup_measured = False
        out[b] = report
    return out


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
