"""Triton kernels of the fused decode step (`fast_decode.py`), one launch where plain torch needs 4-10.

Imported only on CUDA when Triton is installed. Every kernel takes B rows (one program per row along one grid axis):
the single-answer step passes one row, the batched step (`fast_decode.FusedRowsDecoder`) B rows. Each kernel reproduces the bf16 rounding points of the stock
transformers code it replaces (products and sums rounded where the stock code rounds), so the outputs equal the
torch reference ops in `fast_decode._TorchOps` (checked on the GPU by benchmarks/gpu_checks.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_kernel(X, R, W, Y, N, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # X, R, Y: (rows, N) contiguous
    X += row * N
    R += row * N
    Y += row * N
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + cols, mask=m, other=0.0)
    if HAS_RES:
        r = tl.load(R + cols, mask=m, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(X + cols, x, mask=m)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(X.dtype.element_ty)
    w = tl.load(W + cols, mask=m, other=0.0)
    tl.store(Y + cols, (w.to(tl.float32) * y.to(tl.float32)).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _rope_write_kernel(QKV, COS, SIN, SLOT, K, V, QO, QN, KN, eps, k_sb, k_s0, k_s1,
                       NQ: tl.constexpr, NKV: tl.constexpr, D: tl.constexpr, HAS_NORM: tl.constexpr):
    h = tl.program_id(0)  # q heads first, then k heads (whose programs also copy the matching v head)
    b = tl.program_id(1)  # the row: its own projection, rotary row, q rows and K/V buffers (row stride k_sb)
    QKV += b * (NQ + 2 * NKV) * D
    COS += b * D
    SIN += b * D
    QO += b * NQ * D
    K += b * k_sb
    V += b * k_sb
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, HALF)
    dt = QO.dtype.element_ty
    x1 = tl.load(QKV + h * D + i)
    x2 = tl.load(QKV + h * D + HALF + i)
    if HAS_NORM:  # Qwen3: RMSNorm over each head before the rotation
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        r = tl.rsqrt((tl.sum(f1 * f1, axis=0) + tl.sum(f2 * f2, axis=0)) / D + eps)
        if h < NQ:
            w1 = tl.load(QN + i).to(tl.float32)
            w2 = tl.load(QN + HALF + i).to(tl.float32)
        else:
            w1 = tl.load(KN + i).to(tl.float32)
            w2 = tl.load(KN + HALF + i).to(tl.float32)
        x1 = (w1 * (f1 * r).to(dt).to(tl.float32)).to(dt)
        x2 = (w2 * (f2 * r).to(dt).to(tl.float32)).to(dt)
    c1 = tl.load(COS + i).to(tl.float32)
    c2 = tl.load(COS + HALF + i).to(tl.float32)
    s1 = tl.load(SIN + i).to(tl.float32)
    s2 = tl.load(SIN + HALF + i).to(tl.float32)
    a1 = x1.to(tl.float32)
    a2 = x2.to(tl.float32)
    # x * cos + rotate_half(x) * sin, rounded like the stock bf16 ops: each product, then the sum
    o1 = ((a1 * c1).to(dt).to(tl.float32) + (-a2 * s1).to(dt).to(tl.float32)).to(dt)
    o2 = ((a2 * c2).to(dt).to(tl.float32) + (a1 * s2).to(dt).to(tl.float32)).to(dt)
    if h < NQ:
        tl.store(QO + h * D + i, o1)
        tl.store(QO + h * D + HALF + i, o2)
    else:
        j = h - NQ
        slot = tl.load(SLOT)
        dst = j * k_s0 + slot * k_s1
        tl.store(K + dst + i, o1)
        tl.store(K + dst + HALF + i, o2)
        src = QKV + (NQ + NKV + j) * D
        tl.store(V + dst + i, tl.load(src + i))
        tl.store(V + dst + HALF + i, tl.load(src + HALF + i))


@triton.jit
def _silu_mul_kernel(GU, OUT, N, BLOCK: tl.constexpr):
    row = tl.program_id(1)  # GU: (rows, 2N), OUT: (rows, N), contiguous
    GU += row * 2 * N
    OUT += row * N
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(GU + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(GU + N + offs, mask=m, other=0.0)
    a = (g / (1.0 + tl.exp(-g))).to(u.dtype)
    tl.store(OUT + offs, (a.to(tl.float32) * u.to(tl.float32)).to(u.dtype), mask=m)


class TritonOps:
    """Same contracts as fast_decode._TorchOps (inputs contiguous, one row or B rows)."""

    name = "triton"

    @staticmethod
    def add_rms(x: torch.Tensor, res: torch.Tensor | None, w: torch.Tensor, eps: float) -> torch.Tensor:
        n = x.shape[-1]
        y = torch.empty_like(x)
        _add_rms_kernel[(x.numel() // n,)](x, res if res is not None else x, w, y, n, eps, HAS_RES=res is not None,
                              BLOCK=triton.next_power_of_2(n), num_warps=8)
        return y

    @staticmethod
    def rope_write(qkv, cos, sin, slot, k_buf, v_buf, q_out, nq, nkv, qn, kn, eps) -> None:
        d = q_out.shape[-1]
        has_norm = qn is not None
        rows = qkv.numel() // ((nq + 2 * nkv) * d)
        # K/V: (nkv, cap, D) for one row, or (rows, nkv, cap, D) with a row stride (both may be views of a bigger buffer)
        k_sb, k_s0, k_s1 = (0, *k_buf.stride()[:2]) if k_buf.dim() == 3 else k_buf.stride()[:3]
        assert v_buf.stride() == k_buf.stride() and cos.is_contiguous() and sin.is_contiguous()
        _rope_write_kernel[(nq + nkv, rows)](qkv, cos, sin, slot, k_buf, v_buf, q_out, qn if has_norm else cos,
                                             kn if has_norm else cos, eps, k_sb, k_s0, k_s1,
                                             NQ=nq, NKV=nkv, D=d, HAS_NORM=has_norm, num_warps=1)

    @staticmethod
    def silu_mul(gu: torch.Tensor) -> torch.Tensor:
        n = gu.shape[-1] // 2
        out = torch.empty((*gu.shape[:-1], n), dtype=gu.dtype, device=gu.device)
        block = 1024
        _silu_mul_kernel[(triton.cdiv(n, block), gu.numel() // (2 * n))](gu, out, n, BLOCK=block, num_warps=4)
        return out
