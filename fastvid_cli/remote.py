"""Commands run on a `fastvid serve` process instead of a model loaded here (`--server URL`).

`ask_remote` and `compare_remote` send one request and print what the local commands print (the same stdout, panel
and `--json`). `RemoteEngine` stands in for `engine.Engine` in `batch` and `eval`: their CSV/JSONL handling,
resume, fingerprints and records stay exactly as they are, and each answer is a chat completion on the server
(greedy answers of one video sent concurrently, so that the server decodes them together).

Standard library only, like client.py: no torch, no transformers.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

TYPE_CHECKING = False  # typing (~2.5 ms to import) only for type checkers: the annotations are strings (PEP 563)
if TYPE_CHECKING:
    import threading
    from typing import Any, Callable

from fastvid_cli.client import Client, ask_payload
from fastvid_cli.errors import InvalidOptionError

# Options of a local run that belong to the server when --server is given: (option, card key)
SERVER_SIDE = {"device": "--device", "dtype": "--dtype", "attn_implementation": "--attn-implementation",
               "saliency_model": "--saliency-model"}
IGNORED = {"threads": "--threads", "offline": "--offline", "cache_dir": "--cache-dir"}


def check_server_options(client: Client, given: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Options given on the command line that the server decides: an error when they differ from the server's
    settings (the answer would not be what was asked for), a warning when they cannot apply at all."""
    if "model" in given:
        client.check_model(given["model"])
    checks = {k: v for k, v in given.items() if k in SERVER_SIDE}
    if checks:
        meta = client.card().get("fastvid") or {}
        for key, value in checks.items():
            have = meta.get(key)
            same = value == have
            if key == "device":
                same = value == "auto" or str(have or "").startswith(str(value))
            elif key == "dtype":
                from fastvid_cli.models import check_dtype_name

                same = check_dtype_name(str(value)) in ("auto", have)
            if not same:
                raise InvalidOptionError(f"{SERVER_SIDE[key]} {value}: the server at {client.url} runs with {have}",
                                         f"leave {SERVER_SIDE[key]} out, or start `fastvid serve` with it")
    for key in given:
        if key in IGNORED:
            warn(f"{IGNORED[key]} does not apply with --server (the server's own setting is used)")


def check_selector(client: Client, selector: str | None) -> None:
    """--selector with --server: the server scores frames with its own selector (a request cannot name one, it is a
    path on the server), so --selector must be that one (the same hub id or folder, or "demo" for the demo's)."""
    if selector is None:
        return
    served = (client.card().get("fastvid") or {}).get("selector")
    wanted = selector.strip()
    if served is not None and _same_selector(wanted, served):
        return
    raise InvalidOptionError(f"--selector {wanted}: the server at {client.url} selects frames with "
                             f"{served or 'a selector it does not name'}",
                             "leave --selector out to use the server's, or start `fastvid serve --selector "
                             f"{wanted}`")


def _same_selector(wanted: str, served: str) -> bool:
    if wanted == served:
        return True
    from fastvid_cli.models import DEMO_DIR

    if wanted == "demo":  # frame_scorer.DEMO_SELECTOR (that module imports torch)
        wanted = str(DEMO_DIR)
    return os.path.isdir(wanted) and os.path.realpath(wanted) == os.path.realpath(served)


def select_ext(select) -> dict[str, Any]:
    """A request's `fastvid` keys for --select (settings.SelectOptions, or None): K and M; the server's selector
    scores them (check_selector)."""
    if select is None:
        return {}
    return {"select": select.k, "candidates": select.candidates}


def _fastvid_ext(method: str | None, ratio: float | None, frames: int | None, fps: float | None,
                 params: dict[str, Any], **switches: Any) -> dict[str, Any]:
    """The request's `fastvid` object; None values are left out (the server's defaults apply). `params`: the
    method options the user gave, by parameter name (the server resolves them as `ask` does)."""
    ext: dict[str, Any] = {"method": method, "ratio": ratio, "frames": frames, "fps": fps}
    ext.update({k: list(v) if isinstance(v, tuple) else v for k, v in params.items()})
    ext.update({k: v for k, v in switches.items() if v is not None})
    return ext


def ask_remote(client: Client, video: str, question: str, *, model: str | None, frames: int | None,
               fps: float | None, method: str | None, ratio: float | None, params: dict[str, Any],
               gen: dict[str, Any], baseline: bool, margins: bool, compile_decode: bool | None, cache: bool,
               as_json: bool, quiet: bool, select=None) -> int:
    """`fastvid ask --server`: the answer streamed to stdout, then the panel (or one JSON object).

    `select`: --select K [--candidates M] (settings.SelectOptions), chosen on the server with its selector (the
    caller has checked --selector against it); the answer's `selection` record comes back with the report.

    `model`: the --model the user gave (None: the server's). It goes with the request and the server refuses a model
    it does not serve: one round trip, not a GET /v1/models before it. Only then is the model card fetched, for the
    message of a local run (Client.check_model), or to accept another name the client resolves to the served model
    (a relative folder, the hub id of an alias); to a server the video is uploaded to, the card is checked first, so that a wrong --model
    fails before an upload."""
    import json
    import sys

    from fastvid_cli.client import ApiFailure, check_local_video
    from fastvid_cli.errors import EXIT_INTERRUPTED, VideoNotFoundError

    try:
        check_local_video(video)
    except VideoNotFoundError:
        if model is not None:
            client.check_model(model)  # a wrong --model is said first, as the options are checked before the video
        raise
    if model is not None and not client.local:
        client.check_model(model)
        model = None
    ext = _fastvid_ext(method, ratio, frames, fps, params, baseline=baseline or None,
                       margins=margins or None, compile=compile_decode, cache=None if cache else False,
                       **select_ext(select))
    waiting = None if (as_json or quiet) else _Waiting(client.url)

    def on_text(piece: str) -> None:
        if waiting is not None:
            waiting.stop()
        if not as_json:
            sys.stdout.write(piece)  # as ui.write_answer_piece, without importing rich for it
            sys.stdout.flush()

    def send(url: str) -> dict[str, Any]:
        nonlocal model
        try:
            return client.chat(ask_payload(url, question, model=model, gen=gen, fastvid=ext), on_text)
        except ApiFailure as f:
            if f.code != "model_not_found" or model is None:
                raise
            client.check_model(model)  # raises the error of a local run; passes for another name of the same model
            model = None
            return client.chat(ask_payload(url, question, model=None, gen=gen, fastvid=ext), on_text)

    try:
        done = client.with_video(video, send)
    finally:
        if waiting is not None:
            waiting.stop()
    data = done["report"]
    data["video"] = str(video)
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        if not data["answer"].endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
        if not quiet:
            waiting.ui().print_summary(data, None, server=client.url)
    return EXIT_INTERRUPTED if data.get("stop_reason") == "interrupted" else 0


class _Waiting:
    """The panel of `ask --server` needs rich (~35 ms of imports) and the pruning registry: they are imported on a
    thread while the request travels and the server works, instead of before the request. Once rich is in, the "asking URL…" spinner shows (stderr
    a terminal, no answer text yet) until `stop`: the first text, or the end of the request."""

    def __init__(self, url: str):
        import threading  # here: the --json and -q paths need no thread

        self._lock = threading.Lock()
        self._stopped = False
        self._status = None
        self._loader = threading.Thread(target=self._load, args=(url,), daemon=True, name="fastvid-ui-import")
        self._loader.start()

    def _load(self, url: str) -> None:
        try:
            from fastvid_cli import pruning  # noqa: F401  (the panel names the method's segments from its registry)
            from fastvid_cli.ui import err_console
        except BaseException:  # raised again where ui() imports it
            return
        with self._lock:
            if not self._stopped and err_console.is_terminal:
                self._status = err_console.status(f"asking {url}…", spinner="dots")
                self._status.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._status is not None:
                self._status.stop()
                self._status = None

    def ui(self):
        """fastvid_cli.ui, imported."""
        self.stop()
        self._loader.join()
        from fastvid_cli import ui

        return ui


def compare_remote(client: Client, video: str, question: str, *, methods: list[str], ratios: list[float],
                   params: dict[str, Any], frames: int | None, fps: float | None, repeat: int,
                   baseline: bool, max_new_tokens: int, system: str | None, compile_decode: bool | None,
                   cache: bool, model: str | None, select=None) -> dict[str, Any]:
    """`fastvid compare --server`: the same table, measured on the server (POST /v1/fastvid/compare). `select`:
    --select (settings.SelectOptions), chosen on the server with its selector; the result has its `selection`."""
    from fastvid_cli.client import check_local_video

    check_local_video(video)
    payload: dict[str, Any] = {"question": question, "methods": methods, "ratios": ratios, "params": params,
                               "frames": frames, "fps": fps, "repeat": repeat, "baseline": baseline,
                               "max_new_tokens": max_new_tokens, "system": system, "compile": compile_decode,
                               "cache": cache, **{k: v for k, v in select_ext(select).items() if v is not None}}
    if model is not None:
        payload["model"] = model

    result = client.with_video(video, lambda url: client.compare({**payload, "video": url}))
    result["video"] = str(video)
    return result


# ---------------------------------------------------------------------------------------------- batch and eval
class RemoteEngine:
    """What `batch` and `eval` use of an Engine, answered by a server: model name, defaults, dtype, sessions."""

    remote = True
    cuda = False

    def __init__(self, client: Client, select=None):
        card = client.card()
        meta = card.get("fastvid") or {}
        self.client = client
        self.select = select  # --select (settings.SelectOptions): every request has the server choose K frames
        from fastvid_cli.models import ModelRef

        self.model_name = card.get("id")
        self.model_source = meta.get("source")
        self.alias = meta.get("alias")
        self.ref = ModelRef(self.model_source, self.alias, os.path.isabs(str(self.model_source)))
        self.device = f"{meta.get('device')} on {client.url}"
        self.dtype = meta.get("dtype")  # a string here (Engine has a torch.dtype)
        self.attn_implementation = meta.get("attn_implementation")
        self.defaults = dict(meta.get("family_defaults") or {})
        self.load_ms = meta.get("load_ms")
        self.adapter = SimpleNamespace(warnings=list(meta.get("warnings") or []))

    def session(self, video: str, *, frames: int | None = None, prune=None, clip=None, sample_ms=None,
                system: str | None = None, feature_cache=None, on_stage=None, fps: float | None = None):
        return RemoteSession(self, video, frames, fps, prune, system)

    def session_from_features(self, video: str, clip, feats, prune, timings=None, *, system: str | None = None,
                              on_stage=None):
        frames, fps = feats if isinstance(feats, tuple) else (None, None)
        return RemoteSession(self, video, frames, fps, prune, system)


class RemoteSession:
    """A video and a pruning setting; every answer is one request (the server keeps the actual session)."""

    def __init__(self, engine: RemoteEngine, video: str, frames: int | None, fps: float | None, prune,
                 system: str | None):
        self.engine = engine
        self.video = video
        self.frames, self.fps = frames, fps
        self.prune = prune
        self.system = system
        self.clip = None
        self.feats = (frames, fps)  # what session_from_features needs to make a sibling session
        self.timings: dict[str, float] = {}
        self.cache_status = "off"
        self.inner = None
        # with the engine's --select: the text the server chooses frames for, when not the asked prompt (eval sets
        # the bare question, which a local eval scores, while it asks the whole multiple-choice prompt)
        self.select_for: str | None = None

    def _ext(self, gen, baseline: bool) -> dict[str, Any]:
        from fastvid_cli.pruning import DEFAULT_METHOD, spec_of

        p = self.prune
        method = p.method if p is not None else DEFAULT_METHOD
        spec = spec_of(method)
        names = {q.name for q in spec.all_params()}
        params: dict[str, Any] = {}
        for k, v in (dict(p.params) if p is not None else {}).items():
            if k in names:  # the method's own options: the server resolves them as a local run does
                params[k] = list(v) if isinstance(v, tuple) else v
            elif v != spec.defaults_for(self.engine.defaults.get("method_family")).get(k):
                # a setting no option sets (e.g. positions) must be the method's default on the server's family
                raise InvalidOptionError(f"{k}={v} cannot be set over --server")
        ext: dict[str, Any] = {"method": method, "ratio": p.ratio if p is not None else None,
                               "frames": self.frames, "fps": self.fps, **params}
        if self.engine.select is not None:  # the server chooses K frames per question (the plan's frames are K)
            ext.update(frames=None, fps=None, **select_ext(self.engine.select))
            if self.select_for is not None:
                ext["select_for"] = self.select_for
        if baseline:
            ext["baseline"] = True
        if gen.margins:
            ext["margins"] = True
        if gen.compile is not None:
            ext["compile"] = gen.compile
        return {k: v for k, v in ext.items() if v is not None}

    def answer(self, question: str, gen=None, *, baseline: bool = False, reuse_prefix: bool = True,
               lead_ms: float = 0.0, on_stage=None, on_text=None, stop: threading.Event | None = None,
               history=None):
        from fastvid_cli.settings import GenerationOptions

        gen = gen or GenerationOptions()
        system = gen.system if gen.system is not None else self.system
        g = {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature, "top_p": gen.top_p,
             "seed": gen.seed, "system": system}
        ext = self._ext(gen, baseline)
        client = self.engine.client

        def send(url: str) -> dict[str, Any]:
            return client.chat(ask_payload(url, question, model=None, gen=g, fastvid=ext, history=history), on_text)

        from fastvid_cli.report import Report

        data = client.with_video(self.video, send)["report"]
        data["video"] = self.video
        return Report.from_dict(data)

    def answer_many(self, questions: list[str], gen=None, *, lead_ms=0.0, max_rows: int = 16, histories=None,
                    on_text=None, stops=None) -> list:
        """Concurrent requests (up to `max_rows` at a time): the server decodes greedy ones together."""
        from concurrent.futures import ThreadPoolExecutor

        histories = histories or [None] * len(questions)
        with ThreadPoolExecutor(max_workers=max(1, min(max_rows, len(questions))),
                                thread_name_prefix="fastvid-remote") as pool:
            futures = [pool.submit(self.answer, q, gen, history=h) for q, h in zip(questions, histories)]
            return [f.result() for f in futures]


def remote_engine(client: Client, cfg) -> RemoteEngine:
    """`batch --server` / `eval --server`: the engine facade, and `cfg` (BatchConfig or EvalConfig) made to
    describe the server's model, so that settings fingerprints are those a local run with this model gets: the
    model as the server names it, its saliency setting unless given, no local feature cache, and for batch as many
    concurrent answers as the server decodes together (--answer-batch auto). With --select the server chooses
    each question's frames: its selector must be the one asked for (check_selector)."""
    if cfg.select is not None:
        check_selector(client, cfg.select.selector)
    engine = RemoteEngine(client, cfg.select)
    meta = client.card().get("fastvid") or {}
    cfg.model = engine.alias or engine.model_source
    if cfg.saliency_model is None:
        cfg.saliency_model = meta.get("saliency_model")
    cfg.cache_dir = None
    if hasattr(cfg, "answer_batch") and cfg.answer_batch is None:
        cfg.answer_batch = int(meta.get("max_batch") or 16)
    return engine
