"""The README's tables of pruning methods and their options, written from the registry (``python -m
fastvid_cli.pruning`` prints them; a test checks that README.md holds them as printed). Imports no torch."""

from __future__ import annotations

from typing import Any

from . import DEFAULT_FAMILY, FAMILIES, REGISTRY, Param, option_help, options


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _defaults(param: Param) -> str:
    """The default column: the default family's value, the others' where they differ, or what it is without one."""
    found: dict[str, Any] = {}
    for spec in REGISTRY.values():
        for fam in [DEFAULT_FAMILY, *spec.variants]:
            if param in spec.params_for(fam) and param.name in spec.defaults_for(fam):
                found.setdefault(fam, spec.defaults_for(fam)[param.name])
    if not found:
        return "off"
    first = found.get(DEFAULT_FAMILY)
    if first is None:
        return " · ".join(f"`{_value(v)}` ({FAMILIES.get(f, f)} only)" for f, v in found.items())
    others = [f"{FAMILIES.get(f, f)}: `{_value(v)}`" for f, v in found.items() if f != DEFAULT_FAMILY and v != first]
    return f"`{_value(first)}`" + (f" ({'; '.join(others)})" if others else "")


def options_table() -> list[str]:
    """Rows (markdown) of the method options, one per flag, in registry order."""
    rows = []
    for p in options():
        meaning = option_help(p)
        cut = meaning.rfind(" (")
        if _defaults(p) != "off" and cut > 0:  # the defaults have their own column
            meaning = meaning[:cut] + "."
        rows.append(f"| `{p.flag} {p.metavar}` | {_defaults(p)} | {meaning} |")
    return rows


def methods_table() -> list[str]:
    """A markdown table of the methods: what each keeps, its positions, what it ranks by, its options."""
    rows = ["| method | what it keeps | positions | needs | options | on other families |",
            "|---|---|---|---|---|---|"]
    for s in REGISTRY.values():
        needs = ", ".join(w for w, on in (("vision attention", s.needs_attention), ("saliency", s.uses_saliency))
                          if on) or "–"
        flags = ", ".join(f"`{p.flag}`" + (" (LLM stage)" if p.stage else "") for p in s.params) or "–"
        variants = "; ".join(
            f"{FAMILIES.get(f, f)}: " + ", ".join(
                ([f"`{v.target.split(':')[1]}`"] if v.target else [])
                + [f"{k} `{_value(x)}`" for k, x in v.defaults.items()]
                + [f"`{p.flag}`" for p in v.params])
            for f, v in s.variants.items()) or "–"
        rows.append(f"| `{s.name}` | {s.summary or s.title} | {s.positions} | {needs} | {flags} | {variants} |")
    return rows


__all__ = ["methods_table", "options_table"]
