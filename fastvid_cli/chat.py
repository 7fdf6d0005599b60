"""`fastvid chat VIDEO`: a conversation about one video, with a local model or a running server.

Each answer streams to stdout and is followed by a one-line summary on stderr (tokens kept, TTFT, decode speed,
where it ran). Follow-up questions keep the conversation (the earlier turns are in the prompt) and start from the
video's prompt-prefix KV cache; the video is sampled, encoded and pruned once per setting. Commands: /help,
/ratio R, /method M, /frames N, /video PATH, /system TEXT, /reset, /settings, /quit.

When stdin is not a terminal, every input line is one question (or a command) and every answer is printed on one
line (its line breaks become spaces); `--json` prints one JSON object per question instead (the fields of
`ask --json`; a failed question gives {"question", "error", "exit_code"}).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastvid_cli import pruning
from fastvid_cli.errors import FastVidError, InvalidOptionError

HELP = """commands:
  /ratio R        retention ratio in (0, 1] for the next answers
  /method M       pruning method (one of the registry's: """ + ", ".join(pruning.method_names()) + """)
  /frames N       N uniformly spaced frames (the video is sampled and encoded again; ends /select)
  /select K|off   K frames chosen for the next question (query-aware selection), or uniform frames again
  /video PATH     talk about another video (starts a new conversation)
  /system TEXT    system prompt (empty: none); /reset to start over with it
  /reset          forget the conversation so far (the video's features stay)
  /settings       show the current settings
  /quit           leave (also Ctrl-D)"""


@dataclass
class ChatSettings:
    video: str
    method: str | None = "fastvid"  # None (chat --server without --method): the server's default
    ratio: float | None = None
    frames: int | None = None
    fps: float | None = None
    # the method options given on the command line, by parameter name ({"tau": 0.8, "inner": "18,0.5"}); the
    # current method takes those that are its own
    params: dict[str, Any] = field(default_factory=dict)
    gen: dict[str, Any] = field(default_factory=dict)  # max_new_tokens, temperature, top_p, seed, system, compile
    cache: bool = True  # the on-disk feature cache of a local chat (a server decides about its own)
    # --select K (settings.SelectOptions): the frames are chosen for the conversation's opening question and kept
    # for its follow-ups (a conversation is about one set of frames; /reset lets the next question choose again)
    select: Any = None


def stats_line(r: dict[str, Any], where: str | None = None) -> str:
    """One line about an answer: what was kept, how fast, where it ran."""
    t = r.get("timings_ms") or {}
    total, kept = r.get("video_tokens_total") or 0, r.get("video_tokens_kept") or 0
    method = pruning.method_label(r.get("method"), r.get("ratio"))
    parts = [f"{kept}/{total} video tokens ({method})", f"prompt {r.get('prompt_tokens_kept')} tokens"]
    if t.get("ttft") is not None:
        parts.append(f"TTFT {_ms(t['ttft'])}")
    tps = r.get("decode_tokens_per_s")
    parts.append(f"{r.get('new_tokens')} tokens" + (f" at {tps:.1f} tok/s" if tps else ""))
    if r.get("cache") == "hit":
        parts.append("features cached")
    if r.get("stop_reason") not in (None, "", "eos"):
        parts.append(f"stopped: {r['stop_reason']}")
    parts.append(where or f"{r.get('device')} · {r.get('model')}")
    return " · ".join(parts)


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v < 1000 else f"{v / 1e3:.2f} s"


class LocalBackend:
    """A model loaded in this process; the video's features and pruned sessions are kept between questions."""

    def __init__(self, engine, model: str, feature_cache=None):
        self.engine = engine
        self.model = model
        self.feature_cache = feature_cache
        self.features: dict[tuple, tuple] = {}  # (video, frames plan) -> (clip, feats, timings, cache status)
        self.scorer = None  # --select: the frame scorer, loaded at the first question
        self.candidates: dict[tuple, Any] = {}  # --select: (video, selection) -> frame_choice.Candidates
        self.selections: dict[tuple, dict] = {}  # --select: (video, frames plan) -> the selection's record
        self.sessions: dict[tuple, Any] = {}
        self.where = f"{engine.device} · {engine.model_name}"

    def _chosen(self, s: ChatSettings, opening: str):
        """--select: (the K-frame clip chosen for `opening`, the selection's record); the video's candidates are
        decoded and embedded once."""
        from fastvid_cli.frame_choice import choose, sample_candidates

        if self.scorer is None:
            from fastvid_cli.frame_scorer import load_scorer, selector_source
            from fastvid_cli.models import resolve_model

            self.scorer = load_scorer(selector_source(s.select.selector, resolve_model(self.model)),
                                      self.engine.adapter.vision_device)
        ckey = (os.path.realpath(s.video), json.dumps(s.select.key(), sort_keys=True))
        if ckey not in self.candidates:
            self.candidates = {ckey: sample_candidates(s.video, s.select, self.scorer, decoder=self.engine.decoder,
                                                          texts=[opening])}
        return choose(self.candidates[ckey], opening, s.select)

    def _session(self, s: ChatSettings, opening: str = ""):
        from fastvid_cli.engine import PruneOptions
        from fastvid_cli.settings import frame_request

        eng = self.engine
        if s.select is not None:  # the frames chosen for the conversation's opening question
            plan, plan_key = None, ("select", json.dumps(s.select.key(), sort_keys=True), opening)
        else:
            plan = frame_request(self.model, s.frames, s.fps)
            plan_key = plan.key() if hasattr(plan, "key") else plan
        prune = PruneOptions(method=s.method, ratio=resolve_ratio(s, eng.defaults), params=local_params(s, eng.defaults))
        key = (os.path.realpath(s.video), plan_key, prune.method, prune.ratio,
               json.dumps(prune.params, sort_keys=True, default=str), s.gen.get("system"))
        if key in self.sessions:
            return self.sessions[key], 0.0
        t0 = time.perf_counter()
        fkey = key[:2]
        if fkey in self.features:  # features of this video in memory: only pruning is done again
            clip, feats, timings, status = self.features[fkey]
            sess = eng.session_from_features(s.video, clip, feats, prune, timings, system=s.gen.get("system"))
            sess.cache_status = "hit"
        elif s.select is not None:
            clip, info = self._chosen(s, opening)
            sess = eng.session(s.video, prune=prune, system=s.gen.get("system"), clip=clip,
                               sample_ms=info["timings_ms"]["sample_candidates"])
            self.features = {fkey: (sess.clip, sess.feats, dict(sess.timings), sess.cache_status)}
            self.selections[fkey] = info
        else:
            counted = isinstance(plan, int)
            sess = eng.session(s.video, frames=plan if counted else s.frames, fps=None if counted else s.fps,
                               prune=prune, system=s.gen.get("system"),
                               feature_cache=self.feature_cache if s.cache else None)
            self.features = {fkey: (sess.clip, sess.feats, dict(sess.timings), sess.cache_status)}
        self.sessions = {k: v for k, v in self.sessions.items() if k[0] == key[0]}  # one video's sessions at a time
        self.sessions[key] = sess
        return sess, (time.perf_counter() - t0) * 1e3

    def answer(self, s: ChatSettings, question: str, history: list[tuple[str, str]],
               on_text: Callable[[str], None] | None) -> dict[str, Any]:
        from fastvid_cli.engine import GenerationOptions

        opening = history[0][0] if history else question
        sess, lead = self._session(s, opening)
        gen = GenerationOptions(**s.gen)
        report = sess.answer(question, gen, lead_ms=lead, on_text=on_text, history=history, reuse_prefix=True)
        if s.select is not None:
            report.selection = self.selections.get((os.path.realpath(s.video),
                                                    ("select", json.dumps(s.select.key(), sort_keys=True), opening)))
        data = report.to_dict()
        data["timings_ms"]["load"] = round(self.engine.load_ms or 0.0, 3)
        return data


class RemoteBackend:
    """A `fastvid serve` process: every question is one streamed chat completion with the conversation so far."""

    def __init__(self, client, model: str | None):
        self.client = client
        self.model = model
        self.where = f"on {client.url}"

    def answer(self, s: ChatSettings, question: str, history: list[tuple[str, str]],
               on_text: Callable[[str], None] | None) -> dict[str, Any]:
        from fastvid_cli.client import ask_payload

        ext = remote_ext(s)

        def send(url: str) -> dict[str, Any]:
            return self.client.chat(ask_payload(url, question, model=self.model, gen=s.gen, fastvid=ext,
                                                history=history), on_text)

        report = self.client.with_video(s.video, send)["report"]
        report["video"] = s.video
        return report


def resolve_ratio(s: ChatSettings, defaults: dict[str, Any]) -> float:
    from fastvid_cli.pruning import ratio_for

    return ratio_for(s.method or pruning.DEFAULT_METHOD, s.ratio or None, defaults["ratio"])


def own_params(s: ChatSettings) -> dict[str, Any]:
    """The given method options that the current method takes (on some family); all of them for the server's
    default method (None)."""
    if s.method is None:
        return dict(s.params)
    from fastvid_cli.pruning import spec_of

    names = {p.name for p in spec_of(s.method).all_params()}
    return {k: v for k, v in s.params.items() if k in names}


def local_params(s: ChatSettings, defaults: dict[str, Any]) -> dict[str, Any]:
    """Pruning parameters as `ask` resolves them (pruning.resolve_params on the model's method family): the given
    options of the current method, else the family's defaults."""
    from fastvid_cli.pruning import check_options, resolve_params

    family = defaults.get("method_family")
    given = own_params(s)
    check_options([s.method], family, given)
    return resolve_params(s.method, family, given)


def remote_ext(s: ChatSettings) -> dict[str, Any]:
    """The request's `fastvid` object for these settings (what is left out: the server's defaults)."""
    ext: dict[str, Any] = {"method": s.method, "ratio": s.ratio, "frames": s.frames, "fps": s.fps}
    if s.select is not None:  # as a local chat: the chosen frames, not /frames (the server keeps the opening's)
        from fastvid_cli.remote import select_ext

        ext.update(frames=None, fps=None, **select_ext(s.select))
    ext.update({k: list(v) if isinstance(v, tuple) else v for k, v in own_params(s).items()})
    if s.gen.get("compile") is not None:
        ext["compile"] = s.gen["compile"]
    return ext


class Chat:
    """The conversation: settings, history, commands. `backend.answer` does the work."""

    def __init__(self, backend, settings: ChatSettings, *, as_json: bool = False, quiet: bool = False,
                 out=None, err=None):
        self.backend = backend
        self.s = settings
        self.select_default = settings.select  # --select as given: /select K keeps its candidates and selector
        self.history: list[tuple[str, str]] = []
        self.as_json = as_json
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.first_error: FastVidError | None = None

    # ------------------------------------------------------------------ output
    def note(self, text: str) -> None:
        from fastvid_cli.ui import err_console

        if self.err is sys.stderr:
            err_console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.err)

    def stats(self, text: str) -> None:
        from fastvid_cli.ui import err_console

        if self.err is sys.stderr:
            err_console.print(f"[dim]{text}[/]", highlight=False, soft_wrap=True)
        else:
            print(text, file=self.err)

    def error(self, e: FastVidError, question: str | None = None) -> None:
        if self.first_error is None:
            self.first_error = e
        if self.as_json and question is not None:
            self.out.write(json.dumps({"question": question, "error": e.one_line(), "exit_code": e.exit_code},
                                      ensure_ascii=False) + "\n")
            self.out.flush()
            return
        from fastvid_cli.ui import error_line

        if self.err is sys.stderr:
            error_line(e.one_line())
        else:
            print(f"error: {e.one_line()}", file=self.err)

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Run a /command; False when the conversation ends."""
        from fastvid_cli.pruning import method_names

        name, _, arg = line[1:].partition(" ")
        name, arg = name.strip().lower(), arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "?", "h"):
            self.note(HELP)
        elif name == "reset":
            self.history = []
            self.note("conversation reset")
        elif name == "ratio":
            try:
                r = float(arg)
            except ValueError:
                r = float("nan")
            if not 0 < r <= 1:
                raise InvalidOptionError(f"/ratio takes a number in (0, 1] (got '{arg}')")
            self.s.ratio = r
            if self.s.method is not None and pruning.spec_of(self.s.method).keeps_all:  # a ratio means pruning
                self.s.method = pruning.DEFAULT_METHOD
            self.note(f"ratio {r:g} ({self.s.method or 'the default method'}) from the next answer on")
        elif name == "method":
            if arg not in method_names():
                raise InvalidOptionError(f"/method takes one of {', '.join(method_names())} (got '{arg}')")
            self.s.method = arg
            self.note(f"method {arg} from the next answer on")
        elif name == "frames":
            if not arg.isdigit() or not 1 <= int(arg) <= 4096:
                raise InvalidOptionError(f"/frames takes a whole number from 1 to 4096 (got '{arg}')")
            self.s.frames, self.s.fps = int(arg), None
            ended = " (frame selection off)" if self.s.select is not None else ""
            self.s.select = None
            self.note(f"{arg} frames from the next answer on{ended}")
        elif name == "select":
            self.set_select(arg)
        elif name == "video":
            if not arg:
                raise InvalidOptionError("/video takes a path")
            path = os.path.expanduser(arg.strip("'\""))
            from fastvid_cli.client import check_local_video

            check_local_video(path)
            self.s.video, self.history = path, []
            self.note(f"now talking about {path} (new conversation)")
        elif name == "system":
            self.s.gen["system"] = arg or None
            self.note("system prompt " + ("set" if arg else "cleared"))
        elif name == "settings":
            s = self.s
            self.note(f"video {s.video} · method {s.method or 'default'} · ratio {s.ratio if s.ratio is not None else 'default'}"
                      f" · frames {self._frames_setting()} · max new tokens "
                      f"{s.gen.get('max_new_tokens')} · temperature {s.gen.get('temperature')} · system "
                      f"{s.gen.get('system')!r} · {len(self.history)} earlier turn(s)")
        else:
            raise InvalidOptionError(f"unknown command /{name} (/help lists them)")
        return True

    def _frames_setting(self) -> str:
        s = self.s
        if s.select is not None:
            return f"{s.select.k} chosen for the question ({s.select.candidates or 'default'} candidates)"
        return str(s.frames) if s.frames else (f"{s.fps:g} fps" if s.fps else "default")

    def set_select(self, arg: str) -> None:
        """/select K: the next question (and its follow-ups) get K frames chosen for it, with the candidates and
        selector of --select if it was given; /select off: uniform frames again."""
        from dataclasses import replace

        from fastvid_cli.settings import SelectOptions

        if arg.lower() == "off":
            self.s.select = None
            self.note("uniform frames from the next answer on (frame selection off)")
            return
        if not arg.isdigit():
            raise InvalidOptionError(f"/select takes a whole number of frames, or off (got '{arg}')")
        k = int(arg)
        base = self.s.select or self.select_default
        sel = replace(base, k=k, candidates=None) if base is not None else SelectOptions(k=k)
        if base is not None and base.candidates is not None and base.candidates >= k:
            sel = replace(sel, candidates=base.candidates)
        sel.validate()
        self.s.select, self.history = sel, []
        self.note(f"{k} frames chosen for the next question from the next answer on (new conversation)")

    # ------------------------------------------------------------------ one question
    def ask(self, question: str, *, stream: bool) -> None:
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            if stream:
                self.out.write(piece)
                self.out.flush()

        try:
            report = self.backend.answer(self.s, question, list(self.history), on_text)
        except KeyboardInterrupt:
            if stream:
                self.out.write("\n")
            self.note("(interrupted; this answer is not kept in the conversation)")
            return
        except FastVidError as e:
            if stream and pieces:
                self.out.write("\n")
            self.error(e, question)
            return
        answer = report.get("answer", "".join(pieces))
        if report.get("stop_reason") == "interrupted":
            if stream:
                self.out.write("\n")
            self.note("(interrupted; this answer is not kept in the conversation)")
            return
        self.history.append((question, answer))
        if self.as_json:
            self.out.write(json.dumps(report, ensure_ascii=False) + "\n")
        elif stream:
            if not answer.endswith("\n"):
                self.out.write("\n")
        else:
            self.out.write(" ".join(answer.split("\n")).strip() + "\n")
        self.out.flush()
        if not (self.quiet or self.as_json):
            self.stats(stats_line(report, self.backend.where))

    # ------------------------------------------------------------------ loops
    def handle(self, line: str, *, stream: bool) -> bool:
        """One input line: a /command or a question (an empty line does nothing). False when the session ends."""
        if not line:
            return True
        if line.startswith("/"):
            try:
                return self.command(line)
            except FastVidError as e:
                self.error(e)
                return True
        self.ask(line, stream=stream)
        return True

    def run_lines(self, lines) -> int:
        """Questions from a pipe: one per line; answers one per line."""
        for raw in lines:
            if not self.handle(raw.strip(), stream=False):
                break
        return self.first_error.exit_code if self.first_error is not None else 0

    def run_terminal(self, history_file: Path | None = None) -> int:
        """The interactive loop: line editing and history (readline), streamed answers."""
        _readline(history_file)
        s = self.s
        self.note(f"fastvid chat · {s.video} · {self.backend.where} · /help for commands, Ctrl-D to leave")
        try:
            while True:
                try:
                    line = input("› ").strip()
                except KeyboardInterrupt:
                    self.out.write("\n")
                    continue
                except EOFError:
                    self.out.write("\n")
                    break
                if not self.handle(line, stream=not self.as_json):
                    break
        finally:
            _save_history(history_file)
        return 0


def _readline(history_file: Path | None) -> None:
    try:
        import readline
    except ImportError:  # not on every platform: input() still works, without history
        return
    readline.set_history_length(1000)
    if history_file is not None and history_file.is_file():
        try:
            readline.read_history_file(str(history_file))
        except OSError:
            pass


def _save_history(history_file: Path | None) -> None:
    if history_file is None:
        return
    try:
        import readline

        history_file.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(str(history_file))
    except (ImportError, OSError):
        pass


def history_path() -> Path:
    root = os.environ.get("FASTVID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fastvid") / "chat_history"
