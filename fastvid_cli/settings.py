"""What a user asks of a run, as plain data checked without torch: generation and pruning options.

The CLI, batch and eval build and validate these before anything heavy is imported, so a bad option fails at once;
the engine takes them as they are (`fastvid_cli.engine` re-exports both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastvid_cli.errors import InvalidOptionError


@dataclass
class GenerationOptions:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    # Static KV cache + CUDA-graph decode step. None: on wherever it can run (CUDA), True: on and say so when it
    # cannot, False: the eager loop.
    compile: bool | None = None
    # Measure each answer token's logit margin (chosen minus runner-up, Report.logit_margins). Decodes eagerly.
    margins: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidOptionError(f"--max-new-tokens must be >= 1 (got {self.max_new_tokens})")
        if not (self.temperature >= 0):
            raise InvalidOptionError(f"--temperature must be >= 0 (got {self.temperature})")
        if not (0 < self.top_p <= 1):
            raise InvalidOptionError(f"--top-p must be in (0, 1] (got {self.top_p})")

    def sampling(self):
        """The decode loop's view of these options (decoding.Sampling)."""
        from fastvid_cli.decoding import Sampling

        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        seed=self.seed, margins=self.margins)


@dataclass
class PruneOptions:
    method: str = "fastvid"
    ratio: float = 0.10
    params: dict[str, Any] = field(default_factory=dict)  # c, tau, d, p, beta, ...
