"""The one settings object, stored as versioned JSON under the data folder.

A missing file gives defaults. A file that cannot be read (corrupt JSON, wrong types) is kept
aside as ``settings.json.broken`` and defaults are used, so nothing the user had is lost and the
app still starts. Older schema versions are migrated forward on load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.core import paths
from app.core.addresses import SERVER_HOST, SERVER_PORT
from app.core.atomic import write_text_atomic
from app.core.sampling import Sampling

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SAMPLING = Sampling()  # the defaults of a new user's chats


@dataclass
class Settings:
    """User preferences. Add a field with a default; bump SCHEMA_VERSION only to migrate."""

    schema_version: int = SCHEMA_VERSION
    default_model: str | None = None
    model_folders: list[str] = field(default_factory=list)
    n_ctx: int = 4096
    n_gpu_layers: str = "auto"
    threads: int | None = None
    flash_attn: str = "auto"  # "auto" (llama.cpp's tools' default), "on" or "off"
    kv_type: str = "f16"  # the KV cache's type: "f16", "q8_0" or "q4_0"
    temperature: float = _SAMPLING.temperature
    top_p: float = _SAMPLING.top_p
    top_k: int = _SAMPLING.top_k
    min_p: float = _SAMPLING.min_p
    repeat_penalty: float = _SAMPLING.repeat_penalty
    max_tokens: int = _SAMPLING.max_tokens
    # The Recommended tab: the slowest generation worth recommending, and the context to plan
    # for; Discover: the context its fit estimates are made at.
    recommend_min_tps: float = 5.0
    recommend_n_ctx: int = 4096
    discover_n_ctx: int = 8192
    # Other machines running llama.cpp's RPC server ("host:port"), whose devices loads use
    rpc_servers: list[str] = field(default_factory=list)
    # Sharing this machine (Hardware page): where its RPC server listens. Loopback unless the
    # user picks a network address (llama.cpp's RPC has no authentication or encryption).
    rpc_share_host: str = "127.0.0.1"
    rpc_share_port: int = 50052
    # The Server page, as it last started serving (its API key is a secret: not kept here)
    server_model: str | None = None
    server_host: str = SERVER_HOST
    server_port: int = SERVER_PORT
    server_parallel: int = 1
    # The page shown when the window last closed, shown again at the next start; a fresh
    # install opens on the chat, its model loaded, ready for a message
    last_page: str = "Chat"
    # The chat reads the message being typed (its prompt decoded while the engine is idle),
    # so the reply starts sooner: a pasted document is read while the question is typed.
    # It spends the CPU (or GPU) while typing; off here, nothing runs before Send.
    read_ahead: bool = True


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    version = int(raw.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        log.warning("settings written by a newer QuantDesk (schema %s); unknown keys kept aside",
                    version)
    # Version 1 is the first schema: nothing to migrate yet. Later versions add steps here.
    raw["schema_version"] = SCHEMA_VERSION
    return raw


def _from_dict(raw: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    defaults = Settings()
    values: dict[str, Any] = {}
    for name in known:
        if name not in raw:
            continue
        value, default = raw[name], getattr(defaults, name)
        if default is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            else:
                raise TypeError(f"setting {name!r} should be {type(default).__name__}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise TypeError(f"setting {name!r} should be a list of texts")
        values[name] = value
    return Settings(**values)


def load(path: Path | None = None) -> Settings:
    """Read settings; never raises for a bad file (it is set aside and defaults are used)."""
    path = path or paths.settings_path()
    if not path.exists():
        return Settings()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError("settings file does not hold an object")
        return _from_dict(_migrate(raw))
    except (OSError, ValueError, TypeError) as exc:
        broken = path.with_name(path.name + ".broken")
        log.error("could not read %s (%s); kept it as %s and started from defaults",
                  path, exc, broken)
        path.replace(broken)
        return Settings()


def save(settings: Settings, path: Path | None = None) -> None:
    """Write settings atomically."""
    path = path or paths.settings_path()
    write_text_atomic(path, json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n")
