"""The HTTP API (FastAPI): OpenAI-compatible chat completions about videos, plus health, models, metrics,
uploads and compare. Routes parse and check requests (protocol.py, settings.py, media.py), hand a Work to the
scheduler and relay its events: one JSON body, or Server-Sent Events for `stream: true`.

Imported only by `fastvid serve` (FastAPI is an optional dependency: `pip install fastvid[serve]`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastvid_cli import __version__
from fastvid_cli.server.errors import ApiError, bad_request
from fastvid_cli.server.media import UPLOAD_SCHEME, BodyScanner
from fastvid_cli.server.protocol import parse_chat, parse_compare
from fastvid_cli.server.scheduler import Work
from fastvid_cli.server.settings import generation, param_value, resolve, resolve_method_params, select_of

log = logging.getLogger("fastvid.serve")

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/fastvid/compare", "/v1/fastvid/uploads")
OPEN_ROUTES = ("/health",)  # everything else needs the API key when the server has one


def _route(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return path if path in ROUTES else "other"


class _Disconnected(Exception):
    pass


class Gate:
    """Pure ASGI middleware: the API key check, and per-response metrics and access log lines."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, t0 = scope["path"], time.perf_counter()
        seen = {"status": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        try:
            key = self.state.config.api_key
            if key and path not in OPEN_ROUTES and not _authorized(scope, key):
                err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error_response(err, self.state)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.state.metrics.request(_route(path), seen["status"])
            log.info("%s %s %d %.0f ms", scope.get("method"), path, seen["status"], (time.perf_counter() - t0) * 1e3)


def _authorized(scope, key: str) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
    return False


def error_response(err: ApiError, state) -> JSONResponse:
    state.metrics.error(err.code)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def create_app(state) -> FastAPI:
    """The application over `state` (fastvid_cli.server.ServerState: config, engine, scheduler, metrics…)."""
    app = FastAPI(title="fastvid", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(err, state)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        text = (f"no route {request.method} {request.url.path}" if err.status_code in (404, 405)
                else str(err.detail))
        return error_response(ApiError(err.status_code, text, code=code), state)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal server error (the server's log has the details)",
                                       code="internal_error"), state)

    # ------------------------------------------------------------------ helpers
    def ready():
        if state.engine is None or state.scheduler is None:
            raise ApiError(503, "the model is still loading; retry shortly", code="model_loading",
                           headers={"Retry-After": "2"})
        return state.engine

    async def read_body(request: Request) -> tuple[Any, set[str]]:
        """The JSON body, data: URLs in it streamed into the upload store (see media.BodyScanner)."""
        scanner = BodyScanner(state.uploads)
        try:
            async for chunk in request.stream():
                scanner.feed(chunk)
            raw = scanner.result()
        except BaseException:
            scanner.abort()
            raise
        try:
            return json.loads(raw), scanner.placeholders
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"the request body is not valid JSON ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:120]})", None, "invalid_json") from None

    def check_model(name: str | None) -> None:
        eng = state.engine
        if name is None:
            return
        from fastvid_cli.models import ALIASES, alias_ref

        known = {eng.model_name, eng.model_source, state.alias} - {None}
        known |= {a.name for a in ALIASES.values() if alias_ref(a).source == eng.model_source}
        if name not in known:
            raise ApiError(404, f"The model `{name}` does not exist on this server: it serves `{eng.model_name}` "
                                f"(GET /v1/models)", code="model_not_found", param="model")

    def check_placeholders(body: Any, uploads: set[str], allowed_at: str | None) -> None:
        """A data: URL is taken only as the video; the same text anywhere else would have been altered."""
        if not uploads:
            return
        found: list[str] = []

        def walk(x: Any, where: str) -> None:
            if isinstance(x, str) and x in uploads and where != allowed_at:
                found.append(where)
            elif isinstance(x, dict):
                for k, v in x.items():
                    walk(v, f"{where}.{k}" if where else k)
            elif isinstance(x, list):
                for i, v in enumerate(x):
                    walk(v, f"{where}[{i}]")

        walk(body, "")
        if found:
            raise bad_request("a data: URL is only accepted as a video_url", found[0], "invalid_upload")

    def new_work(loop, **kw) -> tuple[Work, asyncio.Queue]:
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
                pass

        return Work(emit=emit, **kw), events

    async def wait_disconnect(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def next_event(events: asyncio.Queue, watcher: asyncio.Task):
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        raise _Disconnected

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ok", "model": state.engine.model_name}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        ready()
        return {"object": "list", "data": [state.model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        ready()
        check_model(name)
        return state.model_card()

    @app.post("/v1/fastvid/uploads")
    async def upload(request: Request):
        ready()
        size = request.headers.get("content-length")
        limit = state.uploads.max_bytes
        if size and size.isdigit() and int(size) > limit:
            raise ApiError(413, f"the uploaded video is larger than this server's limit of {limit / 2**20:g} MiB "
                                "(--max-upload-mb)", code="upload_too_large")
        writer = state.uploads.writer(request.headers.get("content-type", "application/octet-stream").split(";")[0])
        try:
            async for chunk in request.stream():
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        sha = writer.commit()
        return {"object": "fastvid.upload", "id": f"{UPLOAD_SCHEME}{sha}", "sha256": sha, "bytes": writer.size}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        eng = ready()
        body, uploads = await read_body(request)
        req = parse_chat(body)
        check_model(req.model)
        video_at = req.turns.video_param
        check_placeholders(body, uploads, video_at)
        ref = state.policy.resolve(req.turns.video_url, video_at)
        settings = resolve(req.ext, state.defaults, eng.defaults)
        gen = generation(req, state.defaults, settings)
        plan = state.frame_plan(settings.frames, settings.fps)
        loop = asyncio.get_running_loop()
        work, events = new_work(loop, video=ref, settings=settings, gen=gen, question=req.turns.question,
                                history=req.turns.history, stop_strings=req.stop, plan=plan)
        state.scheduler.submit(work)
        watcher = asyncio.ensure_future(wait_disconnect(request))
        try:
            first = await next_event(events, watcher)
        except (_Disconnected, asyncio.CancelledError):
            watcher.cancel()
            state.scheduler.cancel(work)
            return Response(status_code=499)
        created, cid = int(time.time()), f"chatcmpl-{work.id}"
        if first[0] == "error":
            watcher.cancel()
            return error_response(first[1], state)
        if not req.stream:
            pieces, event = [], first
            try:
                while event[0] == "text":
                    pieces.append(event[1])
                    event = await next_event(events, watcher)
            except (_Disconnected, asyncio.CancelledError):
                state.scheduler.cancel(work)
                return Response(status_code=499)
            finally:
                watcher.cancel()
            if event[0] == "error":
                return error_response(event[1], state)
            report = event[1]["report"]
            return {"id": cid, "object": "chat.completion", "created": created, "model": eng.model_name,
                    "system_fingerprint": f"fastvid-{__version__}",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": report["answer"],
                                                         "refusal": None},
                                 "logprobs": None, "finish_reason": event[1]["finish_reason"]}],
                    "usage": _usage(report), "fastvid": report}
        watcher.cancel()  # from here on Starlette watches the connection and cancels the stream

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": eng.model_name,
                    "system_fingerprint": f"fastvid-{__version__}",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            if req.include_usage:
                data.setdefault("usage", None)
            return _sse(data)

        async def stream():
            done = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                event = first
                while True:
                    kind, value = event
                    if kind == "text":
                        yield chunk({"content": value})
                    elif kind == "done":
                        report = value["report"]
                        yield chunk({}, value["finish_reason"], fastvid=report)
                        if req.include_usage:
                            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                        "model": eng.model_name, "system_fingerprint": f"fastvid-{__version__}",
                                        "choices": [], "usage": _usage(report)})
                        break
                    elif kind == "error":
                        state.metrics.error(value.code)
                        yield _sse(value.body())
                        break
                    else:  # cancelled
                        break
                    event = await events.get()
                done = True
                yield b"data: [DONE]\n\n"
            finally:
                if not done:
                    state.scheduler.cancel(work)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/fastvid/compare")
    async def compare(request: Request):
        eng = ready()
        body, uploads = await read_body(request)
        req = parse_compare(body)
        check_model(body.get("model"))
        check_placeholders(body, uploads, "video")
        _resolve_compare(req, eng.defaults)
        # as a chat request's: K frames chosen for the question by the server's selector (the request's frames, if
        # any, then conflict: 400); the server's --select applies to chat requests only
        req.select = select_of(req.select, state.defaults, req.frames, req.fps) if req.select else None
        ref = state.policy.resolve(req.video_url, "video")
        plan = state.frame_plan(req.frames, req.fps)
        work, events = new_work(asyncio.get_running_loop(), video=ref, kind="compare", compare=req, plan=plan)
        state.scheduler.submit(work)
        watcher = asyncio.ensure_future(wait_disconnect(request))
        try:
            kind, value = await next_event(events, watcher)
        except (_Disconnected, asyncio.CancelledError):
            state.scheduler.cancel(work)
            return Response(status_code=499)
        finally:
            watcher.cancel()
        if kind == "error":
            return error_response(value, state)
        return value["result"]

    return app


def _usage(report: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(report.get("prompt_tokens_kept") or 0), int(report.get("new_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _resolve_compare(req, family: dict[str, Any]) -> None:
    """compare's methods and parameters, checked as `fastvid compare` checks its options: `params` holds any
    registered method's parameters by name (`inner` may also come on its own), each taken by the rows whose method
    has it (compare.run_compare resolves them per row with pruning.resolve_params)."""
    from fastvid_cli.pruning import REGISTRY

    for m in req.methods:
        if m not in REGISTRY:
            raise bad_request(f"--method must be one of {', '.join(REGISTRY)} (got '{m}')", "methods",
                              "invalid_value")
    fam = family.get("method_family")
    raw = dict(req.params)
    if req.inner is not None:
        raw["inner"] = req.inner
    given = {k: param_value(k, v, f"params.{k}", req.methods, fam) for k, v in raw.items()}
    resolve_method_params(req.methods, fam, given, "params")
    req.resolved_params = given
