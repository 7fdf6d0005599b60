"""What a new user meets on any machine: no library noise, fast one-line errors, clear offline/network failures,
an honest `doctor`, sensible CPU threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = REPO / "examples" / "demo.mp4"
SPLIT = REPO / "fastvid_cli" / "data" / "synth_test.jsonl"


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m fastvid_cli ARGS` in a fresh process, as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "fastvid_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def test_prefill_and_decode_raise_no_deprecation_warning(engine, index_video):
    """transformers 5.25 deprecates `past_key_values` in every forward call (a FutureWarning per call); the
    decode loops pass the KV cache under the keyword the installed version takes."""
    from fastvid_cli.engine import GenerationOptions, PruneOptions

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = engine.ask(str(index_video), "What?", frames=8, prune=PruneOptions(method="fastvid", ratio=0.5),
                            gen=GenerationOptions(max_new_tokens=4))
    assert report.new_tokens >= 1
    assert not [w for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))], \
        [str(w.message) for w in seen]


def test_a_normal_run_prints_no_library_warning():
    """The demo answer in a fresh process: stderr holds our progress and panel, never a library's warning."""
    res = run_cli("ask", DEMO_CLIP, "What colour is the circle?", "--model", "demo", "--device", "cpu",
                  "--max-new-tokens", "3", "--no-cache", env={"PYTHONWARNINGS": "always"})
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr and "warn(" not in res.stderr, res.stderr
    quiet = run_cli("ask", DEMO_CLIP, "What colour is the circle?", "--model", "demo", "--device", "cpu",
                    "--max-new-tokens", "3", "--no-cache", "--quiet", env={"PYTHONWARNINGS": "always"})
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip()


# --------------------------------------------------------------------------- bad options fail before torch loads
CHECK_WITHOUT_TORCH = """
import sys
from fastvid_cli.cli import main
sys.argv = ["fastvid", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    print(e.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("args, code", [
    (["ask", "missing.mp4", "q", "--model", "demo"], 3),
    (["ask", str(REPO / "README.md"), "q", "--model", "demo"], 4),
    (["ask", str(DEMO_CLIP), "q", "--ratio", "1.5"], 2),
    (["ask", str(DEMO_CLIP), "q", "--method", "pool"], 2),
    (["ask", str(DEMO_CLIP), "q", "--device", "gpu"], 2),
    (["ask", str(DEMO_CLIP), "q", "--dtype", "int8"], 2),
    (["ask", str(DEMO_CLIP), "q", "--attn-implementation", "flash_attention_2"], 2),
    (["ask", str(DEMO_CLIP), "q", "--model", "no-such-model"], 5),
    (["ask", str(DEMO_CLIP), " ", "--model", "demo"], 2),
    (["compare", str(DEMO_CLIP), "q", "-r", "0", "--model", "demo"], 2),
    (["compare", "missing.mp4", "q", "--model", "demo"], 3),
    (["batch", "missing.csv", "--model", "demo"], 2),
    (["batch", "{csv}", "--model", "demo", "--ratio", "7"], 2),
    (["batch", "{csv}", "--model", "demo", "--dtype", "int8"], 2),
    (["batch", "{csv}", "--model", "demo", "--threads", "0"], 2),
    (["eval", "missing.jsonl", "--model", "demo"], 2),
    (["eval", str(SPLIT), "--model", "demo", "--device", "tpu"], 2),
    (["eval", str(SPLIT), "--model", "demo", "--attn-implementation",
      "flash_attention_2"], 2),
])
def test_bad_options_and_files_fail_before_torch_is_imported(args, code, tmp_path):
    """Importing torch + transformers costs seconds: every check that needs neither runs first, so a typo fails
    at once, with its exit code."""
    csv = tmp_path / "questions.csv"
    csv.write_text(f"video,question\n{DEMO_CLIP},What?\n")
    args = [a.replace("{csv}", str(csv)) for a in args]
    res = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH, *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.stdout.split() == [str(code), "False"], (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr


def test_flash_attention_without_the_package_is_a_usage_error_with_the_install_hint():
    import importlib.util

    from fastvid_cli.errors import InvalidOptionError
    from fastvid_cli.models import check_attn_implementation

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(InvalidOptionError) as e:
        check_attn_implementation("flash_attention_2")
    assert "pip install flash-attn" in e.value.one_line() and e.value.exit_code == 2
    assert check_attn_implementation("sdpa") == "sdpa"


def test_a_folder_of_checkpoints_says_which_subfolder_to_pass(tmp_path):
    from fastvid_cli.errors import UnknownModelError
    from fastvid_cli.models import resolve_model

    for name in ("llava-ov", "siglip-head"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError) as e:
        resolve_model(str(tmp_path))
    assert f"--model {tmp_path / 'llava-ov'}" in e.value.one_line() and "siglip-head" in e.value.one_line()


# --------------------------------------------------------------------------- CPU threads
def test_pruning_runs_on_one_thread_unless_the_user_chose_a_count(monkeypatch, engine, index_video):
    """On a busy machine OpenMP workers make small ops tens of times slower, so pruning runs single-threaded on
    the CPU; --threads / OMP_NUM_THREADS apply everywhere, pruning included."""
    import torch

    from fastvid_cli import engine as engine_mod
    from fastvid_cli.engine import PruneOptions
    from fastvid_cli import pruning
    from fastvid_cli.pruning import get_method
    from fastvid_cli.video import sample_frames

    feats = engine.features(sample_frames(str(index_video), 4), {})
    uniform, seen = get_method("uniform"), []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return uniform(*args, **kwargs)

    monkeypatch.setattr(pruning, "method_for", lambda name, family: spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(engine_mod, "_user_threads", None)
        engine.prune(feats, PruneOptions(method="uniform", ratio=0.5), {})
        assert torch.get_num_threads() == 2  # restored after pruning
        engine_mod.set_threads(2)  # --threads 2
        engine.prune(feats, PruneOptions(method="uniform", ratio=0.5), {})
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        engine_mod.set_threads(None)
        engine.prune(feats, PruneOptions(method="uniform", ratio=0.5), {})
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2, 2]


# --------------------------------------------------------------------------- no network, not offline
@pytest.fixture
def no_network(monkeypatch):
    """A machine whose name resolution fails, and offline mode off: what a laptop on a plane sees."""
    import socket

    from fastvid_cli import hub

    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(hub, "_unreachable", {})


def test_a_hub_id_without_network_fails_at_once_naming_the_cause(no_network):
    import time

    from fastvid_cli import hub
    from fastvid_cli.errors import ModelUnavailableError
    from fastvid_cli.models import ModelRef

    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as e:
        hub.get_file(ModelRef("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-ov-7b", False), "config.json")
    line = e.value.one_line()
    assert "cannot resolve huggingface.co" in line and "--offline" in line and "hf download" in line, line
    assert e.value.exit_code == 6 and time.perf_counter() - t0 < 5


def test_a_local_checkpoint_without_network_fails_on_the_saliency_download_with_both_ways_out(
        no_network, tiny_llava, index_video):
    """The saliency head is a second download: without network the run stops in seconds and says how to go on
    (--offline for the built-in fallback, or the download command); it does not retry for a minute."""
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    res = CliRunner().invoke(app, ["ask", str(index_video), "What?", "--model", str(tiny_llava), "--device", "cpu",
                                   "--frames", "4", "--no-cache"])
    assert res.exit_code == 6, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot download google/siglip-so400m-patch14-384: cannot resolve huggingface.co")
    assert "--offline" in line and "hf download google/siglip-so400m-patch14-384" in line
    offline = CliRunner().invoke(app, ["ask", str(index_video), "What?", "--model", str(tiny_llava), "--device",
                                       "cpu", "--frames", "4", "--no-cache", "--offline", "--max-new-tokens", "2",
                                       "--json"])
    assert offline.exit_code == 0, offline.output
    assert json.loads(offline.stdout)["saliency_source"].startswith("fallback")


# --------------------------------------------------------------------------- doctor
def test_doctor_versions_come_from_package_metadata_and_every_decodable_codec_is_listed(tmp_path):
    """rich has no __version__ (doctor said MISSING while drawing its table); vp8 webm decodes but was not
    listed."""
    from importlib.metadata import version

    from typer.testing import CliRunner
    from videogen import write_video

    from fastvid_cli.cli import app
    from fastvid_cli.video import sample_frames

    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    for dist in ("torch", "transformers", "accelerate", "av", "typer", "rich", "huggingface_hub", "safetensors"):
        assert info["versions"][dist] == version(dist)
    clip = write_video(str(tmp_path / "vp8.webm"), np.zeros((6, 32, 48, 3), np.uint8), codec="libvpx")
    assert sample_frames(clip, 3).frames.shape[0] == 3  # vp8 decodes here...
    assert info["decoders"]["vp8"] is True  # ...so doctor lists it
    assert info["network"] == "not checked (offline mode)"  # the tests run offline: no probe


def test_eval_with_a_videos_root_that_does_not_exist_yet_regenerates_the_clips_there(tmp_path):
    """The README's eval example names a fresh folder: the synthetic clips are rendered into it from their seeds
    (it used to stop with "--videos-root … is not a folder")."""
    from typer.testing import CliRunner

    from fastvid_cli.cli import app
    from fastvid_cli.data import __file__ as data_init

    split = Path(data_init).parent / "synth_test.jsonl"
    root = tmp_path / "not-yet" / "synth-videos"
    res = CliRunner().invoke(app, ["eval", str(split), "--model", "demo", "--device", "cpu", "--limit", "2",
                                   "--method", "uniform", "--ratio", "0.5", "--videos-root", str(root),
                                   "-o", str(tmp_path / "out.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(list(root.rglob("*.mp4"))) == 2 and json.loads(res.stdout)["run"]["failed"] == 0
    (tmp_path / "a-file").write_text("x")
    bad = CliRunner().invoke(app, ["eval", str(split), "--model", "demo", "--videos-root", str(tmp_path / "a-file")])
    assert bad.exit_code == 2 and "is not a folder" in bad.stderr


# --------------------------------------------------------------------------- the two first commands
def load_dev(monkeypatch, tmp_path):
    """dev.py as a module, working on a copy of pyproject.toml in tmp_path, with every command it runs recorded
    instead of run (a fake venv python appears when `python -m venv` is called)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dev_under_test", REPO / "dev.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(dev, "STAMP", tmp_path / ".venv" / "fastvid-setup.json")
    monkeypatch.setattr(dev, "LOG", tmp_path / ".venv" / "setup.log")
    monkeypatch.setattr(dev, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(dev.platform, "system", lambda: "Linux")
    monkeypatch.delenv("FASTVID_TORCH", raising=False)
    calls = []

    class Done:
        returncode, stdout, stderr = 0, "2.13.0+cpu\n", ""

    def fake_run(args, **kwargs):
        calls.append([str(a) for a in args])
        if args[1:3] == ["-m", "venv"]:
            dev.venv_python().parent.mkdir(parents=True)
            dev.venv_python().write_text("")
        return Done()

    monkeypatch.setattr(dev.subprocess, "run", fake_run)
    return dev, calls


def test_dev_setup_installs_cpu_torch_once_and_again_only_when_the_project_changes(monkeypatch, tmp_path):
    dev, calls = load_dev(monkeypatch, tmp_path)
    dev.setup()
    pip_installs = [c for c in calls if c[1:4] == ["-m", "pip", "--disable-pip-version-check"]]
    torch_install = next(c for c in pip_installs if "torch==2.13.0" in c)
    assert "https://download.pytorch.org/whl/cpu" in torch_install  # no NVIDIA GPU: the CPU build
    project = next(c for c in pip_installs if "-e" in c)
    assert project[-2:] == ["-e", ".[test]"] and "-c" in project  # torch pinned to what was just installed
    assert (tmp_path / ".venv" / "torch-constraint.txt").read_text() == "torch==2.13.0+cpu\n"
    calls.clear()
    dev.setup()
    assert calls == []  # set up already: nothing runs
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text() + "\n# changed\n")
    dev.setup()
    assert any("-e" in c for c in calls) and not any(c[1:3] == ["-m", "venv"] for c in calls)
    calls.clear()
    monkeypatch.setattr(dev, "has_nvidia_gpu", lambda: True)
    dev.setup()  # a GPU appeared: the stamp's torch choice differs, so torch is installed again, from PyPI
    assert any("torch>=2.4" in c and "https://download.pytorch.org/whl/cpu" not in c for c in calls)


def test_dev_demo_runs_the_readme_example_and_test_runs_pytest(monkeypatch, tmp_path):
    dev, calls = load_dev(monkeypatch, tmp_path)
    assert dev.main(["demo"]) == 0 and calls[-1][1:] == ["-m", "fastvid_cli", *dev.DEMO]
    assert dev.main(["test", "-x"]) == 0 and calls[-1][1:] == ["-m", "pytest", "-x"]
    assert dev.main(["nonsense"]) == 2
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):readme.index("What a run prints")]
    assert "python3 dev.py demo" in quick and "python3 dev.py test" in quick
    shown = 'fastvid ask {} "{}" {}'.format(dev.DEMO[1], dev.DEMO[2], " ".join(dev.DEMO[3:]))
    assert shown in readme  # the README's first answer is the one dev.py demo gives
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 dev.py test" in ci  # CI runs the README's test command


@pytest.mark.parametrize("args, says", [
    (["ask", "clip.mp4"], "Missing argument 'QUESTION'"),
    (["ask", "clip.mp4", "q", "--frames", "many"], "Invalid value for '--frames'"),
    (["batch", "q.csv", "--threads", "0"], "Invalid value for '--threads'"),
    (["askk"], "No such command 'askk'"),
])
def test_usage_errors_found_by_the_parser_are_one_line_with_exit_2(args, says):
    res = run_cli(*args, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: {says}") and res.stderr.count("\n") == 1, res.stderr
    assert "--help" in res.stderr


def test_every_option_is_spelled_in_lowercase_kebab_case():
    """typer 0.27 (the GPU machine's) names an option declared with a metavar but no flag after the metavar
    (`--DEVICE`): every shared option names its flag."""
    import typer.main

    from fastvid_cli.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("--"):
                    assert flag == flag.lower() and "_" not in flag, (name, param.name, flag)
