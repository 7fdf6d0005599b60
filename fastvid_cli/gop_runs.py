"""Which frames a sparse decode passes through, and where it seeks: the plan of `video._decode_sparse` and of the
parallel GOP decoders of `video._decode_frames`, as pure functions of the demuxed timestamps (no decoding here).

A decoder decodes forward from a keyframe; to reach the next target it seeks only when decoding forward would pass
more than MIN_SKIP frames before that target's keyframe (a seek flushes the decoder and costs about as much as
decoding several frames). The targets between two seeks form a run; runs are what parallel decoders share.
"""

from __future__ import annotations

import bisect

# Frames that decoding forward must be able to skip before a seek pays off.
MIN_SKIP = 16


def key_pos(pts: list[int], keys: list[int], target: int) -> tuple[int, int]:
    """(pts of the keyframe at or before the frame with pts ``target``, that keyframe's index in ``pts``)."""
    key = keys[max(bisect.bisect_right(keys, target) - 1, 0)]
    return key, bisect.bisect_left(pts, key)


def plan_runs(pts: list[int], keys: list[int], indices: list[int],
              parts: int = 1) -> tuple[list[list[int]], list[int]]:
    """Cut the targets into runs that start with a seek, by the seek rule (MIN_SKIP). Returns (positions in
    ``indices`` of each run's targets, frames each run decodes).

    With ``parts`` > 1 decoders to share the runs, a run longer than an equal share is also cut at a keyframe it
    crosses (the one that balances its halves best): one decoder would rather decode on than seek there, but
    a run is decoded by one decoder alone, so two GOPs in one run take twice as long as two decoders take for
    them. Decoding from a keyframe gives the same frames either way; the cut also skips the frames between."""
    key = [key_pos(pts, keys, pts[i])[1] for i in indices]  # index in pts of each target's keyframe
    runs: list[list[int]] = []
    pos = None
    for j, i in enumerate(indices):
        if pos is None or key[j] - pos > MIN_SKIP:
            runs.append([j])
        else:
            runs[-1].append(j)
        pos = i + 1

    def work(run: list[int]) -> int:
        return indices[run[-1]] - key[run[0]] + 1

    if parts > 1:
        done: set[int] = set()  # runs that cannot be cut
        while True:
            loads = [work(r) for r in runs]
            r = max((x for x in range(len(runs)) if x not in done), key=lambda x: loads[x], default=None)
            if r is None or loads[r] * parts <= sum(loads):
                break
            run = runs[r]
            cuts = [c for c in range(1, len(run)) if key[run[c]] > indices[run[c - 1]]]
            if not cuts:
                done.add(r)
                continue
            c = min(cuts, key=lambda c: (max(work(run[:c]), work(run[c:])), c))
            runs[r:r + 1] = [run[:c], run[c:]]
            done = {x + (x > r) for x in done}
    return runs, [work(r) for r in runs]
