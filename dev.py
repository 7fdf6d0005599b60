#!/usr/bin/env python3
"""Set up fastvid in ./.venv (once) and run the demo answer or the test suite: the two first commands of the README.

    python3 dev.py demo       # answer a question about examples/demo.mp4 with the shipped demo model
    python3 dev.py test [ARGS]  # the whole test suite (ARGS go to pytest)
    python3 dev.py setup      # only set up

Needs nothing but Python >= 3.10 and the package index. The first run creates .venv and installs torch (the CPU
build where no NVIDIA GPU is found, so no GB of CUDA libraries) and fastvid with its test extras; later runs see
that nothing changed (a stamp of pyproject.toml and the torch choice) and start at once. pip's own output goes to
.venv/setup.log, shown only when a step fails. FASTVID_TORCH="torch==X" picks another torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "fastvid-setup.json"
LOG = VENV / "setup.log"
CPU_TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's Linux/Windows torch wheels are the CUDA builds
DEMO = ["ask", "examples/demo.mp4",
        "What shape is the blue object? Answer the question using a single word or phrase.",
        "--model", "demo"]


class SetupError(Exception):
    pass


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def torch_choice() -> tuple[str, list[str], str]:
    """(requirement, extra pip arguments, what it is for people)."""
    if os.environ.get("FASTVID_TORCH"):
        return os.environ["FASTVID_TORCH"], [], "as FASTVID_TORCH says"
    if has_nvidia_gpu():
        return "torch>=2.4", [], "CUDA build: an NVIDIA GPU was found"
    if platform.system() == "Darwin":
        return CPU_TORCH, [], "CPU/MPS build"
    return CPU_TORCH, ["--extra-index-url", CPU_INDEX], "CPU build: no NVIDIA GPU found"


def run_logged(args: list[str], what: str) -> None:
    """Run a setup step with its output in the log; on failure, show the log's end and stop."""
    t0 = time.perf_counter()
    say(f"{what} …")
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        tail = LOG.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        raise SetupError(f"{what} failed (exit {code}); the whole log is in {LOG}")
    say(f"{what}: done in {time.perf_counter() - t0:.0f} s")


def wanted_stamp(torch_req: str) -> dict:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return {"pyproject": digest, "torch": torch_req, "python": platform.python_version()}


def setup() -> Path:
    """Create and fill .venv unless it is already set up for this pyproject.toml; returns its python."""
    if sys.version_info < (3, 10):
        raise SetupError(f"fastvid needs Python >= 3.10 (this is {platform.python_version()})")
    torch_req, torch_args, why = torch_choice()
    stamp = wanted_stamp(torch_req)
    py = venv_python()
    if py.is_file() and STAMP.is_file():
        try:
            if json.loads(STAMP.read_text()) == stamp:
                return py
        except ValueError:
            pass
    if not py.is_file():
        say(f"creating {VENV.name}/ with Python {platform.python_version()}")
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            raise SetupError("could not create .venv: " + (made.stderr.strip().splitlines() or ["?"])[-1]
                             + " (on Debian/Ubuntu: apt install python3-venv)")
    LOG.write_text("", encoding="utf-8")
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    run_logged([*pip, "install", "--retries", "1", *torch_args, torch_req], f"installing {torch_req} ({why})")
    got = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if got.returncode != 0:
        raise SetupError(f"torch does not import in .venv: {got.stderr.strip().splitlines()[-1:]}")
    pin = VENV / "torch-constraint.txt"  # keep pip from swapping the torch just installed for another build
    pin.write_text(f"torch=={got.stdout.strip()}\n", encoding="utf-8")
    run_logged([*pip, "install", "-c", str(pin), "-e", ".[test]"], "installing fastvid with its test extras")
    STAMP.write_text(json.dumps(stamp), encoding="utf-8")
    say(f"set up in {VENV} (torch {got.stdout.strip()})")
    return py


def main(argv: list[str]) -> int:
    task, rest = (argv[0], argv[1:]) if argv else ("", [])
    if task not in ("demo", "test", "setup"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        py = setup()
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the next run starts the setup again", file=sys.stderr)
        return 130
    if task == "setup":
        return 0
    args = [str(py), "-m", "fastvid_cli", *DEMO, *rest] if task == "demo" else [str(py), "-m", "pytest", *rest]
    try:
        return subprocess.run(args, cwd=ROOT).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
