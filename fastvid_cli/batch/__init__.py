"""Batch answering (being split into modules; see runner.py)."""

from fastvid_cli.batch.runner import *  # noqa: F401,F403
from fastvid_cli.batch.runner import _report_keys  # noqa: F401
