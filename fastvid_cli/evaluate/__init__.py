"""Benchmark evaluation (being split into modules; see runner.py)."""

from fastvid_cli.evaluate.runner import *  # noqa: F401,F403
