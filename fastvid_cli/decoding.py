"""Our own prefill + decode loop over a stock transformers model (no `generate`).

Why not `generate`: we need (1) a KV cache of the shared prompt prefix (text + video tokens) that many questions
continue from, (2) position ids that continue after the UNPRUNED length, (3) exact per-token timestamps, and
(4) no per-call overhead in the timed prefill. The loop is the plain one `generate` runs for greedy decoding
(tests check it matches `generate` token for token), plus temperature / top-p sampling.
"""

from __future__ import annotations

import functools
import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # Record each step's logit margin on DecodeResult.margins (see `logit_margin`): one top-2 and one host read
    # per step, so off by default. Only the eager loops (`decode`, `decode_batch`) record it; the graph decoders
    # (StaticDecoder, fast_decode.FusedDecoder) leave `margins` None, and Engine.decode decodes eagerly when asked.
    margins: bool = False


def eos_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@functools.cache
def _cache_keyword(cls: type) -> str:
    """The name under which `cls.forward` takes the KV cache: `cache` from transformers 5.25 on (which deprecates
    `past_key_values` with a FutureWarning on every call), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def with_cache(module, cache) -> dict:
    """`{keyword: cache}` for calling `module` (a model, its decoder or one decoder layer) with a KV cache, under
    the keyword the installed transformers uses: `module(..., **with_cache(module, cache))`."""
    return {_cache_keyword(type(module)): cache}


def cache_length(cache) -> int:
    return int(cache.get_seq_length())


def crop_cache(cache, length: int) -> None:
    """Drop everything after the first `length` positions (negative argument: works on 5.17 and 5.23)."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)


@torch.inference_mode()
def prefill(model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache,
            extra: dict | None = None) -> torch.Tensor:
    """Run `inputs_embeds` (1,L,D) at `position_ids` ((1,L), or (4,1,L) M-RoPE rows) on top of `cache`; returns
    last-token logits (V,).

    `extra`: further keyword arguments of the language model (Assembled.prefill_extra, e.g. Qwen3-VL's
    `visual_pos_masks` + `deepstack_visual_embeds`). The multimodal wrapper's forward sets those itself from
    input_ids, so with `extra` the decoder is called directly, then the LM head on the last position: the same
    computation as the wrapper's forward minus its multimodal scatter, which the adapter already did."""
    if extra:
        decoder = model.get_decoder()
        h = decoder(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=True,
                    **with_cache(decoder, cache), **extra).last_hidden_state
        return model.get_output_embeddings()(h[:, -1:])[0, -1]
    out = model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=True, logits_to_keep=1,
                **with_cache(model, cache))
    return out.logits[0, -1]


class _Picker:
    """Greedy argmax, or temperature + top-p sampling with a private seeded generator."""

    def __init__(self, s: Sampling, device: torch.device):
        self.s = s
        self.gen = None
        if s.temperature > 0:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(s.seed if s.seed is not None else int(time.time_ns() % (2**63)))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.gen is None:
            return logits.argmax(-1, keepdim=True)
        probs = torch.softmax(logits.float() / self.s.temperature, dim=-1)
        if self.s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.s.top_p  # keep the smallest prefix reaching top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=self.gen)


def logit_margin(logits: torch.Tensor, token: int) -> float:
    """How far the chosen `token` stands above every other token in `logits` (V,): its logit minus the highest
    other logit. Greedy: the top-1 minus the runner-up logit, >= 0; a margin near 0 is a decision that rounding
    (another CPU's kernels, another dtype) can flip. Sampled tokens may be below the best (negative margin)."""
    top = logits.float().topk(2)
    values, index = top.values.tolist(), top.indices.tolist()
    if index[0] == token:
        return values[0] - values[1]
    return float(logits[token]) - values[0]  # not the top-1 (sampled, or a tie the pick broke the other way)


@dataclass
class DecodeResult:
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    stop_reason: str = ""
    capture_ms: float | None = None  # StaticDecoder: CUDA-graph capture time when this call captured one
    mode: str = "eager"  # eager | cuda-graph | static (static buffers, no graph: CPU tests)
    fallback: str | None = None  # why a static decode went on eagerly
    # With Sampling.margins (eager loops only): logit_margin of every token in token_ids, eos included; else None
    margins: list[float] | None = None


@torch.inference_mode()
def position_column(next_position: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The position ids of the first generated token: an int n -> [[n]]; a tensor is taken as the column
    (shape (1,1) for 1-D ids, (R,1,1) for M-RoPE rows), e.g. `Assembled.next_position`."""
    if isinstance(next_position, torch.Tensor):
        return next_position.to(device=device, dtype=torch.long).clone()
    return torch.tensor([[int(next_position)]], device=device)


def _start(res: DecodeResult, model, first_logits: torch.Tensor, next_position: int | torch.Tensor, s: Sampling,
           on_token, stop):
    """Pick and emit the first token (from the prefill's logits). Returns (picker, eos ids, first token, position
    column of the next step), or None when that token already ends the answer."""
    pick = _Picker(s, first_logits.device)
    eos = eos_ids(model)
    tok = pick(first_logits)
    # int(tok.item()) is the one host sync per step: the token is needed on the host anyway
    token = int(tok.item())
    if s.margins and res.mode == "eager":  # the graph decoders record none: their later steps could not
        res.margins = [logit_margin(first_logits, token)]
    if _emit(res, token, s, eos, on_token, stop):
        return None
    return pick, eos, tok, position_column(next_position, first_logits.device)


def _emit(res: DecodeResult, token: int, s: Sampling, eos: set[int], on_token, stop) -> bool:
    """Record one token; True when decoding must stop (reason set on `res`)."""
    now = time.perf_counter()
    res.token_ids.append(token)
    res.token_times.append(now)
    if on_token is not None:
        on_token(token, now)
    if token in eos:
        res.stop_reason = "eos"
    elif len(res.token_ids) >= s.max_new_tokens:
        res.stop_reason = "max_new_tokens"
    elif stop is not None and stop.is_set():
        res.stop_reason = "interrupted"
    return bool(res.stop_reason)


@torch.inference_mode()
def decode(model, first_logits: torch.Tensor, cache, next_position: int | torch.Tensor, s: Sampling,
           on_token=None, stop: threading.Event | None = None) -> DecodeResult:
    """Pick the first token from `first_logits`, then feed tokens one by one at next_position, +1, ...

    `on_token(token_id, t)` is called as each token is known on the host; `stop` ends the loop early."""
    res = DecodeResult()
    started = _start(res, model, first_logits, next_position, s, on_token, stop)
    if started is None:
        return res
    pick, eos, tok, pos = started
    return _eager_steps(model, tok, cache, pos, pick, res, s, eos, on_token, stop)


def _eager_steps(model, tok: torch.Tensor, cache, pos: torch.Tensor, pick: _Picker, res: DecodeResult, s: Sampling,
                 eos: set[int], on_token, stop) -> DecodeResult:
    """Feed `tok` (already emitted) at `pos`, and go on until a stop condition."""
    while True:
        out = model(input_ids=tok.view(1, 1), position_ids=pos, use_cache=True, **with_cache(model, cache))
        pos = pos + 1
        logits = out.logits[0, -1]
        tok = pick(logits)
        token = int(tok.item())
        if res.margins is not None:
            res.margins.append(logit_margin(logits, token))
        if _emit(res, token, s, eos, on_token, stop):
            return res


def _hand_over(e: Exception, model, tok: torch.Tensor, cache, pos: torch.Tensor, pick: _Picker, res: DecodeResult,
               s: Sampling, eos: set[int], on_token, stop) -> DecodeResult:
    """A graph decoder failed with `e`: say why on `res` and let the eager loop go on, feeding `tok` (already
    emitted) at `pos` on top of `cache`."""
    msg = str(e).strip()
    res.mode = "eager"
    res.fallback = f"{type(e).__name__}: {msg.splitlines()[0][:160] if msg else ''}"
    return _eager_steps(model, tok.view(1, 1), cache, pos, pick, res, s, eos, on_token, stop)


@dataclass
class RowsPrefill:
    """B prompts that share one prefix, prefilled together (see `prefill_rows`): what a batched decode goes on from.

    The suffixes are left-padded to the longest, so the cache (B rows, prefix_len + width slots) is rectangular and
    every row's last prompt token is its last column; `mask` (B, prefix_len + width) is 1 on real slots, 0 on the
    padding; `next_position` the positions of each row's first generated token ((B,1), or (R,B,1) M-RoPE rows)."""

    cache: Any
    mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor  # (B, V): each row's last prompt token
    prefix_len: int
    width: int  # the longest suffix
    started: float  # clock time the batched prefill started

    @property
    def rows(self) -> int:
        return int(self.logits.shape[0])


@torch.inference_mode()
def prefill_rows(model, prefix_cache, suffix_embeds: list[torch.Tensor], suffix_positions: list[torch.Tensor],
                 clock=None) -> RowsPrefill:
    """Prefill B prompts that share the prefix in `prefix_cache` (batch 1, only read) in one batched forward.

    suffix_embeds[b] (1,l_b,D) and suffix_positions[b] (1,l_b), or (R,1,l_b) M-RoPE rows, are each prompt's tokens
    after the prefix with their ORIGINAL position ids. Suffixes are left-padded to the longest with masked slots, so
    every row's last token is the batch's last column and the cache stays rectangular; each row decodes at its own
    positions. With M-RoPE rows, row 0 (the slot index transformers uses for masks) is rewritten to the batch's
    slots."""
    B = len(suffix_embeds)
    dev = suffix_embeds[0].device
    lens = [int(e.shape[1]) for e in suffix_embeds]
    L, P = max(lens), cache_length(prefix_cache)
    cache = new_cache(model)
    for i, layer in enumerate(prefix_cache.layers):
        cache.update(layer.keys.expand(B, -1, -1, -1).contiguous(), layer.values.expand(B, -1, -1, -1).contiguous(), i)
    emb = suffix_embeds[0].new_zeros((B, L, suffix_embeds[0].shape[-1]))
    lead = tuple(suffix_positions[0].shape[:-2])  # () for 1-D ids, (R,) for M-RoPE rows
    pos = torch.zeros((*lead, B, L), dtype=torch.long, device=dev)
    mask = torch.zeros((B, P + L), dtype=torch.long, device=dev)
    mask[:, :P] = 1
    for b, (e, p, n) in enumerate(zip(suffix_embeds, suffix_positions, lens)):
        emb[b, L - n:] = e[0]
        pos[..., b, L - n:] = p[..., 0, :]
        pos[..., b, :L - n] = p[..., 0, :1]  # any value: these slots are masked out
        mask[b, P + L - n:] = 1
    if lead:
        pos[0] = P + torch.arange(L, device=dev)
    t0 = clock() if clock is not None else time.perf_counter()
    out = model(inputs_embeds=emb, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=1,
                **with_cache(model, cache))
    return RowsPrefill(cache, mask, pos[..., -1:] + 1, out.logits[:, -1], P, L, t0)


class RowStack:
    """Prompts prefilled one by one, each into its own single-row cache (about different videos: no shared prefix),
    gathered as the rows of one batched cache, so that they decode together as the rows of `prefill_rows` do.

    Row b's K/V (1, nkv, n_b, D) are copied into the right end of a (B, nkv, width, D) buffer per layer: left-padded
    with masked slots, every row's last prompt token is the last column, and each row keeps its own positions. Copying
    at once lets a caller crop a shared prefix cache back right after each row's prefill."""

    def __init__(self, lengths: list[int]):
        self.lengths = list(lengths)
        self.width = max(self.lengths)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.logits: list[torch.Tensor | None] = [None] * len(self.lengths)
        self.next_positions: list[torch.Tensor | None] = [None] * len(self.lengths)

    def put(self, b: int, cache, logits: torch.Tensor, next_position: torch.Tensor) -> None:
        """Row b's prompt: `cache` (batch 1) holds exactly its lengths[b] tokens; `logits` (V,) its last token's;
        `next_position` (1,1), or (R,1,1) M-RoPE rows, its first generated token's position ids."""
        n, B, W = self.lengths[b], len(self.lengths), self.width
        layers = cache.layers
        if cache_length(cache) != n:
            raise ValueError(f"row {b}'s cache holds {cache_length(cache)} tokens, not its prompt's {n}")
        if not self.keys:
            for layer in layers:
                k, v = layer.keys, layer.values
                self.keys.append(k.new_zeros((B, k.shape[1], W, k.shape[3])))
                self.values.append(v.new_zeros((B, v.shape[1], W, v.shape[3])))
        for i, layer in enumerate(layers):
            self.keys[i][b, :, W - n:].copy_(layer.keys[0, :, :n])
            self.values[i][b, :, W - n:].copy_(layer.values[0, :, :n])
        self.logits[b] = logits.reshape(-1)
        self.next_positions[b] = next_position

    def rows(self, model, keep: list[int], started: float) -> RowsPrefill:
        """The batched prefill of rows `keep` (each put), in that order, trimmed to the longest of them."""
        W = max(self.lengths[b] for b in keep)
        cut = self.width - W
        whole = keep == list(range(len(self.lengths))) and cut == 0  # no further copy
        idx = torch.tensor(keep, device=self.keys[0].device)
        cache = new_cache(model)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if not whole:
                k, v = k.index_select(0, idx)[:, :, cut:].contiguous(), v.index_select(0, idx)[:, :, cut:].contiguous()
            cache.update(k, v, i)
        dev = self.logits[keep[0]].device
        mask = torch.zeros((len(keep), W), dtype=torch.long, device=dev)
        for r, b in enumerate(keep):
            mask[r, W - self.lengths[b]:] = 1
        nxt = torch.cat([self.next_positions[b].to(dev) for b in keep], dim=-2)
        if nxt.dim() == 3:  # M-RoPE rows: row 0 (what transformers masks by) counts cache slots, as prefill_rows has it
            nxt[0] = W
        logits = torch.stack([self.logits[b] for b in keep])
        return RowsPrefill(cache, mask, nxt, logits, 0, W, started)


class RowPicks:
    """Each row's sampling: greedy rows take the argmax of the whole batch at once, sampled rows (temperature > 0)
    draw with their own seeded generator, exactly as `_Picker` does for a single answer with that Sampling."""

    def __init__(self, samplings: list[Sampling], device: torch.device):
        self.samplings = samplings
        self.pickers = [_Picker(s, device) for s in samplings]
        self.sampled = [b for b, p in enumerate(self.pickers) if p.gen is not None]

    def __call__(self, logits: torch.Tensor, greedy: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1) tokens from logits (B', V) (B' >= B: rows past B are ignored); `greedy` (B', 1), when given, is
        the argmax already taken (the graphed step's), updated in place for the sampled rows."""
        B = len(self.pickers)
        tok = greedy[:B] if greedy is not None else logits[:B].argmax(-1, keepdim=True)
        for b in self.sampled:
            tok[b] = self.pickers[b](logits[b])
        return tok


def decode_rows(model, pre: RowsPrefill, samplings: list[Sampling], on_token=None,
                stops: list[threading.Event | None] | None = None, mode: str | None = None) -> list[DecodeResult]:
    """The eager batched loop after `prefill_rows`: one forward of all B rows per step on `pre.cache`, each row
    picking with its own Sampling and stopping on its own (eos, its max_new_tokens, `stops[b]`). Rows that finished
    keep being fed (ignored) until the last one stops. Results in row order.

    `on_token(b, token_id, t)` is called for each row's token as it is known on the host (for streaming); `stops[b]`
    set ends row b after its current token (stop_reason "interrupted") while the other rows go on."""
    B = pre.rows
    margins = any(s.margins for s in samplings)
    results = [DecodeResult(mode=mode or f"batched x{B}", margins=[] if margins else None) for _ in range(B)]
    picks = RowPicks(samplings, pre.logits.device)
    tok = picks(pre.logits)
    alive = emit_rows(results, list(range(B)), tok, samplings, eos_ids(model), on_token, stops, pre.logits)
    return eager_rows(model, pre, tok, results, alive, picks, on_token, stops)


def emit_rows(results: list[DecodeResult], alive: list[int], tok: torch.Tensor | list[int], samplings: list[Sampling],
              eos: set[int], on_token, stops, logits: torch.Tensor | None = None) -> list[int]:
    """Record each alive row's token of this step (tok (B,1) read to the host at once, the one sync per step, or
    already read: a list); returns the rows still alive. With margins asked for, `logits` (B,V) gives each row's."""
    ids = tok if isinstance(tok, list) else tok[:, 0].tolist()
    if results[0].margins is not None and logits is not None:
        for b in alive:
            results[b].margins.append(logit_margin(logits[b], ids[b]))
    return [b for b in alive if not _emit(results[b], ids[b], samplings[b], eos, _row_callback(on_token, b),
                                          stops[b] if stops else None)]


def eager_rows(model, pre: RowsPrefill, feed: torch.Tensor, results: list[DecodeResult], alive: list[int],
               picks: RowPicks, on_token, stops) -> list[DecodeResult]:
    """Go on with the eager batched loop on `pre.cache` (the prompt only), feeding `feed` (B, t): the t tokens each
    row was given so far (t > 1 when a graph decoder hands over mid-answer; for rows that finished, any token)."""
    if not alive:
        return results
    eos = eos_ids(model)
    mask, nxt = pre.mask, pre.next_position
    B = pre.rows
    while True:
        t = feed.shape[1]
        mask = torch.cat([mask, mask.new_ones((B, t))], dim=1)
        pos = nxt + torch.arange(t, device=nxt.device)
        out = model(input_ids=feed, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=1,
                    **with_cache(model, pre.cache))
        nxt = nxt + t
        logits = out.logits[:, -1]
        feed = picks(logits)
        alive = emit_rows(results, alive, feed, picks.samplings, eos, on_token, stops, logits)
        if not alive:
            return results


@torch.inference_mode()
def decode_batch(model, prefix_cache, suffix_embeds: list[torch.Tensor], suffix_positions: list[torch.Tensor],
                 s: Sampling, clock=None, on_token=None,
                 stops: list[threading.Event | None] | None = None) -> tuple[list[DecodeResult], float]:
    """Answers to B prompts that share the prefix in `prefix_cache` (batch 1, only read), decoded together with the
    eager batched loop: `prefill_rows`, then `decode_rows` with `s` for every row. A decode step costs about as much
    for B rows as for one (the weights are read once), which is the point: the per-question cost of a batch of
    questions about one video falls by ~B. Returns (results in input order, clock time the batched prefill
    started)."""
    pre = prefill_rows(model, prefix_cache, suffix_embeds, suffix_positions, clock)
    return decode_rows(model, pre, [s] * pre.rows, on_token, stops), pre.started


def _row_callback(on_token, b: int):
    """decode_batch's per-row view of `on_token(b, token, t)`: the `on_token(token, t)` that _emit calls."""
    if on_token is None:
        return None
    return lambda token, t: on_token(b, token, t)


class StaticDecoder:
    """Decode steps over a preallocated (static) KV cache, each step replayed as ONE CUDA graph.

    Eager decoding launches a few hundred small kernels per token, so on a 7B model it is bound by the host, not
    by the GPU. Here the prefill still runs eagerly on the dynamic cache (so prefill kernels and timings are the
    usual ones); its keys/values are then copied into static buffers (a memcpy), and every decode step is one
    graph replay plus the one host sync that reads the token. The graph is captured once per buffer size (no
    torch.compile, so it takes about one forward pass instead of tens of seconds) and reused for every later
    answer. Greedy picks happen inside the graph; sampling reads the graph's logits.

    `graphs=False` runs the same static-cache step eagerly (what CPU tests use to check the token stream).
    """

    BLOCK = 1024  # buffer sizes are rounded up to this, so answers of similar length reuse one graph
    # Longest prompt + answer decoded this way: every step attends over the whole static buffer with a mask (no
    # flash-decoding, K/V repeated per query head), which made a 15.9k-token Qwen2.5-VL-7B prompt decode at 29 tok/s
    # against 63 eager, while ~1k-token prompts gain 1.7-2x (benchmarks/RESULTS.md).
    MAX_TOKENS = 4096

    def __init__(self, model, *, graphs: bool = True, inductor: bool = False):
        self.model = model
        self.graphs = graphs
        # Experimental (benchmarks only): fuse the step's ~1400 small elementwise kernels with torch.compile before
        # capturing it; costs a compile (tens of seconds) on the first capture.
        self.inductor = inductor
        self._compiled = None
        self.lm = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        self.cache = None
        self.capacity = 0
        self.graph = None
        self.pos_shape: tuple[int, ...] | None = None
        self.captures = 0
        self.last_capture_ms: float | None = None

    @staticmethod
    def unsupported(model, cache) -> str | None:
        """Why this model/cache cannot use the static path (None when it can)."""
        from transformers.cache_utils import DynamicLayer

        kinds = {type(layer) for layer in getattr(cache, "layers", [])}
        if not kinds or kinds != {DynamicLayer}:
            return "the model's cache has sliding-window or other non-standard layers"
        if len({int(layer.keys.shape[-2]) for layer in cache.layers}) > 1:
            return "the KV cache has layers of different lengths (HoliTom's inner merge)"
        return None

    def _allocate(self, capacity: int, like: list[tuple[torch.Tensor, torch.Tensor]], pos: torch.Tensor) -> None:
        from transformers import StaticCache

        self.cache = self.graph = None  # free the old buffers and graph pool first
        if self.graphs:
            torch.cuda.empty_cache()
        cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        for layer, (k, v) in zip(cache.layers, like):
            layer.lazy_initialization(k[:, :, :1], v[:, :, :1])
        self.cache, self.capacity = cache, capacity
        dev = like[0][0].device
        self.tok_buf = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.pos_buf = torch.zeros_like(pos)
        self.pos_shape = tuple(pos.shape)
        if self.graphs:
            self._capture()

    def _logits(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.lm(inputs_embeds=self.embed(tok), position_ids=pos, use_cache=True,
                    **with_cache(self.lm, self.cache)).last_hidden_state
        return self.head(h[:, -1])[0]

    def _step(self) -> None:
        """One decode step on the static buffers: reads tok_buf/pos_buf, writes logits_buf, the greedy token into
        tok_buf, and advances pos_buf (the cache advances itself)."""
        if self.inductor and self._compiled is None:
            self._compiled = torch.compile(self._logits, dynamic=False)
        self.logits_buf = (self._compiled or self._logits)(self.tok_buf, self.pos_buf)
        self.tok_buf.copy_(self.logits_buf.argmax(-1).view(1, 1))
        self.pos_buf.add_(1)

    def _set_length(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)

    def _capture(self) -> None:
        t0 = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up steps (write junk past the valid length, which is masked, then reset)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step()
        torch.cuda.synchronize()
        self._set_length(0)
        self.graph = graph
        self.captures += 1
        self.last_capture_ms = (time.perf_counter() - t0) * 1e3

    def load(self, cache, next_position: torch.Tensor, max_new_tokens: int) -> float | None:
        """Copy a prefilled dynamic `cache` into the static buffers (growing them, and recapturing, if needed).
        Returns the capture time in ms when a capture happened, else None."""
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        length = int(kv[0][0].shape[2])
        need = length + max_new_tokens
        captured = None
        if self.cache is None or need > self.capacity or tuple(next_position.shape) != self.pos_shape:
            capacity = -(-max(need, self.capacity) // self.BLOCK) * self.BLOCK
            self._allocate(capacity, kv, next_position)
            captured = self.last_capture_ms if self.graphs else None
        for layer, (k, v) in zip(self.cache.layers, kv):
            layer.keys[:, :, :length].copy_(k)
            layer.values[:, :, :length].copy_(v)
        self._set_length(length)
        self.pos_buf.copy_(next_position)
        return captured

    @torch.inference_mode()
    def decode(self, model, first_logits: torch.Tensor, cache, next_position: int | torch.Tensor, s: Sampling,
               on_token=None, stop: threading.Event | None = None) -> DecodeResult:
        """Same contract and token stream as `decode`. The first token (from the prefill's logits) is emitted
        before the buffers are filled or a graph captured, so neither delays the time to first token. `cache`
        (the prefilled dynamic cache) is only read — unless filling the static buffers fails (e.g. the capture),
        in which case decoding goes on eagerly on `cache` and `res.fallback` says why."""
        res = DecodeResult(mode="cuda-graph" if self.graphs else "static")
        started = _start(res, model, first_logits, next_position, s, on_token, stop)
        if started is None:
            return res
        pick, eos, tok, pos = started
        greedy = pick.gen is None
        try:
            res.capture_ms = self.load(cache, pos, s.max_new_tokens)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any capture problem: the eager loop still answers
            self.cache = self.graph = None
            return _hand_over(e, model, tok, cache, pos, pick, res, s, eos, on_token, stop)
        self.tok_buf.copy_(tok.view(1, 1))
        while True:
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            if not greedy:
                self.tok_buf.copy_(pick(self.logits_buf).view(1, 1))
            if _emit(res, int(self.tok_buf.item()), s, eos, on_token, stop):
                return res


class TextStream:
    """Turns token ids into text pieces as they arrive (token by token, never splitting a UTF-8 character),
    for a consumer iterating on another thread."""

    _END = object()

    def __init__(self, tokenizer, eos: set[int]):
        self.tok = tokenizer
        self.eos = eos
        self.queue: queue.Queue = queue.Queue()
        self.cache: list[int] = []
        self.printed = 0
        self.pending = 0

    def put(self, token: int, _t: float | None = None) -> None:
        if token in self.eos:
            return
        self.cache.append(token)
        self.pending += 1
        text = self.tok.decode(self.cache, skip_special_tokens=True)
        if text.endswith("\ufffd") and self.pending < 4:  # wait for the rest of a multi-byte character
            return
        piece = text[self.printed:]
        self.pending = 0
        if text.endswith("\n"):  # fresh cache per line keeps decoding O(line), not O(answer)
            self.cache, self.printed = [], 0
        else:
            self.printed = len(text)
        if piece:
            self.queue.put(piece)

    def flush(self) -> None:
        if self.cache:
            text = self.tok.decode(self.cache, skip_special_tokens=True)
            if text[self.printed:]:
                self.queue.put(text[self.printed:])
            self.cache, self.printed = [], 0

    def end(self) -> None:
        self.flush()
        self.queue.put(self._END)

    def __iter__(self):
        while True:
            piece = self.queue.get()
            if piece is self._END:
                return
            yield piece
