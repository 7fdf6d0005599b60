"""What a user asks of a run, and what it comes to for a model before the model loads. Torch-free.

Options as plain data: generation and pruning options. The CLI, batch and eval build and validate these before
anything heavy is imported, so a bad option fails at once; the engine takes them as they are
(`fastvid_cli.engine` re-exports both).

Run settings of a model, resolved here and nowhere else: the family of a model name (`model_family`), its
defaults without loading it (`family_defaults`), what to sample of a video (`frame_request` for the sampler,
`sampling_settings` for batch/eval records). The rules themselves belong to the families (`FamilyAdapter.
frame_plan`, `fastvid_cli.models.sampling`); this module applies them to a model name and its alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.models import ALIASES, FAMILIES, adapter_class, checkpoint_family, resolve_model
from fastvid_cli.models.sampling import UNIFORM_FRAMES, check_request, uniform_count

if TYPE_CHECKING:
    from fastvid_cli.models.sampling import SamplePlan
from fastvid_cli.pruning import DEFAULT_METHOD


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
    method: str = DEFAULT_METHOD
    ratio: float = 0.10
    # the method's parameters (pruning.resolve_params), those of its LLM stage included: c, tau, …, inner
    params: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ run settings of a model
def model_family(model: str) -> str | None:
    """The family (config.json's model_type) of an alias, folder or hub id, without importing transformers; None
    when it cannot be told (the model load then reports why)."""
    alias = ALIASES.get(model.strip())
    if alias is not None:
        return alias.family
    try:
        return checkpoint_family(resolve_model(model))
    except Exception:  # unknown name, no network, unreadable file: not ours to report here
        return None


def family_defaults(model: str) -> dict[str, Any]:
    """The model family's defaults (frames or fps, method, ratio, pruning parameters) from the checkpoint's
    config.json alone, so that batch and eval plan, and resume, without loading any weights. A config that cannot
    be read, or a family we do not support, is an error here (Engine.load checks the same again when it loads)."""
    from fastvid_cli import pruning

    ref = resolve_model(model)
    adapter = adapter_class(checkpoint_family(ref), ref.display)
    return {**adapter.defaults, **pruning.family_defaults(adapter.method_family)}


def frame_request(model: str, frames: int | None = None, fps: float | None = None) -> int | SamplePlan:
    """What to sample of a video for `model` before it loads, as `video.sample_frames` takes it: a frame count
    (uniform frames: `frames`, else the alias's default, else the family's), or the family's own plan (Qwen-VL:
    --fps, default 2, or --frames N). A model whose family cannot be told yet gets a count; its load then says why."""
    alias = ALIASES.get(model.strip())
    if not frames and fps is None and alias is not None and alias.frames:
        frames = alias.frames
    family = model_family(model)
    if family not in FAMILIES:
        return uniform_count(frames, fps, UNIFORM_FRAMES)
    return adapter_class(family).frame_plan(frames, fps)


def sampling_settings(model: str, frames: int | None, fps: float | None,
                      defaults: dict[str, Any]) -> tuple[int | None, float | None]:
    """What a run samples of each video, as batch and eval records hold it: (frame count, None), or (None, rate)
    for a family that samples by rate (its `defaults` have `fps`) when no count is given. The count: `frames`,
    else the alias's default, else the family's. Checked like `frame_request`."""
    check_request(frames, fps, by_rate="fps" in defaults)
    if not frames:
        alias = ALIASES.get(model.strip())
        frames = (alias.frames if alias is not None else None) or defaults["frames"]
    if frames:
        return int(frames), None
    return None, float(fps or defaults["fps"])


# ------------------------------------------------------------------------------------------ --select
# --select K: K frames chosen for the question among M sampled candidates (fastvid_cli.selection).
MAX_SELECT = 256
MAX_CANDIDATES = 1024
CANDIDATES_PER_FRAME = 4  # default M: 4*K ...
CANDIDATE_FPS = 1.0  # ... or one candidate per second when that is more (BOLT scores frames at 1 fps) ...
DEFAULT_CANDIDATE_CAP = 256  # ... but at most this many (a one-hour video would otherwise decode 3600 frames)


@dataclass(frozen=True)
class SelectOptions:
    """`--select K [--candidates M] [--selector MODEL]`: what to choose frames with. Torch-free."""

    k: int
    candidates: int | None = None
    selector: str | None = None
    power: float = 3.0  # BOLT's sharpening power (selection.DEFAULT_POWER)

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_SELECT:
            raise InvalidOptionError(f"--select must be a whole number from 1 to {MAX_SELECT} (got {self.k})")
        m = self.candidates
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not self.k <= m <= MAX_CANDIDATES):
            raise InvalidOptionError(f"--candidates must be from --select ({self.k}) to {MAX_CANDIDATES} (got {m})")
        if self.selector is not None and not self.selector.strip():
            raise InvalidOptionError("--selector is empty")

    def count(self, total: int, video_fps: float | None) -> int:
        """Candidates to sample of a video of `total` frames at `video_fps`: --candidates, else max(4*K, one per
        second) capped at DEFAULT_CANDIDATE_CAP (never below K); never more than the video has."""
        if self.candidates:
            m = self.candidates
        else:
            seconds = total / video_fps if video_fps and video_fps > 0 else 0.0
            per_second = int(-(-seconds * CANDIDATE_FPS // 1))  # ceil
            m = max(self.k, min(max(CANDIDATES_PER_FRAME * self.k, per_second), DEFAULT_CANDIDATE_CAP))
        return max(1, min(m, total))

    def __call__(self, total: int, video_fps: float | None) -> list[int]:
        """The candidates' frame indices (a video.IndexPlan): uniform, as `video.sample_indices` picks them."""
        import numpy as np

        return np.linspace(0, total - 1, self.count(total, video_fps), dtype=int).tolist()

    def plan_key(self) -> dict[str, Any]:
        """What decides the candidate frames (for the candidate cache): --candidates, else K and the default rule."""
        if self.candidates:
            return {"plan": "select-uniform", "count": self.candidates}
        return {"plan": "select-uniform", "k": self.k, "per_frame": CANDIDATES_PER_FRAME, "fps": CANDIDATE_FPS,
                "cap": DEFAULT_CANDIDATE_CAP}

    def key(self) -> dict[str, Any]:
        """What the selection is, for fingerprints and records (the selector as given: None is the default)."""
        return {"k": self.k, "candidates": self.candidates, "selector": self.selector, "power": self.power,
                "rule": "bolt-its"}


def select_options(select: int | None, candidates: int | None, selector: str | None,
                   frames: int | None = None, fps: float | None = None) -> SelectOptions | None:
    """The --select options of a command, checked (None without --select; --candidates or --selector alone, or
    --select with --frames/--fps, is a usage error)."""
    if select is None:
        if candidates is not None or selector is not None:
            raise InvalidOptionError("--candidates and --selector go with --select K")
        return None
    if frames is not None or fps is not None:
        raise InvalidOptionError("--select K chooses the frames; it excludes --frames and --fps")
    opts = SelectOptions(k=select, candidates=candidates, selector=selector)
    opts.validate()
    return opts
