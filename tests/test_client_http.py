"""client.py's HTTP/1.1 client over `socket` (`_HTTPConnection`, for http:// servers), against a socket server that
sends canned answers: Content-Length and chunked bodies, Server-Sent Events, error bodies, a refused connection and
a server that closes mid-answer, each read as Client reads answers of http.client."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from fastvid_cli import client as client_module
from fastvid_cli.client import ApiFailure, Client, _HTTPConnection, _sse_events
from fastvid_cli.errors import InvalidOptionError, ServerError


class Canned:
    """A one-thread server: each connection gets the next answer (bytes, sent in the given pieces) after the request
    (head and Content-Length body) is read; the requests are kept."""

    def __init__(self, answers: list[list[bytes]], hold: threading.Event | None = None):
        self.answers = list(answers)
        self.hold = hold  # set: the last connection is closed (until then it stays open)
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                for piece in self.answers.pop(0):
                    conn.sendall(piece)
                if self.hold is not None and not self.answers:
                    self.hold.wait(10)
        self.sock.close()


def answer(status: str, body: bytes, *headers: str, chunked: bool = False) -> list[bytes]:
    head = [f"HTTP/1.1 {status}", *headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        pieces = [f"{len(body[i:i + 7]):x}\r\n".encode() + body[i:i + 7] + b"\r\n" for i in range(0, len(body), 7)]
        return [("\r\n".join(head) + "\r\n\r\n").encode(), *pieces, b"0\r\n\r\n"]
    head.append(f"Content-Length: {len(body)}")
    return [("\r\n".join(head) + "\r\n\r\n").encode() + body]


def sse(*events: dict | str) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events)


def test_content_length_and_chunked_json_bodies():
    data = {"data": [{"id": "demo", "fastvid": {"source": "x"}}], "text": "ünïcode " * 50}
    raw = json.dumps(data).encode()
    server = Canned([answer("200 OK", raw, "Content-Type: application/json"),
                     answer("200 OK", raw, chunked=True),
                     answer("200 OK", b"")])
    c = Client(server.url)
    assert c._call("GET", "/v1/models") == data
    assert c._call("POST", "/v1/fastvid/compare", {"a": 1}) == data
    assert c._call("GET", "/health") is None  # an empty body
    server.thread.join(5)
    first, second = server.requests[0].decode(), server.requests[1].decode()
    assert first.startswith("GET /v1/models HTTP/1.1\r\n") and f"Host: 127.0.0.1:{c.port}\r\n" in first
    assert "User-Agent: fastvid-client\r\n" in first
    assert second.startswith("POST /v1/fastvid/compare HTTP/1.1\r\n") and second.endswith('\r\n\r\n{"a": 1}')
    assert "Content-Length: 8\r\n" in second and "Content-Type: application/json\r\n" in second


@pytest.mark.parametrize("chunked", [False, True])
def test_streamed_answer(chunked):
    report = {"answer": "red", "timings_ms": {"ttft": 1.0}}
    body = sse({"choices": [{"delta": {"content": "re"}}]}, {"choices": [{"delta": {"content": "d"}}]},
               {"choices": [{"delta": {}, "finish_reason": "stop"}], "fastvid": report}, "[DONE]")
    server = Canned([answer("200 OK", body, "Content-Type: text/event-stream", chunked=chunked)])
    pieces = []
    done = Client(server.url, "key").chat({"messages": []}, pieces.append)
    assert pieces == ["re", "d"] and done == {"finish_reason": "stop", "report": report}
    server.thread.join(5)
    assert b"Authorization: Bearer key\r\n" in server.requests[0]


def test_lines_arrive_as_they_are_sent():
    """An event is read as soon as its bytes arrive: the server keeps the connection open, with the rest of the body
    still to come, until the client has read the first event."""
    first = threading.Event()
    body1 = sse({"choices": [{"delta": {"content": "a"}}]})
    server = Canned([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                      f"{len(body1):x}\r\n".encode() + body1 + b"\r\n"]], hold=first)
    conn = _HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), 5)
    conn.connect()
    conn.request("POST", "/", b"{}")
    resp = conn.getresponse()
    events = _sse_events(resp, server.url)
    assert json.loads(next(events)) == {"choices": [{"delta": {"content": "a"}}]}
    first.set()
    conn.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_error_answers_are_the_errors_of_http_client(chunked):
    err = json.dumps({"error": {"message": "video not found: /x.mp4", "code": "video_not_found"}}).encode()
    server = Canned([answer("404 Not Found", err, chunked=chunked),
                     answer("429 Too Many Requests", b'{"error": {"message": "busy", "code": "queue_full"}}',
                            "Retry-After: 2"),
                     answer("502 Bad Gateway", b"<html>proxy</html>")])
    c = Client(server.url)
    with pytest.raises(ApiFailure) as e:
        c._open("GET", "/v1/models")
    assert (e.value.status, e.value.code, e.value.message) == (404, "video_not_found", "video not found: /x.mp4")
    with pytest.raises(ApiFailure) as e:
        c._open("GET", "/")
    assert (e.value.status, e.value.code, e.value.retry_after) == (429, "queue_full", 2.0)
    with pytest.raises(ApiFailure) as e:
        c._open("GET", "/")
    assert (e.value.status, e.value.code, e.value.message) == (502, None, "<html>proxy</html>")


def test_a_refused_connection_is_the_one_line_error_of_before():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = Client(f"http://127.0.0.1:{port}")
    with pytest.raises(ServerError) as e:
        c.card()
    assert e.value.exit_code == 9
    assert e.value.one_line() == (f"cannot reach the fastvid server at http://127.0.0.1:{port}: Connection refused "
                                  "(start one with `fastvid serve --model M`, or check --server / FASTVID_SERVER)")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_server_that_closes_mid_answer(chunked):
    body = sse({"choices": [{"delta": {"content": "re"}}]})
    if chunked:  # the connection ends inside the chunked body
        pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                  f"{len(body):x}\r\n".encode() + body + b"\r\n", b"40\r\ndata: {\"cho"]
    else:  # a stream up to the close that stops before its last event
        pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body]
    server = Canned([pieces])
    pieces_seen = []
    with pytest.raises(ServerError) as e:
        Client(server.url).chat({"messages": []}, pieces_seen.append)
    assert pieces_seen == ["re"] and e.value.exit_code == 9
    if chunked:
        assert "dropped the connection mid-answer (IncompleteRead(" in e.value.message
    else:
        assert e.value.message.endswith("ended the answer early")


def test_a_server_that_closes_before_answering():
    server = Canned([[b""], [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\""]])
    c = Client(server.url)
    with pytest.raises(ServerError) as e:
        c._call("GET", "/health")
    assert "dropped the connection (Remote end closed connection without response)" in e.value.message
    with pytest.raises(ServerError) as e:
        c._call("GET", "/health")
    assert "dropped the connection (IncompleteRead(4 bytes read, 6 more expected))" in e.value.message


def test_urls_read_as_urllib_reads_them():
    import urllib.parse

    for url in ("http://127.0.0.1:8000", "http://localhost:8000/v1", "http://example.org/base/", "http://h:0",
                "http://[::1]:8000", "http://user@host:81/x", "https://Host.Example:8443/p?q=1", "http://h:65536",
                "http://h:x", "http://127.0.0.1:8000/a;b"):
        try:
            want = urllib.parse.urlsplit(url)
            want = (want.scheme, want.hostname, want.port, want.path)
        except ValueError:
            want = ValueError
        try:
            got = client_module._split_url(url)
        except ValueError:
            got = ValueError
        assert got == want, url
    for host, loop in (("127.0.0.1", True), ("127.1.2.3", True), ("128.0.0.1", False), ("localhost", True),
                       ("::1", True), ("example.org", False), ("0127.0.0.1", False), ("127.0.0.256", False)):
        assert client_module._is_loopback_host(host) is loop, host
    with pytest.raises(InvalidOptionError, match="bad port"):
        Client("http://127.0.0.1:99999")
    assert client_module.file_url("/a b/ü.mp4") == "file://" + urllib.parse.quote("/a b/ü.mp4")
