"""Run an engine generator (quantize, imatrix, convert, evaluate) on a worker thread, as signals.

The generator does its heavy work in child processes already; the thread only drives it and
forwards each event to the UI thread. Cancel sets a flag the generator's ``cancel`` callable
reads; the engine then kills its child and raises its Cancelled error, reported as ``cancelled``.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

Run = Callable[[Callable[[], bool]], Iterator[Any]]


class EngineJob(QObject):
    """``run(cancel)`` yields events; each is emitted as ``progress``, the last as ``finished``."""

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, run: Run, cancelled_errors: tuple[type[BaseException], ...] = (),
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._run = run
        self._cancelled_errors = cancelled_errors
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._cancel.clear()
        self._thread = threading.Thread(target=self._work, name="engine-job", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        last = None
        try:
            for item in self._run(self._cancel.is_set):
                last = item
                self.progress.emit(item)
        except self._cancelled_errors:
            self.cancelled.emit()
        except Exception as exc:  # every engine error is an Exception with a readable message
            log.error("engine job failed:\n%s", traceback.format_exc())
            self.failed.emit(str(exc) or type(exc).__name__)
        else:
            self.finished.emit(last)
