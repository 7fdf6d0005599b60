"""A client of `fastvid serve`, standard library only: what `--server` and `chat --server` use.

Importing it imports neither torch nor transformers nor any HTTP library, so a command sent to a server starts
in about 0.1 s. Errors come back as the same exceptions (and so the same exit codes) as the local path raises:
a missing video is a VideoNotFoundError, a bad ratio an InvalidOptionError, and so on; a server that cannot be
reached, refuses the API key or fails is a ServerError (exit 9).

Videos: to a server on this machine (a loopback address) the client sends a file:// URL; when the server may not
read that file (outside its allowed folders) or does not see it (another filesystem, a container), and to any
other server, it uploads the file once (POST /v1/fastvid/uploads) and refers to it by its content hash.

HTTP: a plain http:// server is spoken to by the small HTTP/1.1 client at the end of this module (`_HTTPConnection`,
over `socket`): http.client imports email, ssl, calendar & co (~17 ms, a sixth of a warm `ask --server`). An
https:// server goes through http.client. The two raise OSError (http.client also HTTPException) for a transport
failure, which become the same one-line ServerErrors.
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


def is_loopback_url(url: str) -> bool:
    return _is_loopback_host(_split_url(url)[1] or "")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and (p == "0" or p[0] != "0") and int(p) < 256
                               for p in parts):
        return parts[0] == "127"  # ipaddress's answer for a dotted quad, without importing it (~5 ms)
    if ":" not in host:
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# the characters urllib.parse.quote leaves as they are (safe="/")
_UNQUOTED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def file_url(path: str) -> str:
    path = os.path.abspath(path)
    if not _UNQUOTED.issuperset(path):
        import urllib.parse

        path = urllib.parse.quote(path)
    return "file://" + path


def _split_url(url: str) -> tuple[str, str | None, int | None, str]:
    """urllib.parse.urlsplit(url)'s (scheme, hostname, port, path), for the plain http(s)://host[:port][/path]
    without importing it (~7 ms with re); anything else goes through it. Raises ValueError for a bad port."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    host, colon, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if (sep and scheme in ("http", "https") and host and (not colon or (port.isdigit() and port.isascii()))
            and all(c.isalnum() and c.isascii() or c in ".-" for c in host)
            and not any(c in path for c in "?#;[]@\\") and host.lower() == host):
        p = int(port) if port else None
        if p is not None and not 0 <= p <= 65535:
            raise ValueError("Port out of range 0-65535")
        return scheme, host, p, slash + path
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port, parts.path


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


def _sse_events(resp, url: str, errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[str]:
    """The `data:` payloads of a Server-Sent Events response, one per event. `errors`: what a broken connection
    raises."""
    lines: list[str] = []
    while True:
        try:
            raw = resp.readline()
        except errors as e:
            raise ServerError(f"the fastvid server at {url} dropped the connection mid-answer ({e})") from None
        if not raw:
            if lines:
                yield "\n".join(lines)
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))


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



# ---------------------------------------------------------------------------------------------- HTTP/1.1 over socket
class _BadAnswer(OSError):
    """A connection that ended early or an answer that is not HTTP/1.x (http.client's HTTPException, here an OSError:
    the same ServerError)."""


class _HTTPConnection:
    """What Client uses of http.client.HTTPConnection, for http:// only: one request per connection (a body of bytes
    or a file with its Content-Length header), its answer read with Content-Length, chunked, or up to the close."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = None
        self._fp = None

    def connect(self) -> None:
        import socket

        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}" + (f":{self.port}" if self.port != 80 else ""),
                 "Accept-Encoding: identity"]
        headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is not None and not any(k.lower() == "content-length" for k in headers):
            if not isinstance(body, (bytes, bytearray)):
                raise ValueError("a file body needs a Content-Length header")
            headers["Content-Length"] = str(len(body))
        elif body is None and method in ("POST", "PUT", "PATCH"):
            headers.setdefault("Content-Length", "0")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is None or isinstance(body, (bytes, bytearray)):
            self.sock.sendall(head + (body or b""))
            return
        self.sock.sendall(head)
        while True:  # a file
            block = body.read(1 << 16)
            if not block:
                return
            self.sock.sendall(block)

    def getresponse(self) -> _Response:
        if self._fp is None:
            self._fp = self.sock.makefile("rb")
        return _Response(self._fp)

    def close(self) -> None:
        fp, sock, self._fp, self.sock = self._fp, self.sock, None, None
        if fp is not None:
            fp.close()
        if sock is not None:
            sock.close()


_MAX_LINE = 65536


class _Response:
    """An answer's status, headers and body (read(), readline()): http.client.HTTPResponse's, as Client uses them."""

    def __init__(self, fp):
        self._fp = fp
        while True:
            line = fp.readline(_MAX_LINE + 1)
            if not line:
                raise _BadAnswer("Remote end closed connection without response")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise _BadAnswer(f"not an HTTP/1.x answer: {line[:80]!r}")
            self.status, self.reason = int(code), reason.strip()
            self.headers = self._read_headers()
            if self.status != 100:
                break
        te = self.headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        self._left: int | None = None  # body bytes still to come (a chunk's, with chunked); None: up to the close
        self._done = self.status in (204, 304) or 100 <= self.status < 200
        if not self._chunked and not self._done and "content-length" in self.headers:
            try:
                self._left = int(self.headers["content-length"])
            except ValueError:
                raise _BadAnswer(f"bad Content-Length: {self.headers['content-length']!r}") from None
            self._done = self._left == 0
        elif self._chunked:
            self._left = 0
        self._got = 0  # body bytes read (for the message of an answer that ends early)
        self._pending = b""  # chunked: bytes of the body read but not yet returned by readline

    def _read_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(200):
            line = self._fp.readline(_MAX_LINE + 1)
            if not line:
                raise _BadAnswer("Remote end closed connection without response")
            if line in (b"\r\n", b"\n"):
                return headers
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raise _BadAnswer("got more than 200 headers")

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def _short(self, expected: int | None = None) -> _BadAnswer:
        self._done = True
        more = f", {expected} more expected" if expected else ""
        return _BadAnswer(f"IncompleteRead({self._got} bytes read{more})")

    def _next_chunk(self) -> bytes:
        """Chunked: the next chunk's bytes (b"" at the end of the body)."""
        if self._done:
            return b""
        line = self._fp.readline(_MAX_LINE + 1)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise self._short() from None
        if size == 0:
            while True:  # the trailer, up to its empty line
                line = self._fp.readline(_MAX_LINE + 1)
                if line in (b"\r\n", b"\n", b""):
                    break
            self._done = True
            return b""
        data = self._fp.read(size)
        self._got += len(data)
        if len(data) < size:
            raise self._short(size - len(data))
        self._fp.readline(_MAX_LINE + 1)  # the CRLF after the chunk
        return data

    def read(self) -> bytes:
        """The rest of the body."""
        if self._chunked:
            parts = [self._pending]
            self._pending = b""
            while True:
                data = self._next_chunk()
                if not data:
                    return b"".join(parts)
                parts.append(data)
        if self._done:
            return b""
        if self._left is None:
            data = self._fp.read()
            self._got += len(data)
            self._done = True
            return data
        data = self._fp.read(self._left)
        self._got += len(data)
        if len(data) < self._left:
            raise self._short(self._left - len(data))
        self._done = True
        return data

    def readline(self) -> bytes:
        """The next line of the body, with its b"\\n" (b"": the end of the body)."""
        if self._chunked:
            while b"\n" not in self._pending:
                data = self._next_chunk()
                if not data:
                    line, self._pending = self._pending, b""
                    return line
                self._pending += data
            line, _, self._pending = self._pending.partition(b"\n")
            return line + b"\n"
        if self._done:
            return b""
        limit = -1 if self._left is None else self._left
        line = self._fp.readline(limit)
        self._got += len(line)
        if self._left is not None:
            self._left -= len(line)
            if self._left == 0:
                self._done = True
            elif not line.endswith(b"\n"):
                raise self._short(self._left)
        elif not line:
            self._done = True
        return line
