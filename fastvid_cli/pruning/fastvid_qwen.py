"""FastVID's Qwen2.5-VL variant (fastvid-spec.md §2.12): the reference's "straightforward implementation".

Pure tensor code, like ``fastvid.py``. The "frames" are Qwen's temporal patches (two sampled frames each, N merged
tokens per patch); ``frame_features`` is the mean of each patch's tokens and ``saliency`` the attention of the last
vision block (both computed by the Qwen adapter).

What differs from the OV semantics of ``fastvid.py``:

1. DySeg as OV (``c`` lowest adjacent similarities ∪ those ``< tau``), default ``tau`` 0.84.
2. Budget per SEGMENT of L patches: ``R = int(N·r)``, ``C = max(int(R·L·d), 1)`` context, ``S = R·L − C``
   salient. A single-patch segment keeps S salient + C context tokens. A longer one is first split into runs of
   near-duplicate patches (adjacent similarity ≥ ``ignore``, 0.95): only the LAST patch of each run keeps
   anything. S is spread evenly over the runs (+1 to the earliest); the anchor runs are the last run and every
   p-th one going backwards; C is spread evenly over them (+1 to the ones nearest the end), capped at N//2 per
   patch; an anchor patch's salient share is capped at N minus its context.
3. Context tokens: the top density-peak scores (DPC-kNN, k neighbours with the token itself) among the anchor
   patch's non-salient tokens.
4. Merge sources of an anchor: every token of its segment (dropped patches included) except the segment's
   salient tokens and the anchor's own context tokens, each assigned to its most cosine-similar context token;
   ``y = w·x + (1−w)·mean(assigned)`` with ``w = max(1/(n+1), beta)`` (``w = 1`` when nothing is assigned).

Because of the caps and the dropped duplicates, the retention is usually below ``r`` (the reference's nominal
0.27 keeps ≈ 0.241); the result's notes say how much was kept. Deterministic: ties go to the lowest index and the
density has no noise (see ``density.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .density import dpc_scores, topk_lowest_index
from .fastvid import (PruneResult, _check_params, _check_shapes, _l2_normalize, _number, anchor_positions,
                      dyseg_segments, keep_all)

__all__ = ["fastvid_qwen", "segment_budget", "duplicate_runs"]


# ----------------------------------------------------------------------------------------- arithmetic


def duplicate_runs(similarities: list[float], ignore: float) -> list[int]:
    """Run lengths of a segment split where the adjacent similarity is ``< ignore`` (its L−1 similarities)."""
    runs = [1]
    for s in similarities:
        if s >= ignore:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def _spread(total: int, parts: int, *, extra_last: bool) -> list[int]:
    """``total`` split into ``parts`` near-equal shares; the remainder goes one each to the first (or last) ones."""
    base, rem = divmod(total, parts)
    shares = [base] * parts
    for i in range(rem):
        shares[parts - 1 - i if extra_last else i] += 1
    return shares


def segment_budget(similarities: list[float], n_tokens: int, ratio: float, d: float, p: int,
                   ignore: float) -> tuple[list[int], list[int]]:
    """(salient, context) tokens kept in each patch of a segment, given its L−1 adjacent similarities.

    ``R = int(N·r)`` (raised to 1 if 0), ``C = max(int(R·L·d), 1)``, ``S = R·L − C``; see the module docstring
    for how they are placed. E.g. N=300, r=0.27, similarities [.97, .99, .93, .96, .98] →
    salient [0, 0, 146, 0, 0, 146], context [0, 0, 0, 0, 0, 150] (442 tokens, not 486).
    """
    L = len(similarities) + 1
    R = max(int(n_tokens * ratio), 1)
    C = max(int(R * L * d), 1)
    S = R * L - C
    if L == 1:
        return [S], [C]
    runs = duplicate_runs(similarities, ignore)
    V = len(runs)
    salient_runs = _spread(S, V, extra_last=False)
    anchor_runs = anchor_positions(V, p)  # the last run, then every p-th going backwards
    context_runs = [0] * V
    for run, share in zip(anchor_runs, _spread(C, len(anchor_runs), extra_last=True)):
        context_runs[run] = share
    cap = n_tokens // 2
    salient, context = [0] * L, [0] * L
    end = -1
    for v, size in enumerate(runs):
        end += size  # the run's last patch, the only one that keeps tokens
        ctx = min(context_runs[v], cap)
        context[end] = ctx
        salient[end] = min(salient_runs[v], n_tokens - ctx)
    return salient, context


# ------------------------------------------------------------------------------------------ tensor ops


def _merge(x: Tensor, xn: Tensor, targets: Tensor, sources: Tensor, beta: float) -> Tensor:
    """Merged context tokens: each source joins its most cosine-similar target (ties: the earliest target).

    ``x``/``xn`` (M, D) tokens and their normalised copies; ``targets`` (q,), ``sources`` (n,) row indices.
    Returns (q, D) float32 ``w·x_c + (1−w)·mean(assigned)``, ``w = max(1/(n_c+1), beta)``, 1 with none assigned.
    """
    own = x.index_select(0, targets).float()
    if sources.numel() == 0:
        return own
    sim = xn.index_select(0, sources) @ xn.index_select(0, targets).T  # (n, q), input dtype as the reference
    assign = sim.argmax(dim=1)
    q = targets.numel()
    # a one-hot product sums each target's sources (a matmul: faster than index_add_ on both CPU and GPU)
    onehot = (assign[None, :] == torch.arange(q, device=x.device)[:, None]).to(torch.float32)  # (q, n)
    sums = onehot @ x.index_select(0, sources).float()
    counts = onehot.sum(dim=1, keepdim=True)
    w = torch.where(counts > 0, (counts + 1.0).reciprocal().clamp_min(beta), torch.ones_like(counts))
    return torch.lerp(sums / counts.clamp_min(1.0), own, w)


def _true_indices(mask: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` True entries of a 1-D ``mask``, increasing (``nonzero`` without its device sync:
    the caller knows the count)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def _salient_slots(saliency: Tensor, frame: int, count: int) -> Tensor:
    """Flat slots (in-frame indices, increasing) of the ``count`` most salient tokens of ``frame``."""
    return torch.sort(topk_lowest_index(saliency[frame], count)).values


def _context_slots(x: Tensor, salient: Tensor, count: int, k: int) -> Tensor:
    """In-frame indices (increasing) of the ``count`` top density-peak tokens among the non-salient ones."""
    N = x.shape[0]
    free = torch.ones(N, dtype=torch.bool, device=x.device)
    free[salient] = False
    rest = _true_indices(free, N - salient.numel())
    score = dpc_scores(x.index_select(0, rest)[None], min(k, rest.numel()))[2][0]
    return torch.sort(rest.index_select(0, topk_lowest_index(score, count))).values


# ----------------------------------------------------------------------------------------------- API


@torch.no_grad()
def fastvid_qwen(
    embeds: Tensor,
    saliency: Tensor,
    frame_features: Tensor,
    ratio: float = 0.27,
    c: int = 8,
    tau: float = 0.84,
    ignore: float = 0.95,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    k: int = 4,
) -> PruneResult:
    """Prune one video's tokens with FastVID's Qwen variant.

    ``embeds`` (F, N, D): F temporal patches of N tokens; ``saliency`` (F, N) (higher = keep);
    ``frame_features`` (F, Dg) one global feature per patch. ``ignore``: adjacent similarity from which patches of
    a segment count as near-duplicates; the other arguments as in ``fastvid.fastvid``.
    Returns a ``PruneResult`` (kept rows in slot order, original flat slots ``f·N + n``).
    """
    F, N, D = _check_shapes(embeds, saliency, frame_features)
    ratio, c, tau, d, p, beta, k = _check_params(ratio, c, tau, d, p, beta, k)
    ignore = _number("ignore", ignore)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    device = embeds.device
    saliency = saliency.to(device)
    notes: list[str] = []
    if int(N * ratio) == 0:
        notes.append(f"per-patch budget raised from 0 to 1 token: {N} tokens x ratio {ratio:g} < 1")
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} temporal patch{'es' if F != 1 else ''}")

    g = _l2_normalize(frame_features.to(device))
    similarities = (g[:-1] * g[1:]).sum(dim=1).tolist() if F > 1 else []
    sizes = dyseg_segments(similarities, min(c, F), tau)

    xn = _l2_normalize(embeds.reshape(F * N, D))
    flat = embeds.reshape(F * N, D)
    kept_slots: list[Tensor] = []
    kept_rows: list[Tensor] = []
    merged_flags: list[Tensor] = []
    anchors: list[tuple[int, int]] = []
    n_salient = n_context = 0
    start = 0
    for L in sizes:
        frames = range(start, start + L)
        salient_b, context_b = segment_budget(similarities[start:start + L - 1], N, ratio, d, p, ignore)
        salient = {f: _salient_slots(saliency, f, salient_b[f - start]) for f in frames}
        seg_free = torch.ones(L * N, dtype=torch.bool, device=device)  # merge sources of this segment
        for f in frames:
            seg_free[(f - start) * N + salient[f]] = False
            kept_slots.append(f * N + salient[f])
            kept_rows.append(flat.index_select(0, f * N + salient[f]))
            merged_flags.append(torch.zeros(salient[f].numel(), dtype=torch.bool, device=device))
            n_salient += salient[f].numel()
        free_count = L * N - sum(salient_b)
        for f in frames:
            q = context_b[f - start]
            if q == 0:
                continue
            ctx = _context_slots(embeds[f], salient[f], q, k)
            src = seg_free.clone()
            src[(f - start) * N + ctx] = False
            sources = start * N + _true_indices(src, free_count - q)
            rows = _merge(flat, xn, f * N + ctx, sources, beta).to(embeds.dtype)
            kept_slots.append(f * N + ctx)
            kept_rows.append(rows)
            merged_flags.append(torch.ones(q, dtype=torch.bool, device=device))
            anchors.append((f, q))
            n_context += q
        start += L

    slots = torch.cat(kept_slots)
    index, order = torch.sort(slots)
    kept = int(index.numel())
    notes.append(f"FastVID Qwen variant: kept {kept} of {F * N} video tokens ({100.0 * kept / (F * N):.1f}%) for "
                 f"ratio {ratio:g}: only the last patch of each near-duplicate run keeps tokens, context is capped "
                 f"at half a patch")
    return PruneResult(
        embeds=torch.cat(kept_rows).index_select(0, order),
        index=index,
        segments=sizes,
        notes=notes,
        merged=torch.cat(merged_flags).index_select(0, order),
        salient=n_salient,
        context=n_context,
        anchors=anchors,
        similarities=similarities,
    )

