"""The questions CSV of `fastvid batch`: read whole and validated before any model loads. A bad row is kept with
its problem in `Row.error` (it is answered by an error record); a bad file is a usage error.

The key of a row is its id. A row repeating an earlier row's id gets an error record with ``"id": null`` and
``"duplicate_id": "<id>"`` (journal.record_key), so that it can never shadow the first row's answer.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.journal import duplicate_key
from fastvid_cli.runs import read_input_text

# Whole-file problems (missing/unreadable CSV, not UTF-8, no header, a required column missing) are usage
# errors, exit 2, as the issue asks.
CSV_ERROR = InvalidOptionError

REQUIRED_COLUMNS = ("video", "question")
OPTIONAL_COLUMNS = ("id", "ratio", "frames")
MAX_FRAMES = 4096


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
        return self.id if self.duplicate_of is None else duplicate_key(self.row, self.id)


def read_questions(path: str | os.PathLike) -> list[Row]:
    """Read and validate the whole questions CSV. Whole-file problems raise CSV_ERROR; row problems are kept
    in `Row.error` (joined with '; ' when a row has several)."""
    p = Path(path)
    name = str(path)
    text = read_input_text(path, "questions file", "save it as UTF-8 CSV")  # CSV_ERROR is InvalidOptionError too
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
