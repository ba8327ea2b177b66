"""Start the desktop app."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication, QMessageBox

from app import __version__
from app.core import logsetup
from app.core import settings as settings_store
from app.core.embedded import embedded_model_path
from app.core.resources import resource
from app.core.storage import Storage, StorageError
from app.jobs.engine_client import EngineClient
from app.jobs.probe import full_profile
from app.ui.main_window import MainWindow

log = logging.getLogger(__name__)


def open_storage() -> Storage:
    """The database; if it cannot be opened, say so and keep this session's chats in memory."""
    try:
        return Storage()
    except StorageError as exc:
        log.error("%s", exc)
        QMessageBox.warning(None, "QuantDesk", f"{exc}\n\nThis session's chats will not be "
                            "kept until the database is fixed.")
        return Storage(Path(":memory:"))


def apply_style(app: QApplication) -> None:
    """The app's stylesheet (resources/style.qss), where the installation has it."""
    style = resource("style.qss")
    if style.exists():
        app.setStyleSheet(style.read_text(encoding="utf-8"))


def create_window() -> MainWindow:
    """The main window wired to the real probe, storage, engine and the embedded model."""
    return MainWindow(probe=full_profile, embedded_model=embedded_model_path(),
                      store=open_storage(), engine=EngineClient(),
                      settings=settings_store.load())


def run() -> int:
    """Open the main window and run the event loop; returns the exit code."""
    logsetup.configure()
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("QuantDesk")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("QuantDesk")
    apply_style(app)
    window = create_window()
    window.show()
    log.info("QuantDesk %s started", __version__)
    if os.environ.get("QUANTDESK_STARTUP_PROBE"):
        # Packaging checks: report the time from process start to the window, then quit.
        import psutil
        from PySide6.QtCore import QTimer

        def report() -> None:
            print(f"window shown {time.time() - psutil.Process().create_time():.2f} s after "
                  "the process started", flush=True)
            window.close()
            app.quit()

        QTimer.singleShot(0, report)
    return app.exec()
