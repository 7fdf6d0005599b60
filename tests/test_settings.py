"""settings.py: a model's run settings resolved in one place — its family, its defaults without loading it, and
what to sample of a video — the same for ask/compare (frame_request), batch/eval (sampling_settings) and the
loaded engine (FamilyAdapter.frame_plan)."""

from __future__ import annotations

import json

import pytest

from fastvid_cli import pruning
from fastvid_cli.errors import InvalidOptionError, ModelUnavailableError, UnknownModelError
from fastvid_cli.models import ALIASES, adapter_class
from fastvid_cli.settings import family_defaults, frame_request, model_family, sampling_settings


def alias_defaults(name: str) -> dict:
    return dict(adapter_class(ALIASES[name].family).defaults)


@pytest.mark.parametrize("model, frames, fps, count, recorded", [
    ("llava-ov-7b", None, None, 32, (32, None)),
    ("llava-ov-7b", 8, None, 8, (8, None)),
    ("llava-video-7b", None, None, 64, (64, None)),  # the alias's default, not the family's 32
    ("demo", None, None, 16, (16, None)),
    ("qwen2.5-vl-7b", None, None, {"fps": 2.0}, (None, 2.0)),
    ("qwen2.5-vl-7b", None, 1.5, {"fps": 1.5}, (None, 1.5)),
    ("qwen3-vl-2b", 6, None, {"frames": 6}, (6, None)),
])
def test_the_sampler_and_the_records_resolve_the_same_request(model, frames, fps, count, recorded):
    """`ask` samples what `batch`/`eval` record: a count for uniform families, a rate (or a count) for Qwen-VL."""
    request = frame_request(model, frames, fps)
    if isinstance(count, int):
        assert request == count
    else:  # the family's own plan: what it asks for is in its key
        assert {k: request.key()[k] for k in count} == count
        assert request(48, 24.0) == adapter_class(ALIASES[model].family).frame_plan(frames, fps)(48, 24.0)
    assert sampling_settings(model, frames, fps, alias_defaults(model)) == recorded


@pytest.mark.parametrize("model, frames, fps, words", [
    ("llava-ov-7b", None, 2.0, "--fps applies to the Qwen-VL families"),
    ("llava-ov-7b", 8, 2.0, "--fps applies to the Qwen-VL families"),
    ("qwen2.5-vl-7b", 8, 2.0, "--frames and --fps exclude each other"),
    ("qwen2.5-vl-7b", None, 0.0, "--fps must be > 0"),
    ("qwen2.5-vl-7b", 0, None, "--frames must be >= 1"),
])
def test_bad_requests_fail_alike_everywhere(model, frames, fps, words):
    family = adapter_class(ALIASES[model].family)
    for resolve in (lambda: frame_request(model, frames, fps),
                    lambda: sampling_settings(model, frames, fps, dict(family.defaults)),
                    lambda: family.frame_plan(frames, fps)):  # what a loaded engine asks (Engine.frame_plan)
        with pytest.raises(InvalidOptionError) as e:
            resolve()
        assert e.value.one_line().startswith(words) and e.value.exit_code == 2


def test_a_loaded_engine_defaults_to_its_family_not_its_alias():
    """Engine.frame_plan knows no alias: 32 frames for any LLaVA-OV checkpoint (the CLI passes the alias's count)."""
    llava = adapter_class("llava_onevision")
    assert llava.frame_plan() == 32 and llava.frame_plan(5) == 5
    assert adapter_class("qwen2_5_vl").frame_plan().key()["fps"] == 2.0


def test_the_family_of_a_checkpoint_folder(tiny_llava, tmp_path):
    assert model_family("qwen3-vl-8b") == "qwen3_vl"  # an alias: no file read
    assert model_family(str(tiny_llava)) == "llava_onevision"
    llava = adapter_class("llava_onevision")  # its sampling, then the methods' defaults for its method family
    assert family_defaults(str(tiny_llava)) == {**llava.defaults, **pruning.family_defaults(llava.method_family)}
    assert family_defaults(str(tiny_llava))["ratio"] == 0.1
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert model_family(str(bert)) == "bert"
    assert frame_request(str(bert)) == 32  # sampled as a count; the load then says the family is unsupported
    with pytest.raises(UnknownModelError) as e:
        family_defaults(str(bert))
    assert "unsupported architecture 'bert'" in e.value.one_line() and "llava_onevision" in e.value.one_line()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert model_family(str(broken)) is None and frame_request(str(broken), 12) == 12
    with pytest.raises(ModelUnavailableError, match="could not read config of"):
        family_defaults(str(broken))
