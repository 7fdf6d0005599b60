"""The journal of a resumable run (`batch`, `eval`): an append-only JSON Lines file of records, one per finished
item, and what resume reads from it.

What resume relies on:

* A record is written whole: one ``write(2)`` of a line ending in ``\\n`` on an O_APPEND descriptor, fsync'd before
  the next. A process killed mid-write leaves at most a torn last line without ``\\n``: readers ignore it, and it is
  cut off (under the file's lock) before the next append to that file.
* A record carries the fingerprint of the settings that produced it (``fingerprint``: a hash of canonical JSON).
  An item is done when a record with its key, its question and video and the current fingerprint exists with
  status "ok" (or "error", unless errors are retried). The record that stands for an item is its first matching
  "ok" record, else its latest matching error (``select``).
* Fingerprints are compared as stored: ``fingerprint`` must give the same 12 hex digits for the same settings in
  every version, or every existing output is answered again (tests pin some).

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Protocol

from fastvid_cli.errors import InvalidOptionError

FINGERPRINT_VERSION = 1


class Item(Protocol):
    """What a record is matched against: a questions-CSV row (batch) or a benchmark question (eval)."""

    question: str
    video: str


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of answer-affecting settings: 12 hex digits of SHA-256 over canonical JSON."""
    blob = json.dumps({"v": FINGERPRINT_VERSION, **settings}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def now() -> str:
    """The time a record was finished: UTC, ISO 8601 with microseconds and a Z (it orders records)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------- keys
def duplicate_key(row: int, id_: str) -> str:
    """The key of a questions-CSV row that repeats an earlier row's id: its own, so that it never shadows the first
    row's records."""
    return f"\x00duplicate:{row}:{id_}"


def record_key(rec: dict[str, Any]) -> str:
    """The key of a record: its id, or a per-row key for a duplicate-id row (``"id": null`` with
    ``duplicate_id``)."""
    if rec.get("id") is None and rec.get("duplicate_id") is not None:
        return duplicate_key(int(rec.get("row") or 0), str(rec["duplicate_id"]))
    return str(rec.get("id"))


# ---------------------------------------------------------------------------------------------- the file
def lock(fd: int, path: Path) -> None:
    """An exclusive lock on the open file `fd`, or a usage error when another run holds it (`fd` is then closed)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InvalidOptionError(f"another fastvid batch is writing to {path}",
                                 "wait for it to finish, or use another --output") from None


def repair_tail(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off `path`; returns the number of bytes removed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep


class Appender:
    """Appends records to one JSONL file: each a single write of a whole line, fsync'd before returning.

    Holds an exclusive flock on the file while open, so two runs never append to the same file at once.
    `repaired`: the bytes of a torn last line cut off when it was opened."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        lock(fd, path)
        self.fd = fd
        self.repaired = repair_tail(path)  # under the lock: nobody else is appending now

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` by `text` all at once (temp file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_records(files: Iterable[Path]) -> list[dict[str, Any]]:
    """All complete records of `files`, in file order. A torn last line, blank lines and lines that are not
    records of ours are skipped. Each record gets `_line` (its exact text) and `_order` (file, line)."""
    out = []
    for fi, path in enumerate(files):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")
        for li, raw in enumerate(lines[:-1]):  # the piece after the last "\n" is empty or torn
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "status" not in rec or "fingerprint" not in rec:
                continue
            rec["_line"] = raw.decode("utf-8", "replace") + "\n"
            rec["_order"] = (fi, li)
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------- resume
def written_at(rec: dict[str, Any]) -> tuple:
    """Sort key of records, oldest first: when each was finished, then where it stands in the files."""
    return (rec.get("finished_at") or "", rec.get("_order", (0, 0)))


def _matches(rec: dict[str, Any], item: Item, fp: str) -> bool:
    return rec.get("fingerprint") == fp and rec.get("question") == item.question and rec.get("video") == item.video


def select(records: list[dict[str, Any]], item: Item, fp: str) -> dict[str, Any] | None:
    """The record that stands for `item` under fingerprint `fp`: the first matching "ok" record, else the latest
    matching error record, else None. `records` are this item's key's records, oldest first."""
    matching = [r for r in records if _matches(r, item, fp)]
    ok = [r for r in matching if r.get("status") == "ok"]
    if ok:
        return ok[0]
    return matching[-1] if matching else None


def index_records(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by key, identical lines dropped, each group oldest first."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for rec in sorted(records, key=written_at):
        line = rec.get("_line") or json.dumps(rec, sort_keys=True)
        if line in seen:
            continue
        seen.add(line)
        by_key[record_key(rec)].append(rec)
    return by_key


def is_done(chosen: dict[str, Any] | None, retry_errors: bool) -> bool:
    """Whether the record standing for an item (`select`) means it is not to be answered again."""
    return chosen is not None and (chosen.get("status") == "ok" or not retry_errors)
