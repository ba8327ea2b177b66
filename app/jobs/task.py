"""Run a plain function on a worker thread and get its result as a Qt signal.

A widget starts a ``Task`` and connects ``finished`` and ``failed``; it never touches threads.
Running tasks are kept referenced until they end, so a caller need not hold on to them. A task
has no Qt parent on purpose: if the widget that started it closes first, the task still lives
until its worker is done, and Qt simply drops the connections to the widget that is gone.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any, ClassVar

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class Task(QObject):
    """One call of ``fn`` on the global thread pool."""

    finished = Signal(object)
    failed = Signal(str)

    _running: ClassVar[set[Task]] = set()

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self._fn = fn

    def start(self) -> Task:
        """Queue the call; returns self for chaining."""
        Task._running.add(self)
        self.finished.connect(self._release)
        self.failed.connect(self._release)
        task = self

        class _Runnable(QRunnable):
            def run(self) -> None:
                try:
                    result = task._fn()
                except Exception as exc:
                    log.error("background task failed:\n%s", traceback.format_exc())
                    task.failed.emit(str(exc) or type(exc).__name__)
                else:
                    task.finished.emit(result)

        QThreadPool.globalInstance().start(_Runnable())
        return self

    def _release(self, _result: object = None) -> None:
        # Runs on the thread that owns the task (the UI thread), after the result's own slots:
        # the QObject is never dropped from a worker thread.
        Task._running.discard(self)
