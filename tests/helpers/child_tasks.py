"""Small functions for child-process tests (a spawned child imports them by module name)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pid_env_cwd(name: str) -> tuple[int, str | None, str]:
    """Who ran the task, what it saw of the environment variable ``name``, and its folder."""
    return os.getpid(), os.environ.get(name), str(Path.cwd())


def imported(module: str) -> bool:
    return module in sys.modules


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def count_forever(send: Callable[[Any], None]) -> None:
    i = 0
    while True:
        send(i)
        i += 1
        time.sleep(0.01)
