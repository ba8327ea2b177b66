"""Waiting in a GUI child script (no qtbot there): Qt's events keep flowing meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtWidgets import QApplication


def wait(app: QApplication, condition: Callable[[], object], timeout: float) -> bool:
    """Process ``app``'s events until ``condition()`` holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.002)
    return True
