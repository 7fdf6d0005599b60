"""A client of `fastvid serve`, standard library only: what `--server` and `chat --server` use.

Importing it imports neither torch nor transformers nor any HTTP library, so a command sent to a server starts
in about 0.1 s. Errors come back as the same exceptions (and so the same exit codes) as the local path raises:
a missing video is a VideoNotFoundError, a bad ratio an InvalidOptionError, and so on; a server that cannot be
reached, refuses the API key or fails is a ServerError (exit 9).

Videos: to a server on this machine (a loopback address) the client sends a file:// URL; when the server may not
read that file (outside its allowed folders) or does not see it (another filesystem, a container), and to any
other server, it uploads the file once (POST /v1/fastvid/uploads) and refers to it by its content hash.

This module's one job is the API client: requests, retries, uploads, streaming answers and error mapping. The
bytes on the wire are http_wire.py's: a plain http:// server is spoken to by its small HTTP/1.1 client
(`_HTTPConnection`, over `socket`; http.client costs ~17 ms to import), an https:// server through http.client.
The two raise OSError (http.client also HTTPException) for a transport failure, which become the same one-line
ServerErrors.
"""

from __future__ import annotations

import _thread
import json
import os
import time

TYPE_CHECKING = False  # typing (~2.5 ms to import) only for type checkers: the annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

from fastvid_cli.errors import (FastVidError, InvalidOptionError, ModelUnavailableError, OutOfMemoryError,
                                ServerError, VideoDecodeError, VideoNotFoundError)
# the transport, re-exported: callers and tests import these names from here
from fastvid_cli.http_wire import (_HTTPConnection, _is_loopback_host, _split_url, _sse_events,  # noqa: F401
                                   file_url, is_loopback_url)

CONNECT_TIMEOUT_S = 10.0
LOAD_WAIT_S = 900.0  # how long to wait for a server that is still loading its model
BUSY_RETRIES = 20  # 429 (queue full): retries, each after the server's Retry-After

# The server's error codes -> the exception (and exit code) of the same failure in a local run.
_CODE_ERRORS: dict[str, type[FastVidError]] = {
    "video_not_found": VideoNotFoundError,
    "unprocessable_video": VideoDecodeError,
    "out_of_memory": OutOfMemoryError,
    "model_unavailable": ModelUnavailableError,
}
_USAGE_CODES = {"invalid_option", "invalid_request", "invalid_value", "invalid_json", "unknown_parameter",
                "unsupported_value", "unsupported_content_type", "unsupported_url", "invalid_upload",
                "unsupported_media_type", "upload_too_large", "request_too_large"}


class ApiFailure(Exception):
    """An error answer of the server (before it is mapped to a FastVidError)."""

    def __init__(self, status: int, message: str, code: str | None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


def check_local_video(path: str | os.PathLike) -> None:
    """The checks (and messages) of a local run that need no decoder: the file exists and is a regular file."""
    name = str(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise VideoNotFoundError(f"video not found: {name}") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise VideoNotFoundError(f"not a regular file: {name}")


class Client:
    """One fastvid server. Thread-safe: each request opens its own connection (loopback connections cost ~0.1 ms)."""

    def __init__(self, url: str, api_key: str | None = None, *, on_wait: Callable[[str], None] | None = None):
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        try:
            scheme, host, port, path = _split_url(url)
        except ValueError:  # a bad port (also a bad [IPv6] host)
            raise InvalidOptionError(f"--server has a bad port: '{url}'") from None
        if scheme not in ("http", "https") or not host:
            raise InvalidOptionError(f"--server must be a URL like http://127.0.0.1:8000 (got '{url}')")
        self.url = url
        self.https = scheme == "https"
        self.host = host
        self.port = port or (443 if self.https else 80)
        self.base = path.rstrip("/")
        if self.base.endswith("/v1"):  # an OpenAI-style base URL works too
            self.base = self.base[:-3]
        self.api_key = api_key
        self.local = is_loopback_url(url)
        self.on_wait = on_wait or (lambda _msg: None)
        self._uploads: dict[str, str] = {}  # local path (+ identity) -> fastvid-upload:<sha>
        self._lock = _thread.allocate_lock()  # threading's Lock, without importing threading
        # what a broken connection raises: OSError (timeouts, resets, a bad answer from _HTTPConnection) and, for
        # https://, http.client's HTTPException
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._card: dict[str, Any] | None = None

    # ------------------------------------------------------------------ HTTP
    def _connect(self):
        if self.https:
            import http.client

            self._errors = (OSError, http.client.HTTPException)
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        else:
            conn = _HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        try:
            conn.connect()
        except self._errors as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ServerError(f"cannot reach the fastvid server at {self.url}: {reason}",
                              "start one with `fastvid serve --model M`, or check --server / FASTVID_SERVER") from None
        conn.sock.settimeout(None)  # answers stream for as long as they take
        return conn

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "fastvid-client"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(extra or {})
        return h

    def _open(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
        """Send a request; returns (connection, response) for a 2xx answer, raises ApiFailure otherwise."""
        conn = self._connect()
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, self.base + path, body=body, headers=self._headers(headers))
            resp = conn.getresponse()
        except self._errors as e:
            conn.close()
            raise ServerError(f"the fastvid server at {self.url} dropped the connection "
                              f"({getattr(e, 'strerror', None) or e or type(e).__name__})") from None
        if resp.status >= 300:
            raw = resp.read()
            conn.close()
            raise _failure(resp, raw)
        return conn, resp

    def _open_patiently(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
        """`_open`, waiting out a loading model and retrying a full queue (429) up to BUSY_RETRIES times."""
        busy = 0
        while True:
            try:
                return self._open(method, path, body, headers)
            except ApiFailure as f:
                if f.code == "model_loading":
                    self.wait_ready()
                    continue
                if f.status == 429 and busy < BUSY_RETRIES:
                    busy += 1
                    time.sleep(min(f.retry_after or 1.0, 30.0))
                    continue
                raise

    def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """One JSON request, waiting out a loading model and retrying a full queue."""
        conn, resp = self._open_patiently(method, path, body, headers)
        try:
            return json.loads(resp.read() or b"null")
        except self._errors as e:
            raise ServerError(f"the fastvid server at {self.url} dropped the connection ({e})") from None
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        try:
            return self._call("GET", "/health")
        except ApiFailure as f:
            return {"status": "loading" if f.code == "model_loading" or f.status == 503 else "error"}

    def wait_ready(self, timeout: float = LOAD_WAIT_S) -> None:
        said = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn, resp = self._open("GET", "/health")
                conn.close()
                return
            except ApiFailure as f:
                if f.status != 503:
                    raise self.error(f) from None
            if not said:
                self.on_wait(f"waiting for the server at {self.url} to load its model…")
                said = True
            if time.monotonic() > deadline:
                raise ServerError(f"the server at {self.url} was still loading its model after {timeout:.0f} s")
            time.sleep(0.5)

    def card(self) -> dict[str, Any]:
        """The served model (GET /v1/models, first entry), fetched once."""
        if self._card is None:
            try:
                data = self._call("GET", "/v1/models")
            except ApiFailure as f:
                raise self.error(f) from None
            self._card = data["data"][0]
        return self._card

    # ------------------------------------------------------------------ errors
    def error(self, f: ApiFailure, rewrite: Callable[[str], str] | None = None) -> FastVidError:
        """The local exception for a server error answer."""
        text = rewrite(f.message) if rewrite else f.message
        if f.code in _CODE_ERRORS:
            return _CODE_ERRORS[f.code](text)
        if f.code == "model_not_found":
            return InvalidOptionError(text)
        if f.code in _USAGE_CODES or (f.status in (400, 404, 413, 415, 422) and f.code != "not_found"):
            return InvalidOptionError(text)
        if f.code == "invalid_api_key":
            return ServerError(f"the fastvid server at {self.url} refused the request: {text}",
                               "set FASTVID_API_KEY (or --api-key) to the server's key")
        if f.code == "queue_full":
            return ServerError(f"the fastvid server at {self.url} stayed busy: {text}")
        return ServerError(f"the fastvid server at {self.url} failed: {text}")

    def check_model(self, model: str) -> None:
        """--model given with --server: it must be what the server serves."""
        from fastvid_cli.models import ALIASES, resolve_model

        card = self.card()
        meta = card.get("fastvid") or {}
        served = {card.get("id"), meta.get("source"), meta.get("alias")}
        served |= {a.name for a in ALIASES.values() if a.repo == meta.get("source")}
        wanted = model.strip()
        if wanted in served:
            return
        try:
            if resolve_model(wanted).source in served:
                return
        except FastVidError:
            pass
        raise InvalidOptionError(f"--model {wanted}: the server at {self.url} serves {card.get('id')}",
                                 "leave --model out to use the server's model, or start `fastvid serve --model "
                                 f"{wanted}`")

    # ------------------------------------------------------------------ videos
    def upload(self, path: str) -> str:
        """Upload `path` once per process (per content); returns its `fastvid-upload:<sha>` reference."""
        st = os.stat(path)
        key = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        with self._lock:
            if key in self._uploads:
                return self._uploads[key]
        import mimetypes

        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if not mime.startswith("video/"):
            mime = "application/octet-stream"
        while True:
            with open(path, "rb") as f:  # reopened for a retry: the first try consumed the file
                try:
                    conn, resp = self._open("POST", "/v1/fastvid/uploads", f,
                                            {"Content-Type": mime, "Content-Length": str(st.st_size)})
                except ApiFailure as e:
                    if e.code == "model_loading":
                        self.wait_ready()
                        continue
                    raise self.error(e) from None
            try:
                data = json.loads(resp.read())
            except (*self._errors, ValueError) as e:
                raise ServerError(f"the fastvid server at {self.url} dropped the upload ({e})") from None
            finally:
                conn.close()
            break
        with self._lock:
            self._uploads[key] = data["id"]
        return data["id"]

    def _forget_upload(self, ref: str) -> None:
        with self._lock:
            for k in [k for k, v in self._uploads.items() if v == ref]:
                del self._uploads[k]

    def with_video(self, path: str, send: Callable[[str], Any], shown: str | None = None) -> Any:
        """Call `send(video_url)`: a file:// URL to a local server, else (or when the server cannot use that
        file) an upload. Error messages name the video as `shown` (default: `path`)."""
        shown = shown if shown is not None else str(path)
        absolute = os.path.abspath(path)

        sent: list[str] = []

        def rewrite(text: str) -> str:  # what the server says about the video, as the user named it
            for name in (*sent, file_url(absolute), absolute):
                text = text.replace(name, shown)
            return text

        tried_upload = False
        url = None if not self.local else file_url(absolute)
        for _attempt in range(3):
            if url is None:
                url, tried_upload = self.upload(path), True
            sent.append(url)
            try:
                return send(url)
            except ApiFailure as f:
                if not tried_upload and f.code in ("media_not_allowed", "video_not_found"):
                    url = None  # the server may not (or cannot) read it here: send the file itself
                    continue
                if tried_upload and f.code == "upload_not_found":  # removed from the server's store meanwhile
                    self._forget_upload(url)
                    url = None
                    continue
                raise self.error(f, rewrite) from None
        raise ServerError(f"the fastvid server at {self.url} did not accept the video {shown}")

    # ------------------------------------------------------------------ chat
    def stream_chat(self, payload: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """POST a streaming chat completion; yields ("text", piece) as they arrive, then ("done", {"report",
        "finish_reason", "usage"}). Raises ApiFailure for an error answer (also one sent mid-stream)."""
        conn, resp = self._open_patiently("POST", "/v1/chat/completions", {**payload, "stream": True})
        try:
            done: dict[str, Any] = {}
            for data in _sse_events(resp, self.url, self._errors):
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    e = event["error"] or {}
                    raise ApiFailure(500, e.get("message") or "error", e.get("code"))
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield "text", piece
                    if choice.get("finish_reason"):
                        done["finish_reason"] = choice["finish_reason"]
                if event.get("fastvid") is not None:
                    done["report"] = event["fastvid"]
                if event.get("usage"):
                    done["usage"] = event["usage"]
            if "report" not in done:
                raise ServerError(f"the fastvid server at {self.url} ended the answer early")
            yield "done", done
        finally:
            conn.close()

    def chat(self, payload: dict[str, Any], on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        """A chat completion with `payload` (its video_url is filled in by `with_video`), streamed to `on_text`;
        returns {"report", "finish_reason", "usage"}."""
        out: dict[str, Any] = {}
        for kind, value in self.stream_chat(payload):
            if kind == "text":
                if on_text is not None:
                    on_text(value)
            else:
                out = value
        return out

    def compare(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/fastvid/compare", payload)


def _failure(resp, raw: bytes) -> ApiFailure:
    try:
        err = json.loads(raw).get("error") or {}
        message, code = err.get("message") or "", err.get("code")
    except (ValueError, AttributeError):
        message, code = raw.decode("utf-8", "replace").strip()[:300], None
    retry = resp.getheader("Retry-After")
    try:
        retry_after = float(retry) if retry else None
    except ValueError:
        retry_after = None
    return ApiFailure(resp.status, message or f"HTTP {resp.status} {resp.reason}", code, retry_after)


def chat_messages(video_url: str, question: str, *, system: str | None = None,
                  history: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """OpenAI messages for a conversation about one video: the video in the first user turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    turns = list(history or [])
    video = {"type": "video_url", "video_url": {"url": video_url}}
    for i, (asked, answered) in enumerate(turns):
        parts = ([video] if i == 0 else []) + [{"type": "text", "text": asked}]
        messages.append({"role": "user", "content": parts})
        messages.append({"role": "assistant", "content": answered})
    messages.append({"role": "user", "content": ([] if turns else [video]) + [{"type": "text", "text": question}]})
    return messages


def ask_payload(video_url: str, question: str, *, model: str | None, gen: dict[str, Any],
                fastvid: dict[str, Any], history: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The chat request of one question. `gen`: max_new_tokens, temperature, top_p, seed, system (None: the
    server's); `fastvid`: the extension object (None values are left out: the server's defaults apply)."""
    payload: dict[str, Any] = {"messages": chat_messages(video_url, question, system=gen.get("system"),
                                                         history=history)}
    if model is not None:
        payload["model"] = model
    for ours, theirs in (("max_new_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("seed", "seed")):
        if gen.get(ours) is not None:
            payload[theirs] = gen[ours]
    ext = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fastvid.items() if v is not None}
    if ext:
        payload["fastvid"] = ext
    return payload


def server_url(value: str | None) -> str | None:
    """--server / FASTVID_SERVER: a URL, or None (an empty value means: run locally)."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def default_api_key(value: str | None) -> str | None:
    return value or os.environ.get("FASTVID_API_KEY") or None
