"""What `fastvid batch` was asked (BatchConfig) and the settings each row is answered with, resolved before any
model loads: the family's defaults are read from the checkpoint's config.json, every answer-affecting setting
goes into a row's settings, and their fingerprint (journal.fingerprint) says whether the output already answers
the row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fastvid_cli.batch.rows import Row, read_questions
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.journal import fingerprint
from fastvid_cli.models import ModelRef
from fastvid_cli.pruning import DEFAULT_METHOD, spec_of
from fastvid_cli.runs import ModelOptions



@dataclass
class BatchConfig(ModelOptions):
    """Everything `fastvid batch` was asked to do (command-line values; None = the model family's default),
    with the model options (model, threads, device, dtype, attn_implementation, saliency_model) of ModelOptions."""

    questions: Path
    output: Path
    csv_out: Path | None = None
    frames: int | None = None
    fps: float | None = None  # Qwen-VL families: sampling rate (exclusive with frames)
    method: str = DEFAULT_METHOD
    ratio: float | None = None
    # the method options given on the command line, by flag ("--dyseg-tau") or parameter name ("tau")
    params: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    compile: bool | None = None  # CUDA-graph decode (None: on where CUDA runs); not in the fingerprint: same tokens
    # greedy rows of one video decoded together (1: one at a time; same answers); None: auto (AUTO_ANSWER_BATCH)
    answer_batch: int | None = None
    cache_dir: Path | None = None  # on-disk feature cache (feature_cache.FeatureCache); None: none. Not fingerprinted
    holitom_inner: str | None = None  # "K,R": HoliTom's inner-LLM stage (holitom methods only)
    retry_errors: bool = False
    overwrite: bool = False
    # --select K: frames chosen per row (settings.SelectOptions); in the fingerprint ("select") only when given
    select: Any = None

    def generation(self):
        from fastvid_cli.settings import GenerationOptions

        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 top_p=self.top_p, seed=self.seed, system=self.system, compile=self.compile)


class ModelSettings(NamedTuple):
    """The model side of a run's settings, known before any weights load."""

    ref: ModelRef  # the model as resolved: hub id or folder (what fingerprints hold), and the alias given
    dtype: str  # the name of the dtype the weights run in, e.g. "float32"
    defaults: dict[str, Any]  # the family's defaults: frames (or fps), ratio, c, tau, d, p, beta, ...


def model_settings(cfg: ModelOptions, engine=None) -> ModelSettings:
    """The model of `cfg` resolved and --device, --dtype and --attn-implementation checked (no torch needed for
    that), then the dtype and the family's defaults: the loaded `engine`'s, else from the checkpoint's config.json
    (torch is imported only then, after every cheap check). Used by `batch` and `eval` alike."""
    from fastvid_cli.models import check_attn_implementation, check_device_name, check_dtype_name, resolve_model

    ref = getattr(engine, "ref", None) or resolve_model(cfg.model)  # a server's engine knows its model
    check_device_name(cfg.device)
    check_dtype_name(cfg.dtype)
    check_attn_implementation(cfg.attn_implementation)
    if engine is not None:
        return ModelSettings(ref, str(engine.dtype).replace("torch.", ""), dict(engine.defaults))
    from fastvid_cli.models.loading import dtype_name, resolve_device, resolve_dtype
    from fastvid_cli.settings import family_defaults

    return ModelSettings(ref, dtype_name(resolve_dtype(cfg.dtype, resolve_device(cfg.device))),
                         family_defaults(cfg.model))


def base_settings(cfg: BatchConfig, defaults: dict[str, Any], dtype_name: str,
                  source: str | None = None) -> dict[str, Any]:
    """The answer-affecting settings of the command line, resolved (aliases to hub ids, folders to absolute
    paths, family defaults filled in). Rows then override frames and ratio. `source`: the model's resolved
    source when already known (a server's model, which may be a folder only the server has)."""
    from fastvid_cli.models import resolve_model
    from fastvid_cli.pruning import check_options, ratio_for, resolve_params
    from fastvid_cli.settings import sampling_settings

    family = defaults.get("method_family")  # None: the registry's default family
    check_options([cfg.method], family, cfg.params)
    params = resolve_params(cfg.method, family, cfg.params)
    frames, fps = sampling_settings(cfg.model, cfg.frames, cfg.fps, defaults)  # fps: families sampling by rate
    rate = {"fps": fps} if fps is not None else {}
    if cfg.select is not None:  # K chosen frames per row; only these settings carry "select"
        frames, rate = cfg.select.k, {"select": cfg.select.key()}
    return rate | {
        "model": source or resolve_model(cfg.model).source,
        "dtype": dtype_name,
        "method": cfg.method,
        "ratio": ratio_for(cfg.method, cfg.ratio, defaults["ratio"]),
        "frames": frames,  # None: sampled by rate
        "params": {k: params[k] for k in sorted(params)},
        "saliency_model": _saliency_setting(cfg.saliency_model) if spec_of(cfg.method).uses_saliency else None,
        "max_new_tokens": int(cfg.max_new_tokens),
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
        "seed": cfg.seed,
        "system": cfg.system,
    }


def _saliency_setting(saliency_model: str | None) -> str:
    from fastvid_cli.models.siglip_head import DEFAULT_SALIENCY_MODEL

    if not saliency_model:
        return DEFAULT_SALIENCY_MODEL
    p = Path(saliency_model).expanduser()
    return str(p.resolve()) if p.exists() else saliency_model


def row_settings(row: Row, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with the row's frames/ratio overrides. An invalid cell enters as its text, so fixing it in the
    CSV changes the fingerprint and the row is answered again."""
    s = dict(base)
    if row.frames is not None or row.raw_frames is not None:
        s.pop("fps", None)  # a frame count replaces a rate
    if row.frames is not None:
        s["frames"] = row.frames
    elif row.raw_frames is not None:
        s["frames"] = row.raw_frames
    if not spec_of(base["method"]).keeps_all:  # a row's ratio applies to every method that prunes
        if row.ratio is not None:
            s["ratio"] = float(row.ratio)
        elif row.raw_ratio is not None:
            s["ratio"] = row.raw_ratio
    return s


def validate_config(cfg: BatchConfig) -> None:
    """Option checks that need no model (exit 2 on failure)."""
    from fastvid_cli.pruning import check_options, method_names

    if cfg.method not in method_names():
        raise InvalidOptionError(f"--method must be one of {', '.join(method_names())} (got '{cfg.method}')")
    check_options([cfg.method], None, cfg.params)  # on any family: the model's, once known (base_settings)
    if cfg.ratio is not None and (math.isnan(cfg.ratio) or not 0 < cfg.ratio <= 1):
        raise InvalidOptionError(f"--ratio must be in (0, 1] (got {cfg.ratio})")
    cfg.generation().validate()
    if cfg.select is not None:
        cfg.select.validate()
        if cfg.frames is not None or cfg.fps is not None:
            raise InvalidOptionError("--select K chooses the frames; it excludes --frames and --fps")
    out = Path(cfg.output)
    if out.is_dir():
        raise InvalidOptionError(f"--output {out} is a folder; give a file name, e.g. answers.jsonl")
    if not out.parent.is_dir():
        raise InvalidOptionError(f"--output {out}: folder {out.parent} does not exist")
    if cfg.csv_out is not None:
        co = Path(cfg.csv_out)
        if co.is_dir() or not co.parent.is_dir():
            raise InvalidOptionError(f"--csv-out {co}: not a writable file path")
        if co.resolve() in (out.resolve(), Path(cfg.questions).resolve()):
            raise InvalidOptionError("--csv-out must differ from the questions file and --output")
    if out.resolve() == Path(cfg.questions).resolve():
        raise InvalidOptionError("--output must differ from the questions file")


@dataclass
class Plan:
    """The validated questions and the resolved settings of each row (nothing written, no model loaded)."""

    rows: list[Row]
    base: dict[str, Any]
    settings: dict[int, dict[str, Any]]  # row number -> settings
    fps: dict[int, str]  # row number -> fingerprint
    model_name: str = ""  # what records call the model: the alias as given (ok records: Engine.model_name)


def make_plan(cfg: BatchConfig, engine=None) -> Plan:
    """Everything that can fail on a bad option or a bad CSV fails here, before anything is written or loaded."""
    validate_config(cfg)
    rows = read_questions(cfg.questions)
    ref, dtype_label, defaults = model_settings(cfg, engine)
    base = base_settings(cfg, defaults, dtype_label, ref.source)
    settings = {r.row: row_settings(r, base) for r in rows}
    return Plan(rows, base, settings, {n: fingerprint(x) for n, x in settings.items()}, ref.display)

