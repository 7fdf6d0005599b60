"""Our own prefill + decode loop over a stock transformers model (no `generate`).

Why not `generate`: we need (1) a KV cache of the shared prompt prefix (text + video tokens) that many questions
continue from, (2) position ids that continue after the UNPRUNED length, (3) exact per-token timestamps, and
(4) no per-call overhead in the timed prefill. The loop is the plain one `generate` runs for greedy decoding
(tests check it matches `generate` token for token), plus temperature / top-p sampling.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


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


def cache_length(cache) -> int:
    return int(cache.get_seq_length())


def crop_cache(cache, length: int) -> None:
    """Drop everything after the first `length` positions (negative argument: works on 5.17 and 5.23)."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)


@torch.inference_mode()
def prefill(model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
    """Run `inputs_embeds` (1,L,D) at `position_ids` (1,L) on top of `cache`; returns last-token logits (V,)."""
    out = model(inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
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


@dataclass
class DecodeResult:
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    stop_reason: str = ""


@torch.inference_mode()
def decode(model, first_logits: torch.Tensor, cache, next_position: int, s: Sampling,
           on_token=None, stop: threading.Event | None = None) -> DecodeResult:
    """Pick the first token from `first_logits`, then feed tokens one by one at next_position, +1, ...

    `on_token(token_id, t)` is called as each token is known on the host; `stop` ends the loop early."""
    res = DecodeResult()
    pick = _Picker(s, first_logits.device)
    eos = eos_ids(model)
    dev = first_logits.device
    tok = pick(first_logits)
    pos = torch.tensor([[next_position]], device=dev)
    while True:
        token = int(tok.item())  # the one host sync per step: the token is needed on the host anyway
        now = time.perf_counter()
        res.token_ids.append(token)
        res.token_times.append(now)
        if on_token is not None:
            on_token(token, now)
        if token in eos:
            res.stop_reason = "eos"
            break
        if len(res.token_ids) >= s.max_new_tokens:
            res.stop_reason = "max_new_tokens"
            break
        if stop is not None and stop.is_set():
            res.stop_reason = "interrupted"
            break
        out = model(input_ids=tok.view(1, 1), position_ids=pos, past_key_values=cache, use_cache=True)
        pos = pos + 1
        tok = pick(out.logits[0, -1])
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
