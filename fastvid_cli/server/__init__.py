"""`fastvid serve`: one resident model behind an OpenAI-compatible HTTP API.

The server binds its socket first and answers /health with 503 while the model loads and warms up on a
background thread; from then on one worker thread (scheduler.py) runs every forward pass. SIGTERM or Ctrl-C stops
accepting connections, lets every admitted request finish (streams included), and returns normally (exit 0).

Layout: protocol.py (request schemas), settings.py (request -> pruning/generation settings), media.py (allowed
roots, uploads), scheduler.py (queue, sessions, batching, cancellation), metrics.py (Prometheus text), app.py
(FastAPI routes). FastAPI and uvicorn are imported only here and in app.py, i.e. only by `fastvid serve`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fastvid_cli import __version__
from fastvid_cli.errors import InvalidOptionError
from fastvid_cli.server.media import MediaPolicy, UploadStore
from fastvid_cli.server.metrics import Metrics
from fastvid_cli.server.settings import Defaults, method_params

log = logging.getLogger("fastvid.serve")


@dataclass
class ServeConfig:
    model: str = "llava-ov-7b"
    device: str = "auto"
    decoder: str = "auto"  # --decoder: cpu | gpu | auto (video_gpu.resolve_decoder)
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    saliency_model: str | None = None
    offline: bool = False
    threads: int | None = None
    cache_dir: str | None = None  # the on-disk feature cache (default: ask's)
    no_cache: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    media_dirs: list[str] = field(default_factory=list)  # allowed roots of file:// videos
    max_queue: int = 64
    max_upload_mb: float = 512.0
    max_batch: int = 16
    batch_window_ms: float = 10.0
    max_sessions: int = 32  # videos x settings whose sessions (features, kept tokens, prefix KV cache) stay in memory
    defaults: Defaults = field(default_factory=Defaults)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(cfg: ServeConfig) -> None:
    """Usage errors, before anything loads."""
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise InvalidOptionError(f"refusing to listen on {cfg.host} without an API key: anyone who can reach it "
                                 "could use the model and read videos under the allowed folders",
                                 "pass --api-key KEY (or set FASTVID_API_KEY), or keep the default --host 127.0.0.1")
    if not 0 <= cfg.port <= 65535:
        raise InvalidOptionError(f"--port must be in 0..65535 (got {cfg.port})")
    for d in cfg.media_dirs:
        if not os.path.isdir(d):
            raise InvalidOptionError(f"--allowed-media-dir {d} is not a folder")
    for name in ("max_queue", "max_batch", "max_sessions"):
        if getattr(cfg, name) < 1:
            raise InvalidOptionError(f"--{name.replace('_', '-')} must be >= 1")
    if not cfg.max_upload_mb > 0:
        raise InvalidOptionError("--max-upload-mb must be > 0")


class ServerState:
    """What the routes see: the settings, the engine and scheduler (None while loading), metrics, uploads."""

    def __init__(self, config: ServeConfig):
        from fastvid_cli.models import resolve_model

        self.config = config
        self.defaults = config.defaults
        self.metrics = Metrics()
        self.uploads = UploadStore(int(config.max_upload_mb * 2**20))
        self.policy = MediaPolicy(config.media_dirs, self.uploads)
        self.alias = resolve_model(config.model).alias
        self.engine = None
        self.scheduler = None
        self.started = time.time()
        self._plans: dict[tuple, Any] = {}

    def load(self, on_stage: Callable[[str], None] | None = None) -> None:
        """Load the model, warm it up, start the worker; the server is ready when this returns."""
        from fastvid_cli import hub

        hub.set_offline(self.config.offline)
        from fastvid_cli.engine import Engine, set_threads
        from fastvid_cli.feature_cache import FeatureCache
        from fastvid_cli.server.scheduler import Scheduler

        cfg = self.config
        set_threads(cfg.threads)
        engine = Engine.load(cfg.model, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
                             saliency_model=cfg.saliency_model, decoder=cfg.decoder)
        if not engine.cuda:
            if cfg.threads is None and not os.environ.get("OMP_NUM_THREADS"):
                # The model's threads would spin against the HTTP side for the same cores: one core fewer than the
                # machine has (on 2 busy cores, 16 clients got 3.2x one client's throughput with 1 thread, 0.4x
                # with 2; benchmarks/RESULTS.md).
                set_threads(max(1, _cores() - 1))
            engine.warmup()  # Engine.load warms up on CUDA only
        fcache = None if cfg.no_cache else FeatureCache(cfg.cache_dir or hub.fastvid_cache_dir() / "features")
        sched = Scheduler(engine, self.policy, self.metrics, feature_cache=fcache, max_queue=cfg.max_queue,
                          max_batch=cfg.max_batch, batch_window_s=cfg.batch_window_ms / 1e3,
                          max_sessions=cfg.max_sessions)
        sched.start()
        self.scheduler = sched
        self.engine = engine  # last: /health says ready from here on

    def frame_plan(self, frames: int | None, fps: float | None):
        """What to sample for a request, as `ask` decides it (settings.frame_request: the alias's frame count, or
        the family's plan); a 400 when the request's frames/fps do not fit the model."""
        from fastvid_cli.errors import FastVidError
        from fastvid_cli.settings import frame_request
        from fastvid_cli.server.errors import from_fastvid

        key = (frames, fps)
        if key not in self._plans:  # the family is read from the checkpoint's config: once per request shape
            try:
                self._plans[key] = frame_request(self.config.model, frames, fps)
            except FastVidError as e:
                raise from_fastvid(e) from None
        return self._plans[key]

    def model_card(self) -> dict[str, Any]:
        from fastvid_cli.engine import versions
        from fastvid_cli.frame_scorer import selector_source
        from fastvid_cli.models.loading import dtype_name
        from fastvid_cli.pruning import REGISTRY

        eng, d = self.engine, self.defaults
        return {
            "id": eng.model_name, "object": "model", "created": int(self.started), "owned_by": "fastvid",
            "fastvid": {
                "source": eng.model_source, "alias": self.alias, "device": eng.device, "dtype": dtype_name(eng.dtype),
                "attn_implementation": eng.attn_implementation, "saliency_model": self.config.saliency_model,
                "saliency_source": eng.adapter.saliency_source, "load_ms": round(eng.load_ms or 0.0, 3),
                "warmup_ms": round(eng.warmup_ms or 0.0, 3), "family_defaults": dict(eng.defaults),
                "defaults": {"method": d.method, "ratio": d.ratio, "frames": d.frames, "fps": d.fps,
                             "params": {k: list(v) if isinstance(v, tuple) else v for k, v in d.params.items()},
                             "max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
                             "seed": d.seed, "system": d.system, "compile": d.compile},
                "methods": {m: method_params(m, eng.defaults) for m in REGISTRY},
                # what scores the frames of a request that selects (--selector, resolved): clients cannot name one
                "selector": selector_source(d.selector, eng.adapter.ref),
                "warnings": list(eng.adapter.warnings), "feature_cache": not self.config.no_cache,
                "max_upload_mb": self.config.max_upload_mb, "max_queue": self.config.max_queue,
                "max_batch": self.config.max_batch, "version": __version__, "versions": versions(),
            },
        }

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.uploads.close()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InvalidOptionError(f"cannot listen on {host}: {e.strerror or e}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InvalidOptionError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                 "pick another --port, or stop what uses it") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Service:
    """The server: `run()` in the main thread (the CLI; signals stop it) or `start()` in a thread (tests)."""

    def __init__(self, config: ServeConfig, *, say: Callable[[str], None] | None = None):
        import uvicorn

        from fastvid_cli.server.app import Gate, create_app

        check_config(config)
        self.config = config
        self.say = say or (lambda _msg: None)
        self.state = ServerState(config)
        self.sock = bind(config.host, config.port)
        self.url = url_of(self.sock)
        app = Gate(create_app(self.state), self.state)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                    timeout_keep_alive=5, server_header=False))
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.state.load()
        except BaseException as e:  # noqa: BLE001 - handed to whoever runs the server
            self.error = e
            self.server.should_exit = True
            self.ready.set()
            return
        eng = self.state.engine
        self.say(f"ready: {eng.model_name} on {eng.device} ({(time.perf_counter() - t0):.1f} s to load and warm up)"
                 f" · {self.url}/v1/chat/completions")
        for w in eng.adapter.warnings:
            self.say(f"warning: {w}")
        self.ready.set()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (main thread); raises the model load's error if it failed."""
        loader = threading.Thread(target=self._load, name="fastvid-load", daemon=True)
        self.say(f"fastvid {__version__} listening on {self.url} (loading {self.config.model}…)")
        loader.start()
        # uvicorn re-raises the signal that stopped it once it is done; these handlers make that a no-op, so the
        # process ends normally (exit 0) after the graceful shutdown.
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.server.run(sockets=[self.sock])
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if loader.is_alive() and self.error is None:  # stopped while loading: nothing to drain
            return
        self.say("stopped accepting requests; finishing those in flight…" if self.state.scheduler else "stopping")
        self.state.close()
        if self.error is not None:
            raise self.error

    def start(self, timeout: float = 600.0) -> str:
        """Serve on a background thread; returns the base URL once the model is ready."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="fastvid-serve-http", daemon=True)
        self.thread.start()
        self._load()
        if self.error is not None:
            self.stop()
            raise self.error
        deadline = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join()
        self.state.close()


def configure_logging(verbose: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False
