"""A short, fused decode step for the Qwen2 / Qwen3 dense language models (gpt-fast style), replayed as CUDA graphs.

Why: one decode step of a 7B model through transformers' layer modules is ~1500 small kernels; even replayed as
one CUDA graph (`decoding.StaticDecoder`) their fixed cost (~1-9 us each) adds ~3 ms to the ~4-6 ms it takes to
stream the weights, so decoding stalls at 100-130 tok/s. This step computes the same layers from the same weight
tensors with about a dozen kernels per layer:

* q/k/v and gate/up are each ONE matrix product: the model's own weight tensors are moved into one contiguous
  block per layer and the projections' parameters become views of it (same values, same memory, so the stock
  prefill is unchanged and bit-identical);
* RMSNorm with the residual add, rotary embedding with the KV-cache write (and Qwen3's q/k norm), and SiLU * up
  are single Triton kernels on CUDA (plain torch elsewhere: the CPU tests run that path);
* attention of the one new query over the static cache is two batched matmuls per layer, grouped by KV head
  (no repeat of K/V), over the first `span` cache slots only, where spans come in steps of SPAN so that one
  graph per span serves any prompt length.

Nothing of transformers is patched: the prefill still runs the stock model; this module only reads its
configuration and weights (after the one-time re-layout above).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastvid_cli.decoding import (DecodeResult, RowPicks, RowsPrefill, Sampling, _emit, _hand_over, _start, eager_rows,
                                  emit_rows, eos_ids, new_cache)

# Decoder layer classes whose computation this step reproduces (checked in tests against the stock forward).
LAYER_CLASSES = {"Qwen2DecoderLayer", "Qwen2VLDecoderLayer", "Qwen2_5_VLDecoderLayer", "Qwen3VLTextDecoderLayer",
                 "Qwen3DecoderLayer"}


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen RMSNorm: normalise in fp32, cast back, scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


# ------------------------------------------------------------------------------------------ kernels
class _TorchOps:
    """Reference kernels in plain torch (CPU, or CUDA without Triton). Same contracts as _TritonOps."""

    name = "torch"

    @staticmethod
    def add_rms(x: torch.Tensor, res: torch.Tensor | None, w: torch.Tensor, eps: float) -> torch.Tensor:
        """x += res (in place: x is the residual stream), then RMSNorm(x) * w. x: (1, H)."""
        if res is not None:
            x.add_(res)
        return _rms(x, w, eps)

    @staticmethod
    def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_buf: torch.Tensor,
                   v_buf: torch.Tensor, q_out: torch.Tensor, nq: int, nkv: int, qn: torch.Tensor | None,
                   kn: torch.Tensor | None, eps: float) -> None:
        """Split the fused (B, (nq+2nkv)*D) projection of B rows, (q/k norm), rotate q and k with each row's cos/sin
        (B, D), write q to q_out (B, nq, D) and k, v into the caches (B, nkv, cap, D) at `slot` (a (1,) long tensor,
        the same slot for every row). One row may also come as q_out (nq, D) and caches (nkv, cap, D)."""
        d = q_out.shape[-1]
        rows = qkv.shape[0]
        q, k, v = qkv.view(rows, nq + 2 * nkv, d).split((nq, nkv, nkv), dim=1)
        if qn is not None:
            q, k = _rms(q, qn, eps), _rms(k, kn, eps)
        cos, sin = cos.view(rows, 1, d), sin.view(rows, 1, d)
        q_out.view(rows, nq, d).copy_(_rotate(q, cos, sin))
        k_buf = k_buf if k_buf.dim() == 4 else k_buf.unsqueeze(0)
        v_buf = v_buf if v_buf.dim() == 4 else v_buf.unsqueeze(0)
        k_buf.index_copy_(2, slot, _rotate(k, cos, sin).unsqueeze(2))
        v_buf.index_copy_(2, slot, v.unsqueeze(2))

    @staticmethod
    def silu_mul(gu: torch.Tensor) -> torch.Tensor:
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u


_TRITON = None


def _triton_ops():
    """The Triton kernels (compiled on first use, cached by Triton on disk), or None where Triton is missing."""
    global _TRITON
    if _TRITON is None:
        try:
            from fastvid_cli import fast_kernels
            _TRITON = fast_kernels.TritonOps
        except Exception:  # noqa: BLE001 - no Triton (CPU wheels): the torch kernels are used
            _TRITON = False
    return _TRITON or None


# ------------------------------------------------------------------------------------------ weights
@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    gu_w: torch.Tensor
    down_w: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


def _block(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The one tensor that `tensors` (contiguous, same trailing shape) already form back to back in one storage,
    or None."""
    first = tensors[0].detach()
    ptr, storage = first.data_ptr(), first.untyped_storage().data_ptr()
    for t in tensors:  # adjacent addresses are not enough: the caching allocator packs separate tensors too
        if not t.is_contiguous() or t.data_ptr() != ptr or t.untyped_storage().data_ptr() != storage:
            return None
        ptr += t.numel() * t.element_size()
    return first.as_strided((sum(t.shape[0] for t in tensors), *first.shape[1:]), first.stride())


def _fuse(linears: list, name: str) -> torch.Tensor | None:
    """Stack parameter `name` ("weight" or "bias") of `linears` into one block and make each module's parameter a
    row view of it (values unchanged; each old tensor is freed as it is replaced). A second call finds the block."""
    params = [getattr(m, name) for m in linears]
    if params[0] is None:
        return None
    block = _block(params)
    if block is not None:
        return block
    block = torch.empty((sum(p.shape[0] for p in params), *params[0].shape[1:]), dtype=params[0].dtype,
                        device=params[0].device)
    r = 0
    for m, p in zip(linears, params):
        n = p.shape[0]
        block[r:r + n].copy_(p.detach())
        setattr(m, name, torch.nn.Parameter(block[r:r + n], requires_grad=False))
        r += n
    return block


def unsupported(model) -> str | None:
    """Why the fused step cannot run this model (None when it can)."""
    lm = model.get_decoder()
    layers = getattr(lm, "layers", None)
    if layers is None or len(layers) == 0:
        return "no decoder layers found"
    names = {type(layer).__name__ for layer in layers}
    if not names <= LAYER_CLASSES:
        return f"decoder layers {sorted(names)} are not Qwen2/Qwen3 dense layers"
    cfg = lm.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "the model has sliding-window layers"
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return "the model is dispatched with accelerate hooks (offloaded or split over devices)"
    devs = {p.device for p in lm.parameters()} | {model.get_output_embeddings().weight.device}
    if len(devs) != 1:
        return "the language model is spread over several devices"
    a = layers[0].self_attn
    if not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention without q/k/v projections"
    if getattr(layers[0].mlp, "gate_proj", None) is None:
        return "a mixture-of-experts or non-gated MLP"
    if getattr(a, "scaling", None) is None:
        return "attention without a scaling attribute"
    for layer in layers:  # the step adds the q/k/v biases (all or none) and no other
        at, mlp = layer.self_attn, layer.mlp
        if len({at.q_proj.bias is None, at.k_proj.bias is None, at.v_proj.bias is None}) != 1 or any(
                m.bias is not None for m in (at.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
            return "projection biases other than Qwen's q/k/v biases"
    return None


class _FusedModel:
    """A model's decoder weights in the fused layout (see the module docstring), its shapes and the kernels: what
    the one-answer step (FusedDecoder) and the B-row step (FusedRowsDecoder) compute with."""

    SPAN = 256

    def __init__(self, model, *, graphs: bool = True, ops=None):
        self.model = model
        self.graphs = graphs
        lm = model.get_decoder()
        self.embed = model.get_input_embeddings()
        self.head_w = model.get_output_embeddings().weight
        self.norm_w, self.norm_eps = lm.norm.weight, _eps(lm.norm)
        self.rotary = lm.rotary_emb
        a0 = lm.layers[0].self_attn
        self.d = int(a0.head_dim)
        self.nq = int(lm.config.num_attention_heads)
        self.nkv = int(lm.config.num_key_value_heads)
        self.scaling = float(a0.scaling)
        self.eps = _eps(lm.layers[0].input_layernorm)
        dev = self.head_w.device
        self.ops = ops or (_triton_ops() if dev.type == "cuda" else None) or _TorchOps
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in lm.layers:
                at, mlp = layer.self_attn, layer.mlp
                qkv = [at.q_proj, at.k_proj, at.v_proj]
                qkv_w, qkv_b = _fuse(qkv, "weight"), _fuse(qkv, "bias")
                gu_w = _fuse([mlp.gate_proj, mlp.up_proj], "weight")
                qn = getattr(at, "q_norm", None)
                kn = getattr(at, "k_norm", None)
                self.layers.append(_Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                                          qkv_w, qkv_b, at.o_proj.weight, gu_w, mlp.down_proj.weight,
                                          None if qn is None else qn.weight, None if kn is None else kn.weight))
        self.captures = 0
        self.capture_ms = 0.0

    def _span(self, slot: int) -> int:
        return min(self.capacity, (slot // self.SPAN + 1) * self.SPAN)

    def _capture(self, step, state: tuple[torch.Tensor, ...]):
        """(graph, output) of `step()` captured as a CUDA graph. The warm-up and the capture run the step; `state`
        (the tensors it advances: tok/slot/step) is restored after each (a K/V slot they wrote is rewritten by the
        next real step before it is read)."""
        t0 = time.perf_counter()
        saved = tuple(t.clone() for t in state)

        def restore() -> None:
            for t, v in zip(state, saved):
                t.copy_(v)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up: Triton compiles/launch caches, cuBLAS handles
            restore()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = step()
        torch.cuda.synchronize()
        restore()
        self.captures += 1
        self.capture_ms += (time.perf_counter() - t0) * 1e3
        return graph, out


class FusedDecoder(_FusedModel):
    """Same contract as `decoding.StaticDecoder.decode` (and the same token stream as the eager loop, up to the
    rounding of fused kernels in bf16). `graphs=False` runs the step without CUDA graphs (CPU tests).

    State: static K/V buffers (layers, nkv, capacity, D) filled from the prefilled dynamic cache; a rotary table
    for the positions this answer will use; one CUDA graph per attention span (multiple of SPAN)."""

    def __init__(self, model, *, graphs: bool = True, ops=None):
        super().__init__(model, graphs=graphs, ops=ops)
        self.capacity = 0
        self.k = self.v = None
        self.graphs_by_span: dict[int, tuple] = {}

    # -------------------------------------------------------------------------------------- buffers
    def _allocate(self, capacity: int, dtype: torch.dtype) -> None:
        dev = self.head_w.device
        self.k = self.v = None
        self.graphs_by_span = {}
        if self.graphs:
            torch.cuda.empty_cache()
        n = len(self.layers)
        self.k = torch.zeros((n, self.nkv, capacity, self.d), dtype=dtype, device=dev)
        self.v = torch.zeros_like(self.k)
        self.capacity = capacity
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.slot = torch.zeros((1,), dtype=torch.long, device=dev)  # cache slot the next token is written to
        self.step = torch.zeros((1,), dtype=torch.long, device=dev)  # row of the rotary table
        # rotary rows for the positions of one answer (at most capacity of them), filled in place by each load:
        # captured graphs read these addresses, so they must never be reallocated while the graphs live
        self.cos = torch.zeros((capacity, self.d), dtype=dtype, device=dev)
        self.sin = torch.zeros_like(self.cos)
        self.slots = torch.arange(capacity, device=dev)
        self.q = torch.empty((self.nq, self.d), dtype=dtype, device=dev)

    def _rope_table(self, first: torch.Tensor, n: int) -> None:
        """cos/sin (n, D) for the positions first, first+1, ... computed by the model's own rotary module (so any
        rope scaling is the model's). M-RoPE columns must have equal rows (text tokens after the prompt)."""
        dev = self.head_w.device
        col = first.to(dev).reshape(first.shape[0], -1)[:, :1] if first.dim() == 3 else first.to(dev).reshape(1, 1)
        if first.dim() == 3 and first.shape[0] == 4:
            col = col[1:]  # Qwen2-VL's leading row is the text position, the rope uses the three M-RoPE rows
        rows = col + torch.arange(n, device=dev).view(1, n)  # (R, n)
        if first.dim() == 3:
            pos = rows.view(rows.shape[0], 1, n)
        else:
            pos = rows.view(1, n)
        dummy = torch.empty((1, n, self.d), dtype=self.k.dtype, device=dev)
        cos, sin = self.rotary(dummy, pos)
        if cos.dim() == 4:  # (3, B, n, D) before the model combines M-RoPE sections: the rows are equal here
            cos, sin = cos[0], sin[0]
        self.cos[:n].copy_(cos.reshape(n, self.d))
        self.sin[:n].copy_(sin.reshape(n, self.d))

    # -------------------------------------------------------------------------------------- the step
    def _step(self, span: int) -> torch.Tensor:
        """Embed tok, run every layer attending over cache slots [0, span) (those > slot masked), write this
        token's K/V at slot; returns logits (1, V) and leaves the greedy token in tok; advances slot and step."""
        ops = self.ops
        x = F.embedding(self.tok.view(1), self.embed.weight)  # (1, H): the residual stream
        cos = self.cos.index_select(0, self.step)
        sin = self.sin.index_select(0, self.step)
        bias = torch.zeros((1, 1, span), dtype=x.dtype, device=x.device).masked_fill_(
            (self.slots[:span] > self.slot).view(1, 1, span), float("-inf"))
        g = self.nq // self.nkv
        res = None
        for i, L in enumerate(self.layers):
            h = ops.add_rms(x, res, L.ln1, self.eps)
            qkv = F.linear(h, L.qkv_w, L.qkv_b)
            ops.rope_write(qkv, cos, sin, self.slot, self.k[i], self.v[i], self.q, self.nq, self.nkv, L.q_norm,
                           L.k_norm, self.eps)
            s = torch.baddbmm(bias, self.q.view(self.nkv, g, self.d), self.k[i, :, :span].transpose(1, 2),
                              alpha=self.scaling)
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(x.dtype)
            o = torch.bmm(p, self.v[i, :, :span]).view(1, self.nq * self.d)
            res = F.linear(o, L.o_w)
            h = ops.add_rms(x, res, L.ln2, self.eps)
            res = F.linear(ops.silu_mul(F.linear(h, L.gu_w)), L.down_w)
        h = ops.add_rms(x, res, self.norm_w, self.norm_eps)
        logits = F.linear(h, self.head_w)
        self.tok.copy_(logits.argmax(-1).view(1, 1))
        self.slot.add_(1)
        self.step.add_(1)
        return logits

    def _graph(self, span: int):
        """(graph, logits) for `span`, captured on first use."""
        got = self.graphs_by_span.get(span)
        if got is None:
            got = self.graphs_by_span[span] = self._capture(lambda: self._step(span), (self.tok, self.slot, self.step))
        return got

    # -------------------------------------------------------------------------------------- loading
    def load(self, cache, next_position: torch.Tensor, max_new_tokens: int) -> None:
        """Copy a prefilled dynamic `cache` into the static buffers (growing them if needed) and build the rotary
        table for the next max_new_tokens positions."""
        ks = [layer.keys for layer in cache.layers]
        vs = [layer.values for layer in cache.layers]
        if len(ks) != len(self.layers) or len({int(k.shape[2]) for k in ks}) != 1 or ks[0].shape[0] != 1:
            raise ValueError("the KV cache does not have one equal-length batch-1 entry per layer")
        length = int(ks[0].shape[2])
        need = length + max_new_tokens
        if self.k is None or need > self.capacity or self.k.dtype != ks[0].dtype:
            self._allocate(-(-max(need, self.capacity) // self.SPAN) * self.SPAN, ks[0].dtype)
        for i, (k, v) in enumerate(zip(ks, vs)):
            self.k[i, :, :length].copy_(k[0])
            self.v[i, :, :length].copy_(v[0])
        self.slot.fill_(length)
        self.step.zero_()
        self._rope_table(next_position, max_new_tokens)
        self.length = length

    @torch.inference_mode()
    def decode(self, model, first_logits: torch.Tensor, cache, next_position: int | torch.Tensor, s: Sampling,
               on_token=None, stop: threading.Event | None = None) -> DecodeResult:
        """Emit the first token from `first_logits` (before any buffer copy or capture), then decode on the
        static buffers. `cache` is only read. If loading the buffers or a step (e.g. capturing the graph of a
        longer span) fails, the eager loop goes on from the tokens so far and `res.fallback` says why; running out
        of GPU memory is raised."""
        res = DecodeResult(mode="fused-graph" if self.graphs else "fused")
        started = _start(res, model, first_logits, next_position, s, on_token, stop)
        if started is None:
            return res
        pick, eos, tok, pos = started
        greedy = pick.gen is None
        before = self.capture_ms
        try:
            self.load(cache, pos, s.max_new_tokens)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the eager loop still answers, from the untouched prefill cache
            return self._fall_back(e, res, cache, tok, pos, pick, s, eos, on_token, stop)
        self.tok.copy_(tok.view(1, 1))
        slot = self.length
        while True:
            span = self._span(slot)
            try:
                if self.graphs:
                    graph, logits = self._graph(span)
                    graph.replay()
                else:
                    logits = self._step(span)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a failed capture of a longer span: go on eagerly
                t = torch.tensor([[res.token_ids[-1]]], device=first_logits.device)
                return self._fall_back(e, res, self._dynamic(slot), t, pos + (len(res.token_ids) - 1), pick, s,
                                       eos, on_token, stop)
            slot += 1
            if not greedy:
                self.tok.copy_(pick(logits[0]).view(1, 1))
            if _emit(res, int(self.tok.item()), s, eos, on_token, stop):
                if self.capture_ms > before:
                    res.capture_ms = self.capture_ms - before
                return res

    def _dynamic(self, length: int):
        """A transformers DynamicCache holding the first `length` static slots (what the eager loop continues)."""
        cache = new_cache(self.model)
        for i in range(len(self.layers)):
            cache.update(self.k[i, :, :length].unsqueeze(0).clone(), self.v[i, :, :length].unsqueeze(0).clone(), i)
        return cache

    def _fall_back(self, e: Exception, res: DecodeResult, cache, tok, pos, pick, s, eos, on_token, stop):
        self.k = self.v = None  # rebuilt on the next load
        self.graphs_by_span = {}
        return _hand_over(e, self.model, tok, cache, pos, pick, res, s, eos, on_token, stop)


class FusedRowsDecoder(_FusedModel):
    """The fused step for B answers at once (`decoding.decode_rows`' contract: each row its own positions, Sampling,
    eos / max_new_tokens / stop), on the left-padded batched prefill of `decoding.prefill_rows`.

    Why left-padding (the prefill's own layout) rather than per-row lengths: the padded cache is copied into the
    static buffers as ONE rectangular copy per layer, and every row writes its next K/V at the same slot, so the step
    keeps the one-answer step's single slot counter and kernels; the few padding slots between the shared prefix
    and a shorter question are masked per row (`holes`), and each row rotates with its own positions (a rotary table
    per row). Rows that finished keep stepping (their tokens are ignored) until the last one ends.

    State: K/V buffers (layers, rows, nkv, capacity, D); per-row rotary tables (rows, capacity, D) and padding masks;
    one CUDA graph per (row bucket, span): B rows run in the graph of `bucket(B)` rows (the extra rows compute on stale
    buffers and are never read), spans as in FusedDecoder."""

    def __init__(self, model, *, graphs: bool = True, ops=None):
        super().__init__(model, graphs=graphs, ops=ops)
        self.rows = self.capacity = 0
        self.k = self.v = None
        self.graphs_by_key: dict[tuple[int, int], tuple] = {}

    @staticmethod
    def bucket(rows: int) -> int:
        """The row count of the graph that decodes `rows` rows: 1, 2, 4, then the next multiple of 4 (few graphs,
        and a spare row costs its attention over the whole span, so 10 rows take 12, not 16)."""
        return 1 << max(0, rows - 1).bit_length() if rows <= 4 else -(-rows // 4) * 4

    # -------------------------------------------------------------------------------------- buffers
    def _allocate(self, rows: int, capacity: int, dtype: torch.dtype) -> None:
        dev = self.head_w.device
        self.k = self.v = None
        self.graphs_by_key = {}
        if self.graphs:
            torch.cuda.empty_cache()
        n = len(self.layers)
        self.k = torch.zeros((n, rows, self.nkv, capacity, self.d), dtype=dtype, device=dev)
        self.v = torch.zeros_like(self.k)
        self.rows, self.capacity = rows, capacity
        self.tok = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.slot = torch.zeros((1,), dtype=torch.long, device=dev)  # the slot every row writes its next K/V to
        self.step = torch.zeros((1,), dtype=torch.long, device=dev)  # column of the rotary tables
        self.holes = torch.zeros((rows, capacity), dtype=torch.bool, device=dev)  # padding slots of each row
        # captured graphs read all of these by address: refilled in place by each load, never reallocated
        self.cos = torch.zeros((rows, capacity, self.d), dtype=dtype, device=dev)
        self.sin = torch.zeros_like(self.cos)
        self.slots = torch.arange(capacity, device=dev)
        self.q = torch.empty((rows, self.nq, self.d), dtype=dtype, device=dev)

    def _rope_tables(self, first: torch.Tensor, n: int) -> None:
        """Each row's cos/sin (n, D) for its positions first[b], first[b]+1, ... by the model's rotary module.
        first: (B, 1), or (R, B, 1) M-RoPE rows (equal rows: text tokens after the prompt; Qwen2-VL's leading text
        row is left out, as in FusedDecoder)."""
        dev = self.head_w.device
        first = first.to(dev)
        if first.dim() == 3 and first.shape[0] == 4:
            first = first[1:]
        B = first.shape[-2]
        pos = first + torch.arange(n, device=dev)  # (B, n) or (R, B, n)
        dummy = torch.empty((B, n, self.d), dtype=self.k.dtype, device=dev)
        cos, sin = self.rotary(dummy, pos)
        if cos.dim() == 4:  # (3, B, n, D) before the model combines M-RoPE sections: the rows are equal here
            cos, sin = cos[0], sin[0]
        self.cos[:B, :n].copy_(cos)
        self.sin[:B, :n].copy_(sin)

    def load(self, pre: RowsPrefill, max_new_tokens: int) -> None:
        """Copy the batched prefill's cache (B rows, left-padded) into the static buffers, growing them if needed,
        mark each row's padding slots and build each row's rotary table for its next max_new_tokens positions."""
        ks = [layer.keys for layer in pre.cache.layers]
        vs = [layer.values for layer in pre.cache.layers]
        B = pre.rows
        if len(ks) != len(self.layers) or len({tuple(k.shape[:3]) for k in ks}) != 1 or ks[0].shape[0] != B:
            raise ValueError("the KV cache does not have one equal-length entry of the batch's rows per layer")
        length = int(ks[0].shape[2])
        need = length + max_new_tokens
        rows = self.bucket(B)
        if self.k is None or need > self.capacity or rows > self.rows or self.k.dtype != ks[0].dtype:
            self._allocate(max(rows, self.rows), -(-max(need, self.capacity) // self.SPAN) * self.SPAN, ks[0].dtype)
        for i, (k, v) in enumerate(zip(ks, vs)):
            self.k[i, :B, :, :length].copy_(k)
            self.v[i, :B, :, :length].copy_(v)
        self.holes.zero_()
        self.holes[:B, :length].copy_(pre.mask[:, :length] == 0)
        self.tok.zero_()
        self.slot.fill_(length)
        self.step.zero_()
        self._rope_tables(pre.next_position, max_new_tokens)
        self.length = length

    # -------------------------------------------------------------------------------------- the step
    def _step(self, rows: int, span: int) -> torch.Tensor:
        """The first `rows` rows: embed tok, run every layer attending over slots [0, span) (each row's padding
        and the slots > slot masked), write their K/V at slot; returns logits (rows, V) and leaves the greedy tokens
        in tok; advances slot and step."""
        ops, b, nkv, d = self.ops, rows, self.nkv, self.d
        g = self.nq // nkv
        x = F.embedding(self.tok[:b].view(b), self.embed.weight)  # (b, H): the residual stream
        cos = self.cos[:b].index_select(1, self.step).view(b, d)
        sin = self.sin[:b].index_select(1, self.step).view(b, d)
        masked = self.holes[:b, :span] | (self.slots[:span] > self.slot).view(1, span)
        bias = torch.zeros((b, 1, span), dtype=x.dtype, device=x.device).masked_fill_(masked.view(b, 1, span),
                                                                                          float("-inf"))
        bias = bias.expand(b, nkv, span).reshape(b * nkv, 1, span)  # one row per (row, kv head), as q/k/v below
        q = self.q[:b]
        res = None
        for i, L in enumerate(self.layers):
            k, v = self.k[i, :b], self.v[i, :b]
            h = ops.add_rms(x, res, L.ln1, self.eps)
            qkv = F.linear(h, L.qkv_w, L.qkv_b)
            ops.rope_write(qkv, cos, sin, self.slot, k, v, q, self.nq, nkv, L.q_norm, L.k_norm, self.eps)
            s = torch.baddbmm(bias, q.view(b * nkv, g, d), k[:, :, :span].flatten(0, 1).transpose(1, 2),
                              alpha=self.scaling)
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(x.dtype)
            o = torch.bmm(p, v[:, :, :span].flatten(0, 1)).view(b, self.nq * d)
            res = F.linear(o, L.o_w)
            h = ops.add_rms(x, res, L.ln2, self.eps)
            res = F.linear(ops.silu_mul(F.linear(h, L.gu_w)), L.down_w)
        h = ops.add_rms(x, res, self.norm_w, self.norm_eps)
        logits = F.linear(h, self.head_w)
        self.tok[:b].copy_(logits.argmax(-1, keepdim=True))
        self.slot.add_(1)
        self.step.add_(1)
        return logits

    def _graph(self, rows: int, span: int):
        """(graph, logits) for (rows, span), captured on first use."""
        key = (rows, span)
        got = self.graphs_by_key.get(key)
        if got is None:
            got = self.graphs_by_key[key] = self._capture(lambda: self._step(rows, span),
                                                          (self.tok, self.slot, self.step))
        return got

    # -------------------------------------------------------------------------------------- decoding
    @torch.inference_mode()
    def decode(self, model, pre: RowsPrefill, samplings: list[Sampling], on_token=None,
               stops: list[threading.Event | None] | None = None) -> list[DecodeResult]:
        """Same contract and token streams as `decoding.decode_rows`: each row's first token (from the prefill's
        logits) is emitted before any buffer copy or capture. `pre.cache` is only read; if loading the buffers or
        a step fails (not for lack of GPU memory, which is raised), the eager batched loop goes on on `pre.cache`
        from the tokens so far, and every result's `fallback` says why."""
        B = pre.rows
        mode = f"batched {'fused-graph' if self.graphs else 'fused'} x{B}"
        results = [DecodeResult(mode=mode) for _ in range(B)]
        eos = eos_ids(model)
        picks = RowPicks(samplings, pre.logits.device)
        tok = picks(pre.logits)
        fed = [tok[:, 0].tolist()]  # what each row was fed, step by step (what the eager loop needs to take over)
        alive = emit_rows(results, list(range(B)), fed[-1], samplings, eos, on_token, stops)
        if not alive:
            return results
        before = self.capture_ms
        try:
            self.load(pre, max(s.max_new_tokens for s in samplings))
            self.tok[:B].copy_(tok)
            rows = self.bucket(B)
            slot = self.length
            while True:
                span = self._span(slot)
                if self.graphs:
                    graph, logits = self._graph(rows, span)
                    graph.replay()
                else:
                    logits = self._step(rows, span)
                slot += 1
                fed.append(picks(logits, self.tok)[:, 0].tolist())
                alive = emit_rows(results, alive, fed[-1], samplings, eos, on_token, stops)
                if not alive:
                    break
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a failed capture: the eager batched loop still answers
            self.k = self.v = None  # rebuilt on the next load
            self.graphs_by_key = {}
            msg = str(e).strip()
            for r in results:
                r.mode = f"batched x{B}"
                r.fallback = f"{type(e).__name__}: {msg.splitlines()[0][:160] if msg else ''}"
            feed = torch.tensor(fed, dtype=torch.long, device=pre.logits.device).T.contiguous()  # (B, steps)
            return eager_rows(model, pre, feed, results, alive, picks, on_token, stops)
        if self.capture_ms > before:
            for r in results:
                r.capture_ms = self.capture_ms - before
        return results


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
