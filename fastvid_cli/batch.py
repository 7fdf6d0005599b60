"""Batch answering: many questions about many videos from a CSV, resumable, optionally data-parallel.

Data path::

    questions CSV ──read_questions──▶ Rows, all validated before any model loads (a bad row becomes an error
      record, not an abort) ──plan──▶ the rows not yet answered under the same settings (read from the output
      and every shard file) ──make_groups──▶ one group per (video, frames, ratio, method): ONE VideoSession, its
      prompt-prefix KV cache reused for every question ──Appender──▶ one JSON line per row, fsync'd as it
      finishes ──finalize──▶ the output rewritten in CSV order (shard files merged in) + the flat --csv-out.

What resume relies on (the output's invariants):

* A record is written whole: one ``write(2)`` of a line ending in ``\\n`` on an O_APPEND descriptor. A process
  killed mid-write leaves at most a torn last line without ``\\n``: readers ignore it, and it is cut off
  before the next append to that file.
* A row is done when a record with the row's key, question and video and the current settings fingerprint
  exists with status "ok" (or "error", unless --retry-errors). An "ok" record is never appended when one with
  the same key + fingerprint + question + video is already there.
* The final view is the LAST record per key in file order; ``finalize`` orders the file so that this is each
  row's chosen record (the matching "ok" one, else the latest matching error).

The key of a row is its id. A row repeating an earlier row's id gets an error record with ``"id": null`` and
``"duplicate_id": "<id>"`` so that it can never shadow the first row's answer in the final view.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import math
import os
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from fastvid_cli.errors import FastVidError, InvalidOptionError, ServerError

# Whole-file problems (missing/unreadable CSV, not UTF-8, no header, a required column missing) are usage
# errors, exit 2, as the issue asks.
CSV_ERROR = InvalidOptionError

REQUIRED_COLUMNS = ("video", "question")
OPTIONAL_COLUMNS = ("id", "ratio", "frames")
MAX_FRAMES = 4096
CSV_OUT_COLUMNS = ("id", "video", "question", "answer", "status", "error", "video_tokens_kept",
                   "video_tokens_total", "ttft_ms", "decode_tokens_per_s")
PRUNE_PARAM_NAMES = ("c", "tau", "d", "p", "beta")
FINGERPRINT_VERSION = 1
# --answer-batch auto, per device. CUDA: batched rows cost about one row per decode step (1 video x 10 questions
# 5.31x faster than separate asks, H100, benchmarks/RESULTS.md). CPU: at best 1.4-1.6x faster per row on an idle
# 2-core machine, 1.7-3.1x slower on a busy one (torch's threads contend; records showed prefill 17-58x and decode
# 29-38x longer): benchmarks/bench_batch_cpu.py, RESULTS.md 2026-12-07.
AUTO_ANSWER_BATCH = {"cuda": 16, "cpu": 1}
DIST_TIMEOUT_S = 7 * 24 * 3600


# ---------------------------------------------------------------------------------------------- CSV input
@dataclass
class Row:
    """One data row of the questions CSV, validated. `error` set means the row is answered by an error record."""

    row: int  # 1-based data row number (blank lines do not count)
    id: str
    video: str  # as written in the CSV
    path: str  # resolved: absolute, relative paths taken against the CSV's folder
    question: str
    frames: int | None = None  # per-row override, None when the cell is absent or empty
    ratio: float | None = None
    raw_frames: str | None = None  # the cell text, kept so an invalid value still has a settings fingerprint
    raw_ratio: str | None = None
    error: str | None = None
    duplicate_of: int | None = None  # row number of the first row with this id

    @property
    def key(self) -> str:
        return self.id if self.duplicate_of is None else _duplicate_key(self.row, self.id)


def _duplicate_key(row: int, id_: str) -> str:
    return f"\x00duplicate:{row}:{id_}"


def record_key(rec: dict[str, Any]) -> str:
    """The key of an output record: its id, or a per-row key for a duplicate-id row (see module doc)."""
    if rec.get("id") is None and rec.get("duplicate_id") is not None:
        return _duplicate_key(int(rec.get("row") or 0), str(rec["duplicate_id"]))
    return str(rec.get("id"))


def read_questions(path: str | os.PathLike) -> list[Row]:
    """Read and validate the whole questions CSV. Whole-file problems raise CSV_ERROR; row problems are kept
    in `Row.error` (joined with '; ' when a row has several)."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise CSV_ERROR(f"questions file not found: {name}")
    if not p.is_file():
        raise CSV_ERROR(f"questions file is not a regular file: {name}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CSV_ERROR(f"cannot read questions file {name}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # also strips a UTF-8 byte order mark
    except UnicodeDecodeError as e:
        raise CSV_ERROR(f"questions file {name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start})", "save it as UTF-8 CSV") from None
    if "\x00" in text:
        raise CSV_ERROR(f"questions file {name} contains NUL bytes: not a text CSV")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((r for r in reader if any(c.strip() for c in r)), None)
        if header is None:
            raise CSV_ERROR(f"questions file {name} is empty: expected a header row with columns video,question")
        columns = [c.strip().lower() for c in header]
        seen: set[str] = set()
        for c in columns:
            if c and c in seen:
                raise CSV_ERROR(f"questions file {name}: column '{c}' appears twice in the header")
            seen.add(c)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise CSV_ERROR(f"questions file {name}: missing required column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (header: {', '.join(header) or 'empty'})",
                            "the first line must name the columns, e.g. id,video,question")
        at = {c: columns.index(c) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in columns}
        folder = p.resolve().parent
        rows: list[Row] = []
        first_row_of: dict[str, int] = {}
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line, or a spreadsheet's trailing ",,,"
            rows.append(_parse_row(cells, len(rows) + 1, at, len(columns), folder, first_row_of))
    except csv.Error as e:
        raise CSV_ERROR(f"questions file {name} is not valid CSV (line {reader.line_num}): {e}") from None
    return rows


def _parse_row(cells: list[str], n: int, at: dict[str, int], width: int, folder: Path,
               first_row_of: dict[str, int]) -> Row:
    def cell(col: str) -> str | None:
        i = at.get(col)
        return cells[i] if i is not None and i < len(cells) else None

    problems: list[str] = []
    if len(cells) > width:
        problems.append(f"{len(cells)} fields but the header has {width} (an unquoted comma?)")
    id_ = (cell("id") or "").strip() or str(n)
    video = (cell("video") or "").strip()
    question = (cell("question") or "").strip()
    path = ""
    if not video:
        problems.append("empty video path")
    else:
        vp = Path(video).expanduser()
        vp = vp if vp.is_absolute() else folder / vp
        path = str(vp)
        if not vp.exists():
            problems.append(f"video not found: {video}")
        elif not vp.is_file():
            problems.append(f"video is not a regular file: {video}")
    if not question:
        problems.append("empty question")
    raw_ratio = (cell("ratio") or "").strip() or None
    ratio = None
    if raw_ratio is not None:
        try:
            ratio = float(raw_ratio)
        except ValueError:
            ratio = math.nan
        if math.isnan(ratio) or not 0 < ratio <= 1:
            problems.append(f"bad ratio '{raw_ratio}': must be a number in (0, 1]")
            ratio = None
    raw_frames = (cell("frames") or "").strip() or None
    frames = None
    if raw_frames is not None:
        try:
            frames = int(raw_frames)
        except ValueError:
            frames = 0
        if not 1 <= frames <= MAX_FRAMES:
            problems.append(f"bad frames '{raw_frames}': must be a whole number from 1 to {MAX_FRAMES}")
            frames = None
    duplicate_of = first_row_of.get(id_)
    if duplicate_of is not None:
        problems.insert(0, f"duplicate id '{id_}' (first used in row {duplicate_of})")
    else:
        first_row_of[id_] = n
    return Row(row=n, id=id_, video=video, path=path, question=question, frames=frames, ratio=ratio,
               raw_frames=raw_frames, raw_ratio=raw_ratio, error="; ".join(problems) or None,
               duplicate_of=duplicate_of)


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class BatchConfig:
    """Everything `fastvid batch` was asked to do (command-line values; None = the model family's default)."""

    questions: Path
    output: Path
    csv_out: Path | None = None
    model: str = "llava-ov-7b"
    threads: int | None = None  # torch's CPU threads (engine.set_threads)
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    saliency_model: str | None = None
    frames: int | None = None
    fps: float | None = None  # Qwen-VL families: sampling rate (exclusive with frames)
    method: str = "fastvid"
    ratio: float | None = None
    params: dict[str, Any] = field(default_factory=dict)  # c, tau, d, p, beta given on the command line
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    compile: bool | None = None  # CUDA-graph decode (None: on where CUDA runs); not in the fingerprint: same tokens
    # greedy rows of one video decoded together (1: one at a time; same answers); None: auto (AUTO_ANSWER_BATCH)
    answer_batch: int | None = None
    cache_dir: Path | None = None  # on-disk feature cache (feature_cache.FeatureCache); None: none. Not fingerprinted
    holitom_inner: str | None = None  # "K,R": HoliTom's inner-LLM stage (holitom methods only)
    retry_errors: bool = False
    overwrite: bool = False

    def generation(self):
        from fastvid_cli.settings import GenerationOptions

        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 top_p=self.top_p, seed=self.seed, system=self.system, compile=self.compile)


def family_defaults(model: str) -> dict[str, Any]:
    """The model family's defaults (frames, ratio, c, tau, d, p, beta) from the checkpoint's config.json alone,
    so resume can decide what is done without loading any weights."""
    import importlib

    from fastvid_cli import hub
    from fastvid_cli.errors import ModelUnavailableError, UnknownModelError
    from fastvid_cli.models import FAMILIES, resolve_model

    ref = resolve_model(model)
    # config.json read as JSON: transformers' AutoConfig costs seconds of imports, and a rerun with nothing
    # left to do should not pay them. Engine.load checks the same field again when it loads.
    try:
        with open(hub.get_file(ref, "config.json"), encoding="utf-8") as f:
            family = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelUnavailableError(f"could not read config of {ref.display}: {e}") from None
    if family not in FAMILIES:
        raise UnknownModelError(f"unsupported architecture '{family}' in {ref.display}",
                                f"supported: {', '.join(FAMILIES)}")
    return dict(importlib.import_module(FAMILIES[family]).DEFAULTS)


def base_settings(cfg: BatchConfig, defaults: dict[str, Any], dtype_name: str,
                  source: str | None = None) -> dict[str, Any]:
    """The answer-affecting settings of the command line, resolved (aliases to hub ids, folders to absolute
    paths, family defaults filled in). Rows then override frames and ratio. `source`: the model's resolved source
    when already known (a server's model)."""
    from fastvid_cli.models import ALIASES, resolve_model

    alias = ALIASES.get(cfg.model.strip())
    fastvid = cfg.method == "fastvid"
    # the Qwen-VL FastVID variant also has "ignore"; other families' settings (and fingerprints) are unchanged
    names = PRUNE_PARAM_NAMES + tuple(k for k in ("ignore",) if k in defaults)
    if "ignore" in cfg.params and "ignore" not in defaults:
        raise InvalidOptionError("--dyseg-ignore applies to FastVID on Qwen-VL models")
    params = {**{k: defaults[k] for k in names}, **cfg.params} if fastvid else {}
    if cfg.holitom_inner:
        if not cfg.method.startswith("holitom"):
            raise InvalidOptionError("--holitom-inner applies to --method holitom or holitom-orig")
        from fastvid_cli.inner_merge import parse_inner

        params["inner"] = list(parse_inner(cfg.holitom_inner))
    frames = cfg.frames or (alias.frames if alias else defaults["frames"])
    by_rate = "fps" in defaults  # families that sample by rate unless given a frame count
    if cfg.fps is not None and (not by_rate or cfg.frames):
        raise InvalidOptionError("--fps applies to the Qwen-VL families; this model samples --frames uniformly"
                                 if not by_rate else "--frames and --fps exclude each other")
    rate = {"fps": float(cfg.fps or defaults["fps"])} if by_rate and not cfg.frames else {}
    return rate | {
        "model": source or resolve_model(cfg.model).source,
        "dtype": dtype_name,
        "method": cfg.method,
        # every method but "none" prunes at the given ratio (uniform, random and holitom too, not only fastvid)
        "ratio": float(cfg.ratio if cfg.ratio is not None else defaults["ratio"]) if cfg.method != "none" else 1.0,
        "frames": int(frames) if frames else None,  # None: sampled by rate
        "params": {k: params[k] for k in sorted(params)},
        "saliency_model": _saliency_setting(cfg.saliency_model) if fastvid else None,
        "max_new_tokens": int(cfg.max_new_tokens),
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
        "seed": cfg.seed,
        "system": cfg.system,
    }


def _saliency_setting(saliency_model: str | None) -> str:
    from fastvid_cli.models.siglip_head import DEFAULT_SALIENCY_MODEL

    if not saliency_model:
        return DEFAULT_SALIENCY_MODEL
    p = Path(saliency_model).expanduser()
    return str(p.resolve()) if p.exists() else saliency_model


def row_settings(row: Row, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with the row's frames/ratio overrides. An invalid cell enters as its text, so fixing it in the
    CSV changes the fingerprint and the row is answered again."""
    s = dict(base)
    if row.frames is not None or row.raw_frames is not None:
        s.pop("fps", None)  # a frame count replaces a rate
    if row.frames is not None:
        s["frames"] = row.frames
    elif row.raw_frames is not None:
        s["frames"] = row.raw_frames
    if base["method"] == "fastvid":
        if row.ratio is not None:
            s["ratio"] = float(row.ratio)
        elif row.raw_ratio is not None:
            s["ratio"] = row.raw_ratio
    return s


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of answer-affecting settings: 12 hex digits of SHA-256 over canonical JSON."""
    blob = json.dumps({"v": FINGERPRINT_VERSION, **settings}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- output files
def shard_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}-of-{world}")


def shard_files(output: Path) -> list[Path]:
    """Every shard file of `output`, whatever the number of processes that wrote it, in a stable order."""
    import re

    pat = re.compile(re.escape(output.name) + r"\.rank(\d+)-of-(\d+)$")
    found = []
    if output.parent.is_dir():
        for p in output.parent.iterdir():
            m = pat.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for *_, p in sorted(found)]


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


def _lock(fd: int, path: Path) -> None:
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

    Holds an exclusive flock on the file while open, so two runs never append to the same file at once."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _lock(fd, path)
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


def _atomic_write(path: Path, text: str) -> None:
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


# ---------------------------------------------------------------------------------------------- resume
def _time_key(rec: dict[str, Any]):
    return (rec.get("finished_at") or "", rec.get("_order", (0, 0)))


def _matches(rec: dict[str, Any], row: Row, fp: str) -> bool:
    return rec.get("fingerprint") == fp and rec.get("question") == row.question and rec.get("video") == row.video


def select(records: list[dict[str, Any]], row: Row, fp: str) -> dict[str, Any] | None:
    """The record that stands for `row` under fingerprint `fp`: the first matching "ok" record, else the latest
    matching error record, else None. `records` are this row's key's records, oldest first."""
    matching = [r for r in records if _matches(r, row, fp)]
    ok = [r for r in matching if r.get("status") == "ok"]
    if ok:
        return ok[0]
    return matching[-1] if matching else None


def index_records(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by key, identical lines dropped, each group oldest first."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for rec in sorted(records, key=_time_key):
        line = rec.get("_line") or json.dumps(rec, sort_keys=True)
        if line in seen:
            continue
        seen.add(line)
        by_key[record_key(rec)].append(rec)
    return by_key


def is_done(chosen: dict[str, Any] | None, retry_errors: bool) -> bool:
    return chosen is not None and (chosen.get("status") == "ok" or not retry_errors)


def order_records(records: list[dict[str, Any]], rows: list[Row], fps: dict[int, str]) -> list[dict[str, Any]]:
    """Every record once, in CSV order: a row's records oldest first with its chosen record LAST (so the last
    record per key is the final view), then records of keys no longer in the CSV. A later "ok" record that
    repeats an earlier one (same key, fingerprint, question, video) is dropped."""
    by_key = index_records(records)
    out: list[dict[str, Any]] = []
    for row in rows:
        recs = by_key.pop(row.key, [])
        seen_ok: set[tuple] = set()
        kept = []
        for r in recs:
            if r.get("status") == "ok":
                sig = (r.get("fingerprint"), r.get("question"), r.get("video"))
                if sig in seen_ok:
                    continue
                seen_ok.add(sig)
            kept.append(r)
        chosen = select(kept, row, fps[row.row])
        out.extend(r for r in kept if r is not chosen)
        if chosen is not None:
            out.append(chosen)
    for recs in sorted(by_key.values(), key=lambda rs: _time_key(rs[0])):
        out.extend(recs)
    return out


# ---------------------------------------------------------------------------------------------- records
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _report_keys() -> list[str]:
    from fastvid_cli.report import Report

    return [f.name for f in dataclasses.fields(Report)]


def _head(row: Row, status: str, error: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"id": row.id if row.duplicate_of is None else None, "row": row.row,
                            "status": status, "error": error}
    if row.duplicate_of is not None:
        head["duplicate_id"] = row.id
        head["duplicate_of"] = row.duplicate_of
    return head


def _tail(row: Row, settings: dict[str, Any], fp: str) -> dict[str, Any]:
    return {"video_path": row.path or None, "settings": settings, "fingerprint": fp, "finished_at": _now()}


def ok_record(row: Row, report_dict: dict[str, Any], settings: dict[str, Any], fp: str) -> dict[str, Any]:
    """`ask --json`'s fields (report.to_dict()) plus id, row, status, error, settings, fingerprint, video_path and
    finished_at. `video` is the path as written in the CSV, like `ask --json` reports the path as typed."""
    rec = _head(row, "ok", None)
    rec.update(report_dict)
    rec["video"] = row.video
    rec.update(_tail(row, settings, fp))
    return rec


def error_record(row: Row, message: str, settings: dict[str, Any], fp: str, *, model: str) -> dict[str, Any]:
    """Same keys as an "ok" record; what is unknown for a failed row is null. `model`: the name "ok" records carry
    (the alias the user gave, else the hub id or folder), not the resolved source in `settings`."""
    rec = _head(row, "error", message)
    rec.update({k: None for k in _report_keys()})
    ratio, frames = settings.get("ratio"), settings.get("frames")
    rec.update(model=model, video=row.video, question=row.question, method=settings.get("method"),
               ratio=ratio if isinstance(ratio, float) else None, params=settings.get("params"),
               frames_requested=frames if isinstance(frames, int) else None)
    rec.update(_tail(row, settings, fp))
    return rec


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class Group:
    """Rows that share one VideoSession: same video file, frames, ratio and method."""

    path: str
    frames: int | None
    ratio: float
    method: str
    rows: list[Row]
    fps: float | None = None  # Qwen-VL families sampling by rate
    sampling: Any = None  # what video.sample_frames gets: `frames`, or the family's frame plan (run_batch sets it)

    @property
    def first_row(self) -> int:
        return self.rows[0].row


def make_groups(rows: list[Row], settings: dict[int, dict[str, Any]]) -> list[Group]:
    """Group valid rows by (resolved video, frames, ratio, method), in order of each group's first row."""
    groups: dict[tuple, Group] = {}
    for row in rows:
        s = settings[row.row]
        key = (os.path.realpath(row.path), s["frames"], s["ratio"], s["method"], s.get("fps"))
        if key not in groups:
            groups[key] = Group(row.path, s["frames"], s["ratio"], s["method"], [], fps=s.get("fps"))
        groups[key].rows.append(row)
    return sorted(groups.values(), key=lambda g: g.first_row)


def split_groups(groups: list[Group], world: int) -> list[list[Group]]:
    """Whole groups to `world` processes, balanced by row count (largest group first to the least loaded,
    ties to the lowest rank); each process keeps its groups in order of their first row. Deterministic, so
    every process computes the same split."""
    shares: list[list[Group]] = [[] for _ in range(world)]
    load = [0] * world
    for g in sorted(groups, key=lambda g: (-len(g.rows), g.first_row)):
        r = min(range(world), key=lambda i: (load[i], i))
        shares[r].append(g)
        load[r] += len(g.rows)
    return [sorted(s, key=lambda g: g.first_row) for s in shares]


# ---------------------------------------------------------------------------------------------- data parallel
@dataclass
class Dist:
    """This process's place in a data-parallel run (torchrun / accelerate launch); world 1 = a plain run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    state: Any = None  # accelerate PartialState when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is None or self.world <= 1:
            return
        import torch.distributed as td

        if td.is_initialized() and td.get_backend() == "gloo":
            # accelerate's wait_for_everyone passes device_ids=[local rank] whenever CUDA is visible; a CPU run with
            # more processes than GPUs then names a GPU that does not exist ("invalid device ordinal", seen with
            # 2 processes on a 1-GPU host). A gloo barrier needs no device.
            td.barrier()
        else:
            self.state.wait_for_everyone()

    def device(self, device: str) -> str:
        """The device this process loads onto: cuda:<local rank> on GPUs, else cpu."""
        if self.world <= 1:
            return device
        return "cpu" if _wants_cpu(device) else f"cuda:{self.local_rank}"


def _wants_cpu(device: str) -> bool:
    from fastvid_cli.models.base import resolve_device

    d = device.strip().lower()
    return d == "cpu" or (d == "auto" and resolve_device("auto") == "cpu")


def init_dist(device: str) -> Dist:
    """A Dist from the launcher's environment: WORLD_SIZE > 1 starts accelerate's PartialState (cpu=True, hence
    gloo, when running on CPU)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world <= 1:
        return Dist()
    from accelerate import PartialState

    # The closing barrier waits for the slowest process, which can be hours behind on a big batch: the default
    # collective timeout (10-30 min) would kill a healthy run. A crashed process is torchrun's to handle.
    state = PartialState(cpu=_wants_cpu(device), timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return Dist(rank=state.process_index, world=state.num_processes, local_rank=state.local_process_index,
                state=state)


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """What run_batch tells its display; this one shows nothing (cli_batch.BatchProgress draws it)."""

    def start(self, *, rows: int, pending: int, mine: int, skipped: int, dist: Dist) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def answering(self) -> None:
        """The model is ready: rows from now on take model time (the ETA should be based on them)."""

    def row_done(self, record: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class BatchResult:
    rows: int = 0
    skipped: int = 0  # already done before this run
    answered: int = 0  # records written by this process
    failed: int = 0  # of those, errors
    interrupted: bool = False
    final: list[tuple[Row, dict[str, Any] | None]] = field(default_factory=list)  # main process only

    @property
    def final_ok(self) -> int:
        return sum(1 for _, r in self.final if r is not None and r.get("status") == "ok")

    @property
    def final_failed(self) -> int:
        return sum(1 for _, r in self.final if r is not None and r.get("status") == "error")

    @property
    def final_pending(self) -> int:
        return sum(1 for _, r in self.final if r is None)


def validate_config(cfg: BatchConfig) -> None:
    """Option checks that need no model (exit 2 on failure)."""
    from fastvid_cli.pruning import method_names

    if cfg.method not in method_names():
        raise InvalidOptionError(f"--method must be one of {', '.join(method_names())} (got '{cfg.method}')")
    if cfg.ratio is not None and (math.isnan(cfg.ratio) or not 0 < cfg.ratio <= 1):
        raise InvalidOptionError(f"--ratio must be in (0, 1] (got {cfg.ratio})")
    cfg.generation().validate()
    out = Path(cfg.output)
    if out.is_dir():
        raise InvalidOptionError(f"--output {out} is a folder; give a file name, e.g. answers.jsonl")
    if not out.parent.is_dir():
        raise InvalidOptionError(f"--output {out}: folder {out.parent} does not exist")
    if cfg.csv_out is not None:
        co = Path(cfg.csv_out)
        if co.is_dir() or not co.parent.is_dir():
            raise InvalidOptionError(f"--csv-out {co}: not a writable file path")
        if co.resolve() in (out.resolve(), Path(cfg.questions).resolve()):
            raise InvalidOptionError("--csv-out must differ from the questions file and --output")
    if out.resolve() == Path(cfg.questions).resolve():
        raise InvalidOptionError("--output must differ from the questions file")


@dataclass
class Plan:
    """The validated questions and the resolved settings of each row (nothing written, no model loaded)."""

    rows: list[Row]
    base: dict[str, Any]
    settings: dict[int, dict[str, Any]]  # row number -> settings
    fps: dict[int, str]  # row number -> fingerprint
    model_name: str = ""  # what records call the model: the alias as given (ok records: Engine.model_name)


def make_plan(cfg: BatchConfig, engine=None) -> Plan:
    """Everything that can fail on a bad option or a bad CSV fails here, before anything is written or loaded."""
    from fastvid_cli.models import check_attn_implementation, check_device_name, check_dtype_name, resolve_model

    validate_config(cfg)
    rows = read_questions(cfg.questions)
    ref = getattr(engine, "ref", None) or resolve_model(cfg.model)  # a server's engine knows its model
    check_device_name(cfg.device)
    check_dtype_name(cfg.dtype)
    check_attn_implementation(cfg.attn_implementation)

    if engine is None:
        from fastvid_cli.models.base import dtype_name, resolve_device, resolve_dtype  # torch: after cheap checks

        dtype_label = dtype_name(resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
        defaults = family_defaults(cfg.model)
    else:
        dtype_label = engine.dtype if isinstance(engine.dtype, str) else str(engine.dtype).replace("torch.", "")
        defaults = dict(engine.defaults)
    base = base_settings(cfg, defaults, dtype_label, ref.source)
    settings = {r.row: row_settings(r, base) for r in rows}
    return Plan(rows, base, settings, {n: fingerprint(x) for n, x in settings.items()}, ref.display)


class _Writer:
    """Appends this process's records; never an "ok" record that the output already holds."""

    def __init__(self, path: Path, has_ok: set[tuple], result: "BatchResult", progress: Progress):
        self.appender = Appender(path)
        self.has_ok, self.result, self.progress = has_ok, result, progress
        if self.appender.repaired:
            progress.note(f"removed a torn last line ({self.appender.repaired} bytes) from {path.name}")

    def __call__(self, row: Row, rec: dict[str, Any]) -> None:
        if rec["status"] == "ok":
            sig = (row.key, rec["fingerprint"], row.question, row.video)
            if sig in self.has_ok:
                return
            self.has_ok.add(sig)
        self.appender.append(rec)
        self.result.answered += 1
        self.result.failed += rec["status"] == "error"
        self.progress.row_done(rec)

    def close(self) -> None:
        self.appender.close()


def run_batch(cfg: BatchConfig, *, engine=None, dist: Dist | None = None, progress: Progress | None = None,
              stop: threading.Event | None = None, on_exception: Callable[[BaseException], None] | None = None,
              prefetch: bool = True) -> BatchResult:
    """Answer every row of `cfg.questions` not answered yet; returns counts and (main process) the final view.

    `engine`: an already loaded Engine (tests); else one is loaded, and only if this process has work.
    `dist`: this process's place in a data-parallel run (default: from the launcher's environment).
    `stop`: when set, the run stops after the current row (Ctrl-C). `on_exception`: called with unexpected
    exceptions recorded as row errors (the CLI prints their traceback under --debug).
    `prefetch`: decode each next video's frames on a background thread while the current one is answered (and the
    first one's while the model loads); records then carry timings_ms.sample_wait (see FramePrefetcher)."""
    progress = progress or Progress()
    stop = stop or threading.Event()
    plan = make_plan(cfg, engine)
    output = Path(cfg.output)

    dist = dist or init_dist(cfg.device)
    if cfg.overwrite and dist.is_main:
        if output.exists():
            _clear(output, main_output=True)
        for p in shard_files(output):
            _clear(p, main_output=False)
    dist.barrier()

    # What is done: read from the output AND every shard file, whatever process count wrote them.
    records = read_records([output, *shard_files(output)])
    by_key = index_records(records)
    pending = [row for row in plan.rows
               if not is_done(select(by_key.get(row.key, []), row, plan.fps[row.row]), cfg.retry_errors)]
    has_ok = {(record_key(r), r.get("fingerprint"), r.get("question"), r.get("video"))
              for r in records if r.get("status") == "ok"}
    result = BatchResult(rows=len(plan.rows), skipped=len(plan.rows) - len(pending))
    # Row errors need no model: the main process writes them. Answerable rows go in whole groups.
    invalid = [r for r in pending if r.error] if dist.is_main else []
    share = split_groups(make_groups([r for r in pending if not r.error], plan.settings), dist.world)[dist.rank]
    if share and prefetch:
        from fastvid_cli.models import frame_request

        for g in share:  # sampled before the model loads (prefetch): the family's own plan, or a count
            g.sampling = frame_request(cfg.model, g.frames, g.fps)
    dist.barrier()  # every process has read the files before any is appended to

    mine = len(invalid) + sum(len(g.rows) for g in share)
    progress.start(rows=len(plan.rows), pending=len(pending), mine=mine, skipped=result.skipped, dist=dist)
    try:
        if mine:
            own = output if dist.world == 1 else shard_path(output, dist.rank, dist.world)
            write = _Writer(own, has_ok, result, progress)
            try:
                for row in invalid:
                    if stop.is_set():
                        break
                    write(row, error_record(row, row.error or "invalid row", plan.settings[row.row],
                                            plan.fps[row.row], model=plan.model_name))
                if share and not stop.is_set():
                    frames_ahead = FramePrefetcher(share) if prefetch else None
                    try:
                        engine = engine or _load_engine(cfg, dist, progress)
                        fcache = None
                        if cfg.cache_dir is not None:
                            from fastvid_cli.feature_cache import FeatureCache

                            fcache = FeatureCache(cfg.cache_dir)
                            if frames_ahead is not None:  # a video whose features are cached needs no decoding
                                frames_ahead.skip = lambda g: _cached(engine, fcache, g)
                        answer_batch = resolve_answer_batch(cfg.answer_batch, engine)
                        if cfg.answer_batch is None and cfg.temperature == 0:
                            progress.note(f"--answer-batch auto: {answer_batch} on {engine.device}")
                        progress.answering()
                        gen = cfg.generation()
                        for k, group in enumerate(share):
                            if stop.is_set():
                                break
                            _answer_group(engine, group, plan, gen, write, stop, on_exception,
                                          frames_ahead.take(k) if frames_ahead is not None else None,
                                          answer_batch=answer_batch, feature_cache=fcache)
                    finally:
                        if frames_ahead is not None:
                            frames_ahead.close()
            finally:
                write.close()
        result.interrupted = stop.is_set()
    finally:
        progress.stop()

    dist.barrier()  # every process has finished appending
    if dist.is_main:
        result.final = finalize(cfg, plan)
    return result


def resolve_answer_batch(requested: int | None, engine) -> int:
    """--answer-batch: the number asked for, or for auto (None) AUTO_ANSWER_BATCH of the device the model runs on
    (CUDA wherever any of its weights are on a GPU, else CPU)."""
    if requested is not None:
        return int(requested)
    return AUTO_ANSWER_BATCH["cuda" if getattr(engine, "cuda", False) else "cpu"]


def _load_engine(cfg: BatchConfig, dist: Dist, progress: Progress):
    from fastvid_cli.engine import Engine, set_threads

    set_threads(cfg.threads)
    progress.note("loading model…")
    engine = Engine.load(cfg.model, device=dist.device(cfg.device), dtype=cfg.dtype,
                         attn_implementation=cfg.attn_implementation, saliency_model=cfg.saliency_model)
    progress.note(f"model loaded in {(engine.load_ms or 0) / 1e3:.2f} s on {engine.device}")
    for w in engine.adapter.warnings:
        progress.note(f"warning: {w}")
    return engine


def _cached(engine, fcache, group: "Group") -> bool:
    """Whether the feature cache holds `group`'s video at its frames (the key `Engine.session` looks up)."""
    try:
        return fcache.contains(engine.feature_cache_key(group.path, engine.frame_plan(group.frames, group.fps)))
    except Exception:  # noqa: BLE001 - unreadable file, bad request: the session finds out and says so
        return False


def _clear(path: Path, main_output: bool) -> None:
    """--overwrite: empty the main output (under its lock, so never under a running batch); remove a shard."""
    if not main_output:
        path.unlink(missing_ok=True)
        return
    fd = os.open(path, os.O_WRONLY)
    _lock(fd, path)
    try:
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


class FramePrefetcher:
    """Samples the frames of each group's video on one background thread, one group ahead of the answers.

    `take(k)` hands out group k's frames (waiting if they are not ready) and starts sampling group k+1, so the next
    video is decoded on the CPU while the GPU answers this one's questions; at most two clips are held at a time.
    Decoding is mostly FFmpeg code that releases the GIL, so it costs the answering thread little.

    What the records then say: timings_ms.sample is how long the background decode took, timings_ms.sample_wait
    how long the answering thread still waited for it (only that wait counts towards the first row's TTFT), as
    `ask` reports sampling that overlapped the model load.

    `skip(group)` (set once the model is loaded, with a feature cache): True for a group whose features are cached;
    its frames are not decoded, and `take` hands out no clip for it."""

    def __init__(self, groups: list[Group]):
        from concurrent.futures import ThreadPoolExecutor

        self.groups = groups
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvid-prefetch")
        self.futures: dict[int, Any] = {}
        self.started: list[int] = []  # group indices in the order sampling was started (tests read it)
        self.skip: Callable[[Group], bool] | None = None
        self._submit(0)

    def _submit(self, k: int) -> None:
        if k < len(self.groups) and k not in self.futures:
            if self.skip is not None and self.skip(self.groups[k]):
                from concurrent.futures import Future

                self.futures[k] = done = Future()
                done.set_result((None, 0.0))
                return
            self.started.append(k)
            self.futures[k] = self.pool.submit(self._sample, self.groups[k])

    @staticmethod
    def _sample(group: Group):
        from fastvid_cli.video import sample_frames

        # One core fewer than the machine has: the answering thread keeps one to launch GPU work from.
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        t0 = time.perf_counter()
        clip = sample_frames(group.path, group.sampling if group.sampling is not None else group.frames,
                             threads=max(1, cores - 1))
        return clip, (time.perf_counter() - t0) * 1e3

    def take(self, k: int) -> "Prefetched":
        """Group k's frames: (clip, sample_ms, wait_ms) or the exception sampling raised; clip None if skipped."""
        self._submit(k)  # not started yet (groups skipped): start now
        fut = self.futures.pop(k)
        self._submit(k + 1)  # queued behind k on the single worker: decoded while k is answered
        t0 = time.perf_counter()
        try:
            clip, sample_ms = fut.result()
        except Exception as e:  # handed to the caller, which records it like an inline sampling error
            return Prefetched(None, 0.0, (time.perf_counter() - t0) * 1e3, e)
        return Prefetched(clip, sample_ms, (time.perf_counter() - t0) * 1e3, None)

    def close(self) -> None:
        """Drop queued work and wait for a decode in flight (an interpreter exiting under PyAV code can abort)."""
        for fut in self.futures.values():
            fut.cancel()
        self.futures.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Prefetched:
    clip: Any  # fastvid_cli.video.Clip, or None when sampling failed or was skipped (features cached)
    sample_ms: float
    wait_ms: float
    error: BaseException | None


def _answer_group(engine, group: Group, plan: Plan, gen, write: Callable, stop: threading.Event,
                  on_exception, prefetched: Prefetched | None = None, answer_batch: int = 1,
                  feature_cache=None) -> None:
    """One VideoSession for the group; each row answered with the shared prefix KV cache. With `prefetched`
    frames (FramePrefetcher) the session starts from them instead of sampling here; with a `feature_cache` its
    features are looked up there first (and stored after a miss). Greedy rows go through
    `VideoSession.answer_many` in chunks of `answer_batch` (decoded together: same answers, a fraction of the
    per-row cost); a chunk is finished before a Ctrl-C stops the run, and a chunk that fails as a whole is
    retried row by row so one bad row cannot take its neighbours' answers with it."""
    from fastvid_cli.settings import PruneOptions

    t0 = time.perf_counter()
    params = plan.base["params"] if group.method == "fastvid" or group.method.startswith("holitom") else {}
    prune = PruneOptions(method=group.method, ratio=group.ratio, params=dict(params))
    session, session_error = None, None
    try:
        if prefetched is not None and prefetched.error is not None:
            raise prefetched.error
        if prefetched is None or prefetched.clip is None:  # not prefetched, or skipped because cached
            session = engine.session(group.path, frames=group.frames, fps=group.fps, prune=prune, system=gen.system,
                                     feature_cache=feature_cache)
        else:
            session = engine.session(group.path, prune=prune, system=gen.system, clip=prefetched.clip,
                                     sample_ms=prefetched.sample_ms, feature_cache=feature_cache)
    except FastVidError as e:
        session_error = e.one_line()
    except Exception as e:  # a bug or a library failure on this video: recorded, the batch goes on
        session_error = _internal(e, on_exception)
    # sampling (or the wait for prefetched frames) + encoding + pruning: counts toward the first TTFT
    lead_ms = (time.perf_counter() - t0) * 1e3 + (prefetched.wait_ms if prefetched is not None else 0.0)
    batched: dict[int, Any] = {}  # row index in the group -> its Report from a batched chunk
    step = max(1, answer_batch) if gen.temperature == 0 else 1
    for i, row in enumerate(group.rows):
        if stop.is_set() and i not in batched:  # answers already made in a chunk are still written
            return
        s, fp = plan.settings[row.row], plan.fps[row.row]
        if session is None:
            write(row, error_record(row, session_error or "failed", s, fp, model=plan.model_name))
            continue
        if step > 1 and not stop.is_set() and i % step == 0 and i + 1 < len(group.rows):
            chunk = group.rows[i:i + step]
            try:
                reports = session.answer_many([r.question for r in chunk], gen, lead_ms=lead_ms if i == 0 else 0.0,
                                              max_rows=step)
                batched.update({i + j: r for j, r in enumerate(reports)})
            except ServerError:  # --server: the server is gone or failing; stop (what was written stays)
                raise
            except Exception as e:  # noqa: BLE001 - answered one by one below, where each row's error is its own
                if on_exception is not None:
                    on_exception(e)
        try:
            report = batched.pop(i, None) or session.answer(row.question, gen, reuse_prefix=True,
                                                            lead_ms=lead_ms if i == 0 else 0.0)
        except ServerError:
            raise
        except FastVidError as e:
            write(row, error_record(row, e.one_line(), s, fp, model=plan.model_name))
            continue
        except Exception as e:
            write(row, error_record(row, _internal(e, on_exception), s, fp, model=plan.model_name))
            continue
        if report.stop_reason == "interrupted":  # a second Ctrl-C mid-answer: a partial answer is not recorded
            raise KeyboardInterrupt
        data = report.to_dict()
        data["timings_ms"]["load"] = round(engine.load_ms or 0.0, 3)
        if prefetched is not None:  # sampled in the background: only this wait held the answers up
            data["timings_ms"]["sample_wait"] = round(prefetched.wait_ms, 3)
        write(row, ok_record(row, data, s, fp))


def _internal(e: BaseException, on_exception) -> str:
    if on_exception is not None:
        on_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"internal error: {type(e).__name__}: {msg[:300]}"


def finalize(cfg: BatchConfig, plan: Plan) -> list[tuple[Row, dict[str, Any] | None]]:
    """Main process, at the end: merge every shard file into the output in CSV order (rewritten atomically,
    shards then removed), write --csv-out, and return the final view: (row, its chosen record or None)."""
    output, rows, fps = Path(cfg.output), plan.rows, plan.fps
    shards = shard_files(output)
    files = [output, *shards]
    fd = os.open(output, os.O_RDONLY | os.O_CREAT, 0o644)
    _lock(fd, output)  # no run appends to the output while it is rewritten
    try:
        for stale in output.parent.glob(f".{output.name}.tmp-*"):  # left by a process killed mid-rewrite
            stale.unlink(missing_ok=True)
        records = read_records(files)
        ordered = order_records(records, rows, fps)
        text = "".join(r["_line"] for r in ordered)
        current = output.read_bytes().decode("utf-8", "replace")
        if shards or text != current:
            _atomic_write(output, text)
            for p in shards:
                p.unlink(missing_ok=True)
    finally:
        os.close(fd)
    by_key = index_records(ordered)
    final = [(row, select(by_key.get(row.key, []), row, fps[row.row])) for row in rows]
    if cfg.csv_out is not None:
        write_csv_out(Path(cfg.csv_out), final)
    return final


def write_csv_out(path: Path, final: list[tuple[Row, dict[str, Any] | None]]) -> None:
    """The flat CSV: one line per questions-CSV row, in its order; rows not answered yet say "pending"."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_OUT_COLUMNS)
    for row, rec in final:
        if rec is None:
            w.writerow([row.id, row.video, row.question, "", "pending", "", "", "", "", ""])
            continue
        ttft = (rec.get("timings_ms") or {}).get("ttft")
        w.writerow([row.id, row.video, row.question, rec.get("answer") or "", rec.get("status"),
                    rec.get("error") or "", _cell(rec.get("video_tokens_kept")), _cell(rec.get("video_tokens_total")),
                    _cell(ttft), _cell(rec.get("decode_tokens_per_s"))])
    _atomic_write(path, buf.getvalue())


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def format_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))
