"""Which loop decodes an answer after its prefill: the fused CUDA-graph step (fast_decode.FusedDecoder: Qwen2/Qwen3
dense LLMs), the CUDA-graph StaticDecoder (any other model), or the eager loop (decoding.decode); and which decodes
several answers together (`decode_rows`): the fused B-row step (fast_decode.FusedRowsDecoder) wherever the
one-answer fused step would be used, else the eager batched loop (decoding.decode_rows).

The graph decoders are made on first use and kept (their buffers and captured graphs serve every later answer);
one that failed is not tried again, and the answer it failed on goes on eagerly with a note.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any

import torch

from fastvid_cli import fast_decode
from fastvid_cli.decoding import DecodeResult, RowsPrefill, StaticDecoder, cache_length, decode, decode_rows

if TYPE_CHECKING:
    from fastvid_cli.settings import GenerationOptions


class DecoderChoice:
    """The decoders of one model and the choice between them."""

    def __init__(self, model):
        self.model = model
        # The graph decoders, made on first use: "fused" (fast_decode.FusedDecoder: Qwen2/Qwen3 LLMs), "fused-rows"
        # (fast_decode.FusedRowsDecoder: the same, B answers at once) and "static" (decoding.StaticDecoder: any
        # other model); `broken` says why one is not used any more, once it failed.
        self.decoders: dict[str, Any] = {}
        self.broken: dict[str, str] = {}

    def decode(self, logits: torch.Tensor, cache, next_position: torch.Tensor, gen: GenerationOptions, *,
               cuda: bool, on_token=None, stop: threading.Event | None = None,
               notes: list[str] | None = None) -> DecodeResult:
        """Decode after a prefill into `cache`. When `gen.compile` asks for it (default: on CUDA, i.e. `cuda`):
        Qwen2/Qwen3 dense LLMs (LLaVA-OV, Qwen2/2.5/3-VL) through the fused CUDA-graph step, other models through the
        CUDA-graph StaticDecoder; else the eager loop, which is also the one used when `gen.margins` asks for logit
        margins. A failure falls back to eager (noted in `notes`), and that decoder is not tried again."""
        notes = notes if notes is not None else []
        if gen.margins and gen.compile is not False:  # only the eager loop measures margins
            if gen.compile:
                notes.append("--compile: logit margins are measured by the eager loop; decoded eagerly")
            gen = dataclasses.replace(gen, compile=False)
        kind, why = self._graph_decoder(cache, gen, cuda) if gen.compile is not False else (None, None)
        if kind is not None:
            return self._decode_graphed(kind, logits, cache, next_position, gen, on_token, stop, notes)
        if why and gen.compile:
            notes.append(f"--compile: {why}; decoded eagerly")
        return decode(self.model, logits, cache, next_position, gen.sampling(), on_token=on_token, stop=stop)

    def _graph_decoder(self, cache, gen: GenerationOptions, cuda: bool) -> tuple[str | None, str | None]:
        """("fused" | "static", None) when a graph decoder can take this answer, else (None, why not)."""
        why = ("--compile needs a CUDA device" if not cuda else
               self.broken.get("static") or StaticDecoder.unsupported(self.model, cache))
        fused = why is None and "fused" not in self.broken and (
            self.decoders.get("fused") is not None or fast_decode.unsupported(self.model) is None)
        if why is None and not fused and cache_length(cache) + gen.max_new_tokens > StaticDecoder.MAX_TOKENS:
            why = (f"prompt + answer longer than {StaticDecoder.MAX_TOKENS} tokens (the graph attends over its "
                   "whole static buffer every step, slower than eager decoding at that length)")
        if why is not None:
            return None, why
        return ("fused" if fused else "static"), None

    def _decode_graphed(self, kind: str, logits: torch.Tensor, cache, next_position: torch.Tensor,
                        gen: GenerationOptions, on_token, stop: threading.Event | None,
                        notes: list[str]) -> DecodeResult:
        fused = kind == "fused"
        decoder = self.decoders.get(kind)
        if decoder is None:
            decoder = fast_decode.FusedDecoder(self.model) if fused else StaticDecoder(self.model)
            self.decoders[kind] = decoder
        res = decoder.decode(self.model, logits, cache, next_position, gen.sampling(), on_token=on_token, stop=stop)
        if res.fallback:
            self.decoders[kind] = None
            what = "fused decode step failed" if fused else "CUDA-graph capture failed"
            self.broken[kind] = f"{what} ({res.fallback})"
            notes.append(f"--compile: {self.broken[kind]}; decoded eagerly")
        return res

    def decode_rows(self, pre: RowsPrefill, gen: GenerationOptions, *, cuda: bool, on_token=None,
                    stops: list[threading.Event | None] | None = None,
                    notes: list[str] | None = None) -> list[DecodeResult]:
        """Decode the B rows of a batched prefill (decoding.prefill_rows) together, each with `gen`'s sampling.
        The same rules as `decode`: where it would take the fused step, the rows go through the fused B-row step
        (CUDA graphs per row bucket and span); margins, other models (no batched StaticDecoder), a CPU, or
        `gen.compile` False take the eager batched loop. A failure falls back to the eager batched loop (noted in
        `notes`), and that decoder is not tried again."""
        notes = notes if notes is not None else []
        samplings = [gen.sampling()] * pre.rows
        if gen.margins and gen.compile is not False:  # only the eager loop measures margins
            if gen.compile:
                notes.append("--compile: logit margins are measured by the eager loop; decoded eagerly")
            gen = dataclasses.replace(gen, compile=False)
        kind, why = self._graph_decoder(pre.cache, gen, cuda) if gen.compile is not False else (None, None)
        if kind == "fused" and "fused-rows" in self.broken:
            kind, why = None, self.broken["fused-rows"]
        elif kind == "static":
            kind, why = None, "the batched graph step needs a Qwen2/Qwen3 dense LLM"
        if kind is None:
            if why and gen.compile:
                notes.append(f"--compile: {why}; decoded with the eager batched loop")
            return decode_rows(self.model, pre, samplings, on_token=on_token, stops=stops)
        decoder = self.decoders.get("fused-rows")
        if decoder is None:
            decoder = self.decoders["fused-rows"] = fast_decode.FusedRowsDecoder(self.model)
        results = decoder.decode(self.model, pre, samplings, on_token=on_token, stops=stops)
        if results[0].fallback:
            self.decoders["fused-rows"] = None
            self.broken["fused-rows"] = f"batched fused decode step failed ({results[0].fallback})"
            notes.append(f"--compile: {self.broken['fused-rows']}; decoded with the eager batched loop")
        return results
