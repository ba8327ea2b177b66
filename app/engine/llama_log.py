"""Route llama.cpp's log into Python ``logging`` (never by redirecting stdout/stderr).

``install()`` sets llama.cpp's log callback once per process. The last lines are kept in a ring
buffer so that an error or crash report can carry what llama.cpp said just before.
"""

from __future__ import annotations

import ctypes
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("llama.cpp")

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

_recent: deque[str] = deque(maxlen=60)
_pending = ""
_last_level = logging.INFO
_listeners: list[Callable[[int, str], None]] = []
_callback: object | None = None  # the ctypes callback must outlive the call that set it


def recent_lines(n: int = 20) -> list[str]:
    """The last ``n`` complete lines llama.cpp logged in this process."""
    return list(_recent)[-n:]


def add_listener(listener: Callable[[int, str], None]) -> None:
    """Call ``listener(level, line)`` for every complete log line (``logging`` levels)."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[int, str], None]) -> None:
    """Stop calling ``listener``."""
    if listener in _listeners:
        _listeners.remove(listener)


def _on_log(level: int, text: bytes | None, _user: ctypes.c_void_p) -> None:
    global _pending, _last_level
    if not text:
        return
    if level != 5:  # CONT continues the previous line's level
        _last_level = _LEVELS.get(level, logging.INFO)
    _pending += text.decode("utf-8", errors="replace")
    *lines, _pending = _pending.split("\n")
    for line in lines:
        if not line.strip():
            continue
        _recent.append(line)
        log.log(_last_level, "%s", line)
        for listener in list(_listeners):
            listener(_last_level, line)


def install() -> None:
    """Send llama.cpp's log to the ``llama.cpp`` logger (idempotent)."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
