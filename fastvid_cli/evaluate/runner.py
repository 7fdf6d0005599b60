"""Benchmark evaluation: accuracy of several pruning settings on a JSONL benchmark, resumable.

Data path::

    BENCH.jsonl ──read_bench──▶ questions, the whole file validated before anything runs (a bad line is a usage
      error naming its line; a missing video becomes an error record) ──make_plan──▶ settings (the unpruned
      reference none@1 first, then methods × ratios, high to low) and a fingerprint per (question, setting)
      ──run_eval──▶ per (video, frames): ONE encoding; per setting: one pruned session whose prompt-prefix KV
      cache serves every question of that video ──RecordWriter──▶ one fsync'd JSON line per (question, setting)
      ──summarize──▶ accuracy, retention vs the reference, mean tokens kept, mean TTFT (per question type too).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastvid_cli.evaluate.bench import BenchQuestion, regenerate_videos
from fastvid_cli.evaluate.plan import EvalConfig, EvalPlan, Setting, make_plan
from fastvid_cli.evaluate.records import chosen_record, error_record, ok_record
from fastvid_cli.evaluate.scoring import choice_parser, mc_prompt, normalize_short, short_prompt
from fastvid_cli.evaluate.summary import summarize
from fastvid_cli.errors import ServerError
from fastvid_cli.journal import index_records, is_done, read_records
from fastvid_cli.runs import NoProgress, Progress, RecordWriter, RunCounts, item_error, load_engine

@dataclass
class EvalResult:
    plan: EvalPlan
    bench: Path
    output: Path
    total: int = 0  # questions x settings
    skipped: int = 0  # done before this run
    answered: int = 0  # records written by this run
    failed: int = 0  # of those, errors
    summary: dict[str, Any] = field(default_factory=dict)


def run_eval(cfg: EvalConfig, *, engine=None, progress: Progress | None = None,
             stop: threading.Event | None = None,
             on_exception: Callable[[BaseException], None] | None = None) -> EvalResult:
    """Answer every (question, setting) of `cfg` not answered yet, then summarize the output file.

    `engine`: an already loaded Engine (tests); else one is loaded, and only if something is left to answer.
    `stop`: when set, the run stops after the current question. `on_exception`: called with unexpected
    exceptions recorded as errors (the CLI prints their traceback under --debug)."""
    progress = progress or NoProgress()
    stop = stop or threading.Event()
    plan = make_plan(cfg, engine)
    output = cfg.output_path
    by_key = index_records(read_records([output]))
    todo: list[tuple[BenchQuestion, Setting]] = [
        (q, s) for q in plan.questions for s in plan.settings
        if not is_done(chosen_record(by_key, q, plan.fp(q, s), plan.form), cfg.retry_errors)]
    result = EvalResult(plan=plan, bench=Path(cfg.bench), output=output,
                        total=len(plan.questions) * len(plan.settings))
    result.skipped = result.total - len(todo)
    progress.start(RunCounts(total=result.total, skipped=result.skipped, pending=len(todo), mine=len(todo)))
    try:
        if todo:
            for note in regenerate_videos(list({q.id: q for q, _ in todo}.values())):
                progress.note(note)
            writer = RecordWriter(output, result, progress)
            write = writer.write
            try:
                for q, s in todo:
                    if q.error and not stop.is_set():
                        write(error_record(plan, q, s, q.error, input_error=True))
                answerable = [(q, s) for q, s in todo if not q.error]
                if answerable and not stop.is_set():
                    engine = engine or load_engine(cfg, progress)
                    fcache = None
                    if cfg.cache_dir is not None:
                        from fastvid_cli.feature_cache import FeatureCache

                        fcache = FeatureCache(cfg.cache_dir)
                    # --server: the server chooses each question's frames (the records carry its selection)
                    scorer = _scorer(cfg, engine) if cfg.select is not None and not engine.remote else None
                    progress.answering()
                    for group in _groups(answerable, plan):
                        if stop.is_set():
                            break
                        if scorer is not None:
                            _answer_group_selected(engine, scorer, group, plan, cfg, write, stop, on_exception, fcache)
                        else:
                            _answer_group(engine, group, plan, cfg, write, stop, on_exception, fcache)
            finally:
                writer.close()
    finally:
        progress.stop()
    result.summary = summarize(plan, read_records([output]))
    return result


@dataclass
class _Group:
    """The pending items of one video at one frame count: one encoding, one pruned session per setting."""

    path: str
    frames: int | None  # None: sampled by rate (EvalConfig.fps, or the family's default)
    items: dict[Setting, list[BenchQuestion]]


def _groups(items: list[tuple[BenchQuestion, Setting]], plan: EvalPlan) -> list[_Group]:
    groups: dict[tuple[str, int], _Group] = {}
    for q, s in items:  # items come question by question, so groups are in order of their first question
        key = (os.path.realpath(q.path), plan.frames[q.id])
        g = groups.setdefault(key, _Group(q.path, plan.frames[q.id], {}))
        g.items.setdefault(s, []).append(q)
    order = {s: i for i, s in enumerate(plan.settings)}
    for g in groups.values():
        g.items = dict(sorted(g.items.items(), key=lambda kv: order[kv[0]]))
    return list(groups.values())


def _answer_group(engine, group: _Group, plan: EvalPlan, cfg: EvalConfig, write: Callable, stop: threading.Event,
                  on_exception=None, feature_cache=None) -> None:
    """Encode the video once (method none keeps the features whole; looked up in / stored to `feature_cache` when
    given), then per setting prune those features into a session whose prompt-prefix KV cache every question of
    this video shares."""
    from fastvid_cli.settings import PruneOptions

    gen = cfg.generation()
    short = plan.form == "short"
    parse = None if short else choice_parser()
    try:
        base = engine.session(group.path, frames=group.frames, prune=PruneOptions(method="none", ratio=1.0),
                              system=gen.system, fps=cfg.fps if group.frames is None else None,
                              feature_cache=feature_cache)
    except Exception as e:  # an unreadable video (or a bug): its items are errors, the run goes on
        message = item_error(e, on_exception)
        for s, qs in group.items.items():
            for q in qs:
                write(error_record(plan, q, s, message))
        return
    for s, qs in group.items.items():
        if stop.is_set():
            return
        opts = PruneOptions(method=s.method, ratio=s.ratio, params=s.param_dict())
        try:
            sess = engine.session_from_features(group.path, base.clip, base.feats, opts, base.timings,
                                                system=gen.system)
        except Exception as e:
            message = item_error(e, on_exception)
            for q in qs:
                write(error_record(plan, q, s, message))
            continue
        for i, q in enumerate(qs):
            if stop.is_set():
                return
            try:
                # The first question of a session also pays pruning (and, inside answer, the prefix prefill).
                prompt = short_prompt(q.question) if short else mc_prompt(q.question, q.options)
                if getattr(engine, "remote", False):  # --select over --server: frames for the bare question
                    sess.select_for = q.question
                report = sess.answer(prompt, gen, reuse_prefix=True,
                                     lead_ms=sess.timings.get("prune", 0.0) if i == 0 else 0.0)
            except ServerError:  # --server: the server is gone or failing; stop (what was written stays)
                raise
            except Exception as e:
                write(error_record(plan, q, s, item_error(e, on_exception)))
                continue
            if report.stop_reason == "interrupted":  # Ctrl-C mid-answer: a partial answer is not recorded
                raise KeyboardInterrupt
            read = normalize_short(report.answer) if short else parse(report.answer, q.options)
            rec = ok_record(plan, q, s, report, read)
            if report.selection is not None:  # --select over --server: the frames the server chose
                rec["selection"] = selection_record(report.selection)
            write(rec)
        del sess  # frees this setting's prefix KV cache before the next one is built


def selection_record(info: dict[str, Any]) -> dict[str, Any]:
    """What an eval record keeps of a selection's record (frame_choice.choose): the chosen frames, not every
    candidate's score."""
    return {k: info[k] for k in ("k", "candidates", "selector", "power", "timestamps", "scores", "timings_ms")}


def _scorer(cfg: EvalConfig, engine):
    """The frame scorer of --select (--selector, else the model's own, else SigLIP so400m), on the model's vision
    device."""
    from fastvid_cli.frame_scorer import load_scorer, selector_source
    from fastvid_cli.models import resolve_model

    return load_scorer(selector_source(cfg.select.selector, resolve_model(cfg.model)), engine.adapter.vision_device)


def _answer_group_selected(engine, scorer, group: _Group, plan: EvalPlan, cfg: EvalConfig, write: Callable,
                           stop: threading.Event, on_exception=None, fcache=None) -> None:
    """--select: the video's candidates are sampled and embedded once; each question then gets its own K frames
    (frame_choice.choose), encoded once and pruned by every setting. No feature cache: the features belong to one
    question."""
    from fastvid_cli.frame_choice import choose, sample_candidates
    from fastvid_cli.settings import PruneOptions

    gen = cfg.generation()
    short = plan.form == "short"
    parse = None if short else choice_parser()
    try:
        cands = sample_candidates(group.path, cfg.select, scorer, decoder=engine.decoder, cache=fcache)
    except Exception as e:
        message = item_error(e, on_exception)
        for s, qs in group.items.items():
            for q in qs:
                write(error_record(plan, q, s, message))
        return
    by_question: dict[str, list[Setting]] = {}
    questions: dict[str, BenchQuestion] = {}
    for s, qs in group.items.items():
        for q in qs:
            by_question.setdefault(q.id, []).append(s)
            questions[q.id] = q
    for qid, settings in by_question.items():
        q = questions[qid]
        prompt = short_prompt(q.question) if short else mc_prompt(q.question, q.options)
        try:
            clip, info = choose(cands, q.question, cfg.select)
            base = engine.session(group.path, prune=PruneOptions(method="none", ratio=1.0), clip=clip,
                                  sample_ms=cands.sample_ms, system=gen.system)
        except Exception as e:
            message = item_error(e, on_exception)
            for s in settings:
                write(error_record(plan, q, s, message))
            continue
        for s in settings:
            if stop.is_set():
                return
            opts = PruneOptions(method=s.method, ratio=s.ratio, params=s.param_dict())
            try:
                sess = engine.session_from_features(group.path, base.clip, base.feats, opts, base.timings,
                                                    system=gen.system)
                report = sess.answer(prompt, gen, reuse_prefix=False, lead_ms=sess.timings.get("prune", 0.0))
            except ServerError:
                raise
            except Exception as e:
                write(error_record(plan, q, s, item_error(e, on_exception)))
                continue
            if report.stop_reason == "interrupted":
                raise KeyboardInterrupt
            read = normalize_short(report.answer) if short else parse(report.answer, q.options)
            rec = ok_record(plan, q, s, report, read)
            rec["selection"] = selection_record(info)
            write(rec)
            del sess
