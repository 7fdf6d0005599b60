"""`fastvid serve` over real HTTP: a server on an ephemeral port (the demo model; the tiny random model where long
answers are needed), driven by the official `openai` client, httpx and raw sockets."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fastvid_cli.server import ServeConfig, Service  # noqa: E402
from fastvid_cli.server.settings import Defaults  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = REPO / "examples" / "demo.mp4"
from demo_example import ANSWER, QUESTION  # noqa: E402 - the README example: its question and answer
QUESTIONS = [QUESTION, "What shape is red? Answer the question using a single word or phrase.",
             "How many shapes are there? Answer the question using a single word or phrase.",
             "What colour is the circle? Answer the question using a single word or phrase.",
             "What happens in the video?", "Which shape appears first?", "What changes after the cut?",
             "Is there a square? Answer the question using a single word or phrase."]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """An allowed root holding the demo clip and a symlink that escapes it; a clip outside every root."""
    root = tmp_path_factory.mktemp("media")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(DEMO_CLIP, root / "demo.mp4")
    shutil.copy(DEMO_CLIP, outside / "secret.mp4")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "not-a-video.mp4").write_bytes(b"hello, this is text")
    return {"root": root, "clip": root / "demo.mp4", "outside": outside / "secret.mp4",
            "escape": root / "escape.mp4", "text": root / "not-a-video.mp4"}


@pytest.fixture(scope="module")
def service(media):
    svc = Service(ServeConfig(model="demo", device="cpu", dtype="float32", port=0, media_dirs=[str(media["root"])],
                              no_cache=True, max_upload_mb=0.05, batch_window_ms=50))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def url(service):
    return service.url


def file_url(path: Path) -> str:
    return "file://" + str(path)


def chat_body(video_url: str, question: str = QUESTION, **extra):
    return {"model": "demo", "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_url}},
                                                      {"type": "text", "text": question}]}], **extra}


def assert_openai_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_healthy(url, media):
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(file_url(media["clip"])), timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER


# ---------------------------------------------------------------------------------------------- answers
def test_openai_client_matches_ask_json(url, media):
    """The official client, streaming and not, gets the greedy answer that `fastvid ask --json` prints."""
    openai = pytest.importorskip("openai")
    from typer.testing import CliRunner

    from fastvid_cli.cli import app

    local = CliRunner().invoke(app, ["ask", str(media["clip"]), QUESTION, "--model", "demo", "--device", "cpu",
                                     "--no-cache", "--json"])
    assert local.exit_code == 0, local.stderr
    expected = json.loads(local.stdout)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": file_url(media["clip"])}},
                                             {"type": "text", "text": QUESTION}]}]
    resp = client.chat.completions.create(model="demo", messages=messages)
    assert resp.choices[0].message.content == expected["answer"] == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == expected["prompt_tokens_kept"]
    assert resp.usage.completion_tokens == expected["new_tokens"]
    report = resp.model_extra["fastvid"]
    for key in ("video_tokens_total", "video_tokens_kept", "prompt_tokens_total", "segments", "method", "ratio",
                "params", "frames", "frame_indices"):
        assert report[key] == expected[key], key
    assert set(expected) <= set(report)
    stream = client.chat.completions.create(model="demo", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["answer"]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1].model_extra["fastvid"]["answer"] == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected["new_tokens"]


def test_models_health_and_metrics(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "demo"}
    card = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert card["id"] == "demo" and card["object"] == "model"
    assert card["fastvid"]["device"] == "cpu" and "fastvid" in card["fastvid"]["methods"]
    text = httpx.get(f"{url}/metrics").text
    for name in ("fastvid_requests_total", "fastvid_queue_depth", "fastvid_ttft_seconds_bucket",
                 "fastvid_decode_tokens_per_second_bucket", "fastvid_feature_cache_total"):
        assert name in text


def test_follow_up_turn_reuses_the_video_prefix(url, media):
    body = chat_body(file_url(media["clip"]))
    first = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    answer = first["choices"][0]["message"]["content"]
    body["messages"] += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": "And what shape is red?"}]
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()["fastvid"]
    assert report["cache"] == "hit" and report["timings_ms"]["vision"] == 0.0
    assert report["timings_ms"]["prefix_prefill"] > 0  # the prefix KV cache of the first turn, reused
    assert report["prompt_tokens_kept"] > first["fastvid"]["prompt_tokens_kept"]  # the history is in the prompt


def test_concurrent_clients_get_the_sequential_answers(url, media):
    video = file_url(media["clip"])
    sequential = []
    for q in QUESTIONS:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(video, q), timeout=120)
        assert r.status_code == 200, r.text
        sequential.append(r.json()["choices"][0]["message"]["content"])
    results: dict[int, dict] = {}
    barrier = threading.Barrier(len(QUESTIONS))

    def client(i: int) -> None:
        barrier.wait()
        body = chat_body(video, QUESTIONS[i], stream=i % 2 == 1)
        if i % 2:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as s:
                text, report = "", None
                for line in s.iter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        text += "".join(c["delta"].get("content") or "" for c in event["choices"])
                        report = event.get("fastvid") or report
                results[i] = {"text": text, "report": report}
        else:
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            results[i] = {"text": r.json()["choices"][0]["message"]["content"], "report": r.json()["fastvid"]}

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i]["text"] for i in range(len(QUESTIONS))] == sequential
    modes = [results[i]["report"]["decode_mode"] for i in range(len(QUESTIONS))]
    assert any(m.startswith("batched x") for m in modes), modes  # decoded together, same answers


def test_concurrent_clients_on_different_videos_decode_together(url, media):
    """Each client asks about its own video (copies of the demo clip under other names: other sessions); one asks
    about a file that is no video. They are decoded as rows of one batched decode, with the answers they get alone,
    and the bad one fails alone."""
    videos = []
    for i in range(4):
        path = media["root"] / f"other-{i}.mp4"
        shutil.copy(DEMO_CLIP, path)
        videos.append(file_url(path))
    questions = QUESTIONS[:4]
    sequential = []
    for v, q in zip(videos, questions):  # alone (and each video's session made before the concurrent round)
        r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(v, q), timeout=120)
        assert r.status_code == 200, r.text
        sequential.append(r.json()["choices"][0]["message"]["content"])
    before = httpx.get(f"{url}/metrics").text
    jobs = [(v, q) for v, q in zip(videos, questions)] + [(file_url(media["text"]), QUESTION)]
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(len(jobs))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = httpx.post(f"{url}/v1/chat/completions", json=chat_body(*jobs[i]), timeout=120)

    for _ in range(3):  # the first request to come may be taken alone before the others arrive: a few rounds
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert_openai_error(results[len(jobs) - 1], 422, "unprocessable_video")
        got = [results[i].json() for i in range(len(videos))]
        assert [g["choices"][0]["message"]["content"] for g in got] == sequential
        batched = [g["fastvid"] for g in got if g["fastvid"]["decode_mode"].startswith("batched x")]
        if batched:
            break
    assert batched, [g["fastvid"]["decode_mode"] for g in got]
    assert all(any("other videos" in n for n in b["notes"]) for b in batched)
    after = httpx.get(f"{url}/metrics").text

    def batches_over_one(text: str) -> float:  # answers decoded in batches of 2 or more rows
        lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
                 if ln.startswith("fastvid_batch_size_")}
        return lines["fastvid_batch_size_count"] - lines['fastvid_batch_size_bucket{le="1"}']

    assert batches_over_one(after) > batches_over_one(before)


# ---------------------------------------------------------------------------------------------- bad requests
def test_malformed_json(url, media):
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "demo", "messages": [',
                   headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_json")
    assert_healthy(url, media)


@pytest.mark.parametrize("mutate,status,code,param", [
    (lambda b: b["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "x"}}), 400,
     "unsupported_content_type", "messages[0].content[2].type"),
    (lambda b: b.update(fastvid={"ratio": 1.5}), 400, "invalid_value", "fastvid.ratio"),
    (lambda b: b.update(fastvid={"ratio": "lots"}), 400, "invalid_value", "fastvid.ratio"),
    (lambda b: b.update(fastvid={"bogus": 1}), 400, "unknown_parameter", "fastvid.bogus"),
    (lambda b: b.update(fastvid={"method": "uniform", "c": 4}), 400, "unknown_parameter", "fastvid.c"),
    (lambda b: b.update(fastvid={"method": "magic"}), 400, "invalid_value", "fastvid.method"),
    (lambda b: b.update(temperature=-1), 400, "invalid_value", "temperature"),
    (lambda b: b.update(frobnicate=True), 400, "unknown_parameter", "frobnicate"),
    (lambda b: b.update(model="llava-ov-7b"), 404, "model_not_found", "model"),
    (lambda b: b["messages"][0]["content"].pop(0), 400, "invalid_request", "messages"),
    (lambda b: b["messages"][0]["content"][0]["video_url"].update(url="https://example.com/a.mp4"), 400,
     "unsupported_url", None),
])
def test_bad_requests_are_4xx_with_openai_bodies(url, media, mutate, status, code, param):
    body = chat_body(file_url(media["clip"]))
    mutate(body)
    err = assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60), status, code)
    if param is not None:
        assert err["param"] == param


def test_paths_outside_the_allowed_roots_are_refused(url, media):
    for path in (media["outside"], media["escape"], media["root"] / ".." / media["outside"].parent.name /
                 "secret.mp4"):
        err = assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=chat_body(file_url(path))), 403,
                                  "media_not_allowed")
        assert str(media["outside"].parent) not in err["message"] or str(path).startswith(
            str(media["outside"].parent))  # the target of a symlink is never revealed
    missing = media["root"] / "missing.mp4"
    err = assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=chat_body(file_url(missing))), 404,
                              "video_not_found")
    assert err["message"] == f"video not found: {missing}"
    err = assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=chat_body(file_url(media["text"])),
                                         timeout=60), 422, "unprocessable_video")
    assert str(media["text"]) in err["message"]
    assert_healthy(url, media)


def test_uploads_inline_and_oversized(service, url, media):
    data = base64.b64encode(DEMO_CLIP.read_bytes()).decode()
    r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(f"data:video/mp4;base64,{data}"), timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()["fastvid"]
    assert r.json()["choices"][0]["message"]["content"] == ANSWER
    assert report["video"].startswith("fastvid-upload:") and "/tmp" not in json.dumps(report["notes"])
    big = base64.b64encode(os.urandom(80_000)).decode()  # 80 kB > --max-upload-mb 0.05
    assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=chat_body(f"data:video/mp4;base64,{big}"),
                                   timeout=60), 413, "upload_too_large")
    assert_openai_error(httpx.post(f"{url}/v1/fastvid/uploads", content=os.urandom(80_000),
                                   headers={"content-type": "video/mp4"}), 413, "upload_too_large")
    up = httpx.post(f"{url}/v1/fastvid/uploads", content=DEMO_CLIP.read_bytes(), headers={"content-type": "video/mp4"})
    assert up.status_code == 200 and up.json()["id"] == report["video"]  # content-addressed: the same upload
    assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=chat_body("data:text/plain;base64,aGk=")),
                        415, "unsupported_media_type")
    assert not list(Path(service.state.uploads.root).glob(".part-*"))  # aborted uploads leave nothing behind
    assert_healthy(url, media)


def test_api_key(service, url, media):
    service.state.config.api_key = "s3cret"
    try:
        body = chat_body(file_url(media["clip"]))
        assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=body), 401, "invalid_api_key")
        assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=body,
                                       headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_openai_error(httpx.get(f"{url}/v1/models"), 401, "invalid_api_key")
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        ok = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"},
                        timeout=120)
        assert ok.status_code == 200
    finally:
        service.state.config.api_key = None
    assert_healthy(url, media)


def test_refuses_a_public_address_without_a_key():
    from fastvid_cli.errors import InvalidOptionError
    from fastvid_cli.server import check_config

    with pytest.raises(InvalidOptionError, match="without an API key"):
        check_config(ServeConfig(host="0.0.0.0"))
    check_config(ServeConfig(host="0.0.0.0", api_key="k"))
    check_config(ServeConfig(host="::1"))


def test_queue_full_is_429_with_retry_after(service, url, media):
    sched = service.state.scheduler
    old = sched.max_queue
    sched.max_queue = 0
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(file_url(media["clip"])))
        assert_openai_error(r, 429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        sched.max_queue = old
    assert_healthy(url, media)


# ---------------------------------------------------------------------------------------------- long answers
@pytest.fixture(scope="module")
def tiny_service(tiny_llava, tiny_saliency, media):
    svc = Service(ServeConfig(model=str(tiny_llava), device="cpu", dtype="float32", port=0,
                              saliency_model=str(tiny_saliency), media_dirs=[str(media["root"])], no_cache=True,
                              defaults=Defaults(frames=8)))
    svc.start()
    yield svc
    svc.stop()


def _sse_lines(sock_file):
    for raw in sock_file:
        line = raw.decode().strip()
        if line.startswith("data: "):
            yield line[6:]


def test_client_disconnecting_mid_stream_cancels_its_generation(tiny_service, media):
    url = tiny_service.url
    sched = tiny_service.state.scheduler
    body = chat_body(file_url(media["clip"]), "Describe everything.", stream=True, max_tokens=2000)
    body["model"] = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as s:
        lines = s.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                got += 1
                if got == 3:
                    break
    # the connection is closed: the worker stops after the current token and frees its slot
    deadline = time.time() + 30
    while (sched.running or sched.waiting) and time.time() < deadline:
        time.sleep(0.05)
    assert sched.running == 0 and not sched.waiting
    generated = tiny_service.state.metrics.generated
    r = httpx.post(f"{url}/v1/chat/completions", json={**chat_body(file_url(media["clip"]), max_tokens=3),
                                                       "model": None}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert tiny_service.state.metrics.generated == generated + 3  # the cancelled answer was never counted


def test_stop_sequences_cut_the_answer(tiny_service, media):
    """A stop string cuts the answer before its first occurrence. The tiny random model's answer to a prompt can be
    one character repeated (every piece of it first seen at 0), so the prompt is one whose answer has a piece first
    seen well inside it."""
    from fastvid_cli import synth

    url = tiny_service.url

    def clips():  # the demo clip, then more to try (the tiny model's answers depend on them), rendered as needed
        yield media["clip"]
        for seed in (2_000_126, 7, 11):
            yield synth.write_clip(media["root"] / f"stop_{seed}.mp4", synth.render(synth.generate(seed)[0]))

    at = None
    for clip, prompt in ((c, q) for c in clips() for q in ("Say something.", "What happens?")):
        body = {**chat_body(file_url(clip), prompt, max_tokens=40), "model": None}
        full = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"][
            "content"]
        at = next((k for k in range(3, len(full) - 2) if full.find(full[k:k + 2]) == k), None)  # first seen at k
        if at is not None:
            break
    assert at is not None, "no clip and prompt gave an answer with a piece first seen inside it"
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stop": ["\x00never", full[at:at + 2]]},
                   timeout=60).json()
    assert r["choices"][0]["message"]["content"] == full[:at]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_sigterm_during_a_stream_finishes_it_and_exits_0(tiny_llava, tiny_saliency, media):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastvid_cli", "serve", "--model", str(tiny_llava), "--saliency-model",
         str(tiny_saliency), "--device", "cpu", "--port", "0", "--frames", "8", "--no-cache",
         "--allowed-media-dir", str(media["root"])],
        cwd=str(media["root"]), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = None
        deadline = time.time() + 120
        for raw in proc.stderr:
            line = raw.decode()
            if "listening on " in line:
                url = line.split("listening on ")[1].split()[0]
            if "ready:" in line:
                break
            assert time.time() < deadline, "server did not start"
        assert url
        body = {**chat_body(file_url(media["clip"]), "Describe everything.", max_tokens=60, stream=True),
                "model": None}
        events = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as s:
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        proc.send_signal(signal.SIGTERM)
        assert events[-1] == "[DONE]"
        final = json.loads(events[-2])
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["fastvid"]["new_tokens"] == 60  # the answer in flight was finished, not cut
        assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):
            socket.create_connection((url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
