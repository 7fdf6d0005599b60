"""The server's pure parts, without a server: request parsing, streamed upload decoding, stop sequences."""

from __future__ import annotations

import base64
import json
import os
import random

import pytest

from fastvid_cli.server.errors import ApiError
from fastvid_cli.server.media import UPLOAD_SCHEME, BodyScanner, UploadStore
from fastvid_cli.server.protocol import parse_chat, parse_turns
from fastvid_cli.server.scheduler import StopText
from fastvid_cli.server.settings import Defaults, resolve

FAMILY = {"method_family": "llava", "frames": 32, "ratio": 0.1, "c": 8, "tau": 0.9, "d": 0.4, "p": 4, "beta": 0.6}


def video(url="file:///v.mp4"):
    return {"type": "video_url", "video_url": {"url": url}}


def test_turns_put_the_video_first_and_keep_the_history():
    t = parse_turns([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [video(), {"type": "text", "text": "What?"}]},
                     {"role": "assistant", "content": "A cat."},
                     {"role": "user", "content": "Which colour?"},
                     {"role": "user", "content": [{"type": "text", "text": "One word."}]}])
    assert t.video_url == "file:///v.mp4" and t.system == "Be brief."
    assert t.history == [("What?", "A cat.")] and t.question == "Which colour?\nOne word."


@pytest.mark.parametrize("messages,param", [
    ([{"role": "user", "content": "no video"}], "messages"),
    ([{"role": "user", "content": [video(), {"type": "text", "text": "a"}]}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": [video(), {"type": "text", "text": "c"}]}], "messages[2].content[0].video_url.url"),
    ([{"role": "user", "content": [video(), {"type": "text", "text": "a"}]}, {"role": "assistant", "content": "b"}],
     "messages"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": [video(), {"type": "input_audio"}]}], "messages[0].content[1].type"),
    ([{"role": "user", "content": [video(), {"type": "text", "text": "  "}]}], "messages[0].content"),
])
def test_bad_conversations_name_the_field(messages, param):
    with pytest.raises(ApiError) as e:
        parse_turns(messages)
    assert e.value.status == 400 and e.value.param == param


def test_chat_fields():
    body = {"model": "demo", "messages": [{"role": "user", "content": [video(), {"type": "text", "text": "q"}]}],
            "max_completion_tokens": 7, "temperature": 0, "stop": "###", "n": 1, "user": "me",
            "stream": True, "stream_options": {"include_usage": True}}
    req = parse_chat(body)
    assert (req.max_tokens, req.temperature, req.stop, req.stream, req.include_usage) == (7, 0.0, ["###"], True, True)
    for bad in ({"n": 2}, {"max_tokens": 0}, {"top_p": 0}, {"stop": [""]}, {"logprobs": True}, {"xyz": 1}):
        with pytest.raises(ApiError):
            parse_chat({**body, **bad})


def test_settings_resolve_like_ask():
    r = resolve({}, Defaults(), FAMILY)
    assert (r.method, r.ratio, r.params) == ("fastvid", 0.1, {"c": 8, "tau": 0.9, "d": 0.4, "p": 4, "beta": 0.6})
    r = resolve({"ratio": 0.25, "c": 4}, Defaults(params={"tau": 0.8}), FAMILY)
    assert r.ratio == 0.25 and r.params["c"] == 4 and r.params["tau"] == 0.8
    assert resolve({"method": "none"}, Defaults(ratio=0.3), FAMILY).ratio == 1.0
    assert resolve({"method": "holitom", "inner": [18, 0.5]}, Defaults(), FAMILY).params == {"inner": (18, 0.5)}
    assert resolve({"method": "uniform"}, Defaults(), FAMILY).params == {}
    for bad in ({"ignore": 0.9}, {"c": 1.5}, {"d": 2}, {"frames": 0}, {"method": "holitom", "inner": "x"},
                {"cache": "no"}, {"frames": 8, "fps": 2}):
        with pytest.raises(ApiError):
            resolve(bad, Defaults(), FAMILY)


def test_settings_take_any_registered_methods_parameters_by_name():
    qwen = {**FAMILY, "method_family": "qwen", "ratio": 0.27, "tau": 0.84, "ignore": 0.95}
    assert resolve({"method": "random", "seed": 3}, Defaults(), FAMILY).params == {"seed": 3}
    assert resolve({"method": "vidcom2", "variant": "vllm"}, Defaults(), FAMILY).params == {"variant": "vllm"}
    assert resolve({"method": "holitom", "inner": "18,0.5"}, Defaults(), FAMILY).params == {"inner": (18, 0.5)}
    r = resolve({"ignore": 0.9}, Defaults(), qwen)  # Qwen-VL's FastVID variant has it, with its own defaults
    assert r.params["ignore"] == 0.9 and r.params["tau"] == 0.84
    # the server's flags (by name) apply to the methods that take them; a request's own values win
    d = Defaults(params={"tau": 0.8, "inner": (12, 0.25)})
    assert resolve({"method": "holitom"}, d, FAMILY).params == {"inner": (12, 0.25)}
    assert resolve({"tau": 0.7}, d, FAMILY).params["tau"] == 0.7
    assert resolve({"method": "uniform"}, d, FAMILY).params == {}
    for bad in ({"method": "uniform", "tau": 0.8}, {"method": "vidcom2", "variant": 1}, {"xyz": 1},
                {"method": "random", "seed": -1}, {"k": 4}):
        with pytest.raises(ApiError) as e:
            resolve(bad, Defaults(), FAMILY)
        assert e.value.status == 400


def test_remote_ext_sends_method_options_by_name():
    from fastvid_cli.remote import _fastvid_ext

    ext = _fastvid_ext("holitom", None, None, None, {"inner": "18,0.5"}, baseline=None)
    assert ext == {"method": "holitom", "ratio": None, "frames": None, "fps": None, "inner": "18,0.5"}
    assert _fastvid_ext(None, 0.2, 8, None, {"tau": 0.8})["tau"] == 0.8


@pytest.fixture
def store():
    s = UploadStore(max_bytes=1 << 20)
    yield s
    s.close()


@pytest.mark.parametrize("seed", range(6))
def test_body_scanner_streams_data_urls_into_the_store(store, seed):
    rng = random.Random(seed)
    payload = rng.randbytes(rng.randrange(1, 40_000))  # deterministic: a failure must reproduce
    b64 = base64.b64encode(payload).decode()
    if seed % 2:  # some encoders escape "/" and wrap lines
        b64 = "\\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)).replace("/", "\\/")
    text = 'x "quoted \\" \\\\' + "é"
    raw = ('{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": '
           f'"data:video/mp4;base64,{b64}"}}}}, {{"type": "text", "text": {json.dumps(text)}}}]}}]}}').encode()
    scanner = BodyScanner(store)
    i = 0
    while i < len(raw):
        n = rng.randrange(1, 300)
        scanner.feed(raw[i:i + n])
        i += n
    body = json.loads(scanner.result())
    ref = body["messages"][0]["content"][0]["video_url"]["url"]
    assert ref.startswith(UPLOAD_SCHEME) and ref in scanner.placeholders
    assert body["messages"][0]["content"][1]["text"] == text
    path = store.ref(ref[len(UPLOAD_SCHEME):], None).path
    assert open(path, "rb").read() == payload
    assert len(scanner.result()) < 400  # the body kept in memory is small


@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_body_scanner_takes_an_upload_whose_head_ends_inside_an_escape(store, chunk):
    """The scanner decides from a string's first HEAD bytes whether it is a data URL; when the last of those bytes
    opens a JSON escape (the backslash of "\\/"), it is still an upload, and the escape is resolved across the
    cut (this made ~1 in 130 random uploads with escaped slashes stay inline)."""
    prefix = "data:video/mp4;base64,"
    for k in range(1000):  # a payload whose escaped base64 puts a backslash at the head's last byte
        payload = random.Random(k).randbytes(3000)
        text = prefix + base64.b64encode(payload).decode().replace("/", "\\/")
        if text[BodyScanner.HEAD - 1] == "\\":
            break
    raw = f'{{"u": "{text}"}}'.encode()
    scanner = BodyScanner(store)
    for i in range(0, len(raw), chunk or len(raw)):
        scanner.feed(raw[i:i + (chunk or len(raw))])
    ref = json.loads(scanner.result())["u"]
    assert ref.startswith(UPLOAD_SCHEME), ref[:40]
    assert open(store.ref(ref[len(UPLOAD_SCHEME):], None).path, "rb").read() == payload


def test_body_scanner_streams_a_data_url_whose_every_slash_is_escaped(store):
    """Some JSON encoders escape every "/", the media type's too ("data:video\\/mp4;base64,..."): still an upload."""
    payload = random.Random(3).randbytes(20_000)
    body = json.dumps({"u": "data:video/mp4;base64," + base64.b64encode(payload).decode()}).replace("/", "\\/")
    scanner = BodyScanner(store)
    scanner.feed(body.encode())
    ref = json.loads(scanner.result())["u"]
    assert ref.startswith(UPLOAD_SCHEME), ref[:40]
    assert open(store.ref(ref[len(UPLOAD_SCHEME):], None).path, "rb").read() == payload
    assert len(scanner.result()) < 200


def test_body_scanner_caps_uploads(store):
    big = base64.b64encode(os.urandom((1 << 20) + 10)).decode()
    scanner = BodyScanner(store)
    with pytest.raises(ApiError) as e:
        scanner.feed(f'{{"u": "data:video/mp4;base64,{big}"}}'.encode())
    assert e.value.status == 413
    assert os.listdir(store.root) == []


def test_stop_text_holds_back_a_possible_stop():
    t = StopText(["STOP"])
    assert t.feed("abc S") == "abc "
    assert t.feed("T") == ""
    assert t.feed("x") == "STx"
    assert t.feed("yST") == "y"
    assert t.feed("OPzz") == "" and t.hit and t.text == "abc STxy"
    plain = StopText([])
    assert plain.feed("S") == "S" and plain.flush() == ""


def test_batch_mates_prefer_the_same_video_then_take_other_videos():
    from fastvid_cli.server.media import VideoRef
    from fastvid_cli.server.metrics import Metrics
    from fastvid_cli.server.scheduler import Scheduler, Work
    from fastvid_cli.server.settings import Resolved
    from fastvid_cli.settings import GenerationOptions

    def work(video: str, **gen) -> Work:
        return Work(video=VideoRef(path=video, shown=video, identity=("file", video)), emit=lambda *_: None,
                    settings=Resolved(frames=8, fps=None, method="fastvid", ratio=0.25, params={}),
                    gen=GenerationOptions(max_new_tokens=gen.pop("max_new_tokens", 16), **gen), question="q")

    sched = Scheduler(engine=None, policy=None, metrics=Metrics(), max_batch=3, batch_window_s=0.0)
    first = work("a")
    a2, b1, b2, c_long, d_sampled = work("a"), work("b"), work("b"), work("c", max_new_tokens=99), \
        work("d", temperature=0.7)
    assert d_sampled.rows_key is None and c_long.rows_key != first.rows_key == b1.rows_key
    sched.waiting.extend([b1, a2, c_long, d_sampled, b2])
    assert sched._mates(first) == [a2]  # a request about first's video waits: one shared prefill, as before
    assert list(sched.waiting) == [b1, c_long, d_sampled, b2]
    assert sched._mates(first) == [b1, b2]  # none: the other videos with the same settings, in their order
    assert list(sched.waiting) == [c_long, d_sampled] and sched.running == 3
    sched.max_batch = 2
    sched.waiting.extend([b1, b2])
    assert sched._mates(first) == [b1] and list(sched.waiting) == [c_long, d_sampled, b2]  # capped at max rows
