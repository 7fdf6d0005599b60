"""Rows grouped by what they share: one group per (video, frames, ratio, method) is answered by ONE VideoSession,
its prompt-prefix KV cache reused for every question; a data-parallel run hands out whole groups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fastvid_cli.batch.rows import Row

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


