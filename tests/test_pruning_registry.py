"""The pruning registry: every entry agrees with its functions, options are resolved and checked from the entries
alone, and a new method needs one module and one entry, nothing else."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types

import pytest
import torch
import typer
from typer.testing import CliRunner

from fastvid_cli import pruning
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.pruning import REGISTRY, Param, accepts_attention
from fastvid_cli.pruning.result import PruneResult


def test_importing_the_registry_and_the_cli_imports_no_torch():
    code = ("import sys, fastvid_cli.pruning, fastvid_cli.cli; fastvid_cli.pruning.options(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def families(spec) -> list[str | None]:
    return [None, *spec.variants]


def inputs(F=6, N=16, D=8, Dg=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(F, N, D, generator=gen), torch.rand(F, N, generator=gen), torch.randn(F, Dg, generator=gen))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_entry_describes_its_functions(name):
    """Parameters, defaults and attention are what the function of each family takes; positions and segments are
    what it returns."""
    spec = REGISTRY[name]
    for family in families(spec):
        fn = spec.function_for(family)
        kwargs = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in kwargs.values())
        assert spec.needs_attention == accepts_attention(fn), (name, family)
        for p in spec.params_for(family):
            assert p.stage or p.name in kwargs, (name, family, p.name)
            assert not p.stage or spec.stage_for(family) is not None
        for key in spec.defaults_for(family):
            assert key in kwargs or takes_any, (name, family, key)
        X, S, G = inputs()
        extra = {"attn": torch.rand(6, 16)} if spec.needs_attention else {}
        params = pruning.function_params(name, family, pruning.full_params(name, family, {}))
        result = fn(X, S, G, 0.5 if name != "none" else 1.0, **params, **extra)
        assert isinstance(result, PruneResult)
        assert result.compact == (spec.positions_for(family) == "compact"), (name, family)
        assert spec.positions_for(family) in ("original", "compact")
        if result.segments:
            assert spec.segments is not None, (name, family)


def test_every_option_means_one_thing():
    by_flag: dict[str, Param] = {}
    for spec in REGISTRY.values():
        for p in spec.all_params():
            assert by_flag.setdefault(p.flag, p) == p, p.flag
            assert p.flag.startswith("--") and p.type in (int, float, str) and p.help
    dests = [p.dest for p in pruning.options()]
    assert len(dests) == len(set(dests))
    assert [p.flag for p in pruning.options()] == list(by_flag)


def test_defaults_per_family_are_the_papers():
    assert pruning.family_defaults("llava") == dict(method_family="llava", method="fastvid", ratio=0.1, c=8, tau=0.9,
                                                    d=0.4, p=4, beta=0.6)
    assert pruning.family_defaults("qwen") == dict(method_family="qwen", method="fastvid", ratio=0.27, c=8,
                                                   tau=0.84, d=0.4, p=4, beta=0.6, ignore=0.95)
    assert pruning.family_defaults(None) == pruning.family_defaults("llava")
    assert pruning.method_for("fastvid", "qwen").__name__ == "fastvid_qwen"
    assert pruning.method_for("fastvid", "llava") is pruning.get_method("fastvid")
    assert pruning.method_for("uniform", "qwen") is pruning.get_method("uniform")


def test_resolved_params_are_what_ask_and_batch_recorded():
    assert list(pruning.resolve_params("fastvid", "llava", {}).items()) == [
        ("c", 8), ("tau", 0.9), ("d", 0.4), ("p", 4), ("beta", 0.6)]
    assert pruning.resolve_params("fastvid", "qwen", {"--dyseg-tau": 0.8, "c": 3}) == dict(
        c=3, tau=0.8, d=0.4, p=4, beta=0.6, ignore=0.95)
    given = {"--holitom-inner": "18,0.5", "--random-seed": 7, "--dtm-beta": 0.5}
    assert pruning.resolve_params("holitom", "llava", given) == {"inner": (18, 0.5)}
    assert pruning.resolve_params("holitom-orig", "qwen", {}) == {}
    assert pruning.resolve_params("random", "llava", {}) == {}  # the seed is recorded when given
    assert pruning.resolve_params("random", "llava", given) == {"seed": 7}
    assert pruning.resolve_params("uniform", "llava", given) == {} == pruning.resolve_params("none", None, {})
    assert pruning.full_params("random", "llava", {}) == {"seed": 0}  # eval records every default
    assert pruning.full_params("holitom-orig", None, {"inner": [2, 0.25]}) == dict(
        beta=0.6, inner=(2, 0.25), k=7, max_window=1024, positions="original")
    assert pruning.function_params("holitom", None, {"inner": (2, 0.25), "beta": 0.5}) == {"beta": 0.5}


@pytest.mark.parametrize("methods, family, given, message", [
    (["fastvid"], None, {"--holitom-inner": "1,0.5"}, "--holitom-inner applies to --method holitom or holitom-orig"),
    (["fastvid"], "llava", {"--dyseg-ignore": 0.9}, "--dyseg-ignore applies to FastVID on Qwen-VL models"),
    (["holitom-orig"], None, {"ignore": 0.9}, "--dyseg-ignore applies to FastVID on Qwen-VL models"),
    (["uniform", "holitom"], "qwen", {"--dyseg-c": 3}, "--dyseg-c applies to --method fastvid"),
    (["fastvid"], None, {"--random-seed": 1}, "--random-seed applies to --method random"),
    (["holitom"], None, {"--holitom-inner": "1;0.5"}, "--holitom-inner must be K,R"),
    (["holitom"], None, {"--holitom-inner": "0,0.5"}, "needs K >= 1 and 0 < R < 1"),
    (["fastvid"], None, {"no_such": 1}, "no pruning method has a parameter 'no_such'"),
    (["fastvid"], None, {"--no-such": 1}, "no pruning method takes --no-such"),
])
def test_options_that_no_chosen_method_takes_are_usage_errors(methods, family, given, message):
    with pytest.raises(InvalidOptionError, match=message):
        pruning.check_options(methods, family, given)


def test_options_some_chosen_method_takes_pass():
    pruning.check_options(["uniform", "fastvid"], "llava", {"--dyseg-c": 3, "tau": 0.8})
    pruning.check_options(["fastvid"], None, {"--dyseg-ignore": 0.9})  # the model's family is not known yet
    pruning.check_options(["fastvid"], "qwen", {"--dyseg-ignore": 0.9})
    pruning.check_options(["random", "holitom-orig"], "qwen", {"--random-seed": 3, "--holitom-inner": "2,0.5"})


def test_option_help_shows_the_defaults_of_every_family():
    help_of = {p.flag: pruning.option_help(p) for p in pruning.options()}
    assert help_of["--dyseg-tau"].endswith("< tau (0.9; Qwen-VL: 0.84).")
    assert help_of["--dyseg-c"].endswith("segments (8).") and help_of["--dyseg-ignore"].endswith("(0.95).")
    assert help_of["--random-seed"].endswith("(0).") and help_of["--holitom-inner"].endswith("decodes eagerly.")


def test_the_llm_stage_comes_from_the_entry():
    stage = pruning.llm_stage("holitom-orig", "llava", {"inner": (18, 0.5), "beta": 0.6})
    assert (stage.layer, stage.drop_ratio, stage.option, stage.label) == (18, 0.5, "--holitom-inner",
                                                                          "HoliTom inner merge")
    assert pruning.llm_stage("holitom", None, {}) is None and pruning.llm_stage("fastvid", None, {"c": 8}) is None
    hidden, attention = torch.randn(10, 4), torch.rand(10)
    kept, merged = stage.reduce(hidden, attention)
    assert kept.tolist() == sorted(torch.topk(attention, 5).indices.tolist()) and merged.shape == (5, 4)


# ------------------------------------------------------------------------------------------ a new method
def every_other(embeds, saliency=None, frame_features=None, ratio=0.1, *, stride=2, offset=0):
    """A toy method: every `stride`-th token of each frame, from `offset`."""
    F, N, D = embeds.shape
    slots = torch.arange(offset, N, stride)
    index = (slots[None, :] + torch.arange(0, F * N, N)[:, None]).reshape(-1)
    return PruneResult(embeds=embeds.reshape(F * N, D)[index], index=index)


@pytest.fixture
def new_method(monkeypatch):
    """`every_other` registered as method "toy" the way a new method is: its module and one registry entry."""
    module = types.ModuleType("fastvid_cli.pruning.toy")
    module.every_other = every_other
    monkeypatch.setitem(sys.modules, "fastvid_cli.pruning.toy", module)
    spec = pruning.MethodSpec(
        "toy", "toy:every_other", dict(ratio=0.5, stride=2, offset=0), summary="every other token",
        params=(Param("stride", "--toy-stride", "Keep every N-th token", int, "N", min=1),),
        variants={"qwen": pruning.Variant(defaults=dict(stride=3))})
    monkeypatch.setitem(REGISTRY, "toy", spec)
    return spec


def test_a_new_method_needs_one_module_and_one_entry(new_method, tmp_path):
    from fastvid_cli import batch as B
    from fastvid_cli import options as O

    assert "toy" in pruning.method_names() and "--toy-stride" in {p.flag for p in pruning.options()}
    seen = {}
    app = typer.Typer()

    @app.command()
    @O.method_options(after="method")
    def run(method: str = O.METHOD, ratio: float = 0.5, **method_options) -> None:
        given = pruning.given_options(method_options)
        pruning.check_options([method], "qwen", given)
        seen["params"] = pruning.resolve_params(method, "qwen", given)

    res = CliRunner().invoke(app, ["--method", "toy", "--toy-stride", "4"])
    assert res.exit_code == 0, res.output
    assert seen["params"] == {"stride": 4}
    res = CliRunner().invoke(app, ["--method", "toy"])
    assert res.exit_code == 0 and seen["params"] == {"stride": 3}  # its default on Qwen-VL
    res = CliRunner().invoke(app, ["--method", "fastvid", "--toy-stride", "4"], catch_exceptions=True)
    assert isinstance(res.exception, InvalidOptionError) and "applies to --method toy" in str(res.exception)
    assert "Keep every N-th token (2; Qwen-VL: 3)." in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    # batch and eval record it like any other
    cfg = B.BatchConfig(questions=tmp_path / "q.csv", output=tmp_path / "o.jsonl", model="llava-ov-7b",
                        method="toy", params={"--toy-stride": 4})
    settings = B.base_settings(cfg, pruning.family_defaults("llava") | {"frames": 8}, "float32")
    assert json.loads(json.dumps(settings))["params"] == {"stride": 4} and settings["saliency_model"] is None
    assert pruning.full_params("toy", "llava", {}) == {"offset": 0, "stride": 2}


def test_the_engine_runs_a_new_method_with_its_family_defaults(new_method, engine, index_video):
    from fastvid_cli.engine import PruneOptions
    from fastvid_cli.video import sample_frames

    feats = engine.features(sample_frames(str(index_video), 4), {})
    F, N = feats.embeds.shape[:2]
    params = pruning.resolve_params("toy", engine.defaults["method_family"], {})
    result = engine.prune(feats, PruneOptions(method="toy", ratio=0.5, params=params), {})
    assert params == {"stride": 2} and result.kept == F * len(range(0, N, 2))


def test_the_readme_tables_are_the_registrys():
    """README.md's method options and methods tables are printed by `python -m fastvid_cli.pruning`: an entry changed
    without them fails here."""
    from pathlib import Path

    from fastvid_cli.pruning.docs import methods_table, options_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [row for row in options_table() + methods_table() if row not in readme.splitlines()]
    assert not missing, "README.md lacks (run python -m fastvid_cli.pruning): " + "\n".join(missing)
