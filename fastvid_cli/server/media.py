"""Where videos come from: local files under the allowed roots, and uploads.

* ``file:///abs/clip.mp4``: the path is resolved (``..`` and every symlink) and must lie inside one of the allowed
  roots (the server's working directory and each ``--allowed-media-dir``, themselves resolved at start); it is
  resolved and checked again right before the video is opened. A path outside the roots is refused (403) whether
  or not it exists, so the server never tells what exists elsewhere.
* ``data:video/mp4;base64,...`` inside the JSON body: `BodyScanner` decodes it while the body arrives into a temp
  file, capped at ``--max-upload-mb`` (413 as soon as it is exceeded); the JSON the route parses holds a short
  ``fastvid-upload:<sha256>`` reference instead. POST /v1/fastvid/uploads takes a raw video body the same way.
  Uploads are stored under their content hash in a private folder (removed on exit), so sending the same clip
  again lands on the same file, the same cached features and the same prompt-prefix KV cache.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field

from fastvid_cli.server.errors import ApiError, bad_request

UPLOAD_SCHEME = "fastvid-upload:"
_SHA = re.compile(r"^[0-9a-f]{64}$")
MIME_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
               "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "video/ogg": ".ogv", "video/3gpp": ".3gp"}


@dataclass
class VideoRef:
    """A video a request may use: `path` on this machine (resolved), `shown` what the client sent (reports and
    errors say this, never `path`), `identity` what makes two requests' videos the same."""

    path: str
    shown: str
    identity: tuple
    upload: str | None = None  # sha256 of an upload
    rewrites: list[tuple[str, str]] = field(default_factory=list)  # server text -> client text, for messages

    def rewrite(self, text: str) -> str:
        for server_side, client_side in self.rewrites:
            if server_side and server_side != client_side:
                text = text.replace(server_side, client_side)
        return text


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


class MediaPolicy:
    """Turns a request's video URL into a VideoRef, or refuses it."""

    def __init__(self, roots: list[str], uploads: "UploadStore"):
        self.roots = [os.path.realpath(r) for r in roots]
        self.uploads = uploads

    def resolve(self, url: str, param: str) -> VideoRef:
        if url.startswith(UPLOAD_SCHEME):
            return self.uploads.ref(url[len(UPLOAD_SCHEME):], param)
        if url.startswith("data:"):  # a data URL the body scanner did not take out (e.g. escaped characters)
            return self.uploads.ref(self.uploads.put_data_url(url, param), param)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https"):
            raise ApiError(400, "remote video URLs are not fetched by this server: send a file:// URL of a file "
                                "it may read, or the video itself as a data:video/...;base64 URL",
                           code="unsupported_url", param=param)
        if parts.scheme != "file":
            raise ApiError(400, f"unsupported video URL scheme {parts.scheme or 'none'!r}: use file:///abs/path or "
                                "data:video/...;base64,...", code="unsupported_url", param=param)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ApiError(400, "a file URL must be file:///absolute/path (no host, query or fragment)",
                           code="unsupported_url", param=param)
        sent = urllib.parse.unquote(parts.path)
        if not os.path.isabs(sent) or "\x00" in sent:
            raise ApiError(400, "a file URL must hold an absolute path", code="unsupported_url", param=param)
        real = self._allowed(sent, url, param)
        if not os.path.exists(real):
            raise ApiError(404, f"video not found: {sent}", code="video_not_found", param=param)
        if not os.path.isfile(real):
            raise ApiError(404, f"not a regular file: {sent}", code="video_not_found", param=param)
        st = os.stat(real)
        return VideoRef(path=real, shown=sent, identity=("file", real, st.st_size, st.st_mtime_ns),
                        rewrites=[(real, sent)])

    def _allowed(self, sent: str, url: str, param: str) -> str:
        real = os.path.realpath(sent)
        if not any(_inside(real, root) for root in self.roots):
            raise ApiError(403, f"{url} is outside the folders this server may read (its working directory and "
                                "--allowed-media-dir); send the video itself as a data: URL instead",
                           code="media_not_allowed", param=param)
        return real

    def recheck(self, ref: VideoRef) -> None:
        """Right before the file is opened: still the same resolved path, still inside a root."""
        if ref.upload is not None:
            self.uploads.ref(ref.upload, None)
            return
        real = os.path.realpath(ref.path)
        if real != ref.path or not any(_inside(real, root) for root in self.roots):
            raise ApiError(403, f"file://{ref.shown} is outside the folders this server may read",
                           code="media_not_allowed")


class UploadWriter:
    """One upload being written: bytes go to a temp file, hashed and counted against the cap."""

    def __init__(self, store: "UploadStore", mime: str):
        self.store = store
        self.mime = mime
        fd, self.tmp = tempfile.mkstemp(dir=store.root, prefix=".part-")
        self.file = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.store.max_bytes:
            self.abort()
            raise ApiError(413, f"the uploaded video is larger than this server's limit of "
                                f"{self.store.max_bytes / 2**20:g} MiB (--max-upload-mb)", code="upload_too_large")
        self.sha.update(data)
        self.file.write(data)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def commit(self) -> str:
        self.file.close()
        if self.size == 0:
            os.unlink(self.tmp)
            raise ApiError(400, "the uploaded video is empty", code="invalid_upload")
        return self.store.add(self.tmp, self.sha.hexdigest(), self.mime, self.size)


class UploadStore:
    """Uploaded videos under their sha256, in a private temp folder; the least recently used are removed when
    the folder holds more than `keep_bytes` (never one a queued or running request uses)."""

    def __init__(self, max_bytes: int, keep_bytes: int | None = None):
        self.root = tempfile.mkdtemp(prefix="fastvid-serve-uploads-")
        os.chmod(self.root, 0o700)
        self.max_bytes = max_bytes
        self.keep_bytes = keep_bytes if keep_bytes is not None else max(4 * max_bytes, 1 << 30)
        self.files: OrderedDict[str, tuple[str, int]] = OrderedDict()  # sha -> (path, size)
        self.pins: dict[str, int] = {}
        self.lock = threading.Lock()

    def writer(self, mime: str) -> UploadWriter:
        mime = mime.strip().lower() or "application/octet-stream"
        if not (mime.startswith("video/") or mime == "application/octet-stream"):
            raise ApiError(415, f"uploads must be videos (video/*), not {mime}", code="unsupported_media_type")
        return UploadWriter(self, mime)

    def add(self, tmp: str, sha: str, mime: str, size: int) -> str:
        path = os.path.join(self.root, sha + MIME_SUFFIX.get(mime, ".video"))
        with self.lock:
            if sha in self.files:
                os.unlink(tmp)
                self.files.move_to_end(sha)
            else:
                os.replace(tmp, path)
                self.files[sha] = (path, size)
                self._evict()
        return sha

    def _evict(self) -> None:
        total = sum(size for _, size in self.files.values())
        for sha in list(self.files):
            if total <= self.keep_bytes:
                return
            if self.pins.get(sha):
                continue
            path, size = self.files.pop(sha)
            total -= size
            try:
                os.unlink(path)
            except OSError:
                pass

    def ref(self, sha: str, param: str | None) -> VideoRef:
        with self.lock:
            if not _SHA.match(sha) or sha not in self.files:
                raise ApiError(404, f"no upload {UPLOAD_SCHEME}{sha[:64]} on this server (uploads are kept while "
                                    "the server runs, the oldest removed when they take too much space): upload "
                                    "the video again", code="upload_not_found", param=param)
            self.files.move_to_end(sha)
            path, size = self.files[sha]
        shown = f"{UPLOAD_SCHEME}{sha}"
        return VideoRef(path=path, shown=shown, identity=("upload", sha), upload=sha,
                        rewrites=[(path, shown), (self.root, "(upload)")])

    def pin(self, sha: str | None, delta: int) -> None:
        if sha is None:
            return
        with self.lock:
            self.pins[sha] = self.pins.get(sha, 0) + delta
            if self.pins[sha] <= 0:
                self.pins.pop(sha)
                self._evict()

    def put_data_url(self, url: str, param: str | None) -> str:
        """Store an inline data URL (already in memory); returns its sha."""
        head, sep, payload = url.partition(",")
        mime, b64 = parse_data_header(head[5:], param)
        if not sep or not b64:
            raise bad_request("a data URL must be data:video/...;base64,<data>", param, "invalid_upload")
        w = self.writer(mime)
        try:
            w.write(_b64decode("".join(payload.split()).encode(), param))
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def parse_data_header(header: str, param: str | None) -> tuple[str, bool]:
    """'video/mp4;base64' -> ('video/mp4', True)."""
    parts = [p.strip() for p in header.split(";")]
    return parts[0].lower(), "base64" in (p.lower() for p in parts[1:])


def _b64decode(data: bytes, param: str | None) -> bytes:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL's base64 payload is malformed", param, "invalid_upload") from None


class BodyScanner:
    """Streams a JSON request body: every string value that is a base64 data URL is decoded into the upload
    store as it arrives and replaced by a `fastvid-upload:<sha>` reference; the rest of the body (at most
    `max_json` bytes) is kept for json.loads. JSON's structural characters are ASCII, so scanning bytes is safe
    in UTF-8."""

    HEAD = 200  # bytes of a string looked at to decide whether it is a data URL

    def __init__(self, store: UploadStore, max_json: int = 8 << 20):
        self.store = store
        self.max_json = max_json
        self.out = bytearray()
        self.state = "json"  # json | head (start of a string) | string (passing through) | upload
        self.escaped = False
        self.head = bytearray()
        self.writer: UploadWriter | None = None
        self.b64 = bytearray()
        self.carry = False
        self.placeholders: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        i, n = 0, len(chunk)
        while i < n:
            if self.state == "json":
                j = chunk.find(b'"', i)
                if j < 0:
                    self._emit(chunk[i:])
                    return
                self._emit(chunk[i:j + 1])
                self.state, self.head, self.escaped = "head", bytearray(), False
                i = j + 1
            elif self.state == "string":
                i = self._pass_string(chunk, i)
            elif self.state == "head":
                i = self._read_head(chunk, i)
            else:
                i = self._read_upload(chunk, i)

    def _emit(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > self.max_json:
            self.abort()
            raise ApiError(413, f"the request body (without uploads) is larger than {self.max_json >> 20} MiB",
                           code="request_too_large")

    def _string_end(self, chunk: bytes, i: int) -> int:
        """Index of the unescaped closing quote in chunk[i:], or -1 (escape state carried across chunks)."""
        for k in range(i, len(chunk)):
            c = chunk[k]
            if self.escaped:
                self.escaped = False
            elif c == 0x5C:  # backslash
                self.escaped = True
            elif c == 0x22:
                return k
        return -1

    def _pass_string(self, chunk: bytes, i: int) -> int:
        end = self._string_end(chunk, i)
        if end < 0:
            self._emit(chunk[i:])
            return len(chunk)
        self._emit(chunk[i:end + 1])
        self.state = "json"
        return end + 1

    def _read_head(self, chunk: bytes, i: int) -> int:
        take = max(0, self.HEAD - len(self.head))
        piece = chunk[i:i + take]
        end = self._string_end(piece, 0)
        if end >= 0:  # a short string: pass it through whole
            self._emit(bytes(self.head) + piece[:end + 1])
            self.state = "json"
            return i + end + 1
        self.head += piece
        i += len(piece)
        comma = self.head.find(b",")
        if self.head.startswith(b"data:") and comma > 0:
            header = bytes(self.head[5:comma]).replace(b"\\/", b"/")  # encoders that escape every "/": video\/mp4
            mime, is_b64 = parse_data_header(header.decode("ascii", "replace"), None)
            # an escape left open at the end of the head goes on into the upload (`carry` in _upload_bytes,
            # `escaped` for finding the string's end): the upload starts whatever the head's last byte is
            if is_b64 and b"\\" not in header:
                self.writer = self.store.writer(mime)
                self.b64 = bytearray()
                rest = bytes(self.head[comma + 1:])
                self.state = "upload"
                self._upload_bytes(rest)
                return i
        if len(self.head) >= self.HEAD or (len(self.head) >= 5 and not self.head.startswith(b"data:")):
            self._emit(bytes(self.head))
            self.state = "string"
        return i

    def _read_upload(self, chunk: bytes, i: int) -> int:
        end = self._string_end(chunk, i)
        part = chunk[i:] if end < 0 else chunk[i:end]
        self._upload_bytes(part)
        if end < 0:
            return len(chunk)
        self._finish_upload()
        return end + 1

    def _upload_bytes(self, data: bytes) -> None:
        if self.carry:  # an escape split across two chunks
            data, self.carry = b"\\" + data, False
        if data.endswith(b"\\"):
            data, self.carry = data[:-1], True
        if b"\\" in data:  # JSON escapes inside base64: "\/" is a slash; "\n" etc. are line breaks to skip
            data = re.sub(rb"\\(.)", lambda m: b"/" if m.group(1) == b"/" else b"" if m.group(1) in b"nrt" else
                          b"!", data, flags=re.S)
        data = data.replace(b"\n", b"").replace(b"\r", b"").replace(b" ", b"")
        self.b64 += data
        usable = len(self.b64) - len(self.b64) % 4
        if usable >= 4096 or (usable and len(self.b64) > 1 << 16):
            self._decode(usable)

    def _decode(self, usable: int) -> None:
        block, self.b64 = bytes(self.b64[:usable]), self.b64[usable:]
        try:
            self.writer.write(_b64decode(block, None))
        except ApiError:
            self.writer.abort()
            self.writer = None
            raise

    def _finish_upload(self) -> None:
        if len(self.b64) % 4:
            self.abort()
            raise bad_request("the data URL's base64 payload is malformed", None, "invalid_upload")
        if self.b64:
            self._decode(len(self.b64))
        sha = self.writer.commit()
        self.writer = None
        token = f"{UPLOAD_SCHEME}{sha}"
        self.placeholders.add(token)
        self._emit(token.encode() + b'"')
        self.state = "json"

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def result(self) -> bytes:
        if self.state == "upload":
            self.abort()
        if self.state == "head":
            self._emit(bytes(self.head))
        return bytes(self.out)
