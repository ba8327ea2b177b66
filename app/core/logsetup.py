"""Logging for the app: a rotating file under the data folder, warnings to stderr."""

from __future__ import annotations

import logging
import logging.handlers

from app.core import paths

_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.INFO) -> None:
    """Set up the root logger once; later calls do nothing."""
    root = logging.getLogger()
    if getattr(root, "_quantdesk_configured", False):
        return
    root.setLevel(level)
    file_handler = logging.handlers.RotatingFileHandler(
        paths.logs_dir() / "quantdesk.log", maxBytes=5 * 1024**2, backupCount=3, encoding="utf-8"
    )
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(file_handler)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    root._quantdesk_configured = True  # type: ignore[attr-defined]
