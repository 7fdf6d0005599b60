"""FlashVID's contextual DPC-kNN clustering (spec §2.6; pipeline step 5 of ``flashvid.py``): pure tensor code.

The batched DPC-kNN scores and clustering of padded point sets (``dpc_peaks``, ``dpc_centres``, ``dpc_batch``,
with the reference's distance rule: differences up to 25 points, else a Gram matrix), the fixed-shape pipeline
steps that plan and run it on every frame's TSTM roots (``_context_plan``, ``_context_step``), and the density
noise: ``uniform_noise`` / ``seeded_draws`` (the reference's draws) and the device streams ``flashvid`` feeds the
steps (``_drawn_stream``, ``_seeded_stream``). Split out of ``flashvid.py``, which re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .density import pairwise_sq_distances
from .flashvid_tstm import SegmentPlan, Trees, _add_rows, _Setup

__all__ = [
    "DPC_MAX_NEIGHBOURS",
    "dpc_batch",
    "dpc_centres",
    "dpc_peaks",
    "seeded_draws",
    "uniform_noise",
]


DPC_MAX_NEIGHBOURS = 7  # k = min(clusters, 7)
_NOISE_SCALE = 1e-6
_CDIST_EXACT_MAX = 25  # torch.cdist computes differences (not a Gram matrix) up to this many points, as the reference


def dpc_peaks(points: Tensor, valid: Tensor, neighbours: Tensor, noise: Tensor, *, max_neighbours: int,
              exact: bool | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FlashVID's DPC-kNN scores (spec §2.6) of B independent point sets at once, padded to P points.

    ``points`` (B, P, D) any float dtype; ``valid`` (B, P) bool (any subset of each row: a padded set need not
    be packed to the front); ``neighbours`` (B,) int64 k_b ≤ n_b, ``max_neighbours`` ≥ their maximum;
    ``noise`` (B, P) float32 u in [0, 1) (the reference's ``rand_like``). With ``δ = ||y_i − y_j|| / sqrt(D)``
    (float32): density ``exp(−mean of the k smallest δ²) + 1e−6·u``; distance to the nearest strictly denser
    point, else the largest δ of the set; score ``distance·density``. ``exact``: δ from differences (as the
    reference's torch.cdist up to 25 points) rather than a Gram matrix; None: when P ≤ 25; a bool tensor: chosen
    on the device (both computed). Returns ``(δ (B, P, P), density, distance, score)``, the last three (B, P)
    with −inf density and score at padding.
    """
    B, P, D = points.shape
    device = points.device
    if exact is None:
        exact = P <= _CDIST_EXACT_MAX
    delta = None
    if exact is not False:  # differences, pair by pair: bit-identical whatever the padding
        x = points.float()
        delta = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(D)
    if exact is not True:
        gram = pairwise_sq_distances(points).sqrt_().div_(math.sqrt(D))
        delta = gram if delta is None else torch.where(exact, delta, gram)
    pair_ok = valid[:, :, None] & valid[:, None, :]
    kk = min(max_neighbours, P)
    knn = torch.topk(delta.masked_fill(~valid[:, None, :], math.inf), k=kk, dim=-1, largest=False).values
    take = torch.arange(kk, device=device) < neighbours[:, None, None]
    # the reference's mean(−δ²) over exactly k values (sum, then divide: CPU torch.mean); extra zeros add nothing
    density = ((-(knn ** 2)).where(take, 0.0).sum(dim=-1) / neighbours[:, None].float()).exp()
    density = (density + noise * _NOISE_SCALE).masked_fill_(~valid, -math.inf)
    largest = delta.masked_fill(~pair_ok, -math.inf).amax(dim=(1, 2))
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is strictly denser than i
    dist = torch.where(denser, delta, largest[:, None, None]).amin(dim=-1)
    score = (dist * density).masked_fill_(~valid, -math.inf)
    return delta, density, dist, score


def dpc_centres(points: Tensor, valid: Tensor, clusters: Tensor, neighbours: Tensor, noise: Tensor, *,
                max_clusters: int, max_neighbours: int,
                exact: bool | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """FlashVID's DPC-kNN clustering of B padded point sets (``dpc_peaks`` for the arguments): ``clusters`` (B,)
    int64 c_b ≥ 0, ``max_clusters`` ≥ their maximum.

    Centres: the c highest scores, best first (ties: lowest index); each point joins its nearest centre (ties: the
    better-scored one), each centre its own cluster. Returns ``(centres (B, C) int64 point indices,
    assign (B, P) int64 cluster rank of each point, centre_ok (B, C) bool)``, C = ``max_clusters``; assign is
    meaningless at padding and in sets without clusters.
    """
    B, P, _ = points.shape
    device = points.device
    delta, _, _, score = dpc_peaks(points, valid, neighbours, noise, max_neighbours=max_neighbours, exact=exact)
    C = max_clusters
    centres = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :C]
    centre_ok = torch.arange(C, device=device) < clusters[:, None]
    to_centre = delta.gather(2, centres[:, None, :].expand(B, P, C)).masked_fill_(~centre_ok[:, None, :], math.inf)
    assign = torch.cat([to_centre.argmin(dim=-1), torch.zeros((B, 1), dtype=torch.int64, device=device)], dim=1)
    spare = torch.full_like(centres, P)  # unused centre columns write into the spare column P
    assign.scatter_(1, torch.where(centre_ok, centres, spare), torch.arange(C, device=device).expand(B, C))
    return centres, assign[:, :P], centre_ok


def dpc_batch(points: Tensor, valid: Tensor, clusters: Tensor, neighbours: Tensor, noise: Tensor, *,
              max_clusters: int, max_neighbours: int) -> tuple[Tensor, Tensor, Tensor]:
    """``dpc_centres`` with the membership as a mask: ``(centres (B, C), member (B, C, P) bool, centre_ok (B, C))``."""
    centres, assign, centre_ok = dpc_centres(points, valid, clusters, neighbours, noise, max_clusters=max_clusters,
                                             max_neighbours=max_neighbours)
    C = max_clusters
    member = (assign[:, None, :] == torch.arange(C, device=points.device)[None, :, None]) & valid[:, None, :]
    return centres, member & centre_ok[:, :, None], centre_ok


def uniform_noise(seed: int) -> Callable[[int], Tensor]:
    """Density noise as the reference draws it: one ``torch.rand(n)`` per DPC call, here from a CPU generator
    seeded with ``seed`` (with the reference's global RNG seeded the same, on the CPU, the same numbers)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda n: torch.rand(n, generator=gen)


def seeded_draws(seed: int, sizes: Sequence[int]) -> list[Tensor]:
    """``uniform_noise(seed)`` called once per size, drawn as ONE ``torch.rand(Σ sizes)`` and split: the CPU
    generator gives a long draw the same numbers as consecutive short ones (tested), for a fraction of the
    calls. ``flashvid``'s default noise."""
    gen = torch.Generator().manual_seed(seed)
    return list(torch.rand(sum(sizes), generator=gen).split(list(sizes))) if sizes else []


# ------------------------------------------------------- the contextual steps of the device pipeline


def _context_plan(trees: Trees, kappa: Tensor, plan: SegmentPlan, cfg: _Setup) -> dict[str, Tensor]:
    """Each frame's DPC candidates and budget (spec §2.6), on the device: ``cand`` (F, N) bool (tree roots that
    are not ADTS tokens; a single-frame segment: all N), ``count`` (F,) their number, ``clusters`` (F,) c_t
    where DPC runs (else 0), ``run`` / ``passing`` (F,) bool (DPC runs / every candidate kept),
    ``neighbours`` (F,) k_t ≥ 1, ``noise_at`` (F,) offset of the frame's draw in the noise stream."""
    cand = (~trees.merge & kappa) | plan.single[:, None]
    count = cand.sum(dim=1)
    total = torch.zeros_like(plan.tokens).index_add_(0, plan.seg, count).index_select(0, plan.seg)
    # the reference's float arithmetic: rho = (S·F_s) / Σ n_t, c_t = ceil(n_t·rho), in double
    rho = (cfg.S * plan.size).double() / total.clamp_min(1).double()
    clusters = (count.double() * rho).ceil_().long()
    run = (clusters > 0) & (rho < 1.0)
    drawn = count * run
    return dict(cand=cand, count=count, run=run, passing=~run & (count > 0), clusters=clusters * run,
                neighbours=clusters.clamp(1, DPC_MAX_NEIGHBOURS), noise_at=torch.cumsum(drawn, 0) - drawn)


def _context_step(values: Tensor, ctx: dict[str, Tensor], stream: Tensor, cfg: _Setup) -> tuple[Tensor, Tensor]:
    """DPC-kNN in every frame on its N token positions (non-candidates masked): ``(is_context (F, N) bool,
    rows (F·N, D))`` — a cluster's mean at its centre's position, a passing frame's candidates as they are."""
    F, N, D = cfg.F, cfg.N, cfg.D
    device = values.device
    valid = ctx["cand"] & ctx["run"][:, None]
    rank = torch.cumsum(ctx["cand"], dim=1) - 1  # position of each candidate in the frame's list
    u = stream.index_select(0, (ctx["noise_at"][:, None] + rank).clamp_(0, stream.numel() - 1).view(-1))
    u = u.view(F, N).masked_fill_(~valid, 0.0)
    exact = cfg.exact_dpc
    if exact is None:  # the reference's rule on its largest DPC set, decided on the device
        exact = (ctx["count"] * ctx["run"]).amax() <= _CDIST_EXACT_MAX
    points = values.view(F, N, D)
    centres, assign, centre_ok = dpc_centres(points, valid, ctx["clusters"], ctx["neighbours"], u, max_clusters=N,
                                             max_neighbours=min(DPC_MAX_NEIGHBOURS, N), exact=exact)
    frame_base = torch.arange(0, F * N, N, device=device)
    # every candidate adds into its centre's row, every other token into its own row (never a centre's: centres
    # are candidates), so no run of equal targets is longer than a cluster (``_add_rows``): float32 cluster sums
    slot = frame_base[:, None] + torch.arange(N, device=device)
    target = torch.where(valid, centres.gather(1, assign.clamp_max(N - 1)) + frame_base[:, None], slot).view(-1)
    sums = values.new_zeros((F * N, D), dtype=torch.float32)
    _add_rows(sums, target, values.float())
    members = torch.zeros(F * N, dtype=torch.int64, device=device)
    _add_rows(members, target, torch.ones_like(target))
    means = torch.div(sums, members.clamp_min(1).float()[:, None], out=torch.empty_like(values))  # rounded once
    is_centre = torch.zeros((F, N + 1), dtype=torch.bool, device=device)
    is_centre = is_centre.scatter_(1, torch.where(centre_ok, centres, N), True)[:, :N]
    is_context = is_centre | (ctx["cand"] & ctx["passing"][:, None])
    return is_context, torch.where(is_centre.reshape(-1, 1), means, values)


def _drawn_stream(draw: Callable, ctx: dict[str, Tensor], length: int, device: torch.device) -> Tensor:
    """The noise of an injected ``draw``: called once per DPC call, in the reference's order (frame order),
    after one host read of the call sizes; padded to ``length``."""
    sizes = (ctx["count"] * ctx["run"]).tolist()
    parts = []
    for n in (n for n in sizes if n):
        u = torch.as_tensor(draw(n), dtype=torch.float32).reshape(-1).cpu()
        if u.numel() != n:
            raise ValueError(f"noise({n}) returned {u.numel()} numbers")
        parts.append(u)
    stream = torch.cat(parts + [torch.zeros(length)])[:max(length, 1)]
    return stream.to(device)


_STREAMS: dict[tuple, Tensor] = {}


def _seeded_stream(seed: int, length: int, device: torch.device) -> Tensor:
    """``seeded_draws(seed, sizes)`` for any sizes summing to at most ``length``: the first numbers of one
    draw (the CPU generator's long draw starts with the short one's numbers; tested). Cached on the device."""
    key = (seed, length, str(device))
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) >= 16:
            _STREAMS.pop(next(iter(_STREAMS)))
        with torch.inference_mode(False):
            stream = torch.rand(max(length, 1), generator=torch.Generator().manual_seed(seed)).to(device)
        _STREAMS[key] = stream
    return stream
