"""Start the desktop app."""

from __future__ import annotations

import logging
import sys

from PySide6.QtWidgets import QApplication

from app import __version__
from app.core import logsetup
from app.core.embedded import embedded_model_path
from app.core.resources import resource
from app.engine.probe import full_profile
from app.ui.main_window import MainWindow

log = logging.getLogger(__name__)


def create_window() -> MainWindow:
    """The main window wired to the real probe and the embedded model (QApplication must exist)."""
    return MainWindow(probe=full_profile, embedded_model=embedded_model_path())


def run() -> int:
    """Open the main window and run the event loop; returns the exit code."""
    logsetup.configure()
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("QuantDesk")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("QuantDesk")
    style = resource("style.qss")
    if style.exists():
        app.setStyleSheet(style.read_text(encoding="utf-8"))
    window = create_window()
    window.show()
    log.info("QuantDesk %s started", __version__)
    return app.exec()
