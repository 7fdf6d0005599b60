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

from fastvid_cli import pruning
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning import REGISTRY
from fastvid_cli.server.errors import ApiError, bad_request
from fastvid_cli.server.protocol import MAX_FRAMES, ChatRequest, number

EXTENSION = "fastvid"  # the request's own object of fastvid settings (beside the OpenAI fields); errors name it
SWITCHES = ("baseline", "margins", "compile", "cache")
SAMPLING = ("method", "ratio", "frames", "fps", "select", "candidates", "select_for")


@dataclass
class Defaults:
    """The server's own defaults (`fastvid serve` flags), used for whatever a request does not say."""

    method: str = pruning.DEFAULT_METHOD
    ratio: float | None = None
    frames: int | None = None
    fps: float | None = None
    # the method options given on the command line, by parameter name ({"tau": 0.8, "inner": (18, 0.5)}); a
    # request's method takes those that are its own
    params: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    compile: bool | None = None
    # --select K on the server: every request chooses K frames unless it says otherwise (settings.SelectOptions)
    select: Any = None
    # the server's frame selector (--selector; None: the model's own, else SigLIP so400m); requests cannot name one
    selector: str | None = None


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
    select: Any = None  # settings.SelectOptions: K frames chosen for the conversation's opening question
    select_for: str | None = None  # the text the frames are chosen for, when not that question (eval: the bare one)


def _params_of(method: str, family: str | None) -> list[pruning.Param]:
    spec = pruning.spec_of(method)
    return list(spec.all_params() if family is None else spec.params_for(family))


def method_params(method: str, family: dict[str, Any]) -> list[str]:
    """The parameter names a request may set for `method` on a model of this family (its registry entry)."""
    return [p.name for p in _params_of(method, family.get("method_family"))]


def every_param() -> list[str]:
    """Every parameter name of a registered method (on some family)."""
    return sorted({p.name for p in pruning.options()})


def param_value(name: str, value: Any, where: str, methods: list[str] | None = None,
                family: str | None = None) -> Any:
    """A request's value of the method parameter `name`, checked as the command line checks its option (type,
    range, structured text), or a 400 naming `where`."""
    found = [p for m in methods or [] for p in _params_of(m, family) if p.name == name]
    found = found or [p for p in pruning.options() if p.name == name]
    if not found:
        raise bad_request(f"unknown method parameter '{name}' (known: {', '.join(every_param())})", where,
                          "unknown_parameter")
    param = found[0]
    if param.parse:
        try:
            return param.convert(value)
        except InvalidOptionError as e:
            raise bad_request(f"'{where}': {e.one_line()}", where, "invalid_value") from None
    if param.type is str:
        if not isinstance(value, str):
            raise bad_request(f"'{where}' must be a string (got {value!r})", where, "invalid_value")
        return value
    return number(value, where, integer=param.type is int, low=param.min, high=param.max)


def resolve_method_params(methods: list[str], family: str | None, given: dict[str, Any], where: str) -> None:
    """Every given parameter must be taken by one of `methods` on `family` (pruning.check_options); a 400 saying
    where it applies otherwise."""
    try:
        pruning.check_options(methods, family, given)
    except InvalidOptionError as e:
        key = next(iter(given), "")
        raise bad_request(e.one_line(), f"{where}.{key}" if key else where, "unknown_parameter") from None


def resolve(ext: dict[str, Any], defaults: Defaults, family: dict[str, Any]) -> Resolved:
    """The settings of one request. `family`: the loaded model's defaults (Engine.defaults; its
    "method_family" names the registry's family)."""
    method = ext.get("method", defaults.method)
    if not isinstance(method, str) or method not in REGISTRY:
        raise bad_request(f"'fastvid.method' must be one of {', '.join(REGISTRY)} (got {method!r})",
                          "fastvid.method", "invalid_value")
    fam = family.get("method_family")
    own = method_params(method, family)
    every = every_param()
    for key in ext:
        if key in SAMPLING or key in SWITCHES or key in own:
            continue
        if key in every:
            raise bad_request(f"'{EXTENSION}.{key}' does not apply to method {method} on this model (its "
                              f"parameters: {', '.join(own) or 'none'})", f"{EXTENSION}.{key}", "unknown_parameter")
        raise bad_request(f"unknown key '{key}' in '{EXTENSION}' (known: {', '.join(SAMPLING + SWITCHES)}, and the "
                          f"methods' parameters {', '.join(every)})", f"{EXTENSION}.{key}", "unknown_parameter")
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
    select = select_of(ext, defaults, frames, fps)
    if select is not None:
        frames, fps = None, None
    elif frames is None and fps is None:
        frames, fps = defaults.frames, defaults.fps
    # as `ask`: the request's parameters, else the server's flags, else the family's defaults (resolve_params)
    given = {k: v for k, v in defaults.params.items() if k in own}
    given.update({k: param_value(k, ext[k], f"fastvid.{k}", [method], fam) for k in own if k in ext})
    resolve_method_params([method], fam, given, EXTENSION)
    try:
        params = pruning.resolve_params(method, fam, given)
    except InvalidOptionError as e:
        raise bad_request(e.one_line(), EXTENSION, "invalid_value") from None
    out = Resolved(frames=frames, fps=fps, method=method,
                   ratio=pruning.ratio_for(method, ratio or defaults.ratio or None, family["ratio"]),
                   params=params, compile=defaults.compile, select=select, select_for=select_text(ext, select))
    for key in SWITCHES:
        if key in ext:
            v = ext[key]
            if not (isinstance(v, bool) or (key == "compile" and v is None)):
                raise bad_request(f"'fastvid.{key}' must be true or false", f"fastvid.{key}", "invalid_value")
            setattr(out, key, v)
    return out


MAX_SELECT_TEXT = 4000


def select_text(ext: dict[str, Any], select) -> str | None:
    """`fastvid.select_for`: the text the K frames are chosen for instead of the conversation's opening question
    (`fastvid eval --server` sends the bare question, as a local eval scores it, while the message holds the whole
    multiple-choice prompt). Only with a selection; a non-empty string."""
    text = ext.get("select_for")
    if text is None:
        return None
    if select is None:
        raise bad_request("'fastvid.select_for' goes with a frame selection ('fastvid.select')", "fastvid.select_for",
                          "invalid_value")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_SELECT_TEXT:
        raise bad_request(f"'fastvid.select_for' must be a non-empty string of at most {MAX_SELECT_TEXT} characters",
                          "fastvid.select_for", "invalid_value")
    return text


def select_of(ext: dict[str, Any], defaults: Defaults, frames: int | None, fps: float | None):
    """A request's frame selection: `fastvid.select` K (null or 0: none) with `fastvid.candidates` M, scored by the
    server's selector; else the server's --select, unless the request asks for frames or a rate."""
    from fastvid_cli.settings import MAX_CANDIDATES, MAX_SELECT, SelectOptions

    if "select" not in ext:
        if "candidates" in ext:
            raise bad_request("'fastvid.candidates' goes with 'fastvid.select'", "fastvid.candidates",
                              "invalid_value")
        return defaults.select if frames is None and fps is None else None
    k = ext["select"]
    if k is None or k == 0:
        return None
    k = int(number(k, "fastvid.select", low=1, high=MAX_SELECT, integer=True))
    if frames is not None or fps is not None:
        raise bad_request("'fastvid.select' chooses the frames; it excludes 'fastvid.frames' and 'fastvid.fps'",
                          "fastvid.select", "invalid_value")
    m = ext.get("candidates")
    if m is not None:
        m = int(number(m, "fastvid.candidates", low=k, high=MAX_CANDIDATES, integer=True))
    return SelectOptions(k=k, candidates=m, selector=defaults.selector)


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
