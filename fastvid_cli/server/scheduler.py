"""One worker thread owns the model; requests wait in a bounded queue and are answered in order, with sharing.

* **Sessions**: a request's video is sampled, encoded and pruned once per (video file, frames, pruning setting,
  system prompt): the VideoSession (features, kept tokens, prompt-prefix KV cache) is kept in an LRU and every
  later request about that video with those settings starts from it. Encoded features are kept apart too, so a
  request with another pruning setting only prunes again. The on-disk feature cache of `ask` is used as well
  (not for uploads, whose files live only as long as the server).
* **Batching**: greedy requests about the same session that wait at the same time are decoded together
  (VideoSession.answer_many: the fused B-row step on CUDA): one decode step serves all of them, each streams its own
  tokens and stops on its own; the answers are those of answering one by one. Greedy requests with the same
  generation settings about different videos are decoded together as well (session.answer_across: each prefilled
  on its own session's prefix, then one batched decode), when no request about the first one's video waits with
  it. After taking a batchable request the worker waits a few ms (`batch_window_s`) for companions, but only while
  requests have recently been arriving concurrently, so a lone client never pays it.
* **Cancellation**: a client that goes away sets its work's `halt`: a waiting work is dropped, a running one stops
  after its current token (a batched one leaves its batch, the others go on).
* **Isolation**: a failure is the failing request's; a batch that fails as a whole is answered again one by one,
  except for the requests that had already received text (they get the error).

Events a work emits (its `emit(kind, value)`, called on the worker thread): ("text", piece),
("done", {"report": dict, "finish_reason": str}) or {"result": dict} for a compare, ("error", ApiError),
("cancelled", None).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from fastvid_cli.errors import FastVidError
from fastvid_cli.server.errors import ApiError, from_fastvid, internal
from fastvid_cli.server.media import MediaPolicy, VideoRef
from fastvid_cli.server.metrics import Metrics
from fastvid_cli.server.settings import Resolved

log = logging.getLogger("fastvid.serve")

NOTE_SESSION = ("answered from the server's memory: this video's features, pruned tokens and prompt-prefix KV cache "
                "were made for an earlier request with the same settings")
NOTE_FEATURES = "video features reused from the server's memory (encoded for an earlier request), pruned for this one"


@dataclass
class Work:
    """One request for the worker: a chat answer, or (kind "compare") a compare run."""

    video: VideoRef
    emit: Callable[[str, Any], None]
    settings: Resolved | None = None
    gen: Any = None  # GenerationOptions
    question: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    plan: Any = None  # what to sample: a frame count or a family's frame plan (Engine.frame_plan)
    kind: str = "chat"
    compare: Any = None  # protocol.CompareRequest (+ resolved params) for kind "compare"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    halt: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    finished: bool = False
    streamed: bool = False  # some text was sent (an error now ends the stream instead of answering 4xx/5xx)
    t_enqueued: float = field(default_factory=time.perf_counter)
    t_started: float | None = None

    selection: dict | None = None  # --select: the record of the frames chosen for this work's conversation

    @property
    def opening(self) -> str:
        """What --select chooses the frames for (follow-ups keep them): `fastvid.select_for` when the request
        names it, else the conversation's first question."""
        if self.settings is not None and self.settings.select_for:
            return self.settings.select_for
        return self.history[0][0] if self.history else self.question

    @property
    def plan_key(self) -> Any:
        if self.settings is not None and self.settings.select is not None:
            return ("select", json.dumps(self.settings.select.key(), sort_keys=True), self.opening)
        return self.plan.key() if hasattr(self.plan, "key") else self.plan

    @property
    def session_key(self) -> tuple:
        s = self.settings
        return (self.video.identity, self.plan_key, s.method, s.ratio,
                json.dumps(s.params, sort_keys=True, default=str), self.gen.system)

    @property
    def batch_key(self) -> tuple | None:
        """Works with equal keys can be decoded together (None: this one cannot be batched)."""
        s = self.settings
        if (self.kind != "chat" or self.gen.temperature > 0 or s.baseline or not s.cache
                or "inner" in s.params):
            return None
        return (self.session_key, self.gen.max_new_tokens, self.gen.margins)

    @property
    def rows_key(self) -> tuple | None:
        """Works with equal keys can be decoded together as rows about different videos (each prefilled on its own
        session's prefix): the batchable ones with the same generation settings (None: not batchable)."""
        if self.batch_key is None:
            return None
        g = self.gen
        return (g.max_new_tokens, g.margins, g.compile, g.top_p, g.seed)


class StopText:
    """Holds back streamed text that could be the start of a stop sequence; cuts the answer at the first one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.text = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            self.text += piece
            return piece
        buf = self.pending + piece
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = buf[:min(found)], "", True
        else:
            keep = 0
            for s in self.stops:
                for n in range(min(len(s) - 1, len(buf)), keep, -1):
                    if buf.endswith(s[:n]):
                        keep = n
                        break
            out, self.pending = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.text += out
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        self.text += out
        return out


class Scheduler:
    def __init__(self, engine, policy: MediaPolicy, metrics: Metrics, *, feature_cache=None, max_queue: int = 64,
                 max_batch: int = 16, batch_window_s: float = 0.01, max_sessions: int = 32,
                 max_features: int | None = None):
        self.engine = engine
        self.policy = policy
        self.metrics = metrics
        self.feature_cache = feature_cache
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_sessions = max_sessions
        self.max_features = max_features or max_sessions
        self.cv = threading.Condition()
        self.waiting: deque[Work] = deque()
        self.running = 0
        self.closing = False
        self.last_concurrent = -math.inf
        self.service_s = 1.0  # moving average of one work's time, for Retry-After
        self.sessions: OrderedDict[tuple, Any] = OrderedDict()
        self.features: OrderedDict[tuple, tuple] = OrderedDict()
        self.scorer = None  # --select: the frame scorer, loaded at the first request that selects
        self.candidates: dict[tuple, Any] = {}  # --select: (video, selection) -> frame_choice.Candidates (one video)
        self.selections: dict[Any, dict] = {}  # --select: plan key -> the record of the frames chosen
        self.thread = threading.Thread(target=self._loop, name="fastvid-serve-worker", daemon=True)
        metrics.queue_depth = lambda: len(self.waiting)
        metrics.running = lambda: self.running

    # ------------------------------------------------------------------ admission
    def start(self) -> None:
        self.thread.start()

    def submit(self, work: Work) -> None:
        with self.cv:
            if self.closing:
                raise ApiError(503, "the server is shutting down", code="shutting_down",
                               headers={"Retry-After": "5"})
            if len(self.waiting) >= self.max_queue:
                wait = max(1, math.ceil(self.service_s * (len(self.waiting) + 1) / max(1, self.max_batch)))
                raise ApiError(429, f"the server's queue is full ({self.max_queue} requests waiting, --max-queue); "
                                    f"retry in {wait} s", code="queue_full", headers={"Retry-After": str(wait)})
            if self.waiting or self.running:
                self.last_concurrent = time.perf_counter()
            self.policy.uploads.pin(work.video.upload, +1)
            self.waiting.append(work)
            self.cv.notify_all()

    def cancel(self, work: Work) -> None:
        """The client went away: drop the work if it waits, stop it after its current token if it runs."""
        if work.finished:
            return
        work.cancelled = True
        work.halt.set()
        with self.cv:
            if work in self.waiting:
                self.waiting.remove(work)
                self._release(work)

    def close(self) -> None:
        """Answer what was admitted, then stop the worker."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        if self.thread.is_alive():
            self.thread.join()

    def _release(self, work: Work) -> None:
        if not work.finished:
            work.finished = True
            self.policy.uploads.pin(work.video.upload, -1)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.waiting and not self.closing:
                    self.cv.wait()
                if not self.waiting:
                    return
                work = self.waiting.popleft()
                self.running += 1
            group = [work]
            t0 = time.perf_counter()
            try:
                group = self._serve(work)
            except BaseException:  # noqa: BLE001 - the worker must outlive any request
                log.error("unexpected failure in the worker:\n%s", traceback.format_exc())
                for w in group:
                    self._fail(w, internal())
            finally:
                with self.cv:
                    for w in group:
                        self._release(w)
                    self.running -= len(group)
                self.service_s = 0.8 * self.service_s + 0.2 * (time.perf_counter() - t0)

    def _serve(self, work: Work) -> list[Work]:
        work.t_started = time.perf_counter()
        if work.kind == "compare":
            self._compare(work)
            return [work]
        try:
            sess, source = self._session(work)
        except Exception as e:  # noqa: BLE001
            self._fail(work, self._api_error(e, work))
            return [work]
        group = [work] + self._mates(work) if work.batch_key is not None else [work]
        if len(group) == 1:
            self._answer_one(work, sess, source)
        elif all(w.batch_key == work.batch_key for w in group):
            self._answer_group(group, sess, source)
        else:
            self._answer_across(group, sess, source)
        return group

    def _mates(self, first: Work) -> list[Work]:
        """Waiting works that can be decoded with `first`; waits up to batch_window_s for more while requests
        have recently been arriving concurrently. Those about first's session (one shared prefill) when there are
        any, else those with its generation settings about any video (the others wait, in their order)."""
        key, rows_key = first.batch_key, first.rows_key
        now = time.perf_counter()
        deadline = now + self.batch_window_s if now - self.last_concurrent < 2.0 else now
        with self.cv:
            while True:
                fits = [w for w in self.waiting if w.kind == "chat" and not w.cancelled and w.rows_key == rows_key]
                same = [w for w in fits if w.batch_key == key]
                mates = (same or fits)[:self.max_batch - 1]
                left = deadline - time.perf_counter()
                if len(mates) + 1 >= self.max_batch or left <= 0 or self.closing:
                    break
                self.cv.wait(left)
            for w in mates:
                self.waiting.remove(w)
                w.t_started = time.perf_counter()
                self.running += 1
            return mates

    # ------------------------------------------------------------------ sessions
    def _session(self, work: Work):
        """(VideoSession, source): source is "session" (reused whole), "memory" (features reused, pruned now),
        or the disk feature cache's "hit" / "miss" / "off"."""
        from fastvid_cli.engine import PruneOptions

        eng = self.engine
        s, video = work.settings, work.video
        self.policy.recheck(video)
        key = work.session_key
        if s.cache and key in self.sessions:
            self.sessions.move_to_end(key)
            work.selection = self.selections.get(work.plan_key)
            return self.sessions[key], "session"
        prune = PruneOptions(method=s.method, ratio=s.ratio, params=dict(s.params))
        fkey = (video.identity, work.plan_key)
        if eng.cuda:
            import torch

            for i in eng.clock.cuda:
                torch.cuda.reset_peak_memory_stats(i)
        if s.cache and fkey in self.features:
            self.features.move_to_end(fkey)
            clip, feats, timings = self.features[fkey]
            sess = eng.session_from_features(video.path, clip, feats, prune, timings, system=work.gen.system)
            sess.cache_status, source = "hit", "memory"
            work.selection = self.selections.get(work.plan_key)
        elif s.select is not None:  # K frames chosen for the conversation's opening question
            clip, work.selection = self._chosen(work.video, s.select, work.opening, s.cache)
            sess = eng.session(video.path, prune=prune, system=work.gen.system, clip=clip,
                               sample_ms=work.selection["timings_ms"]["sample_candidates"])
            source = sess.cache_status
            self.selections[work.plan_key] = work.selection
            while len(self.selections) > self.max_features:
                self.selections.pop(next(iter(self.selections)))
            if s.cache:
                light = dataclasses.replace(sess.clip, frames=sess.clip.frames[:0])
                self.features[fkey] = (light, sess.feats, {k: v for k, v in sess.timings.items()
                                                           if k in ("sample", "preprocess", "vision")})
                while len(self.features) > self.max_features:
                    self.features.popitem(last=False)
        else:
            disk = self.feature_cache if s.cache and video.upload is None else None
            counted = isinstance(work.plan, int)  # a frame count (LLaVA-OV: the alias's), else the family's plan
            sess = eng.session(video.path, frames=work.plan if counted else s.frames, fps=None if counted else s.fps,
                               prune=prune, system=work.gen.system, feature_cache=disk)
            source = sess.cache_status
            if s.cache:
                shared = {k: v for k, v in sess.timings.items() if k in ("sample", "preprocess", "vision")}
                light = dataclasses.replace(sess.clip, frames=sess.clip.frames[:0])  # frames are not needed again
                self.features[fkey] = (light, sess.feats, shared)
                while len(self.features) > self.max_features:
                    self.features.popitem(last=False)
        if s.cache:
            self.sessions[key] = sess
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        return sess, source

    def _chosen(self, video, sel, question: str, cache: bool = True):
        """--select: (the K-frame clip of `video` chosen for `question` (a conversation's opening one), the
        selection's record). The scorer loads at the first such request; a video's candidates are decoded and
        embedded once (the latest video's are kept; with `cache`, their embeddings also go to the disk cache)."""
        from fastvid_cli.frame_choice import choose, sample_candidates

        if self.scorer is None:
            from fastvid_cli.frame_scorer import load_scorer, selector_source

            self.scorer = load_scorer(selector_source(sel.selector, self.engine.adapter.ref),
                                      self.engine.adapter.vision_device)
        ckey = (video.identity, json.dumps(sel.key(), sort_keys=True))
        if ckey not in self.candidates:
            disk = self.feature_cache if cache and video.upload is None else None
            self.candidates = {ckey: sample_candidates(video.path, sel, self.scorer, decoder=self.engine.decoder,
                                                          texts=[question], cache=disk)}
        return choose(self.candidates[ckey], question, sel)

    # ------------------------------------------------------------------ answering
    def _text_sink(self, work: Work, text: StopText):
        def on_text(piece: str) -> None:
            if work.cancelled:
                return
            out = text.feed(piece)
            if text.hit:
                work.halt.set()
            if out:
                work.streamed = True
                work.emit("text", out)
        return on_text

    def _answer_one(self, work: Work, sess, source: str) -> None:
        text = StopText(work.stop_strings)
        lead = (time.perf_counter() - work.t_enqueued) * 1e3
        try:
            report = sess.answer(work.question, work.gen, baseline=work.settings.baseline, lead_ms=lead,
                                 reuse_prefix=work.settings.cache, on_text=self._text_sink(work, text),
                                 stop=work.halt, history=work.history)
        except Exception as e:  # noqa: BLE001
            self._fail(work, self._api_error(e, work))
            return
        self._deliver(work, report, source, text)
        self.metrics.batch_size(1)

    def _answer_group(self, group: list[Work], sess, source: str) -> None:
        texts = [StopText(w.stop_strings) for w in group]
        sinks = [self._text_sink(w, t) for w, t in zip(group, texts)]
        now = time.perf_counter()
        try:
            reports = sess.answer_many([w.question for w in group], group[0].gen,
                                       lead_ms=[(now - w.t_enqueued) * 1e3 for w in group], max_rows=self.max_batch,
                                       histories=[w.history for w in group], on_text=sinks,
                                       stops=[w.halt for w in group])
        except Exception as e:  # noqa: BLE001 - one by one, so that one bad request cannot fail the others
            log.warning("a batched decode failed (%s: %s); answering its requests one by one", type(e).__name__, e)
            for w in group:
                if w.streamed:
                    self._fail(w, self._api_error(e, w))
                else:
                    self._answer_one(w, sess, source)
            return
        self.metrics.batch_size(len(group))
        for w, r, t in zip(group, reports, texts):
            self._deliver(w, r, source, t)

    def _answer_across(self, group: list[Work], sess, source: str) -> None:
        """Works about different videos decoded together (session.answer_across); a work whose video or prefill
        fails gets its error alone."""
        from fastvid_cli.session import Ask, answer_across

        rows: list[tuple[Work, Any, str]] = [(group[0], sess, source)]
        for w in group[1:]:
            try:
                rows.append((w, *self._session(w)))
            except Exception as e:  # noqa: BLE001 - this request's video
                self._fail(w, self._api_error(e, w))
        if len(rows) == 1:
            self._answer_one(*rows[0])
            return
        texts = [StopText(w.stop_strings) for w, _, _ in rows]
        now = time.perf_counter()
        asks = [Ask(s, w.question, history=w.history, lead_ms=(now - w.t_enqueued) * 1e3,
                    on_text=self._text_sink(w, t), stop=w.halt) for (w, s, _), t in zip(rows, texts)]
        try:
            results = answer_across(asks, group[0].gen, max_rows=self.max_batch)
        except Exception as e:  # noqa: BLE001 - the batched decode: one by one, as for a group about one video
            log.warning("a batched decode failed (%s: %s); answering its requests one by one", type(e).__name__, e)
            for w, s, src in rows:
                if w.streamed:
                    self._fail(w, self._api_error(e, w))
                else:
                    self._answer_one(w, s, src)
            return
        decoded = sum(not isinstance(r, Exception) for r in results)
        self.metrics.batch_size(decoded)
        for (w, _, src), r, t in zip(rows, results, texts):
            if isinstance(r, Exception):
                self._fail(w, self._api_error(r, w))
            else:
                self._deliver(w, r, src, t)

    def _deliver(self, work: Work, report, source: str, text: StopText) -> None:
        rest = text.flush()
        if rest and not work.cancelled:
            work.emit("text", rest)
        if work.cancelled:
            work.emit("cancelled", None)
            return
        if work.selection is not None:
            report.selection = work.selection
        data = report.to_dict()
        data["answer"] = text.text
        if text.hit:
            data["stop_reason"] = "stop"
        data["video"] = work.video.shown
        t = data["timings_ms"]
        t["queue"] = round(((work.t_started or work.t_enqueued) - work.t_enqueued) * 1e3, 3)
        t["load"] = round(self.engine.load_ms or 0.0, 3)
        if source in ("session", "memory"):
            for k in ("sample", "preprocess", "vision") + (("prune",) if source == "session" else ()):
                if k in t:
                    t[k] = 0.0
            t.pop("encode_after_sample", None)
            data["cache"] = "hit"
            data["notes"].append(NOTE_SESSION if source == "session" else NOTE_FEATURES)
        data["notes"] = [work.video.rewrite(n) for n in data["notes"]]
        self.metrics.answer(data)
        self.metrics.feature_cache("memory" if source == "session" else source)
        finish = "length" if data["stop_reason"] == "max_new_tokens" else "stop"
        work.emit("done", {"report": data, "finish_reason": finish})

    def _compare(self, work: Work) -> None:
        from fastvid_cli.compare import run_compare
        from fastvid_cli.engine import GenerationOptions

        c, eng = work.compare, self.engine
        try:
            self.policy.recheck(work.video)
            selection = None
            if c.select is not None:  # K frames chosen for the question, as `compare --select` does locally
                clip, selection = self._chosen(work.video, c.select, c.question, c.cache)
                sample_ms = selection["timings_ms"]["sample_candidates"]
            else:
                clip, sample_ms = eng.sample(work.video.path, work.plan)
            disk = self.feature_cache if c.cache and work.video.upload is None else None
            gen = GenerationOptions(max_new_tokens=c.max_new_tokens, system=c.system, compile=c.compile)
            result = run_compare(eng, work.video.path, c.question, methods=c.methods, ratios=c.ratios,
                                 params=c.resolved_params, frames=len(clip.indices),
                                 repeat=c.repeat, gen=gen, baseline=c.baseline, clip=clip, sample_ms=sample_ms,
                                 feature_cache=disk)
        except Exception as e:  # noqa: BLE001
            self._fail(work, self._api_error(e, work))
            return
        if selection is not None:
            result["selection"] = selection
        result["video"] = work.video.shown
        result = json.loads(work.video.rewrite(json.dumps(result)))
        work.emit("done", {"result": result})

    # ------------------------------------------------------------------ errors
    def _api_error(self, e: BaseException, work: Work) -> ApiError:
        if isinstance(e, ApiError):
            return e
        if isinstance(e, FastVidError):
            return from_fastvid(e, work.video.rewrite)
        log.error("internal error while answering %s:\n%s", work.id, "".join(traceback.format_exception(e)))
        return internal()

    def _fail(self, work: Work, err: ApiError) -> None:
        if work.cancelled:
            work.emit("cancelled", None)
            return
        work.emit("error", err)
