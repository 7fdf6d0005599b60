"""Query-aware frame selection and moment search, as pure tensor code: relevance scores in, frame choices out.

No model, no I/O: the scores come from a text-image scorer (`fastvid_cli.frame_scorer`), one per candidate frame,
in time order. Two users:

* `--select K` (`select_frames`): K of M candidate frames by BOLT's inverse transform sampling (Liu et al.,
  "BOLT: Boost Large Vision-Language Model Without Training for Long-form Video Understanding", CVPR 2025; rule
  as in its reference code, sming256/BOLT `select_frames.py`):

      s'  = (s - min s) / (max s - min s)          relevance normalised to [0, 1]
      s'' = s' ** power                            sharpened (BOLT: power 3 on VideoMME/MLVU, 2.5 on LongVideoBench)
      p   = s'' / sum s''                          a distribution over the candidates
      F   = cumsum p                               its CDF
      u_j = linspace(1/K, 1 - 1/K, K)              K evenly spaced quantiles
      i_j = min{i : F_i >= u_j}                    inverse CDF (searchsorted, left)

  Relevant stretches get many frames, the rest of the video still gets some (every quantile lands somewhere), so
  the rule mixes relevance with coverage. Two things fastvid adds, both deterministic: (1) BOLT may pick one
  candidate several times (a sharp peak holds several quantiles); a video LLM gains nothing from a repeated frame
  and our clips need increasing frame indices, so each repeat moves to the nearest candidate not taken yet (ties:
  the earlier one), which spends the frame next to the peak instead; (2) flat scores (max = min, where BOLT's
  normalisation divides by zero) give uniform frames.

* `fastvid find` (`find_moments`): moments of one video, merged from adjacent high-scoring candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# BOLT's sharpening power for VideoMME and MLVU (its scripts/frame_selection.sh); LongVideoBench used 2.5.
DEFAULT_POWER = 3.0
# Moment search: a candidate belongs to a moment when its score, normalised between the video's median and best
# score, is at least this.
MOMENT_LEVEL = 0.5


def bolt_indices(scores: torch.Tensor, k: int, power: float = DEFAULT_POWER) -> torch.Tensor:
    """BOLT's inverse transform sampling, exactly (see the module docstring): scores (M,) -> (k,) candidate
    indices, non-decreasing, possibly repeated. Flat scores (max = min, where BOLT's normalisation divides by
    zero): uniform indices instead."""
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = scores.detach().to(torch.float64).cpu()
    m = s.numel()
    span = s.max() - s.min()
    if not torch.isfinite(span) or span <= 0:
        return uniform_indices(m, k)
    s = ((s - s.min()) / span) ** power
    cdf = torch.cumsum(s / s.sum(), 0)
    u = torch.linspace(1.0 / k, 1.0 - 1.0 / k, k, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=False).clamp_(max=m - 1)


def uniform_indices(m: int, k: int) -> torch.Tensor:
    """k uniformly spaced indices into m candidates (floor of linspace, the sampler's rule; repeats when k > m)."""
    return torch.linspace(0, m - 1, k, dtype=torch.float64).floor().long()


def spread_repeats(indices: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (k,) into m >= k candidates, repeats allowed -> k distinct indices, increasing: each repeat (in
    order) moves to the nearest candidate not taken yet, the earlier one on a tie."""
    k = indices.numel()
    if k > m:
        raise ValueError(f"cannot choose {k} distinct frames of {m} candidates")
    taken = torch.zeros(m, dtype=torch.bool)
    out = []
    for i in indices.tolist():
        if taken[i]:
            for d in range(1, m):
                if i - d >= 0 and not taken[i - d]:
                    i -= d
                    break
                if i + d < m and not taken[i + d]:
                    i += d
                    break
        taken[i] = True
        out.append(i)
    return torch.tensor(sorted(out), dtype=torch.long)


@dataclass
class Selection:
    """K frames chosen of M candidates: `indices` (K,) increasing positions in the candidate list, and BOLT's own
    picks before repeats were spread (`bolt`, (K,) non-decreasing)."""

    indices: torch.Tensor
    bolt: torch.Tensor
    power: float


def select_frames(scores: torch.Tensor, k: int, power: float = DEFAULT_POWER) -> Selection:
    """K distinct candidates for relevance `scores` (M,) (M >= K; all of them when M == K)."""
    m = scores.numel()
    if k > m:
        raise ValueError(f"cannot choose {k} frames of {m} candidates")
    bolt = bolt_indices(scores, k, power)
    return Selection(indices=spread_repeats(bolt, m), bolt=bolt, power=power)


@dataclass
class Moment:
    """A stretch of one video that matches a text: [start, end) seconds, the best candidate's score and time."""

    start: float
    end: float
    score: float
    peak: float


def find_moments(scores: torch.Tensor, times: list[float], duration: float,
                 level: float = MOMENT_LEVEL) -> list[Moment]:
    """Moments of one video from its candidates' scores (M,) at `times` (seconds, increasing), best first.

    Rule: scores are normalised within the video between its median (the lower middle value for an even count)
    and its best score, `(s - median) / (max - median)`; each maximal run of consecutive candidates at or above
    `level` is one moment. The median, not the minimum, is the floor because most of a video is not the moment
    sought: a few frames showing nothing at all would otherwise set the floor and let whole stretches of mildly
    related frames merge into one long moment (on the needle split, min-max gave 86 of 200 top moments longer
    than 2 s, the median 3; benchmarks/RESULTS.md). A candidate stands for the time up to halfway to its neighbours
    (the first from 0, the last to `duration`), so a moment spans [halfway before its first candidate, halfway after
    its last]. Its score is the best raw score in the run (comparable across videos scored by the same scorer); ties
    keep time order. Flat scores (max = median): one moment, the whole video.
    """
    s = scores.detach().to(torch.float64).cpu()
    m = s.numel()
    if m == 0:
        return []
    if m != len(times):
        raise ValueError(f"{m} scores for {len(times)} times")
    floor = s.median()
    span = s.max() - floor
    norm = (s - floor) / span if span > 0 else torch.ones_like(s)
    hot = (norm >= level).tolist()
    edges = [0.0] + [(a + b) / 2 for a, b in zip(times, times[1:])] + [max(duration, times[-1])]
    out: list[Moment] = []
    i = 0
    while i < m:
        if not hot[i]:
            i += 1
            continue
        j = i
        while j + 1 < m and hot[j + 1]:
            j += 1
        best = i + int(torch.argmax(s[i:j + 1]))
        out.append(Moment(start=edges[i], end=edges[j + 1], score=float(s[best]), peak=times[best]))
        i = j + 1
    return sorted(out, key=lambda mo: -mo.score)  # sorted() is stable: equal scores stay in time order
