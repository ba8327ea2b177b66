"""Is Hugging Face reachable? Asked before every hub call, so that "offline" is said at once.

huggingface-hub retries failed connections with backoff (over 20 s for a search); a plain TCP
connection with a short timeout tells within seconds whether trying makes sense at all.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

from app.hub.errors import HubOffline


def endpoint() -> str:
    """The hub's base URL (HF_ENDPOINT, else huggingface-hub's default)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def ensure_reachable(url: str | None = None, timeout: float = 3.0) -> None:
    """Raise HubOffline unless a TCP connection to the hub's host opens within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HubOffline("Hugging Face is switched off (HF_HUB_OFFLINE is set).")
    parts = urllib.parse.urlsplit(url or endpoint())
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise HubOffline(f"Hugging Face cannot be reached: check your internet connection "
                         f"({host}: {exc.strerror or type(exc).__name__}).") from None
