"""Video-token pruning methods: pure tensor code, each described by one entry of ``REGISTRY``.

Every method is a callable ``(embeds (F,N,D), saliency (F,N), frame_features (F,Dg), ratio, **params)
-> PruneResult`` living in its own module of this package. Its ``MethodSpec`` says everything the rest of fastvid
needs to know about it: where the function is and its defaults, its parameters with their command-line options and
help, whether it ranks tokens by the vision tower's attention, whether it re-indexes positions, what the summary
panel calls its segments, its optional stage inside the LLM prefill, and its variant on a model family (FastVID's
Qwen-VL variant). The commands, compare, batch, eval and the panel read the spec; none of them names a method.

Model families, as pruning sees them (``FAMILIES``): models whose adapters say the same ``method_family`` share
every method's variant and defaults.

Importing this package imports no torch: the CLI builds its options and checks ``--method`` and the method
options before anything heavy loads. The functions are imported on first use, or directly from their modules
(``from fastvid_cli.pruning.fastvid import fastvid``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidOptionError

PruneMethod = Callable[..., Any]  # -> pruning.result.PruneResult

# method family -> what people call its models. An adapter declares its family (``method_family``).
FAMILIES: dict[str, str] = {"llava": "LLaVA-OneVision", "qwen": "Qwen-VL"}
DEFAULT_FAMILY = "llava"  # a family no entry has a variant for runs the methods as they are
DEFAULT_METHOD = "fastvid"


def _load(target: str) -> Any:
    """'module:attr' inside this package -> the attribute."""
    module, attr = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


@dataclass(frozen=True)
class Param:
    """One parameter of a method that the user can set: a keyword argument of its function (or of its LLM stage),
    with the command-line option that sets it in every command."""

    name: str  # the keyword argument
    flag: str  # the command-line option, e.g. "--dyseg-tau"
    help: str  # the option's help; the defaults per family are added to it (option_help)
    type: type = float  # what the option's text is read as: int, float or str
    metavar: str = "X"
    min: float | None = None
    max: float | None = None
    parse: str | None = None  # "module:function" (value, option) -> the parameter's value, for structured text
    # When the option is not given: True fills in the family's default, which the run then records (the `params`
    # of ask --json, batch and eval settings); False leaves the function's own default, recorded only by eval.
    fill: bool = True
    stage: bool = False  # a parameter of the method's LLM stage (llm_stage), not of its function

    @property
    def dest(self) -> str:
        """The option's Python name (typer's parameter name): "--dyseg-tau" -> "dyseg_tau"."""
        return self.flag.lstrip("-").replace("-", "_")

    def convert(self, value: Any) -> Any:
        """The parameter's value for what the user gave (checked by `parse` where there is one)."""
        return _load(self.parse)(value, self.flag) if self.parse else value


@dataclass(frozen=True)
class Variant:
    """A method as it runs on one model family."""

    target: str | None = None  # "module:function"; None: the method's own function
    defaults: dict[str, Any] = field(default_factory=dict)  # overrides of the method's defaults on this family
    params: tuple[Param, ...] = ()  # parameters only this variant takes, after the method's own
    llm_stage: str | None = None  # its own LLM stage ("module:function"); None: the method's
    positions: str | None = None  # its own position layout ("original" | "compact"); None: the method's


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method (see the module doc)."""

    name: str
    target: str  # "module:function" inside this package
    defaults: dict[str, Any]  # ratio and every keyword argument's default (what eval records)
    fixed: dict[str, Any] = field(default_factory=dict)  # keyword arguments this entry always passes
    title: str = ""  # what people call it ("FastVID")
    summary: str = ""  # a few words for --method's help
    params: tuple[Param, ...] = ()  # what the user can set, in the order help and records list them
    needs_attention: bool = False  # gets `attn`: the mean attention each token receives in the last vision layer
    uses_saliency: bool = False  # what it keeps depends on the saliency source (--saliency-model)
    positions: str = "original"  # "original" or "compact": re-indexes the kept tokens' positions (1-D only)
    segments: tuple[str, str] | None = None  # the panel's (label, by what) of PruneResult.segments
    llm_stage: str | None = None  # "module:function" (stage params..., option) -> LLMStage, when one is set
    variants: dict[str, Variant] = field(default_factory=dict)  # method family -> how it runs there
    keeps_all: bool = False  # prunes nothing whatever the ratio (the unpruned reference): it always runs at 1.0

    @functools.cached_property
    def function(self) -> PruneMethod:
        """The method's own function (its variants: ``function_for``)."""
        return self._bind(self.target)

    def _bind(self, target: str) -> PruneMethod:
        fn = _load(target)
        return functools.partial(fn, **self.fixed) if self.fixed else fn

    def variant(self, family: str | None) -> Variant | None:
        return self.variants.get(family) if family else None

    def function_for(self, family: str | None) -> PruneMethod:
        v = self.variant(family)
        return self._bind(v.target) if v is not None and v.target else self.function

    def defaults_for(self, family: str | None) -> dict[str, Any]:
        v = self.variant(family)
        return {**self.defaults, **v.defaults} if v is not None else dict(self.defaults)

    def params_for(self, family: str | None) -> tuple[Param, ...]:
        v = self.variant(family)
        return self.params + v.params if v is not None else self.params

    def positions_for(self, family: str | None) -> str:
        """Where the method puts kept tokens on `family`: "original" positions or "compact" (re-indexed)."""
        v = self.variant(family)
        return v.positions if v is not None and v.positions else self.positions

    def stage_for(self, family: str | None) -> str | None:
        """The "module:function" of the method's LLM stage on `family`, if it has one."""
        v = self.variant(family)
        return v.llm_stage if v is not None and v.llm_stage else self.llm_stage

    def all_params(self) -> tuple[Param, ...]:
        """Every parameter of the method on any family."""
        seen = list(self.params)
        for v in self.variants.values():
            seen += [p for p in v.params if p not in seen]
        return tuple(seen)

    def families_of(self, param: Param) -> list[str] | None:
        """The families where the method takes `param`; None for all of them."""
        if param in self.params:
            return None
        return [f for f, v in self.variants.items() if param in v.params]


# ---------------------------------------------------------------------------------------------- the registry
HOLITOM_INNER = Param(
    "inner", "--holitom-inner", type=str, metavar="K,R", parse="holitom_inner:parse_inner", stage=True,
    help="HoliTom's inner-LLM stage (with --method holitom/holitom-orig): before LLM layer K, keep the share 1-R of "
         "the video tokens the last prompt token attends to most and merge the rest into them (the reference used "
         "18,0.5 on 7B). Each question then prefills alone (no shared video prefix) and decodes eagerly.")
HOLITOM = dict(needs_attention=True, segments=("windows", "HoliTom's DP"), llm_stage="holitom_inner:inner_stage",
               params=(HOLITOM_INNER,), title="HoliTom")

# FlashVID's LLaVA-OneVision settings (flashvid.FAMILY_VARIANTS["llava_onevision"], flashvid_inner.INNER_DEFAULTS;
# written out here because importing those modules imports torch; a test checks they agree)
FLASHVID_DEFAULTS = dict(ratio=0.10, expansion=1.25, alpha=0.7, temporal_threshold=0.8, segment_threshold=0.9,
                         min_segment_num=8, selection="attn_div_v2", positions="compact", duplicates="distinct",
                         seed=0, inner=(20, 0.3))
FLASHVID_PARAMS = (
    Param("expansion", "--flashvid-expansion", "FlashVID: pre-LLM budget per frame = ceil(N x ratio x expansion); "
          "1.25 balances the inner stage's defaults so that --ratio is the average over the LLM's layers",
          float, "E", min=0.0),
    Param("alpha", "--flashvid-alpha", "FlashVID: share of each frame's budget for ADTS (attention-diverse) tokens; "
          "the rest are tree-merged, clustered context tokens", float, "A", min=0.0, max=1.0),
    Param("temporal_threshold", "--flashvid-tau", "FlashVID TSTM: a token joins its most similar token of the "
          "previous frame above this cosine", float, "TAU", min=-1.0, max=1.0),
    Param("segment_threshold", "--flashvid-seg-threshold", "FlashVID DySeg: cut where adjacent frames' mean tokens "
          "have a cosine below this", float, "THETA"),
    Param("min_segment_num", "--flashvid-min-segments", "FlashVID DySeg: at least this many segments (also cutting "
          "at the lowest similarities)", int, "M", min=1),
    Param("selection", "--flashvid-selection", "FlashVID ADTS: attn_div_v2 (also weighted by relevance to the "
          "segment), attn_div, or the ablations attn and div", str, "NAME"),
    Param("seed", "--flashvid-seed", "FlashVID: seed of the DPC density noise (its only random numbers)", int, "N",
          min=0),
    Param("inner", "--flashvid-inner", "FlashVID's inner-LLM stage: before LLM layer K keep the share R of the "
          "video tokens the last prompt token attends to most at layer K-1, drop the rest; off: none (the "
          "expansion still applies: add --flashvid-expansion 1). Off by itself at ratio 1.0 and where K is not "
          "below the LLM's layers (the Qwen3-VL reference used 28,0.1). Each question then prefills alone (no "
          "shared video prefix)",
          str, "K,R", parse="flashvid_inner:parse_inner", stage=True),
)

# In registry order (the order --help, compare and eval list them). holitom's tau is left out of its defaults:
# it follows the ratio, as the reference scripts (holitom.default_tau).
REGISTRY: dict[str, MethodSpec] = {s.name: s for s in [
    MethodSpec(
        "fastvid", "fastvid:fastvid", dict(ratio=0.10, c=8, tau=0.9, d=0.4, p=4, beta=0.6, k=4), title="FastVID",
        summary="DySeg segments; per frame, salient tokens and density-merged context tokens",
        params=(Param("c", "--dyseg-c", "DySeg: minimum number of segments", int, "C", min=1),
                Param("tau", "--dyseg-tau", "DySeg: cut where adjacent-frame similarity < tau", float, "TAU"),
                Param("d", "--stprune-d", "Share of each frame's budget for merged context tokens", float, "D",
                      min=0.0, max=1.0),
                Param("p", "--dtm-p", "Anchor-frame period inside a segment", int, "P", min=1),
                Param("beta", "--dtm-beta", "Lower bound of the anchor's weight in a merge", float, "BETA",
                      min=0.0, max=1.0)),
        uses_saliency=True, segments=("segments", "DySeg"),
        # FastVID's Qwen2.5-VL evaluation settings (fastvid-spec.md §2.12-2.13): its Qwen variant, ratio 0.27
        # (≈0.24 actually kept), tau 0.84, near-duplicate threshold 0.95
        variants={"qwen": Variant("fastvid_qwen:fastvid_qwen", dict(ratio=0.27, tau=0.84, ignore=0.95), (
            Param("ignore", "--dyseg-ignore", "FastVID on Qwen-VL: in a segment, temporal patches this similar to "
                  "the next (>=) are near-duplicates and only the last of a run keeps tokens", float, "SIM",
                  min=0.0, max=1.0),))}),
    MethodSpec("none", "result:keep_all", dict(ratio=1.0), summary="every token", keeps_all=True),
    # baseline: average pooling to FastVID's per-frame budget
    MethodSpec("uniform", "uniform:uniform", dict(ratio=0.1), summary="per-frame average pooling to the same budget"),
    # baseline: seeded random tokens at FastVID's per-frame budget
    MethodSpec("random", "random_keep:random_keep", dict(ratio=0.1, seed=0), summary="seeded",
               # records from before --random-seed existed in ask and batch hold no seed: it is recorded when given
               params=(Param("seed", "--random-seed", "Seed of the random method", int, "N", min=0, fill=False),)),
    # HoliTom's outer stages (temporal windows + spatial merge), re-indexed positions
    MethodSpec("holitom", "holitom:holitom", dict(ratio=0.10, beta=0.6, k=7, max_window=1024, positions="compact"),
               summary="HoliTom's temporal windows + spatial merge, re-indexed positions", positions="compact",
               **HOLITOM),
    # the same tokens kept at their original slots and positions (FastVID-style): a model that was never shown
    # re-indexed video tokens reads these correctly (benchmarks/RESULTS.md, the demo model's count questions)
    MethodSpec("holitom-orig", "holitom:holitom", dict(ratio=0.10, beta=0.6, k=7, max_window=1024,
                                                      positions="original"), fixed=dict(positions="original"),
               summary="the same, kept tokens at their original positions", **HOLITOM),
    # VidCom2 (EMNLP 2025; vidcom2-spec Part A): the reference lays LLaVA-OneVision's kept tokens out contiguously,
    # Qwen-VL keeps the original M-RoPE columns (spec A3)
    MethodSpec("vidcom2", "vidcom2:vidcom2", dict(ratio=0.25, variant="authors", positions="compact"),
               title="VidCom2", positions="compact",
               summary="frame budgets by frame uniqueness, tokens by multi-scale Gaussian distinctiveness",
               params=(Param("variant", "--vidcom2-variant", "VidCom2: authors (the paper's code) or vllm (vLLM's "
                             "exact-count variant)", str, "NAME"),),
               variants={"qwen": Variant(None, dict(positions="original"), positions="original")}),
    # EVS (vLLM's --video-pruning-method evs; spec Part B): frame 0 whole, then the most changed tokens overall
    MethodSpec("evs", "evs:evs", dict(ratio=0.25), title="EVS",
               summary="first frame whole, then the tokens that changed most since the previous frame"),
    # FlashVID (ICLR 2026; flashvid-spec.md): pre-LLM DySeg + ADTS + TSTM + DPC (flashvid.py), then the inner-LLM
    # prune before layer K (flashvid_inner.py), on by default as in the reference. --ratio is its average retention
    # over the LLM's layers (§2.10): the pre-LLM budget is ratio x expansion (1.25), the inner stage keeps r_llm of
    # those from layer K on. Defaults: the reference scripts' (§0; INNER_DEFAULTS, FAMILY_VARIANTS).
    MethodSpec("flashvid", "flashvid:flashvid", dict(FLASHVID_DEFAULTS), title="FlashVID",
               summary="DySeg segments; per frame, attention-diverse tokens plus tree-merged, clustered context; "
                       "then the last prompt token's top video tokens from LLM layer K on",
               params=FLASHVID_PARAMS, needs_attention=True, positions="compact", segments=("segments", "DySeg"),
               llm_stage="flashvid_inner:inner_stage",
               # Qwen-VL: the reference's Qwen2.5-VL settings (v1 ADTS, 4 segments, original M-RoPE positions,
               # repeated slots as identical copies), the same expansion and inner stage (its K,R: 20,0.3)
               variants={"qwen": Variant("flashvid_inner:flashvid_qwen", dict(selection="attn_div", min_segment_num=4,
                                                                           positions="original", duplicates="last"),
                                         llm_stage="flashvid_inner:qwen_inner_stage", positions="original")}),
]}

DEFAULTS: dict[str, dict[str, Any]] = {name: spec.defaults for name, spec in REGISTRY.items()}


def method_names() -> list[str]:
    """Names of the registered pruning methods, in registry order."""
    return list(REGISTRY)


def ratio_for(method: str, ratio: float | None, default: float | str) -> float:
    """The ratio `method` runs at: 1.0 for an entry that keeps every token, else `ratio`, else `default` (the
    family's or the command's)."""
    return 1.0 if spec_of(method).keeps_all else float(ratio if ratio is not None else default)


def method_label(method: str | None, ratio: float | None) -> str:
    """How an answer names its setting: "none" for an entry that keeps everything, else "fastvid r=0.25"."""
    spec = REGISTRY.get(method or "")
    return str(method) if spec is not None and spec.keeps_all else f"{method} r={ratio:g}"


def spec_of(name: str) -> MethodSpec:
    """The entry of the method called ``name``; ``InvalidOptionError`` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise InvalidOptionError(f"unknown pruning method {name!r}", hint=f"known: {known}") from None


def get_method(name: str) -> PruneMethod:
    """The pruning method called ``name`` (its own function, whatever the family)."""
    return spec_of(name).function


def method_for(name: str, family: str | None) -> PruneMethod:
    """The function that runs method ``name`` on models of ``family`` (its variant there, if it has one)."""
    return spec_of(name).function_for(family)


@functools.cache
def accepts_attention(method: PruneMethod) -> bool:
    """Whether ``method`` takes the last vision layer's attention received as the keyword ``attn``."""
    return "attn" in inspect.signature(method).parameters


# ---------------------------------------------------------------------------------------------- options
def options() -> list[Param]:
    """Every method option of the command line, once each (a flag several methods take: the first one's Param),
    in registry order."""
    seen: dict[str, Param] = {}
    for spec in REGISTRY.values():
        for p in spec.all_params():
            seen.setdefault(p.flag, p)
    return list(seen.values())


def shown(value: Any) -> str:
    """A parameter's value for people: 0.9, attn_div, 20,0.3 (a K,R pair), off (None)."""
    if value is None:
        return "off"
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def option_help(param: Param) -> str:
    """The option's help with its defaults, from the registry: "… (0.9; Qwen-VL: 0.84)."."""
    found: dict[str, Any] = {}
    for spec in REGISTRY.values():
        for fam in [DEFAULT_FAMILY, *spec.variants]:
            if param in spec.params_for(fam) and param.name in spec.defaults_for(fam):
                found.setdefault(fam, spec.defaults_for(fam)[param.name])
    first = found.get(DEFAULT_FAMILY)
    parts = [] if DEFAULT_FAMILY not in found else [shown(first)]
    for fam, value in found.items():
        if fam != DEFAULT_FAMILY and value != first:
            text = shown(value)
            parts.append(f"{FAMILIES.get(fam, fam)}: {text}" if parts else text)
    return param.help.rstrip(".") + (f" ({'; '.join(parts)})" if parts else "") + "."


def given_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The method options a command received (typer's keyword arguments, by `Param.dest`) -> {flag: value} of those
    given."""
    by_dest = {p.dest: p for p in options()}
    return {by_dest[k].flag: v for k, v in values.items() if v is not None and k in by_dest}


def _by_flag(given: Mapping[str, Any], methods: Iterable[str]) -> dict[str, Any]:
    """`given` keyed by flag. A key that is no flag is a parameter name (programmatic callers, configs: {"tau": 0.8}):
    the flag of the parameter of that name among `methods` (it must be one), else those of all methods."""
    flags = {p.flag for p in options()}
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key in flags:
            out[key] = value
            continue
        if key.startswith("-"):
            raise InvalidOptionError(f"no pruning method takes {key}")
        chosen = {p.flag for m in methods for p in spec_of(m).all_params() if p.name == key}
        matches = chosen or {p.flag for p in options() if p.name == key}
        if not matches or (chosen and len(matches) > 1):
            raise InvalidOptionError(f"no pruning method has a parameter {key!r}" if not matches else
                                     f"method parameter {key!r} is ambiguous: give one of {', '.join(sorted(matches))}")
        # none of `methods` takes it: every method's option of that name (check_options says where they apply)
        out.update(dict.fromkeys(sorted(matches), value))
    return out


def _applies_to(flag: str) -> str:
    """Where `flag` applies, for people: "--method holitom or holitom-orig", "FastVID on Qwen-VL models"."""
    where = []
    for spec in REGISTRY.values():
        for p in spec.all_params():
            if p.flag == flag:
                fams = spec.families_of(p)
                where.append(f"--method {spec.name}" if fams is None else
                             " or ".join(f"{spec.title or spec.name} on {FAMILIES.get(f, f)} models" for f in fams))
    if all(w.startswith("--method ") for w in where):
        names = [w.removeprefix("--method ") for w in where]
        return "--method " + (" or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1])
    return " or ".join(where)


def check_options(methods: Iterable[str], family: str | None, given: Mapping[str, Any]) -> None:
    """Each given method option must be taken by one of `methods` on `family` (None: on some family) and have a
    valid value; ``InvalidOptionError`` saying where it applies otherwise."""
    methods = list(methods)
    specs = [spec_of(m) for m in methods]
    for flag, value in _by_flag(given, methods).items():
        takers = [p for s in specs for p in (s.all_params() if family is None else s.params_for(family))
                  if p.flag == flag]
        if not takers:
            raise InvalidOptionError(f"{flag} applies to {_applies_to(flag)}")
        takers[0].convert(value)


def resolve_params(method: str, family: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a run of `method` on `family` uses and records (ask --json's params, batch's settings): each
    of its options the user gave (parsed), else the family's default where the parameter fills one in (see
    `Param.fill`), in the method's parameter order. Options of other methods are left out (check_options)."""
    spec = spec_of(method)
    given = _by_flag(given, [method])
    defaults = spec.defaults_for(family)
    out: dict[str, Any] = {}
    for p in spec.params_for(family):
        if p.flag in given:
            out[p.name] = p.convert(given[p.flag])
        elif p.fill and p.name in defaults:
            out[p.name] = defaults[p.name]
    return out


def full_params(method: str, family: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every keyword argument a run passes, defaults included, sorted by name (what eval records)."""
    defaults = {k: v for k, v in spec_of(method).defaults_for(family).items() if k != "ratio"}
    params = {**defaults, **resolve_params(method, family, given)}
    return {k: params[k] for k in sorted(params)}


def function_params(method: str, family: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` less those of the method's LLM stage: what its function takes."""
    staged = {p.name for p in spec_of(method).params_for(family) if p.stage}
    return {k: v for k, v in params.items() if k not in staged}


def llm_stage(method: str, family: str | None, params: Mapping[str, Any], ratio: float | None = None):
    """The method's stage inside the LLM prefill (pruning.result.LLMStage) for these params; None when it has none,
    none of its stage parameters is set, or its builder says none (a builder that takes ``ratio`` gets the run's)."""
    spec = spec_of(method)
    target = spec.stage_for(family)
    staged = [p for p in spec.params_for(family) if p.stage and params.get(p.name) is not None]
    if target is None or not staged:
        return None
    build = _load(target)
    extra = {"ratio": ratio} if ratio is not None and "ratio" in inspect.signature(build).parameters else {}
    return build(**{p.name: params[p.name] for p in staged}, option=" ".join(p.flag for p in staged), **extra)


def family_defaults(family: str | None) -> dict[str, Any]:
    """What a model of `family` runs with when the user says nothing: its method family, the default method, the
    ratio (every method's, as the default method's on this family) and the default method's settings there."""
    spec = REGISTRY[DEFAULT_METHOD]
    return {"method_family": family or DEFAULT_FAMILY, "method": DEFAULT_METHOD,
            "ratio": spec.defaults_for(family)["ratio"], **resolve_params(DEFAULT_METHOD, family, {})}


__all__ = ["DEFAULTS", "DEFAULT_FAMILY", "DEFAULT_METHOD", "FAMILIES", "MethodSpec", "Param", "PruneMethod",
           "REGISTRY", "Variant", "accepts_attention", "check_options", "family_defaults", "full_params",
           "function_params", "get_method", "given_options", "llm_stage", "method_for", "method_names",
           "option_help", "options", "resolve_params", "spec_of"]
