"""Finding checkpoints: local folders, the Hugging Face cache, offline mode, and the errors users see.

Cache first: a model that is already in the local cache is loaded with `local_files_only=True`, so a cached
model starts without any network round trip (and works with no network at all). Only a model missing from
the cache is downloaded, unless offline mode is on (`--offline` or `HF_HUB_OFFLINE=1`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastvid_cli.errors import ModelUnavailableError, UnknownModelError


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, resolved: a hub id or a local folder, plus the alias it came from.

    Defined here, not in `fastvid_cli.models`, because everything in this module takes one, and the model
    registry reads checkpoints through this module: the dependency goes one way, models -> hub."""

    source: str  # hub repo id or absolute local folder
    alias: str | None
    is_local: bool

    @property
    def display(self) -> str:
        return self.alias or self.source


def set_offline(flag: bool) -> None:
    """Must run before huggingface_hub is imported: it reads HF_HUB_OFFLINE once, at import."""
    if flag:
        os.environ["HF_HUB_OFFLINE"] = "1"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def download_hint(repo: str) -> str:
    return f"download it first with: hf download {repo}"


class HubUnreachableError(ModelUnavailableError):
    """The hub cannot be reached at all (no network, no DNS, a firewall): said in seconds, with the ways out."""


PROBE_TIMEOUT_S = 2.0
_unreachable: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: it can), once per process


def _why_unreachable(endpoint: str) -> str | None:
    """Why `endpoint` cannot be reached, found within ~2 * PROBE_TIMEOUT_S: name resolution, then a TCP connect.
    None when it answers, or when a proxy is configured (then the library's own connection decides)."""
    import socket
    import threading
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    found: dict[str, Any] = {}

    def resolve() -> None:  # getaddrinfo has no timeout of its own
        try:
            found["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            found["error"] = e

    worker = threading.Thread(target=resolve, daemon=True, name="fastvid-dns")
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    if worker.is_alive():
        return f"resolving {host} timed out after {PROBE_TIMEOUT_S:g} s (no network or DNS?)"
    if "error" in found:
        e = found["error"]
        return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e} (no network or DNS?)"
    errors = []
    for family, kind, proto, _, addr in found["addrs"][:2]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(PROBE_TIMEOUT_S)
                sock.connect(addr)
            return None
        except OSError as e:
            errors.append(getattr(e, "strerror", None) or str(e) or type(e).__name__)
    return f"cannot connect to {host}:{port}: {errors[-1] if errors else 'no address'}"


def ensure_reachable(repo: str, hint: str | None = None) -> None:
    """Before downloading anything of `repo`: raise HubUnreachableError at once when the hub cannot be reached,
    instead of minutes of retries that end in a misleading 'file not found'."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _unreachable:
        _unreachable[endpoint] = _why_unreachable(endpoint)
    why = _unreachable[endpoint]
    if why:
        raise HubUnreachableError(f"cannot download {repo}: {why}",
                                  hint or f"run with --offline to use what is in the local cache, or on a connected "
                                          f"machine: {download_hint(repo)}")


def _local_path(ref: ModelRef, filename: str) -> str | None:
    """Path of `filename` for `ref` if it is on disk (local folder or hub cache), else None."""
    if ref.is_local:
        p = Path(ref.source) / filename
        return str(p) if p.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ref.source, filename)
    return hit if isinstance(hit, str) else None


def is_cached(ref: ModelRef) -> bool:
    return _local_path(ref, "config.json") is not None


def get_file(ref: ModelRef, filename: str, *, required: bool = True) -> str | None:
    """Local path of one file of a checkpoint; downloads it when missing and allowed."""
    hit = _local_path(ref, filename)
    if hit or ref.is_local:
        if hit is None and required:
            raise ModelUnavailableError(f"{filename} missing in {ref.source}")
        return hit
    if is_offline():
        if required:
            raise ModelUnavailableError(f"{ref.source} is not in the local cache and offline mode is on",
                                        download_hint(ref.source))
        return None
    ensure_reachable(ref.source)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(ref.source, filename)
    except EntryNotFoundError:
        if required:
            raise ModelUnavailableError(f"{ref.source} has no file {filename}") from None
        return None
    except RepositoryNotFoundError:
        raise UnknownModelError(f"no model '{ref.source}' on the Hugging Face hub (or it is private/gated)") from None
    except Exception as e:  # network errors of every flavour
        if required:
            raise ModelUnavailableError(f"could not download {ref.source}: {type(e).__name__}",
                                        "check the network, or " + download_hint(ref.source)) from None
        return None


def read_json(ref: ModelRef, filename: str) -> dict[str, Any] | None:
    path = get_file(ref, filename, required=False)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def load_config(ref: ModelRef):
    """The checkpoint's transformers config; maps every failure to a one-line error."""
    path = get_file(ref, "config.json")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(os.path.dirname(path), trust_remote_code=False)
    except ValueError as e:
        raise UnknownModelError(f"unsupported architecture in {ref.display}: {str(e).splitlines()[0]}") from None
    except (OSError, KeyError) as e:
        raise ModelUnavailableError(f"could not read config of {ref.display}: {str(e).splitlines()[0]}") from None


def fastvid_cache_dir() -> Path:
    """Our own cache (extracted saliency weights, later per-video features): $FASTVID_CACHE or the XDG cache."""
    root = os.environ.get("FASTVID_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastvid"
