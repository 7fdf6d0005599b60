"""HTTP/1.1 on the wire for fastvid's client (client.py), standard library only and light to import.

Its one job is the transport: `_HTTPConnection` writes one request over `socket` (a body of bytes or a file) and
`_Response` reads the answer's status line, headers and body (Content-Length, chunked, or up to the close);
`_sse_events` reads a Server-Sent Events body; and the URL helpers (`_split_url`, `is_loopback_url`, `file_url`)
parse what they need without urllib.parse or ipaddress. http.client imports email, ssl, calendar & co (~17 ms, a
sixth of a warm `ask --server`), so a plain http:// server is spoken to here; client.py uses http.client only for
https://. A transport failure raises OSError (`_BadAnswer` for an answer that is not HTTP/1.x or ends early).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing (~2.5 ms to import) only for type checkers: the annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any, Iterator

from fastvid_cli.errors import ServerError


# ---------------------------------------------------------------------------------------------- URLs

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


# ---------------------------------------------------------------------------------------------- Server-Sent Events
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
