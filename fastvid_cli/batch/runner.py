"""Batch answering: many questions about many videos from a CSV, resumable, optionally data-parallel.

Data path::

    questions CSV ──read_questions──▶ Rows, all validated before any model loads (a bad row becomes an error
      record, not an abort) ──plan──▶ the rows not yet answered under the same settings (read from the output
      and every shard file) ──make_groups──▶ one group per (video, frames, ratio, method): ONE VideoSession, its
      prompt-prefix KV cache reused for every question ──RowWriter──▶ one JSON line per row, fsync'd as it
      finishes ──finalize──▶ the output rewritten in CSV order (shard files merged in) + the flat --csv-out.

What resume relies on is the journal's (fastvid_cli.journal); what the output holds at the end, output.py's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastvid_cli.batch.dist import Dist, init_dist, shard_files, shard_path
from fastvid_cli.batch.groups import Group, make_groups, split_groups
from fastvid_cli.batch.output import clear_output, error_record, finalize, ok_record
from fastvid_cli.batch.plan import BatchConfig, Plan, make_plan
from fastvid_cli.batch.prefetch import FramePrefetcher, Prefetched, features_cached
from fastvid_cli.batch.rows import Row
from fastvid_cli.errors import FastVidError, ServerError
from fastvid_cli.journal import index_records, is_done, read_records, record_key, select
from fastvid_cli.runs import NoProgress, Progress, RecordWriter, RunCounts, item_error, load_engine

# --answer-batch auto, per device. CUDA: batched rows cost about one row per decode step (1 video x 10 questions
# 5.31x faster than separate asks, H100, benchmarks/RESULTS.md). CPU: at best 1.4-1.6x faster per row on an idle
# 2-core machine, 1.7-3.1x slower on a busy one (torch's threads contend; records showed prefill 17-58x and decode
# 29-38x longer): benchmarks/bench_batch_cpu.py, RESULTS.md 2026-12-07.
AUTO_ANSWER_BATCH = {"cuda": 16, "cpu": 1}


@dataclass
class BatchResult:
    rows: int = 0
    skipped: int = 0  # already done before this run
    answered: int = 0  # records written by this process
    failed: int = 0  # of those, errors
    interrupted: bool = False
    final: list[tuple[Row, dict[str, Any] | None]] = field(default_factory=list)  # main process only

    @property
    def final_ok(self) -> int:
        return sum(1 for _, r in self.final if r is not None and r.get("status") == "ok")

    @property
    def final_failed(self) -> int:
        return sum(1 for _, r in self.final if r is not None and r.get("status") == "error")

    @property
    def final_pending(self) -> int:
        return sum(1 for _, r in self.final if r is None)


class RowWriter(RecordWriter):
    """Appends this process's records (`writer(row, record)`); never an "ok" record that the output already
    holds (`has_ok`: (key, fingerprint, question, video) of the "ok" records in the output and its shards)."""

    def __init__(self, path: Path, has_ok: set[tuple], result: BatchResult, progress: Progress):
        super().__init__(path, result, progress)
        self.has_ok = has_ok

    def __call__(self, row: Row, rec: dict[str, Any]) -> None:
        if rec["status"] == "ok":
            sig = (row.key, rec["fingerprint"], row.question, row.video)
            if sig in self.has_ok:
                return
            self.has_ok.add(sig)
        self.write(rec)


@dataclass
class Work:
    """What is left to do, read from the output and every shard file, and this process's part of it."""

    pending: list[Row]  # rows not answered yet under the current settings (all processes')
    has_ok: set[tuple]  # RowWriter.has_ok
    invalid: list[Row]  # rows answered by an error record without a model (main process only)
    share: list[Group]  # this process's groups of answerable rows

    @property
    def mine(self) -> int:
        return len(self.invalid) + sum(len(g.rows) for g in self.share)


def find_work(cfg: BatchConfig, plan: Plan, dist: Dist, sampled_here: bool = True) -> Work:
    """The rows of `plan` that no record in the output (or a shard file, whatever process count wrote them)
    answers under the current fingerprint, and this process's share of them. `sampled_here`: this process samples
    the frames (not a server), so each group gets its frame request."""
    output = Path(cfg.output)
    records = read_records([output, *shard_files(output)])
    by_key = index_records(records)
    pending = [row for row in plan.rows
               if not is_done(select(by_key.get(row.key, []), row, plan.fps[row.row]), cfg.retry_errors)]
    has_ok = {(record_key(r), r.get("fingerprint"), r.get("question"), r.get("video"))
              for r in records if r.get("status") == "ok"}
    # Row errors need no model: the main process writes them. Answerable rows go in whole groups.
    invalid = [r for r in pending if r.error] if dist.is_main else []
    share = split_groups(make_groups([r for r in pending if not r.error], plan.settings), dist.world)[dist.rank]
    if share and sampled_here:
        from fastvid_cli.settings import frame_request

        for g in share:  # sampled before the model loads (prefetch): the family's own plan, or a count
            g.sampling = frame_request(cfg.model, g.frames, g.fps)
    return Work(pending, has_ok, invalid, share)


def run_batch(cfg: BatchConfig, *, engine=None, dist: Dist | None = None, progress: Progress | None = None,
              stop: threading.Event | None = None, on_exception: Callable[[BaseException], None] | None = None,
              prefetch: bool = True) -> BatchResult:
    """Answer every row of `cfg.questions` not answered yet; returns counts and (main process) the final view.

    `engine`: an already loaded Engine (tests); else one is loaded, and only if this process has work.
    `dist`: this process's place in a data-parallel run (default: from the launcher's environment).
    `stop`: when set, the run stops after the current row (Ctrl-C). `on_exception`: called with unexpected
    exceptions recorded as row errors (the CLI prints their traceback under --debug).
    `prefetch`: decode each next video's frames on a background thread while the current one is answered (and the
    first one's while the model loads); records then carry timings_ms.sample_wait (see FramePrefetcher)."""
    progress = progress or NoProgress()
    stop = stop or threading.Event()
    plan = make_plan(cfg, engine)
    output = Path(cfg.output)

    dist = dist or init_dist(cfg.device)
    if cfg.overwrite and dist.is_main:
        if output.exists():
            clear_output(output, main_output=True)
        for p in shard_files(output):
            clear_output(p, main_output=False)
    dist.barrier()
    prefetch = prefetch and cfg.select is None  # --select decodes each video's candidates itself
    work = find_work(cfg, plan, dist, sampled_here=prefetch)
    result = BatchResult(rows=len(plan.rows), skipped=len(plan.rows) - len(work.pending))
    dist.barrier()  # every process has read the files before any is appended to

    progress.start(RunCounts(total=len(plan.rows), skipped=result.skipped, pending=len(work.pending),
                             mine=work.mine, rank=dist.rank, world=dist.world))
    try:
        if work.mine:
            own = output if dist.world == 1 else shard_path(output, dist.rank, dist.world)
            write = RowWriter(own, work.has_ok, result, progress)
            try:
                for row in work.invalid:
                    if stop.is_set():
                        break
                    write(row, error_record(row, row.error or "invalid row", plan.settings[row.row],
                                            plan.fps[row.row], model=plan.model_name))
                if work.share and not stop.is_set():
                    _answer_share(cfg, plan, work.share, write, engine=engine, dist=dist, progress=progress,
                                  stop=stop, on_exception=on_exception, prefetch=prefetch)
            finally:
                write.close()
        result.interrupted = stop.is_set()
    finally:
        progress.stop()

    dist.barrier()  # every process has finished appending
    if dist.is_main:
        result.final = finalize(cfg, plan)
    return result


def _answer_share(cfg: BatchConfig, plan: Plan, share: list[Group], write: RowWriter, *, engine, dist: Dist,
                  progress: Progress, stop: threading.Event, on_exception, prefetch: bool) -> None:
    """This process's groups, in order: the model loaded unless given (while the first video is decoded, with
    `prefetch`), then each group answered until `stop` is set."""
    frames_ahead = None
    if prefetch:
        from fastvid_cli.models.loading import resolve_device
        from fastvid_cli.video_gpu import resolve_decoder

        target = resolve_device(dist.device(cfg.device))
        frames_ahead = FramePrefetcher(share, resolve_decoder(cfg.decoder, target), target)
    try:
        engine = engine or load_engine(cfg, progress, device=dist.device(cfg.device))
        fcache = None
        if cfg.cache_dir is not None:
            from fastvid_cli.feature_cache import FeatureCache

            fcache = FeatureCache(cfg.cache_dir)
            if frames_ahead is not None:  # a video whose features are cached needs no decoding
                frames_ahead.skip = lambda g: features_cached(engine, fcache, g)
        answer_batch = resolve_answer_batch(cfg.answer_batch, engine)
        if cfg.answer_batch is None and cfg.temperature == 0:
            progress.note(f"--answer-batch auto: {answer_batch} on {engine.device}")
        progress.answering()
        gen = cfg.generation()
        scorer = None
        if cfg.select is not None and not engine.remote:  # --server: the server chooses each row's frames
            from fastvid_cli.frame_scorer import load_scorer, selector_source
            from fastvid_cli.models import resolve_model

            scorer = load_scorer(selector_source(cfg.select.selector, resolve_model(cfg.model)),
                                 engine.adapter.vision_device)
        for k, group in enumerate(share):
            if stop.is_set():
                break
            if scorer is not None:
                _answer_group_selected(engine, scorer, group, plan, cfg, gen, write, stop, on_exception, fcache)
                continue
            _answer_group(engine, group, plan, gen, write, stop, on_exception,
                          frames_ahead.take(k) if frames_ahead is not None else None,
                          answer_batch=answer_batch, feature_cache=fcache)
    finally:
        if frames_ahead is not None:
            frames_ahead.close()


def resolve_answer_batch(requested: int | None, engine) -> int:
    """--answer-batch: the number asked for, or for auto (None) AUTO_ANSWER_BATCH of the device the model runs on
    (CUDA wherever any of its weights are on a GPU, else CPU)."""
    if requested is not None:
        return int(requested)
    return AUTO_ANSWER_BATCH["cuda" if engine.cuda else "cpu"]


def _answer_group(engine, group: Group, plan: Plan, gen, write: Callable, stop: threading.Event,
                  on_exception, prefetched: Prefetched | None = None, answer_batch: int = 1,
                  feature_cache=None) -> None:
    """One VideoSession for the group; each row answered with the shared prefix KV cache. With `prefetched`
    frames (FramePrefetcher) the session starts from them instead of sampling here; with a `feature_cache` its
    features are looked up there first (and stored after a miss). Greedy rows go through
    `VideoSession.answer_many` in chunks of `answer_batch` (decoded together: same answers, a fraction of the
    per-row cost); a chunk is finished before a Ctrl-C stops the run, and a chunk that fails as a whole is
    retried row by row so one bad row cannot take its neighbours' answers with it."""
    from fastvid_cli.settings import PruneOptions

    t0 = time.perf_counter()
    # the batch's one method with the parameters its settings record (pruning.resolve_params), whatever the method
    prune = PruneOptions(method=group.method, ratio=group.ratio, params=dict(plan.base["params"]))
    session, session_error = None, None
    try:
        if prefetched is not None and prefetched.error is not None:
            raise prefetched.error
        if prefetched is None or prefetched.clip is None:  # not prefetched, or skipped because cached
            session = engine.session(group.path, frames=group.frames, fps=group.fps, prune=prune, system=gen.system,
                                     feature_cache=feature_cache)
        else:
            session = engine.session(group.path, prune=prune, system=gen.system, clip=prefetched.clip,
                                     sample_ms=prefetched.sample_ms, feature_cache=feature_cache)
    except FastVidError as e:
        session_error = e.one_line()
    except Exception as e:  # a bug or a library failure on this video: recorded, the batch goes on
        session_error = item_error(e, on_exception)
    # sampling (or the wait for prefetched frames) + encoding + pruning: counts toward the first TTFT
    lead_ms = (time.perf_counter() - t0) * 1e3 + (prefetched.wait_ms if prefetched is not None else 0.0)
    batched: dict[int, Any] = {}  # row index in the group -> its Report from a batched chunk
    step = max(1, answer_batch) if gen.temperature == 0 else 1
    for i, row in enumerate(group.rows):
        if stop.is_set() and i not in batched:  # answers already made in a chunk are still written
            return
        s, fp = plan.settings[row.row], plan.fps[row.row]
        if session is None:
            write(row, error_record(row, session_error or "failed", s, fp, model=plan.model_name))
            continue
        if step > 1 and not stop.is_set() and i % step == 0 and i + 1 < len(group.rows):
            chunk = group.rows[i:i + step]
            try:
                reports = session.answer_many([r.question for r in chunk], gen, lead_ms=lead_ms if i == 0 else 0.0,
                                              max_rows=step)
                batched.update({i + j: r for j, r in enumerate(reports)})
            except ServerError:  # --server: the server is gone or failing; stop (what was written stays)
                raise
            except Exception as e:  # noqa: BLE001 - answered one by one below, where each row's error is its own
                if on_exception is not None:
                    on_exception(e)

        def answer(i=i, row=row):
            return batched.pop(i, None) or session.answer(row.question, gen, reuse_prefix=True,
                                                          lead_ms=lead_ms if i == 0 else 0.0)

        def finish(report, data):
            if prefetched is not None:  # sampled in the background: only this wait held the answers up
                data["timings_ms"]["sample_wait"] = round(prefetched.wait_ms, 3)

        _answer_row(engine, plan, row, write, on_exception, answer, finish)


def _answer_row(engine, plan: Plan, row, write: Callable, on_exception, answer: Callable, finish: Callable) -> None:
    """Run `answer()` for one row and write its record: an error record when it raises (a server error stops the
    run), else the report's record after `finish(report, data)` adjusted it. A second Ctrl-C mid-answer leaves a
    partial answer unrecorded and stops."""
    s, fp = plan.settings[row.row], plan.fps[row.row]
    try:
        report = answer()
    except ServerError:
        raise
    except FastVidError as e:
        write(row, error_record(row, e.one_line(), s, fp, model=plan.model_name))
        return
    except Exception as e:
        write(row, error_record(row, item_error(e, on_exception), s, fp, model=plan.model_name))
        return
    if report.stop_reason == "interrupted":
        raise KeyboardInterrupt
    data = report.to_dict()
    data["timings_ms"]["load"] = round(engine.load_ms or 0.0, 3)
    finish(report, data)
    write(row, ok_record(row, data, s, fp))


def _answer_group_selected(engine, scorer, group: Group, plan: Plan, cfg: BatchConfig, gen, write: Callable,
                           stop: threading.Event, on_exception, fcache=None) -> None:
    """--select: the video's candidates are decoded and embedded once (their embeddings kept in `fcache`, the
    feature cache, when there is one); each row then gets the K frames chosen for its question
    (frame_choice.choose), its own session (features belong to one question: no feature cache, no shared prefix)
    and its answer; the record carries `selection`."""
    from fastvid_cli.frame_choice import choose, sample_candidates
    from fastvid_cli.settings import PruneOptions

    prune = PruneOptions(method=group.method, ratio=group.ratio, params=dict(plan.base["params"]))
    try:
        cands, cands_error = sample_candidates(group.path, cfg.select, scorer, decoder=engine.decoder,
                                               cache=fcache), None
    except FastVidError as e:
        cands, cands_error = None, e.one_line()
    except Exception as e:
        cands, cands_error = None, item_error(e, on_exception)
    for row in group.rows:
        if stop.is_set():
            return
        s, fp = plan.settings[row.row], plan.fps[row.row]
        if cands is None:
            write(row, error_record(row, cands_error or "failed", s, fp, model=plan.model_name))
            continue
        def answer(row=row):
            t0 = time.perf_counter()
            clip, info = choose(cands, row.question, cfg.select)
            session = engine.session(group.path, prune=prune, system=gen.system, clip=clip,
                                     sample_ms=cands.sample_ms + cands.embed_ms)
            report = session.answer(row.question, gen, reuse_prefix=False, lead_ms=(time.perf_counter() - t0) * 1e3)
            report.selection = info
            return report

        _answer_row(engine, plan, row, write, on_exception, answer, lambda report, data: None)
