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

Structure (no loop over patches, anchors or tokens): the budgets are computed on the host from the similarities
(the one device→host transfer) and sent in one host→device transfer; the salient tokens of all patches come from
one sort, the context tokens of all anchors from one padded batch of density scores, and the merge runs over
groups of segments, each group one padded batch (a few groups at most: segments of very different sizes go to
different groups so that padding costs little). Choices (salient and context tokens, each source's target) and
tie rules are those of the former loop implementation, kept in ``tests/test_pruning_fastvid_qwen.py`` as the
reference; its merged rows are reproduced bit for bit where the arithmetic is exact, and otherwise to within float
rounding, the batched matrix products rounding differently from per-anchor ones.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch
from torch import Tensor

from .density import bmm_fp32, dpc_scores
from .fastvid import _l2_normalize, anchor_positions, check_params, dyseg_segments
from .result import PruneResult, check_inputs, check_number, keep_all

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


# ------------------------------------------------------------------------------------------ host plan


class _Tables:
    """Integer tables built on the host and sent to the device together: one int64 transfer per call."""

    def __init__(self) -> None:
        self.values = array("q")
        self.sizes: list[int] = []

    def add(self, values) -> int:
        """Queue ``values``; returns the position of their tensor in ``send()``'s list."""
        before = len(self.values)
        self.values.extend(values)
        self.sizes.append(len(self.values) - before)
        return len(self.sizes) - 1

    def send(self, device: torch.device) -> list[Tensor]:
        host = torch.frombuffer(self.values, dtype=torch.int64).clone()  # never empty: F ≥ 1 salient budgets
        if device.type == "cuda":
            host = host.pin_memory().to(device, non_blocking=True)
        return list(host.split(self.sizes))


@dataclass
class _Group:
    """Segments merged as one padded batch: sizes, and positions of their tables in ``_Tables.send()``'s list."""

    G: int  # segments
    U: int  # most sources (non-salient tokens) of a segment
    T: int  # most targets (context tokens) of a segment
    A: int  # most anchors of a segment
    K: int  # most context tokens of an anchor
    src_off: int  # (G,) each segment's first position in the list of all non-salient slots
    src_n: int  # (G,) its sources
    tgt_off: int  # (G,) its first position in the list of all targets
    cols: int  # (G·A·K,) the columns (of its T) of each anchor's targets; −1: padding
    owners: int  # (G·A,) each anchor's position in ``anchors``; −1: padding
    select: int  # (Σ targets,) the real rows of the (G·T) merged rows
    dest: int  # (Σ targets,) ... and their positions in the list of all targets


@dataclass
class _Plan:
    """Sizes and table positions of the context choice and the merge (see ``_context_and_merge``)."""

    A: int  # anchors
    T: int  # context tokens (targets) in all
    M: int  # most non-salient tokens of an anchor patch
    K: int  # most context tokens of an anchor
    free: int  # non-salient tokens in all
    padded: bool  # whether anchor patches differ in their number of non-salient tokens
    frames: int  # (A,) anchor patches
    counts: int  # (A,) their context tokens
    m: int  # (A,) their non-salient tokens
    pick: int  # (T,) positions a·K + j (j < count) of the real targets in an (A, K) table
    groups: list[_Group]
    lone: int  # (targets of anchors without any source,) or −1 when there are none


def _merge_groups(work: list[tuple[int, int]]) -> list[list[int]]:
    """Segments merged together as one padded batch, from each one's (sources, targets).

    Largest first; a segment joins the current group while the padded products (group size × most sources
    × most targets) stay within 1.25 times the group's own work, so padding costs at most a quarter more time
    (and, for the gathered sources, memory) than the reference's per-anchor products. Few groups in practice;
    equal segments share one.
    """
    order = sorted(range(len(work)), key=lambda i: (-work[i][0], -work[i][1], i))
    groups: list[list[int]] = []
    need = u_max = t_max = 0
    for i in order:
        u, t = work[i]
        if groups and (len(groups[-1]) + 1) * u_max * max(t_max, t) <= 1.25 * (need + u * t):
            groups[-1].append(i)
            need += u * t
            t_max = max(t_max, t)
        else:
            groups.append([i])
            need, u_max, t_max = u * t, u, t
    return groups


def _plan(tables: _Tables, N: int, anchors: list[tuple[int, int]], anchor_segment: list[int],
          seg_free: list[int], per_patch: list[int]) -> _Plan:
    """Host tables of the context choice and the merge, for the anchors (patch, context tokens) in slot order.

    ``anchor_segment``: each anchor's segment; ``seg_free``: each segment's non-salient tokens, which lie in the
    list of all non-salient slots one segment after another; ``per_patch``: salient tokens of each patch.
    """
    A = len(anchors)
    counts = [q for _, q in anchors]
    m = [N - per_patch[f] for f, _ in anchors]  # ≥ the anchor's context tokens
    K = max(counts)
    t_off = [0]  # targets: every anchor's context tokens, in anchor order
    for q in counts:
        t_off.append(t_off[-1] + q)
    src_off = [0]
    for u in seg_free:
        src_off.append(src_off[-1] + u)
    by_segment: dict[int, list[int]] = {}
    for a, s in enumerate(anchor_segment):
        by_segment.setdefault(s, []).append(a)
    segments = list(by_segment)
    work = [(seg_free[s], t_off[by_segment[s][-1] + 1] - t_off[by_segment[s][0]]) for s in segments]

    groups: list[_Group] = []
    lone: list[int] = []
    for members in _merge_groups(work):
        ids = [segments[i] for i in members]
        U = max(work[i][0] for i in members)
        T = max(work[i][1] for i in members)
        A_g = max(len(by_segment[s]) for s in ids)
        K_g = max(counts[a] for s in ids for a in by_segment[s])
        cols: list[int] = []
        owners: list[int] = []
        select: list[int] = []
        dest: list[int] = []
        for g, s in enumerate(ids):
            mine = by_segment[s]
            first, end = t_off[mine[0]], t_off[mine[-1] + 1]
            for a in mine:
                lo, q = t_off[a] - first, counts[a]
                cols += [*range(lo, lo + q), *[-1] * (K_g - q)]
                if seg_free[s] == q:  # the segment's only non-salient tokens are this anchor's context tokens
                    lone += range(t_off[a], t_off[a] + q)
            cols += [-1] * (K_g * (A_g - len(mine)))
            owners += [*mine, *[-1] * (A_g - len(mine))]
            select += range(g * T, g * T + end - first)
            dest += range(first, end)
        groups.append(_Group(
            G=len(ids), U=U, T=T, A=A_g, K=K_g,
            src_off=tables.add([src_off[s] for s in ids]), src_n=tables.add([seg_free[s] for s in ids]),
            tgt_off=tables.add([t_off[by_segment[s][0]] for s in ids]),
            cols=tables.add(cols), owners=tables.add(owners), select=tables.add(select), dest=tables.add(dest),
        ))
    return _Plan(
        A=A, T=t_off[-1], M=max(m), K=K, free=src_off[-1], padded=min(m) != max(m),
        frames=tables.add([f for f, _ in anchors]), counts=tables.add(counts), m=tables.add(m),
        pick=tables.add([a * K + j for a, q in enumerate(counts) for j in range(q)]),
        groups=groups, lone=tables.add(lone) if lone else -1,
    )


# ------------------------------------------------------------------------------------------ tensor ops


def _true_indices(mask: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` True entries of a 1-D ``mask``, increasing (``nonzero`` without its device sync:
    the caller knows the count)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def _context_and_merge(flat: Tensor, salient: Tensor, context: Tensor, data: list[Tensor], plan: _Plan,
                       N: int, k: int, beta: float) -> tuple[Tensor, Tensor]:
    """Chooses every anchor's context tokens (marked in ``context``, (F, N) bool) and merges them.

    ``flat`` (F·N, D) tokens; ``salient`` (F, N) bool. Returns ``(rows (T, D) float32, slots (T,))``: the merged
    targets, in anchor order and each anchor's in slot order.
    """
    device = flat.device
    D = flat.shape[1]
    A, M, K, T = plan.A, plan.M, plan.K, plan.T
    frames, counts = data[plan.frames], data[plan.counts]
    ranks = torch.arange(N, device=device)
    base = frames[:, None] * N

    # Context: the density peaks among each anchor patch's non-salient tokens, all anchors as one batch of (A, M)
    # tokens, each row's in slot order; rows with fewer are padded (with salient tokens) and masked.
    rest = torch.sort(salient.index_select(0, frames).to(torch.uint8), dim=1, stable=True).indices[:, :M] + base
    x = flat.index_select(0, rest.view(-1)).view(A, M, D)
    if plan.padded:
        score = dpc_scores(x, k, ranks[:M] < data[plan.m][:, None])[2]  # padding: −inf
    else:
        score = dpc_scores(x, min(k, M))[2]
    best = torch.sort(score, dim=1, descending=True, stable=True).indices  # ties: the lowest slot
    chosen = torch.zeros((A, N), dtype=torch.bool, device=device)
    chosen.scatter_(1, rest.gather(1, best) - base, ranks[:M] < counts[:, None])
    by_anchor = torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :K] + base  # (A, K)
    targets = by_anchor.view(-1).index_select(0, data[plan.pick])  # (T,)
    context.view(-1).index_fill_(0, targets, True)
    owner = torch.full((flat.shape[0],), -1, dtype=torch.int64, device=device)  # the anchor of each target slot
    anchor_ids = torch.arange(A, device=device)[:, None].expand(A, K).reshape(-1)
    owner.index_copy_(0, targets, anchor_ids.index_select(0, data[plan.pick]))

    # Merge: for every anchor of a segment, each non-salient token of the segment but the anchor's own targets
    # joins the anchor's most cosine-similar target. A padded batch of segments per group: (G, U) sources against
    # (G, T) targets, the targets of a segment's anchors side by side.
    sources = _true_indices(~salient.view(-1), plan.free)  # non-salient slots, one segment after another
    rows = torch.empty((T, D), dtype=torch.float32, device=device)
    half = flat.dtype in (torch.float16, torch.bfloat16)
    for grp in plan.groups:
        G, U, Tg, Ag, Kg = grp.G, grp.U, grp.T, grp.A, grp.K
        u_pos = torch.arange(U, device=device)
        src = sources.index_select(0, (data[grp.src_off][:, None] + u_pos).clamp_max_(plan.free - 1).view(-1))
        tgt = targets.index_select(0, (data[grp.tgt_off][:, None] + torch.arange(Tg, device=device))
                                   .clamp_max_(T - 1).view(-1))
        x_src = flat.index_select(0, src).view(G, U, D)
        x_tgt = flat.index_select(0, tgt).view(G, Tg, D)
        # cosines times each source's norm, which leaves every argmax as it is (a zero source: all zeros, the first
        # target, as with the reference's zero cosines) and spares a normalised copy of the sources; input dtype,
        # as the reference
        sim = torch.bmm(x_src, _l2_normalize(x_tgt).transpose(1, 2))  # (G, U, Tg)
        cols = data[grp.cols].view(G, 1, Ag * Kg)
        per_anchor = sim.gather(2, cols.clamp_min(0).expand(G, U, Ag * Kg))
        per_anchor.masked_fill_(cols < 0, float("-inf"))
        first_best = per_anchor.view(G, U, Ag, Kg).argmax(dim=3, keepdim=True)  # ties: the lowest target slot
        col = cols.clamp_min(0).view(G, 1, Ag, Kg).expand(G, U, Ag, Kg).gather(3, first_best).squeeze(3)
        owners = data[grp.owners].view(G, 1, Ag)
        joins = ((u_pos < data[grp.src_n][:, None])[:, :, None] & (owners >= 0)
                 & (owner.index_select(0, src).view(G, U, 1) != owners))  # (G, U, Ag)
        # (target, source) one-hot; each (source, anchor) pair adds 1 (or 0) to a distinct entry
        onehot = torch.zeros((G, Tg, U), dtype=flat.dtype if half else torch.float32, device=device)
        onehot.scatter_add_(1, col.transpose(1, 2), joins.transpose(1, 2).to(onehot.dtype))
        sums = bmm_fp32(onehot, x_src)  # float32
        n = onehot.sum(dim=2, keepdim=True, dtype=torch.float32)
        w = torch.where(n > 0, (n + 1.0).reciprocal().clamp_min(beta), torch.ones_like(n))
        merged = torch.lerp(sums / n.clamp_min(1.0), x_tgt.float(), w)
        rows.index_copy_(0, data[grp.dest], merged.view(G * Tg, D).index_select(0, data[grp.select]))
    if plan.lone >= 0:  # no sources at all: the reference keeps the token as it is
        lone = data[plan.lone]
        rows.index_copy_(0, lone, flat.index_select(0, targets.index_select(0, lone)).float())
    return rows, targets


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
    F, N, D = check_inputs(embeds, saliency, frame_features)
    ratio, c, tau, d, p, beta, k = check_params(ratio, c, tau, d, p, beta, k)
    ignore = check_number("ignore", ignore)
    if ratio == 1.0:
        return keep_all(embeds, note="ratio 1.0: no pruning")
    device = embeds.device
    saliency = saliency.to(device)
    notes: list[str] = []
    if int(N * ratio) == 0:
        notes.append(f"per-patch budget raised from 0 to 1 token: {N} tokens x ratio {ratio:g} < 1")
    if c > F:
        notes.append(f"c lowered from {c} to {F}: only {F} temporal patch{'es' if F != 1 else ''}")

    # queued before the wait for the similarities: each patch's tokens, most salient first (ties: lowest index)
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices  # (F, N)
    g = _l2_normalize(frame_features.to(device))
    similarities = (g[:-1] * g[1:]).sum(dim=1).tolist() if F > 1 else []
    sizes = dyseg_segments(similarities, min(c, F), tau)

    # 1. Budgets, on the host: salient tokens of each patch, the anchors (patch, context tokens) in slot order,
    # and each segment's non-salient tokens.
    per_patch: list[int] = []
    anchors: list[tuple[int, int]] = []
    anchor_segment: list[int] = []
    seg_free: list[int] = []
    start = 0
    for s, L in enumerate(sizes):
        salient_b, context_b = segment_budget(similarities[start:start + L - 1], N, ratio, d, p, ignore)
        per_patch += salient_b
        seg_free.append(L * N - sum(salient_b))
        anchors += [(start + i, q) for i, q in enumerate(context_b) if q]
        anchor_segment += [s] * (len(anchors) - len(anchor_segment))
        start += L
    n_salient = sum(per_patch)
    n_context = sum(q for _, q in anchors)
    kept = n_salient + n_context
    tables = _Tables()
    salient_budget = tables.add(per_patch)
    plan = _plan(tables, N, anchors, anchor_segment, seg_free, per_patch) if anchors else None
    data = tables.send(device)

    # 2. Salient tokens (ATS): the first ones of each patch's order.
    flat = embeds.reshape(F * N, D)
    salient = torch.zeros((F, N), dtype=torch.bool, device=device)
    salient.scatter_(1, order, torch.arange(N, device=device) < data[salient_budget][:, None])
    context = torch.zeros((F, N), dtype=torch.bool, device=device)
    if plan is not None:  # 3. context tokens and their merge
        merged_rows, targets = _context_and_merge(flat, salient, context, data, plan, N, k, beta)

    # 4. Output: the kept tokens by slot, the merged context tokens in their own slots.
    is_context = context.view(-1)
    index = _true_indices(salient.view(-1) | is_context, kept)
    rows = flat.index_select(0, index)
    if plan is not None:
        rows.index_copy_(0, torch.searchsorted(index, targets), merged_rows.to(embeds.dtype))
    notes.append(f"FastVID Qwen variant: kept {kept} of {F * N} video tokens ({100.0 * kept / (F * N):.1f}%) for "
                 f"ratio {ratio:g}: only the last patch of each near-duplicate run keeps tokens, context is capped "
                 f"at half a patch")
    return PruneResult(
        embeds=rows,
        index=index,
        segments=sizes,
        notes=notes,
        merged=is_context.index_select(0, index),
        salient=n_salient,
        context=n_context,
        anchors=anchors,
        similarities=similarities,
    )
