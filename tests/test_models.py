"""The model-family contract (models/interface.FamilyAdapter) and registry (models/__init__.FAMILIES): a family is
one module plus one registry line, its optional capabilities are declared, and the package imports in one
direction only."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from fastvid_cli import models
from fastvid_cli import pruning
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.models.interface import FamilyAdapter

ROOT = Path(models.__file__).resolve().parents[2]  # the folder holding fastvid_cli

TOY_FAMILY = '''
from fastvid_cli.models.interface import FamilyAdapter, Prompt


class ToyAdapter(FamilyAdapter):
    defaults = dict(frames=12)
    method_family = "qwen"
    frames_independent = True

    @classmethod
    def load(cls, ref, config, *, device, dtype, attn_implementation, saliency_model=None, device_map=None):
        self = cls()
        self.ref, self.warnings = ref, []
        return self

    def preprocess(self, frames, device=None):
        return frames

    def encode(self, pixels):
        raise NotImplementedError

    def build_prompt(self, question, system=None):
        return Prompt(prefix_ids=None, suffix_ids=None, text=question)

    def assemble(self, prompt, feats, kept_embeds, kept_index):
        raise NotImplementedError


Adapter = ToyAdapter
'''


def test_every_registered_family_is_a_complete_adapter():
    for family in models.FAMILIES:
        cls = models.adapter_class(family)
        assert issubclass(cls, FamilyAdapter) and not cls.__abstractmethods__, family
        assert "frames" in cls.defaults and cls.method_family in pruning.FAMILIES, family
        assert ("fps" in cls.defaults) == (cls.defaults["frames"] is None), family  # a count, or a rate
    assert models.adapter_class("llava_onevision").frames_independent is True
    assert models.adapter_class("qwen2_5_vl").frames_independent is False  # a temporal patch holds 2 frames


def test_a_new_family_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """Written against the contract alone, the toy family gets every optional capability's default, and the run
    settings of a checkpoint of its model_type resolve from it without anything else changing."""
    from fastvid_cli.settings import family_defaults, frame_request, sampling_settings

    (tmp_path / "toy_family.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(models.FAMILIES, "toy", "toy_family")
    checkpoint = tmp_path / "toy-ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "toy"}))

    # its sampling, and the registry's methods as they run on the method family it declares
    assert family_defaults(str(checkpoint)) == {"frames": 12, **pruning.family_defaults("qwen")}
    assert family_defaults(str(checkpoint))["ratio"] == 0.27
    assert frame_request(str(checkpoint)) == 12 and frame_request(str(checkpoint), 3) == 3
    assert sampling_settings(str(checkpoint), None, None, family_defaults(str(checkpoint))) == (12, None)
    adapter = models.adapter_class("toy").load(models.resolve_model(str(checkpoint)), None, device="cpu",
                                                dtype=None, attn_implementation="sdpa")
    assert adapter.feature_settings() == {}
    assert adapter.preprocess_clip(type("Clip", (), {"frames": "the frames"})()) == "the frames"
    with pytest.raises(InvalidOptionError, match="--fps applies"):
        adapter.frame_plan(None, 2.0)


def test_a_family_missing_a_required_method_cannot_load():
    class Half(FamilyAdapter):
        defaults = dict(frames=8)
        method_family = "llava"

        def preprocess(self, frames, device=None):
            return frames

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_the_registry_and_the_resolver_import_no_torch():
    """The CLI checks --model, --device, --dtype, --frames/--fps and reads family defaults before torch loads."""
    import subprocess

    code = ("import sys, fastvid_cli.models, fastvid_cli.models.aliases, fastvid_cli.models.loading, "
            "fastvid_cli.models.sampling, fastvid_cli.settings; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _imports(path: Path, module: str, is_package: bool, names: set[str]) -> set[str]:
    """The package modules `module` imports anywhere in its file (function-level imports included), and those it
    names in a string (the registry imports its families by name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names and node.value != module:
            found.add(node.value)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parent = base
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                target = f"{parent}.{target}" if target else parent
            if target in names:
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in names else target for a in node.names}
    return found


def test_the_package_has_no_import_cycle():
    """Not even through imports inside functions: hub owns ModelRef (no hub <-> models), family modules import
    interface/loading but never the registry that imports them, settings resolves on top of the registry, and
    the command modules share cli_common instead of importing cli."""
    files = {}
    for path in (ROOT / "fastvid_cli").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {m: _imports(p, m, pkg, set(files)) for m, (p, pkg) in files.items()}
    assert "fastvid_cli.models" not in graph["fastvid_cli.hub"]
    assert "fastvid_cli.models.qwen_vl" in graph["fastvid_cli.models"]  # the registry's names count

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
