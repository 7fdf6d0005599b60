"""What a batch writes: one record per row in the output (JSON Lines, fastvid_cli.journal), and when the run ends
the output rewritten in CSV order (shard files merged in) plus the flat --csv-out.

The final view is the LAST record per key in file order; ``finalize`` orders the file so that this is each row's
chosen record (the matching "ok" one, else the latest matching error). An "ok" record is never appended when one
with the same key + fingerprint + question + video is already there (runner.RowWriter).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Any

from fastvid_cli.batch.dist import shard_files
from fastvid_cli.batch.plan import BatchConfig, Plan
from fastvid_cli.batch.rows import Row
from fastvid_cli.journal import atomic_write, index_records, lock, now, read_records, select, written_at

CSV_OUT_COLUMNS = ("id", "video", "question", "answer", "status", "error", "video_tokens_kept",
                   "video_tokens_total", "ttft_ms", "decode_tokens_per_s")


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
    for recs in sorted(by_key.values(), key=lambda rs: written_at(rs[0])):
        out.extend(recs)
    return out


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
    return {"video_path": row.path or None, "settings": settings, "fingerprint": fp, "finished_at": now()}


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


def clear_output(path: Path, main_output: bool) -> None:
    """--overwrite: empty the main output (under its lock, so never under a running batch); remove a shard."""
    if not main_output:
        path.unlink(missing_ok=True)
        return
    fd = os.open(path, os.O_WRONLY)
    lock(fd, path)
    try:
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(cfg: BatchConfig, plan: Plan) -> list[tuple[Row, dict[str, Any] | None]]:
    """Main process, at the end: merge every shard file into the output in CSV order (rewritten atomically,
    shards then removed), write --csv-out, and return the final view: (row, its chosen record or None)."""
    output, rows, fps = Path(cfg.output), plan.rows, plan.fps
    shards = shard_files(output)
    files = [output, *shards]
    fd = os.open(output, os.O_RDONLY | os.O_CREAT, 0o644)
    lock(fd, output)  # no run appends to the output while it is rewritten
    try:
        for stale in output.parent.glob(f".{output.name}.tmp-*"):  # left by a process killed mid-rewrite
            stale.unlink(missing_ok=True)
        records = read_records(files)
        ordered = order_records(records, rows, fps)
        text = "".join(r["_line"] for r in ordered)
        current = output.read_bytes().decode("utf-8", "replace")
        if shards or text != current:
            atomic_write(output, text)
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
    atomic_write(path, buf.getvalue())


def _cell(v: Any) -> str:
    return "" if v is None else str(v)

