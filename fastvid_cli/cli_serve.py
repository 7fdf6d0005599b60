"""`fastvid serve` (a resident model behind an OpenAI-compatible API) and `fastvid chat` (a conversation about a
video, locally or with a server).

Registered in cli.py like batch and eval. Importing this module imports neither torch nor FastAPI: `serve`
imports the server (FastAPI, uvicorn) when it runs, `chat --server` never imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fastvid_cli import options as O
from fastvid_cli.cli_common import (check_cheaply, check_method, check_ratio, given_options, method_options_by_name,
                                    pop_select, run_command, server_client, server_url)
from fastvid_cli.errors import InvalidOptionError

S = "Server"


@O.method_options(after="ratio")
@O.select_options(after="fps")
def serve(
    model: str = O.MODEL,
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", rich_help_panel=S,
                             help="Address to listen on. Anything but a loopback address needs --api-key."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, metavar="PORT", rich_help_panel=S,
                             help="Port to listen on (0: any free port, printed at start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="FASTVID_API_KEY", metavar="KEY",
                                          show_envvar=True, rich_help_panel=S,
                                          help="Require 'Authorization: Bearer KEY' on every request but /health."),
    allowed_media_dir: list[Path] = typer.Option([], "--allowed-media-dir", metavar="DIR", show_default=False,
                                                 rich_help_panel=S,
                                                 help="A folder whose videos requests may name by file:// URL "
                                                      "(repeatable; the folder the server starts in always is). "
                                                      "Paths are resolved, symlinks included, before the check."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, metavar="N", rich_help_panel=S,
                                  help="Requests that may wait for the model; more are answered 429 with "
                                       "Retry-After."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", min=0.001, metavar="MB", rich_help_panel=S,
                                        help="Largest video a request may upload (data: URL or "
                                             "/v1/fastvid/uploads), in MiB."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, max=256, metavar="N", rich_help_panel=S,
                                  help="Greedy requests about one video decoded together (same answers as one by "
                                       "one)."),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms", min=0.0, metavar="MS", rich_help_panel=S,
                                          help="While requests arrive concurrently, how long a request waits for "
                                               "others about the same video to decode with."),
    max_sessions: int = typer.Option(32, "--max-sessions", min=1, metavar="N", rich_help_panel=S,
                                     help="Videos (x pruning settings) whose features, kept tokens and prompt-prefix "
                                          "KV cache stay in memory for later requests (least recently used first "
                                          "out)."),
    device: str = O.DEVICE,
    dtype: str = O.DTYPE,
    attn_implementation: str = O.ATTN,
    saliency_model: Optional[str] = O.SALIENCY,
    offline: bool = O.OFFLINE,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", rich_help_panel="Model",
                                          help="CPU threads for torch's work (default on CPU: one fewer than the "
                                               "cores, which the HTTP side keeps; OMP_NUM_THREADS sets it too)."),
    frames: Optional[int] = O.FRAMES,
    fps: Optional[float] = O.FPS,
    cache_dir: Optional[Path] = O.CACHE_DIR,
    no_cache: bool = O.NO_CACHE,
    decoder: str = O.DECODER,
    method: str = O.METHOD,
    ratio: Optional[float] = O.RATIO,
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_p: float = O.TOP_P,
    seed: Optional[int] = O.SEED,
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per request on stderr.",
                               rich_help_panel="Output"),
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API: loaded and warmed up once, then every request is answered
    from memory.

    POST /v1/chat/completions takes OpenAI chat requests whose first user message holds a video ({"type":
    "video_url", "video_url": {"url": "file:///abs/clip.mp4"}}, or a data:video/...;base64 URL), streamed with
    "stream": true; pruning per request in a "fastvid" object ({"method": "fastvid", "ratio": 0.25, "frames":
    32, ...}), defaulting to the options below. Also GET /v1/models, /health (ready after warm-up) and /metrics
    (Prometheus). Requests about one video share its features and prompt prefix, and greedy ones waiting together
    are decoded together. Ctrl-C or SIGTERM stops accepting requests, finishes those in flight, and exits 0.
    """
    select = pop_select(method_options, frames, fps)

    def body() -> int:
        check_ratio(ratio)
        check_method(method)
        # --select K: every request selects unless it says otherwise; --selector alone: the scorer of those that do
        alone = select.values["select"] is None and select.values["candidates"] is None
        sel = None if alone else select()
        check_cheaply(None, model, device, dtype, attn_implementation)
        from fastvid_cli import pruning

        # a request's method takes those of these options that are its own (checked again on the model's family)
        given = method_options_by_name(method_options)
        pruning.check_options(pruning.method_names(), None, given)
        params = {p.name: p.convert(given[p.name]) for p in pruning.options() if p.name in given}
        from fastvid_cli.settings import GenerationOptions

        GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p).validate()
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise InvalidOptionError("fastvid serve needs FastAPI and uvicorn, which are not installed",
                                     "pip install 'fastvid[serve]'") from None
        from fastvid_cli.server import ServeConfig, Service, configure_logging
        from fastvid_cli.server.settings import Defaults
        from fastvid_cli.ui import err_console

        defaults = Defaults(method=method, ratio=ratio, frames=frames, fps=fps, params=params,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            system=system, compile=compile_decode, select=sel,
                            selector=select.values["selector"])
        roots = [os.getcwd(), *(str(d) for d in allowed_media_dir)]
        cfg = ServeConfig(model=model, device=device, dtype=dtype, attn_implementation=attn_implementation, decoder=decoder,
                          saliency_model=saliency_model, offline=offline, threads=threads,
                          cache_dir=str(cache_dir) if cache_dir else None, no_cache=no_cache, host=host, port=port,
                          api_key=api_key or None, media_dirs=roots, max_queue=max_queue,
                          max_upload_mb=max_upload_mb, max_batch=max_batch, batch_window_ms=batch_window_ms,
                          max_sessions=max_sessions, defaults=defaults)
        configure_logging(not quiet)
        service = Service(cfg, say=lambda msg: err_console.print(f"fastvid serve: {msg}", markup=False,
                                                                 highlight=False, soft_wrap=True))
        if api_key:
            err_console.print("fastvid serve: requests need 'Authorization: Bearer <key>' (--api-key)",
                              markup=False, highlight=False)
        service.run()
        return 0

    run_command(debug, body)


@O.method_options(after="ratio")
@O.select_options(after="fps")
def chat(
    video: Path = typer.Argument(..., metavar="VIDEO", help="The video to talk about.", show_default=False),
    server: Optional[str] = O.SERVER,
    api_key: Optional[str] = O.API_KEY,
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
    method: str = O.METHOD,
    ratio: Optional[float] = O.RATIO,
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_p: float = O.TOP_P,
    seed: Optional[int] = O.SEED,
    system: Optional[str] = O.SYSTEM,
    compile_decode: Optional[bool] = O.COMPILE,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer (the fields of `ask --json`), "
                                 "one per line.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Answers only: no summary line after each.",
                               rich_help_panel="Output"),
    debug: bool = O.DEBUG,
    **method_options: Any,
) -> None:
    """Talk about a video: ask, read the streamed answer and a one-line summary, ask a follow-up.

    Follow-ups keep the conversation and reuse the video's features and prompt-prefix KV cache. Commands: /ratio R,
    /method M, /frames N, /video PATH, /system TEXT, /reset, /settings, /help, /quit (or Ctrl-D); up/down recall
    earlier input. With --server the model of a running `fastvid serve` answers (nothing heavy loads here). When
    stdin is not a terminal, each line is a question (or a command) and each answer is printed on one line.
    """
    select = pop_select(method_options, frames, fps)

    def body() -> int:
        check_ratio(ratio)
        check_method(method)
        sel = select()
        from fastvid_cli.chat import Chat, ChatSettings, history_path
        from fastvid_cli.client import check_local_video

        from fastvid_cli.pruning import check_options

        params = method_options_by_name(method_options)
        check_options([method], None, params)  # on any family: the model's is checked at the first answer
        check_local_video(video)
        url = server_url(server)
        gen: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                   system=system, compile=compile_decode)
        from fastvid_cli.settings import GenerationOptions

        GenerationOptions(**gen).validate()
        settings = ChatSettings(video=str(video), method=method, ratio=ratio, frames=frames, fps=fps, params=params,
                                gen=gen, cache=not no_cache, select=sel)
        if url:
            from fastvid_cli.chat import RemoteBackend

            client = server_client(url, api_key, not as_json)
            if sel is not None:  # the server chooses the frames, with its own selector
                from fastvid_cli.remote import check_selector

                check_selector(client, sel.selector)
            # options the user did not set are the server's defaults, as for `ask --server`
            given = given_options("method", "ratio", "frames", "fps", "max_new_tokens", "temperature", "top_p", "seed",
                           "system")
            for name in ("max_new_tokens", "temperature", "top_p", "seed", "system"):
                if name not in given:
                    gen[name] = None
            if "method" not in given:
                settings.method = None
            backend = RemoteBackend(client, None)
        else:
            backend = _local_backend(video, model, device, dtype, attn_implementation, saliency_model, offline,
                                     threads, cache_dir, no_cache, show=not as_json, decoder=decoder)
        conversation = Chat(backend, settings, as_json=as_json, quiet=quiet)
        if sys.stdin.isatty():
            return conversation.run_terminal(history_path())
        return conversation.run_lines(sys.stdin)

    run_command(debug, body)


def _local_backend(video: Path, model: str, device: str, dtype: str, attn_implementation: str,
                   saliency_model: str | None, offline: bool, threads: int | None, cache_dir: Path | None,
                   no_cache: bool, show: bool, decoder: str = "auto"):
    from fastvid_cli.ui import StageDisplay, warn_line

    check_cheaply(video, model, device, dtype, attn_implementation)
    from fastvid_cli import hub

    hub.set_offline(offline)
    from fastvid_cli.chat import LocalBackend
    from fastvid_cli.engine import Engine, set_threads
    from fastvid_cli.feature_cache import FeatureCache

    set_threads(threads)
    display = StageDisplay(enabled=show)
    display("load", "start")
    engine = Engine.load(model, device=device, dtype=dtype, attn_implementation=attn_implementation,
                         saliency_model=saliency_model, decoder=decoder)
    display("load", "done")
    display.stop()
    if show:
        for w in engine.adapter.warnings:
            warn_line(w)
    fcache = None if no_cache else FeatureCache(cache_dir or hub.fastvid_cache_dir() / "features")
    return LocalBackend(engine, model, fcache)
