"""The `fastvid` command line. Thin: parse options, call the engine, hand results to ui.py.

Importing this module must not import torch or transformers (keeps `fastvid --help` instant); heavy modules
are imported inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer

from fastvid_cli import __version__
from fastvid_cli import options as O
from fastvid_cli.cli_common import (check_cheaply as _check_cheaply, check_method as _check_method,
                                    check_ratio as _check_ratio, given_options as _given_cli_options,
                                    method_options_by_name, pop_select, run_command, server_client, server_url)
from fastvid_cli.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, InvalidOptionError

app = typer.Typer(
    cls=O.Group,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Answer questions about videos with a local Video LLM, made fast by FastVID token pruning.",
    epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items() if k) + "\n\n"
           + O.examples_epilog(None),
)

BASELINE_HELP = ("After the answer, time the prefill of the pruned and of the unpruned prompt the way `compare` "
                 "does (3 runs each, alternating; medians) and report the MEASURED prefill speedup with both times. "
                 "Without it the speedup shown is an ESTIMATE labelled 'est.': the ratio of LLM prefill FLOPs "
                 "(projections, causal attention, MLP) at the full and the pruned prompt length.")


@app.command(cls=O.Command)
@O.method_options(after="ratio")
@O.select_options(after="fps")
def ask(
    video: Path = typer.Argument(..., metavar="VIDEO", help="Video file (mp4, mkv, webm, mov, …). Use `--` before "
                                 "a path that starts with '-'.", show_default=False),
    question: str = typer.Argument(..., metavar="QUESTION", help="The question to answer.", show_default=False),
    model: str = O.MODEL,
    device: str = O.DEVICE,
    dtype: str = O.DTYPE,
    attn_implementation: str = O.ATTN,
    saliency_model: Optional[str] = O.SALIENCY,
    offline: bool = O.OFFLINE,
    threads: Optional[int] = O.THREADS,
    frames: Optional[int] = O.FRAMES,
    fps: Optional[float] = O.FPS,
    method: str = O.METHOD,
    ratio: Optional[float] = O.RATIO,
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_p: float = O.TOP_P,
    seed: Optional[int] = O.SEED,
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    baseline: bool = typer.Option(False, "--baseline", help=BASELINE_HELP, rich_help_panel="Output"),
    cache_dir: Optional[Path] = O.CACHE_DIR,
    no_cache: bool = O.NO_CACHE,
    decoder: str = O.DECODER,
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout, no live display.",
                                 rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Answer only: no progress, no summary.",
                               rich_help_panel="Output"),
    margins: bool = typer.Option(False, "--margins", help="Measure each answer token's logit margin (its logit "
                                 "minus the runner-up's; near 0 = another CPU may answer differently): "
                                 "logit_margins in --json, a note in the summary. Decodes eagerly.",
                                 rich_help_panel="Output"),
    server: Optional[str] = O.SERVER,
    api_key: Optional[str] = O.API_KEY,
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Answer a question about a video, FastVID-pruned, streamed with live stats.

    The answer streams to stdout; progress and a summary (tokens kept, stage times, decode speed, peak memory,
    prefill speedup) go to stderr.
    """

    select = pop_select(method_options, frames, fps)  # before the method options are read

    def body() -> int:
        _check_ratio(ratio)
        _check_method(method)
        if not question.strip():
            raise InvalidOptionError("the question is empty")
        from fastvid_cli.pruning import check_options, given_options, ratio_for, resolve_params

        sel = select()
        given = given_options(method_options)
        check_options([method], None, given)  # before the model loads, on any family; on the model's family below
        if server_url(server):
            return _ask_on_server(server_url(server), api_key, video, question, method_options, sel)
        _check_cheaply(video, model, device, dtype, attn_implementation)
        from fastvid_cli import hub
        from fastvid_cli.engine import GenerationOptions, PruneOptions, set_threads
        from fastvid_cli.ui import AnswerOut, StageDisplay, print_summary

        set_threads(threads)
        gen = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                system=system, compile=compile_decode, margins=margins)
        gen.validate()
        answer = AnswerOut()
        display = StageDisplay(enabled=not (as_json or quiet), answer=answer)
        chosen: dict[str, Any] = {}
        sample_notes: list[str] = []
        from fastvid_cli.feature_cache import FeatureCache

        fcache = None if no_cache else FeatureCache(cache_dir or hub.fastvid_cache_dir() / "features")
        engine, clip, sample_ms, wait_ms = _load_and_sample(
            video, frames, display, model=model, device=device, dtype=dtype, attn_implementation=attn_implementation,
            saliency_model=saliency_model, offline=offline, show_warnings=not (as_json or quiet), fps=fps,
            decoder=decoder, notes=sample_notes, select=sel, question=question, chosen=chosen, cache=fcache)
        family = engine.defaults["method_family"]
        check_options([method], family, given)
        prune = PruneOptions(method=method, ratio=ratio_for(method, ratio or None, engine.defaults["ratio"]),
                             params=resolve_params(method, family, given))
        report = engine.ask(str(video), question, prune=prune, gen=gen, baseline=baseline, clip=clip,
                            sample_ms=sample_ms, sample_wait_ms=wait_ms,
                            feature_cache=fcache, on_stage=display,
                            on_text=None if as_json else answer)
        report.notes.extend(sample_notes)
        display.stop()
        if chosen:
            report.selection = chosen
        data = report.to_dict()
        data["timings_ms"]["load"] = round(engine.load_ms or 0.0, 3)
        if as_json:
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            answer.end_line()
            if not quiet:
                print_summary(data, engine.load_ms)
        return EXIT_INTERRUPTED if report.stop_reason == "interrupted" else 0

    run_command(debug, body)


def _ask_on_server(url: str, api_key: str | None, video: Path, question: str, method_options: dict[str, Any],
                   select=None) -> int:
    """`ask --server`: the options the user set go with the request (the method options by parameter name, which
    the server resolves as a local `ask` does, on its model's family; --model, which the server refuses when it
    serves another); the rest are the server's defaults (which, for a server started without pruning/generation
    flags, are those of a local `ask`). With `select` the server chooses the frames with its own selector, which
    --selector must name if given. cli_ask_server.py runs the same for a plain command line without typer."""
    from fastvid_cli.remote import ask_remote, check_selector

    p = _given_cli_options("model", "frames", "fps", "method", "ratio", "max_new_tokens", "temperature", "top_p",
                           "seed", "system", "compile_decode", "baseline", "no_cache", "as_json", "quiet", "margins")
    method = p.get("method")
    as_json, quiet = bool(p.get("as_json")), bool(p.get("quiet"))
    client = server_client(url, api_key, not (as_json or quiet), except_options=("model",))
    if select is not None:
        check_selector(client, select.selector)
    params = method_options_by_name(method_options)
    gen = {k: p.get(k) for k in ("max_new_tokens", "temperature", "top_p", "seed", "system")}
    return ask_remote(client, str(video), question, model=p.get("model"), frames=p.get("frames"), fps=p.get("fps"),
                      method=method, ratio=p.get("ratio"), params=params, gen=gen,
                      baseline=bool(p.get("baseline")), margins=bool(p.get("margins")),
                      compile_decode=p.get("compile_decode"), cache=not p.get("no_cache"), as_json=as_json,
                      quiet=quiet, select=select)


def _load_and_sample(video: Path, frames: int | None, display, *, model: str, device: str, dtype: str,
                     attn_implementation: str, saliency_model: str | None, offline: bool, show_warnings: bool,
                     fps: float | None = None, decoder: str = "auto", notes: list[str] | None = None,
                     select=None, question: str = "", chosen: dict | None = None, cache=None):
    """Load the model on a worker thread while this thread samples the frames (after `_check_cheaply`).

    The two overlap. Returns (engine, clip, sample_ms, wait_ms): sample_ms is the sampler's own time (not the wait
    for the load after it), wait_ms how long sampling outlasted the load (0 when the load took longer). `decoder`:
    --decoder (resolved against the device the model goes to; "gpu" without NVDEC fails before the load);
    a GPU decoder's fallback to the CPU adds a line to `notes`.
    With `select` (settings.SelectOptions), this thread samples the candidates (with the same decoder), scores them
    against `question` and keeps K (frame_choice); sample_ms then covers all of that, and `chosen` receives the
    selection's record; `cache` (the feature cache, or None) keeps the candidates' embeddings."""
    from fastvid_cli import hub
    from fastvid_cli.settings import frame_request

    hub.set_offline(offline)
    from fastvid_cli.engine import Engine
    from fastvid_cli.models.loading import resolve_device, resolve_dtype
    from fastvid_cli.video_gpu import resolve_decoder, sample_clip

    target = resolve_device(device)
    resolve_dtype(dtype, target)
    decoder = resolve_decoder(decoder, target)
    request = frame_request(model, frames, fps)  # a frame count, or the family's own plan (Qwen-VL: --fps)
    loaded: dict[str, Any] = {}

    def load() -> None:
        try:
            loaded["engine"] = Engine.load(model, device=device, dtype=dtype, attn_implementation=attn_implementation,
                                           saliency_model=saliency_model, decoder=decoder)
        except BaseException as e:  # handed to the main thread
            loaded["error"] = e
        loaded["t"] = time.perf_counter()

    if select is not None:
        from fastvid_cli.frame_scorer import import_classes

        import_classes()  # before the loader thread imports transformers too
    display("load", "start")
    loader = threading.Thread(target=load, daemon=True, name="fastvid-load")
    t_load = time.perf_counter()
    loader.start()
    t0 = time.perf_counter()
    try:
        if select is None:
            clip = sample_clip(str(video), request, decoder=decoder, device=target, notes=notes)
        else:
            clip = _select_frames(video, question, select, model, target, chosen, decoder=decoder, notes=notes,
                                  cache=cache)
        if clip.decoder == "gpu":
            import torch

            torch.cuda.synchronize(clip.frames.device)  # the frames are ready: the sample time is the decoder's
        t_sampled = time.perf_counter()  # before waiting for the load: that wait is not sampling
        display("sample", "done", seconds=t_sampled - t0)
    finally:
        loader.join()  # also on a decode error found mid-file: an interpreter exiting under a running load aborts
    if "error" in loaded:
        raise loaded["error"]
    display("load", "done", seconds=loaded["t"] - t_load)
    engine = loaded["engine"]
    if show_warnings:
        from fastvid_cli.ui import warn_line

        for w in engine.adapter.warnings:
            warn_line(w)
    return engine, clip, (t_sampled - t0) * 1e3, max(0.0, (t_sampled - loaded["t"]) * 1e3)


def _select_frames(video: Path, question: str, select, model: str, device: str, chosen: dict | None, *,
                   decoder: str = "cpu", notes: list[str] | None = None, cache=None):
    """--select on this machine: the scorer (--selector, else the model's own, else SigLIP so400m) loads on
    `device` (the model's), scores the candidates (decoded by `decoder`) against the question, and K of them are
    kept; returns that clip."""
    from fastvid_cli.frame_choice import choose, sample_candidates
    from fastvid_cli.frame_scorer import load_scorer, selector_source
    from fastvid_cli.models import resolve_model

    scorer = load_scorer(selector_source(select.selector, resolve_model(model)), device)
    cands = sample_candidates(str(video), select, scorer, decoder=decoder, notes=notes, texts=[question],
                              cache=cache)
    clip, info = choose(cands, question, select, decode_now=True)  # while the model loads
    if chosen is not None:
        chosen.update(info)
    return clip


@app.command(cls=O.Command)
@O.method_options(after="method")
@O.select_options(after="fps")
def compare(
    video: Path = typer.Argument(..., metavar="VIDEO", help="Video file.", show_default=False),
    question: str = typer.Argument(..., metavar="QUESTION", help="The question to answer.", show_default=False),
    ratio: list[float] = typer.Option([], "--ratio", "-r", metavar="RATIO", help="Retention ratio; repeat it to "
                                      "compare several (default: 0.5, 0.25, 0.1).", show_default=False,
                                      rich_help_panel="Pruning"),
    method: list[str] = typer.Option([], "--method", metavar="METHOD", help=O.METHODS_HELP, show_default=False,
                                     rich_help_panel="Pruning"),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Do not run the unpruned (ratio 1.0) row; "
                                     "speedups are then not shown.", rich_help_panel="Pruning"),
    repeat: int = typer.Option(3, min=1, max=100, metavar="N", help="Runs per setting; the table shows medians.",
                               rich_help_panel="Output"),
    model: str = O.MODEL,
    device: str = O.DEVICE,
    dtype: str = O.DTYPE,
    attn_implementation: str = O.ATTN,
    saliency_model: Optional[str] = O.SALIENCY,
    offline: bool = O.OFFLINE,
    threads: Optional[int] = O.THREADS,
    frames: Optional[int] = O.FRAMES,
    fps: Optional[float] = O.FPS,
    cache_dir: Optional[Path] = O.CACHE_DIR,
    no_cache: bool = O.NO_CACHE,
    decoder: str = O.DECODER,
    max_new_tokens: int = typer.Option(128, min=1, metavar="N", help="Most tokens per answer.",
                                       rich_help_panel="Generation"),
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    full: bool = typer.Option(False, "--full", help="Print whole answers instead of shortened ones.",
                              rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with a list of rows.",
                                 rich_help_panel="Output"),
    server: Optional[str] = O.SERVER,
    api_key: Optional[str] = O.API_KEY,
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Compare pruning settings on one video and question: one table, every cell measured.

    Loads the model once, samples and encodes the video once, warms up, then prunes and answers each setting
    --repeat times (greedy) and reports medians, with prefill and TTFT speedups measured against ratio 1.0.
    """

    select = pop_select(method_options, frames, fps)

    def body() -> int:
        sel = select()
        ratios = ratio or [0.5, 0.25, 0.1]
        for r in ratios:
            _check_ratio(r)
        from fastvid_cli.pruning import DEFAULT_METHOD, check_options, given_options

        methods = method or [DEFAULT_METHOD]
        for m in methods:
            _check_method(m)
        given = given_options(method_options)
        check_options(methods, None, given)  # on any family: the model's is checked once it is loaded
        if not question.strip():
            raise InvalidOptionError("the question is empty")
        if server_url(server):
            from fastvid_cli.remote import check_selector, compare_remote
            from fastvid_cli.ui import print_compare

            client = server_client(server_url(server), api_key, not as_json)
            if sel is not None:
                check_selector(client, sel.selector)
            result = compare_remote(client, str(video), question, methods=methods, ratios=ratios,
                                    params=method_options_by_name(method_options), frames=frames, fps=fps,
                                    repeat=repeat,
                                    baseline=not no_baseline, max_new_tokens=max_new_tokens, system=system,
                                    compile_decode=compile_decode, cache=not no_cache, model=None, select=sel)
            if as_json:
                sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            else:
                print_compare(result, full=full)
                if result.get("selection"):
                    from fastvid_cli.ui import selection_line

                    selection_line(result["selection"])
            return 0
        _check_cheaply(video, model, device, dtype, attn_implementation)
        from fastvid_cli import hub
        from fastvid_cli.compare import run_compare
        from fastvid_cli.engine import GenerationOptions, set_threads
        from fastvid_cli.feature_cache import FeatureCache
        from fastvid_cli.ui import StageDisplay, print_compare

        set_threads(threads)
        gen = GenerationOptions(max_new_tokens=max_new_tokens, system=system, compile=compile_decode)
        display = StageDisplay(enabled=not as_json)
        chosen: dict[str, Any] = {}
        sample_notes: list[str] = []
        fcache = None if no_cache else FeatureCache(cache_dir or hub.fastvid_cache_dir() / "features")
        engine, clip, sample_ms, _ = _load_and_sample(
            video, frames, display, model=model, device=device, dtype=dtype, attn_implementation=attn_implementation,
            saliency_model=saliency_model, offline=offline, show_warnings=not as_json, fps=fps, decoder=decoder,
            notes=sample_notes, select=sel, question=question, chosen=chosen, cache=fcache)
        display("compare", "start")
        check_options(methods, engine.defaults["method_family"], given)
        result = run_compare(engine, str(video), question, methods=methods, ratios=ratios, params=given,
                             frames=len(clip.indices), repeat=repeat, gen=gen, baseline=not no_baseline, clip=clip,
                             sample_ms=sample_ms, feature_cache=fcache)
        result["notes"].extend(sample_notes)
        if chosen:
            result["selection"] = chosen
        display.stop()
        if as_json:
            sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            print_compare(result, full=full)
            if chosen:
                from fastvid_cli.ui import selection_line

                selection_line(chosen)
        return 0

    run_command(debug, body)


@app.command(cls=O.Command)
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.", rich_help_panel="Output")) -> None:
    """List model aliases, their hub ids, and whether each is in the local cache."""

    def body() -> int:
        from fastvid_cli import hub
        from fastvid_cli.models import ALIASES, FAMILIES, alias_ref

        rows = []
        for a in ALIASES.values():
            try:
                cached = hub.is_cached(alias_ref(a))
            except Exception:
                cached = False
            rows.append({"alias": a.name, "repo": a.repo, "family": a.family, "params": a.params,
                         "default_frames": a.frames, "default_fps": a.fps, "cached": cached, "notes": a.notes})
        if as_json:
            print(json.dumps({"models": rows, "families": list(FAMILIES)}, indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title="fastvid models", title_justify="left")
        cells = [(r["alias"], r["repo"], r["params"], ALIASES[r["alias"]].sampling,  # a frame count or "2 fps"
                  "[green]yes[/]" if r["cached"] else "no", r["notes"]) for r in rows]
        # short columns never shrink; a narrow terminal folds the hub id and drops the notes (see --json)
        wide = console.width >= 140
        for i, col in enumerate(("alias", "hub id", "size", "frames", "cached")):
            longest = max(len(col), *(len(c[i]) if i != 4 else 3 for c in cells))
            if col == "hub id":
                table.add_column(col, overflow="fold", min_width=20)
            else:
                table.add_column(col, no_wrap=True, min_width=longest)
        if wide:
            table.add_column("notes", overflow="fold")
        for c in cells:
            table.add_row(*(c if wide else c[:5]))
        console.print(table)
        if not wide:
            console.print("(notes hidden in a terminal this narrow: widen it, or see `fastvid models --json`)",
                          markup=False)
        console.print("Any checkpoint whose config.json has model_type in: " + ", ".join(FAMILIES)
                      + " also works, by hub id or local folder.", markup=False)
        return 0

    run_command(False, body)


@app.command(cls=O.Command)
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.", rich_help_panel="Output")) -> None:
    """Check the installation: versions, devices and memory, caches, cached models, PyAV decoders."""

    def body() -> int:
        from fastvid_cli.doctor import doctor_info

        info = doctor_info()
        if as_json:
            print(json.dumps(info, indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, title="fastvid doctor", title_justify="left")
        t.add_column(style="bold cyan")
        t.add_column()
        for k, v in info["versions"].items():
            t.add_row(k, str(v))
        t.add_row("python", info["python"])
        t.add_row("cpu cores", str(info["cpu_cores"]))
        if info["gpus"]:
            for g in info["gpus"]:
                t.add_row(f"cuda:{g['index']}", f"{g['name']} · {g['free_gb']:.1f} / {g['total_gb']:.1f} GiB free")
        else:
            t.add_row("gpu", "[yellow]none (CUDA not available): runs on CPU[/]")
        t.add_row("hf cache", info["hf_cache"])
        t.add_row("fastvid cache", info["fastvid_cache"])
        t.add_row("offline", str(info["offline"]))
        t.add_row("hub", info["network"])
        t.add_row("cached models", ", ".join(info["cached_models"]) or "none")
        t.add_row("saliency weights", info["saliency_weights"])
        t.add_row("fused decode", info["fused_decode"])
        t.add_row("PyAV decoders", ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in info["decoders"].items()))
        nv = info["nvdec"]
        t.add_row("GPU decoding (NVDEC)", ("available: " + ", ".join(nv["codecs"]) + " (with --decoder gpu)")
                  if nv["available"] else f"not available: {nv['reason']} (frames decode on the CPU)")
        Console().print(t)
        return 0

    run_command(False, body)


def _register_batch() -> None:
    from fastvid_cli.cli_batch import batch
    from fastvid_cli.cli_eval import eval_
    from fastvid_cli.cli_find import find
    from fastvid_cli.cli_serve import chat, serve

    app.command(name="batch", cls=O.Command)(batch)
    app.command(name="eval", cls=O.Command)(eval_)
    app.command(name="serve", cls=O.Command)(serve)
    app.command(name="chat", cls=O.Command)(chat)
    app.command(name="find", cls=O.Command)(find)


_register_batch()


def version_callback(value: bool) -> None:
    if value:
        print(f"fastvid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


# Threads running torch/FFmpeg code that an interpreter exit must not run under (see main).
_WORKERS = ("fastvid-load", "fastvid-decode", "fastvid-sample", "fastvid-gop")


def _invoke() -> int:
    """Run the app; a usage error click finds itself (a missing argument, a value out of its range) is one line
    with exit code 2, like ours, instead of click's framed box."""
    try:  # typer >= 0.29 carries its own copy of click
        from typer._click import exceptions as cx
    except ImportError:
        from click import exceptions as cx

    try:
        code = app(standalone_mode=False)
    except cx.NoArgsIsHelpError as e:  # `fastvid` or `fastvid ask` alone: the help screen
        e.show()
        return e.exit_code
    except cx.UsageError as e:
        from fastvid_cli.ui import error_line

        where = e.ctx.command_path if e.ctx is not None else "fastvid"
        error_line(f"{e.format_message()} (see: {where} --help)")
        return e.exit_code
    except cx.ClickException as e:
        from fastvid_cli.ui import error_line

        error_line(e.format_message())
        return e.exit_code
    except typer.Abort:
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def main() -> None:
    """The `fastvid` command (fastvid_cli.__main__.main, the entry point, does the same without importing typer
    first): a plain `ask --server` without building the typer app, everything else with it."""
    from fastvid_cli.cli_ask_server import run as ask_on_server

    code = ask_on_server(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    run_app()


def run_app() -> None:
    """Run the typer app on sys.argv and exit with its code."""
    try:
        sys.exit(_invoke())
    except SystemExit as e:
        # Interrupted while the model was still loading (or, in a rare race, a frame decoder or the decode loop was
        # still running) on a worker thread: an interpreter that exits under running torch/FFmpeg code can abort
        # (exit 134), so leave at once with the code we meant.
        if any(t.name.startswith(_WORKERS) and t.is_alive() for t in threading.enumerate()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else EXIT_INTERNAL)
        raise


if __name__ == "__main__":
    main()
