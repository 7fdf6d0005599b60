"""The request schemas: OpenAI Chat Completions (with fastvid's `fastvid` extension object) and fastvid's compare,
parsed from plain JSON into what the scheduler runs. No FastAPI and no torch here: every rule is a function of the
request and the server's settings, and every violation is an ApiError naming the offending field (`param`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fastvid_cli.server.errors import ApiError, bad_request

MAX_FRAMES = 4096
MAX_STOP = 4

# Accepted and ignored when they hold their neutral value (what the official clients may send).
_NEUTRAL: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False,
                            "top_logprobs": None, "parallel_tool_calls": None, "tools": None, "tool_choice": None,
                            "logit_bias": None}
_IGNORED = {"user", "metadata", "store", "service_tier", "reasoning_effort", "modalities", "prediction"}
_KNOWN = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "seed", "stop", "response_format", "fastvid"}


@dataclass
class Turns:
    """A conversation about one video: the video in the first user turn, earlier exchanges, the new question."""

    video_url: str
    video_param: str  # where the URL sits in the request, for error messages
    system: str | None
    history: list[tuple[str, str]]
    question: str


@dataclass
class ChatRequest:
    model: str | None
    turns: Turns
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ext: dict[str, Any] = field(default_factory=dict)  # the raw `fastvid` object, checked by settings.resolve


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(v: Any, param: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           integer: bool = False) -> float | int:
    """`v` as a number within bounds, or a 400 naming `param`."""
    if integer and not _is_int(v):
        raise bad_request(f"'{param}' must be an integer (got {v!r})", param, "invalid_value")
    if not _is_number(v):
        raise bad_request(f"'{param}' must be a number (got {v!r})", param, "invalid_value")
    too_low = low is not None and (v <= low if low_open else v < low)
    if too_low or (high is not None and v > high):
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}]"
        where = f"in {lo}, {hi}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low:g}" if low is not None else f"<= {high:g}")
        raise bad_request(f"'{param}' must be {where} (got {v!r})", param, "invalid_value")
    return v


def _text_of(content: Any, param: str, *, allow_video: bool) -> tuple[str, list[tuple[str, str]]]:
    """(text, videos) of a message's content: a string, or a list of parts (text / video_url)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request(f"'{param}' must be a string or a list of content parts", param)
    texts: list[str] = []
    videos: list[tuple[str, str]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{where}' must be an object with a 'type'", where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"'{where}.text' must be a string", f"{where}.text")
            texts.append(text)
        elif kind == "video_url" and allow_video:
            ref = part.get("video_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise bad_request(f"'{where}.video_url.url' must be a non-empty string", f"{where}.video_url.url")
            videos.append((url, f"{where}.video_url.url"))
        elif kind == "video_url":
            raise bad_request(f"'{where}': a video can only be sent in a user message", f"{where}.type",
                              "unsupported_content_type")
        else:
            raise bad_request(f"'{where}': content type {kind!r} is not supported (this server takes 'text' and "
                              "'video_url' parts)", f"{where}.type", "unsupported_content_type")
    return "\n".join(texts), videos


def parse_turns(messages: Any) -> Turns:
    """The conversation of `messages` (OpenAI schema): system/developer messages first, then user and assistant
    turns ending with a user turn; consecutive messages of one role are joined. Exactly one video, in the first
    user message."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[list[Any]] = []  # [role, text]
    videos: list[tuple[str, str, int]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object", where)
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            if turns:
                raise bad_request(f"'{where}': {role} messages must come before the conversation", f"{where}.role")
            text, _ = _text_of(content, f"{where}.content", allow_video=False)
            system.append(text)
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"'{where}.role' {role!r} is not supported (system, developer, user, assistant)",
                              f"{where}.role")
        if content is None:
            raise bad_request(f"'{where}.content' is missing", f"{where}.content")
        text, vids = _text_of(content, f"{where}.content", allow_video=role == "user")
        if turns and turns[-1][0] == role:  # a second message of the same role continues the turn
            turns[-1][1] = f"{turns[-1][1]}\n{text}" if turns[-1][1] and text else turns[-1][1] or text
        else:
            turns.append([role, text])
        videos += [(url, param, len(turns) - 1) for url, param in vids]  # (url, where, turn index)
    if not turns or turns[0][0] != "user":
        raise bad_request("the conversation must start with a user message holding the video", "messages")
    if turns[-1][0] != "user":
        raise bad_request("the last message must be a user message (the question to answer)", "messages")
    if not videos:
        raise bad_request("the first user message needs a video: a {\"type\": \"video_url\", \"video_url\": "
                          "{\"url\": \"file:///abs/clip.mp4\"}} part (or a data:video/...;base64 URL)", "messages")
    if len(videos) > 1 or videos[0][2] != 0:
        url, param, _ = videos[1] if len(videos) > 1 else videos[0]
        raise bad_request("one video per conversation, in the first user message", param)
    question = turns[-1][1]
    if not question.strip():
        raise bad_request("the question is empty", f"messages[{len(messages) - 1}].content")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return Turns(video_url=videos[0][0], video_param=videos[0][1], system="\n".join(system) if system else None,
                 history=history, question=question)


def parse_chat(body: Any) -> ChatRequest:
    """A Chat Completions request body, checked field by field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key, value in body.items():
        if key in _KNOWN or key in _IGNORED:
            continue
        if key in _NEUTRAL:
            if value not in (_NEUTRAL[key], None) and not (key == "tools" and value == []):
                raise bad_request(f"'{key}' = {value!r} is not supported by this server", key, "unsupported_value")
            continue
        raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    req = ChatRequest(model=model, turns=parse_turns(body.get("messages")))
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream")
    req.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise bad_request("'stream_options' takes only include_usage", "stream_options")
        req.include_usage = bool(opts.get("include_usage"))
    a, b = body.get("max_tokens"), body.get("max_completion_tokens")
    if a is not None and b is not None and a != b:
        raise bad_request("'max_tokens' and 'max_completion_tokens' differ; send one", "max_completion_tokens")
    n = b if b is not None else a
    if n is not None:
        req.max_tokens = int(number(n, "max_completion_tokens" if b is not None else "max_tokens", low=1,
                                    integer=True))
    if body.get("temperature") is not None:
        req.temperature = float(number(body["temperature"], "temperature", low=0, high=2))
    if body.get("top_p") is not None:
        req.top_p = float(number(body["top_p"], "top_p", low=0, high=1, low_open=True))
    if body.get("seed") is not None:
        req.seed = int(number(body["seed"], "seed", integer=True))
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or len(stops) > MAX_STOP
                or not all(isinstance(s, str) and s for s in stops)):
            raise bad_request(f"'stop' must be a non-empty string or a list of at most {MAX_STOP}", "stop")
        req.stop = list(stops)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad_request("'response_format' other than text is not supported", "response_format",
                          "unsupported_value")
    ext = body.get("fastvid")
    if ext is not None and not isinstance(ext, dict):
        raise bad_request("'fastvid' must be an object", "fastvid")
    req.ext = dict(ext or {})
    return req


@dataclass
class CompareRequest:
    """fastvid's compare (POST /v1/fastvid/compare): the arguments of `fastvid compare` as JSON."""

    video_url: str
    question: str
    methods: list[str]
    ratios: list[float]
    params: dict[str, Any]
    inner: Any
    frames: int | None
    fps: float | None
    repeat: int
    baseline: bool
    max_new_tokens: int
    system: str | None
    compile: bool | None
    cache: bool
    select: Any = None  # --select: the request's {"select": K, "candidates": M}, resolved by the app (SelectOptions)


def parse_compare(body: Any) -> CompareRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    known = {"model", "video", "question", "methods", "ratios", "params", "inner", "frames", "fps", "repeat",
             "baseline", "max_new_tokens", "system", "compile", "cache", "select", "candidates"}
    for key in body:
        if key not in known:
            raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    video, question = body.get("video"), body.get("question")
    if not isinstance(video, str) or not video:
        raise bad_request("'video' must be a file:// or data: URL", "video")
    if not isinstance(question, str) or not question.strip():
        raise bad_request("the question is empty", "question")
    methods = body.get("methods") or ["fastvid"]
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise bad_request("'methods' must be a list of method names", "methods")
    ratios = body.get("ratios") or [0.5, 0.25, 0.1]
    if not isinstance(ratios, list):
        raise bad_request("'ratios' must be a list of numbers", "ratios")
    ratios = [float(number(r, "ratios", low=0, high=1, low_open=True)) for r in ratios]
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise bad_request("'params' must be an object", "params")
    frames = body.get("frames")
    fps = body.get("fps")
    comp = body.get("compile")
    if comp is not None and not isinstance(comp, bool):
        raise bad_request("'compile' must be true, false or null", "compile")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise bad_request("'system' must be a string", "system")
    return CompareRequest(
        video_url=video, question=question, methods=methods, ratios=ratios, params=params, inner=body.get("inner"),
        frames=None if frames is None else int(number(frames, "frames", low=1, high=MAX_FRAMES, integer=True)),
        fps=None if fps is None else float(number(fps, "fps", low=0, low_open=True)),
        repeat=int(number(body.get("repeat", 3), "repeat", low=1, high=100, integer=True)),
        baseline=bool(body.get("baseline", True)),
        max_new_tokens=int(number(body.get("max_new_tokens", 128), "max_new_tokens", low=1, integer=True)),
        system=system, compile=comp, cache=bool(body.get("cache", True)),
        select={k: body[k] for k in ("select", "candidates") if k in body})
