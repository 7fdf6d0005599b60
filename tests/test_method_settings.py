"""What every pruning method records as its settings in batch and eval outputs, pinned.

The fingerprints below were computed by the code before the pruning methods described themselves (issue 13): an
output written then must still resume, so a change that alters one of them is a change of FINGERPRINT_VERSION, not
of this table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastvid_cli import batch as B
from fastvid_cli import evaluate as E

LLAVA = dict(frames=32, method="fastvid", ratio=0.1, c=8, tau=0.9, d=0.4, p=4, beta=0.6)
# the family's defaults as Engine.defaults gives them (the method family: which variant and defaults it runs)
QWEN = dict(frames=None, fps=2.0, method="fastvid", ratio=0.27, c=8, tau=0.84, ignore=0.95, d=0.4, p=4, beta=0.6,
            method_family="qwen")
FASTVID = {"beta": 0.6, "c": 8, "d": 0.4, "p": 4, "tau": 0.9}
SIGLIP = "google/siglip-so400m-patch14-384"


# ---------------------------------------------------------------------------------------------- batch
def batch_settings(tmp_path: Path, method: str, defaults=LLAVA, model="llava-ov-7b", dtype="float32",
                   options: dict | None = None, row: B.Row | None = None, **kw) -> dict:
    """The settings of a batch row, as `fastvid batch --method METHOD` with the method options `options` (by
    parameter name: c, tau, ..., inner) records them."""
    cfg = B.BatchConfig(questions=tmp_path / "q.csv", output=tmp_path / "o.jsonl", model=model, method=method,
                        params=dict(options or {}), **kw)
    settings = B.base_settings(cfg, defaults, dtype)
    return settings if row is None else B.row_settings(row, settings)


BATCH_CASES = [
    # (method, defaults, model, dtype, options, extra BatchConfig fields) -> (params, ratio, saliency, fingerprint)
    (("fastvid", LLAVA, "llava-ov-7b", "float32", {}, {}), (FASTVID, 0.1, SIGLIP, "453a18e83b70")),
    (("fastvid", LLAVA, "llava-ov-7b", "float32", {"c": 4, "tau": 0.8}, {}),
     ({**FASTVID, "c": 4, "tau": 0.8}, 0.1, SIGLIP, "9a1060425b5c")),
    (("none", LLAVA, "llava-ov-7b", "float32", {}, {}), ({}, 1.0, None, "636243f022e3")),
    (("uniform", LLAVA, "llava-ov-7b", "float32", {}, {"ratio": 0.25}), ({}, 0.25, None, "f1ab90889381")),
    (("random", LLAVA, "llava-ov-7b", "float32", {}, {}), ({}, 0.1, None, "bb293c33d4a1")),
    (("holitom", LLAVA, "llava-ov-7b", "float32", {}, {}), ({}, 0.1, None, "0296985385ce")),
    (("holitom", LLAVA, "llava-ov-7b", "float32", {"inner": "1,0.5"}, {}),
     ({"inner": [1, 0.5]}, 0.1, None, "24eacd172252")),
    (("holitom-orig", LLAVA, "llava-ov-7b", "float32", {}, {}), ({}, 0.1, None, "8405ec2c1c3f")),
    (("fastvid", QWEN, "qwen2.5-vl-7b", "bfloat16", {}, {}),
     ({**FASTVID, "ignore": 0.95, "tau": 0.84}, 0.27, SIGLIP, "2ebe51943d73")),
    (("fastvid", QWEN, "qwen2.5-vl-7b", "bfloat16", {"ignore": 0.9}, {}),
     ({**FASTVID, "ignore": 0.9, "tau": 0.84}, 0.27, SIGLIP, "1192d0412ebd")),
    (("holitom-orig", QWEN, "qwen2.5-vl-7b", "bfloat16", {}, {}), ({}, 0.27, None, "64abf0445dd9")),
]


@pytest.mark.parametrize("case, expected", BATCH_CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, (c, _) in
                                                            enumerate(BATCH_CASES)])
def test_batch_settings_of_every_method_are_those_of_earlier_versions(tmp_path, case, expected):
    method, defaults, model, dtype, options, extra = case
    s = batch_settings(tmp_path, method, defaults, model, dtype, options, **extra)
    assert json.loads(json.dumps(s["params"])) == expected[0]
    assert list(s["params"]) == sorted(s["params"])
    assert (s["ratio"], s["saliency_model"], B.fingerprint(s)) == expected[1:]


def test_batch_row_ratio_of_fastvid_is_that_of_earlier_versions(tmp_path):
    row = B.Row(row=1, id="1", video="v", path="v", question="q", ratio=0.2, raw_ratio="0.2")
    s = batch_settings(tmp_path, "fastvid", row=row)
    assert (s["ratio"], B.fingerprint(s)) == (0.2, "7d0f8ade46ff")


@pytest.mark.parametrize("method", ["uniform", "random", "holitom", "holitom-orig"])
def test_batch_row_ratio_applies_to_every_method_that_prunes(tmp_path, method):
    """A row's ratio cell overrides --ratio for every method (it was read for fastvid alone); none keeps 1.0."""
    row = B.Row(row=1, id="1", video="v", path="v", question="q", ratio=0.2, raw_ratio="0.2")
    assert batch_settings(tmp_path, method, row=row)["ratio"] == 0.2
    bad = B.Row(row=1, id="1", video="v", path="v", question="q", raw_ratio="x")
    assert batch_settings(tmp_path, method, row=bad)["ratio"] == "x"  # an invalid cell enters as its text
    assert batch_settings(tmp_path, "none", row=row)["ratio"] == 1.0


# ---------------------------------------------------------------------------------------------- eval
class SettingsEngine:
    """Supplies the defaults and dtype of an eval plan."""

    dtype = "torch.float32"

    def __init__(self, defaults: dict):
        self.defaults = defaults


METHODS = ["fastvid", "uniform", "random", "holitom", "holitom-orig"]
HOLITOM = {"beta": 0.6, "k": 7, "max_window": 1024}


def eval_plan(tmp_path: Path, defaults=LLAVA, options: dict | None = None, **kw) -> dict:
    """{setting label: (params, saliency_model, fingerprint)} of `fastvid eval --method M ...` for every method."""
    (tmp_path / "a.mp4").write_bytes(b"")
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"id": "q1", "video": "a.mp4", "question": "Q?", "options": ["a", "b", "c", "d"],
                                 "answer": "A"}) + "\n")
    cfg = E.EvalConfig(bench=bench, output=tmp_path / "o.jsonl", model="llava-ov-0.5b", methods=METHODS,
                       ratios=[0.5], params=dict(options or {}), **{"frames": 4, **kw})
    plan = E.make_plan(cfg, SettingsEngine(defaults))
    return {s.label: (json.loads(json.dumps(s.param_dict())), plan.full_settings[("q1", s.label)]["saliency_model"],
                      plan.fp(plan.questions[0], s)) for s in plan.settings}


def test_eval_settings_of_every_method_are_those_of_earlier_versions(tmp_path):
    assert eval_plan(tmp_path) == {
        "none@1": ({}, None, "9ff7bb906643"),
        "fastvid@0.5": ({**FASTVID, "k": 4}, None, "a90c86f939c2"),
        "uniform@0.5": ({}, None, "d5cfc6661960"),
        "random@0.5": ({"seed": 0}, None, "39f6bf52bc1e"),
        "holitom@0.5": ({**HOLITOM, "positions": "compact"}, None, "8b0716bbb38e"),
        "holitom-orig@0.5": ({**HOLITOM, "positions": "original"}, None, "75fa9cc20104"),
    }
    given = eval_plan(tmp_path, options={"tau": 0.8, "seed": 5, "inner": "1,0.5"}, saliency_model="fallback")
    assert given == {
        "none@1": ({}, None, "9ff7bb906643"),
        "fastvid@0.5": ({**FASTVID, "k": 4, "tau": 0.8}, "fallback", "cb19c03ac1a2"),
        "uniform@0.5": ({}, None, "d5cfc6661960"),
        "random@0.5": ({"seed": 5}, None, "efebf0078ef0"),
        "holitom@0.5": ({**HOLITOM, "inner": [1, 0.5], "positions": "compact"}, None, "5ddb99f3e3f3"),
        "holitom-orig@0.5": ({**HOLITOM, "inner": [1, 0.5], "positions": "original"}, None, "8fb4453bed56"),
    }


def test_eval_settings_on_qwen_are_those_of_earlier_versions(tmp_path):
    qwen = {**FASTVID, "k": 4, "tau": 0.84, "ignore": 0.95}
    expected = {
        "none@1": ({}, None, "00de08ac66ac"),
        "fastvid@0.5": (qwen, None, "9c3e9c43316f"),
        "uniform@0.5": ({}, None, "117d07138365"),
        "random@0.5": ({"seed": 0}, None, "dd87dd5c9429"),
        "holitom@0.5": ({**HOLITOM, "positions": "compact"}, None, "80c51ee071ca"),
        "holitom-orig@0.5": ({**HOLITOM, "positions": "original"}, None, "448b05c995cc"),
    }
    assert eval_plan(tmp_path, QWEN, frames=None) == expected
    ignore = eval_plan(tmp_path, QWEN, options={"ignore": 0.9}, frames=None)
    assert ignore == {**expected, "fastvid@0.5": ({**qwen, "ignore": 0.9}, None, "a9b70ea7c177")}
