"""What a request asks for, resolved against the server's defaults: frames, pruning and generation settings.

The `fastvid` extension object of a chat request holds the pruning settings (`method`, `ratio`, `frames`,
`fps`, the method's own parameters as named in the method registry, `inner` for HoliTom's LLM stage) and a few
switches (`baseline`, `margins`, `compile`, `cache`). Whatever a request leaves out comes from the server's
command-line flags, and then from the model family's defaults, exactly as `fastvid ask` resolves its options,
so the same request settings give the same answer as the same `ask` options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastvid_cli.pruning import REGISTRY
from fastvid_cli.server.errors import ApiError, bad_request
from fastvid_cli.server.protocol import MAX_FRAMES, ChatRequest, number

SWITCHES = ("baseline", "margins", "compile", "cache")
SAMPLING = ("method", "ratio", "frames", "fps")
FASTVID_FAMILY_PARAMS = ("c", "tau", "d", "p", "beta", "ignore")  # the family defaults `ask` fills in for fastvid
# Bounds of the registry's parameters (the CLI's --dyseg-c / --stprune-d / ... ranges); others: any finite number.
BOUNDS: dict[str, dict[str, Any]] = {
    "c": dict(low=1), "p": dict(low=1), "k": dict(low=1), "max_window": dict(low=1), "seed": dict(low=0),
    "d": dict(low=0, high=1), "beta": dict(low=0, high=1), "ignore": dict(low=0, high=1),
}


@dataclass
class Defaults:
    """The server's own defaults (`fastvid serve` flags), used for whatever a request does not say."""

    method: str = "fastvid"
    ratio: float | None = None
    frames: int | None = None
    fps: float | None = None
    params: dict[str, Any] = field(default_factory=dict)  # fastvid parameters given on the command line
    inner: tuple[int, float] | None = None  # --holitom-inner
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    compile: bool | None = None


@dataclass
class Resolved:
    frames: int | None
    fps: float | None
    method: str
    ratio: float
    params: dict[str, Any]
    baseline: bool = False
    margins: bool = False
    compile: bool | None = None
    cache: bool = True


def method_params(method: str, family: dict[str, Any]) -> list[str]:
    """The parameter names a request may set for `method` on a model of this family."""
    names = [k for k in REGISTRY[method].defaults if k not in ("ratio", "positions")]
    if method == "fastvid" and "ignore" in family:
        names.append("ignore")
    if method.startswith("holitom"):
        names.append("inner")
    return names


def _param_value(name: str, value: Any, default: Any, where: str) -> Any:
    if name == "inner":
        from fastvid_cli.errors import InvalidOptionError
        from fastvid_cli.inner_merge import parse_inner

        text = ",".join(str(v) for v in value) if isinstance(value, list) else value
        try:
            return parse_inner(text)
        except InvalidOptionError as e:
            raise bad_request(f"'{where}': {e.one_line()}", where, "invalid_value") from None
    integer = isinstance(default, int) and not isinstance(default, bool)
    return number(value, where, integer=integer, **BOUNDS.get(name, {}))


def resolve(ext: dict[str, Any], defaults: Defaults, family: dict[str, Any]) -> Resolved:
    """The settings of one request. `family`: the loaded model's defaults (Engine.defaults)."""
    method = ext.get("method", defaults.method)
    if not isinstance(method, str) or method not in REGISTRY:
        raise bad_request(f"'fastvid.method' must be one of {', '.join(REGISTRY)} (got {method!r})",
                          "fastvid.method", "invalid_value")
    own = method_params(method, family)
    every = sorted({p for m in REGISTRY for p in method_params(m, family)})
    for key in ext:
        if key in SAMPLING or key in SWITCHES or key in own:
            continue
        if key in every:
            raise bad_request(f"'fastvid.{key}' does not apply to method {method} (its parameters: "
                              f"{', '.join(own) or 'none'})", f"fastvid.{key}", "unknown_parameter")
        raise bad_request(f"unknown key '{key}' in 'fastvid' (known: {', '.join(SAMPLING + SWITCHES)}, and the "
                          f"methods' parameters {', '.join(every)})", f"fastvid.{key}", "unknown_parameter")
    ratio = ext.get("ratio")
    if ratio is not None:
        ratio = float(number(ratio, "fastvid.ratio", low=0, high=1, low_open=True))
    frames, fps = ext.get("frames"), ext.get("fps")
    if frames is not None:
        frames = int(number(frames, "fastvid.frames", low=1, high=MAX_FRAMES, integer=True))
    if fps is not None:
        fps = float(number(fps, "fastvid.fps", low=0, low_open=True))
    if frames is not None and fps is not None:
        raise bad_request("'fastvid.frames' and 'fastvid.fps' exclude each other", "fastvid.fps", "invalid_value")
    if frames is None and fps is None:
        frames, fps = defaults.frames, defaults.fps
    given = {k: _param_value(k, ext[k], REGISTRY[method].defaults.get(k), f"fastvid.{k}") for k in own if k in ext}
    if method == "fastvid":  # as `ask`: the family's FastVID defaults, then the server's flags, then the request
        params = {k: family[k] for k in FASTVID_FAMILY_PARAMS if k in family}
        params.update({k: v for k, v in defaults.params.items() if k in family or k in own})
        params.update(given)
    else:
        params = dict(given)
        if method.startswith("holitom") and "inner" not in params and defaults.inner:
            params["inner"] = defaults.inner
    out = Resolved(frames=frames, fps=fps, method=method,
                   ratio=1.0 if method == "none" else (ratio or defaults.ratio or float(family["ratio"])),
                   params=params, compile=defaults.compile)
    for key in SWITCHES:
        if key in ext:
            v = ext[key]
            if not (isinstance(v, bool) or (key == "compile" and v is None)):
                raise bad_request(f"'fastvid.{key}' must be true or false", f"fastvid.{key}", "invalid_value")
            setattr(out, key, v)
    return out


def generation(req: ChatRequest, defaults: Defaults, settings: Resolved):
    """The GenerationOptions of a chat request: its own fields, else the server's flags."""
    from fastvid_cli.engine import GenerationOptions

    system = req.turns.system if req.turns.system is not None else defaults.system
    gen = GenerationOptions(
        max_new_tokens=req.max_tokens if req.max_tokens is not None else defaults.max_new_tokens,
        temperature=req.temperature if req.temperature is not None else defaults.temperature,
        top_p=req.top_p if req.top_p is not None else defaults.top_p,
        seed=req.seed if req.seed is not None else defaults.seed,
        system=system, compile=settings.compile, margins=settings.margins)
    try:
        gen.validate()
    except Exception as e:  # InvalidOptionError: top_p and temperature are checked by parse_chat already
        raise ApiError(400, str(e), code="invalid_value") from None
    return gen
