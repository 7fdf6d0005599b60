"""Density-peak (DPC-kNN) scoring and deterministic top-k, shared by the token-merging methods.

Pure tensor code. Everything here is batched over a leading dimension and works on any device.

Deviation from the reference implementations: they add ``U(0,1)·1e-6`` noise (global torch RNG) to the
densities to break ties. Here ties are broken by index instead, so the same input always gives the same
scores: token ``v`` counts as denser than ``u`` when ``rho[v] > rho[u]``, or ``rho[v] == rho[u]`` and
``v < u``. Without exact ties both rules pick the same parent, up to the noise's own 1e-6 perturbation.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF_DTYPES = (torch.float16, torch.bfloat16)
# (device type, dtype[, "mm"]) -> whether bmm (mm) with out_dtype=float32 works there; filled on first use.
_OUT_DTYPE_OK: dict[tuple, bool] = {}


def topk_lowest_index(values: Tensor, k: int, dim: int = -1) -> Tensor:
    """Indices of the ``k`` largest ``values`` along ``dim``, ties broken by the lowest index.

    Unlike ``torch.topk`` (whose tie order is unspecified and differs between CPU and CUDA), this is a
    stable descending sort, so the result is deterministic. The indices come in descending value order
    (equal values in increasing index order). NaN sorts as the largest value, as in ``torch.sort``.
    Returns an int64 tensor shaped like ``values`` with ``dim`` cut to ``k``.
    """
    size = values.shape[dim]
    if not 0 <= k <= size:
        raise ValueError(f"k={k} is out of range for a dimension of size {size}")
    order = torch.sort(values, dim=dim, descending=True, stable=True).indices
    return order.narrow(dim, 0, k)


def bmm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 3-D operands, with float32 accumulation and a float32 result.

    For half-precision inputs on CUDA this asks the matmul kernel for a float32 output directly, which is exactly
    as exact as upcasting first (half × half products are exact in fp32) but needs no fp32 copies and runs
    at half-precision speed. Elsewhere the inputs are upcast.
    """
    return _fp32_product(torch.bmm, a, b)


def mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D operands, with float32 accumulation and a float32 result (see ``bmm_fp32``)."""
    return _fp32_product(torch.mm, a, b)


def _fp32_product(op, a: Tensor, b: Tensor) -> Tensor:
    """``op(a, b)`` (torch.mm or torch.bmm) in float32; whether this torch/device/dtype accepts
    ``out_dtype=torch.float32`` is learned on first use and remembered."""
    if a.dtype == b.dtype and a.dtype in _HALF_DTYPES:
        key = (a.device.type, a.dtype, op.__name__)
        if _OUT_DTYPE_OK.get(key, a.device.type == "cuda"):
            try:
                out = op(a, b, out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):
                _OUT_DTYPE_OK[key] = False
            else:
                _OUT_DTYPE_OK[key] = True
                return out
    return op(a.float(), b.float())


# (device, M) -> int64 (M,) tensor [M-1, ..., 1, 0]: the index part of the density keys below.
_REVERSED_INDEX: dict[tuple[torch.device, int], Tensor] = {}


def reversed_index(device: torch.device, M: int) -> Tensor:
    """The cached int64 tensor ``[M−1, …, 1, 0]`` on ``device`` that ``density_keys`` uses.

    Cached tensors are never dropped, so a CUDA graph that captured one keeps reading valid memory.
    """
    rev = _REVERSED_INDEX.get((device, M))
    if rev is None:
        with torch.inference_mode(False):  # a normal tensor, usable outside inference mode too
            rev = _REVERSED_INDEX[(device, M)] = torch.arange(M - 1, -1, -1, device=device)
    return rev


def density_keys(rho: Tensor) -> Tensor:
    """Integer keys that order the points of each row of ``rho`` (B, M) by the tie rule of the module docstring.

    ``key[v] > key[u]`` exactly when ``rho[v] > rho[u]``, or ``rho[v] == rho[u]`` and ``v < u``, for rho ≥ 0
    (never NaN for finite inputs). The key is the bit pattern of the float32 ``rho`` (monotone in its value
    for non-negative floats), times M, plus ``M−1−v``: one kernel instead of the five comparisons of the
    rule written out.
    """
    M = rho.shape[-1]
    if rho.dtype != torch.float32 or not rho.is_contiguous():
        rho = rho.to(torch.float32).contiguous()
    return torch.add(reversed_index(rho.device, M), rho.view(torch.int32), alpha=M)


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """Squared Euclidean distances within each batch item: (B, M, D) -> (B, M, M), float32.

    Uses the Gram form ``|u|² + |v|² − 2⟨u,v⟩`` (as ``torch.cdist`` does for more than 25 points), with the
    diagonal exactly zero and the matrix exactly symmetric.
    """
    gram = bmm_fp32(x, x.transpose(1, 2))
    sq = torch.diagonal(gram, dim1=1, dim2=2)
    # (|u|²+|v|²) first keeps the result symmetric; 2·gram is exact, so the diagonal is exactly 0.
    d2 = (sq[:, :, None] + sq[:, None, :]).sub_(gram, alpha=2.0)
    return d2.clamp_min_(0.0)


def dpc_scores(x: Tensor, k: int | Tensor, valid: Tensor | None = None, *,
               k_max: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """DPC-kNN density-peak scores of the points of each batch item.

    ``x``: (B, M, D), any float dtype; the math runs in float32. ``valid``: optional (B, M) bool mask for
    padded rows (invalid points are neither neighbours nor parents; their outputs are rho = delta = 0 and
    score = -inf, so a top-k never prefers them). ``k``: neighbours, the point itself included: an int, or a
    (B,) int64 tensor with one value (≥ 1) per batch item, then with ``k_max`` ≥ its largest value (spares a
    device sync; read from ``k`` when omitted).

    With ``δ(u,v) = ||x_u − x_v||₂ / sqrt(D)``:

    * ``rho(u)   = exp(−mean of δ(u,v)² over the k nearest v, u itself included at distance 0)``
      (fewer than k valid points: the mean over those there are);
    * ``delta(u) = min δ(u,v) over the v denser than u`` (see the module docstring for the tie rule), or the
      largest pairwise δ within the batch item when no point is denser;
    * ``score    = delta · rho``.

    Returns ``(rho, delta, score)``, each (B, M) float32.
    """
    if x.dim() != 3:
        raise ValueError(f"dpc_scores expects x of shape (B, M, D), got {tuple(x.shape)}")
    B, M, D = x.shape
    if M == 0:
        _check_k(k)
        empty = x.new_zeros((B, 0), dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    d2 = pairwise_sq_distances(x).div_(float(max(D, 1)))  # δ², (B, M, M)
    rho, delta, score, _ = density_peaks(d2, k, valid, k_max=k_max)
    return rho, delta, score


def _check_k(k) -> None:
    if not isinstance(k, Tensor) and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def density_peaks(d2: Tensor, k: int | Tensor, valid: Tensor | None = None, *,
                  k_max: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dpc_scores`` from the scaled squared distances ``d2`` = δ² (B, M, M) float32, M ≥ 1.

    For callers that also need the distances (HoliTom assigns tokens to their nearest peak): ``d2`` is
    overwritten with δ, which is returned as the fourth element. Other arguments as in ``dpc_scores``.
    Returns ``(rho, delta, score, dist)``: three (B, M) float32 and the (B, M, M) δ.
    """
    _check_k(k)
    B, M, _ = d2.shape
    if valid is not None:
        if tuple(valid.shape) != (B, M):
            raise ValueError(f"valid must have shape {(B, M)}, got {tuple(valid.shape)}")
        valid = valid.to(device=d2.device, dtype=torch.bool)
    if isinstance(k, Tensor):
        kk = min(int(k.max()) if k_max is None else k_max, M)
        # (B, 1, kk): which of the kk nearest (sorted nearest first) count for each batch item
        take = (torch.arange(kk, device=d2.device) < k.to(d2.device)[:, None])[:, None, :]
    else:
        kk, take = min(k, M), None
    if valid is None and take is None:
        knn = torch.topk(d2, kk, dim=-1, largest=False).values  # values only: their tie order is irrelevant
        rho = knn.mean(dim=-1).neg_().exp_()
    else:
        masked = d2 if valid is None else d2.masked_fill(~valid[:, None, :], float("inf"))
        knn = torch.topk(masked, kk, dim=-1, largest=False).values  # sorted, nearest first
        use = torch.isfinite(knn) if take is None else torch.isfinite(knn) & take
        count = use.sum(dim=-1).clamp_min(1)
        rho = torch.exp(-knn.where(use, 0.0).sum(dim=-1) / count)
        if valid is not None:
            rho = rho.where(valid, 0.0)

    dist = d2.sqrt_()  # δ, reusing the buffer
    key = density_keys(rho)  # rho ≥ 0 is never NaN for finite inputs
    denser = key[:, None, :] > key[:, :, None]  # [b, u, v]: v is denser than u
    if valid is None:
        dmax = dist.amax(dim=(1, 2), keepdim=True)
    else:
        pair_ok = valid[:, :, None] & valid[:, None, :]
        denser &= valid[:, None, :]
        dmax = dist.masked_fill(~pair_ok, 0.0).amax(dim=(1, 2), keepdim=True)
    # min over {δ(u,v): v denser} ∪ {dmax}: every δ ≤ dmax, so this is the nearest denser point, else dmax.
    delta = torch.where(denser, dist, dmax).amin(dim=-1)
    score = delta * rho
    if valid is not None:
        delta = delta.where(valid, 0.0)
        score = score.masked_fill(~valid, float("-inf"))
    return rho, delta, score, dist
