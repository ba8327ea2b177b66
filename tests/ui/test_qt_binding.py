"""What the app relies on from its Qt binding, checked on the installed version."""

from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QCoreApplication, QObject, Signal


class _Emitter(QObject):
    value = Signal(object)
    token = Signal(int, str)


def test_emitting_signals_keeps_pythons_reference_counts(qapp: QCoreApplication) -> None:
    """PySide6 6.12.0 dropped one reference to ``True`` per ``emit`` (Python 3.11): the chat
    emits one signal per streamed token, so after a few thousand tokens Python aborted with
    'bool_dealloc: deallocating True or False'. pyproject.toml keeps that version out."""
    emitter = _Emitter()
    received: list[object] = []
    emitter.value.connect(received.append)
    emitter.token.connect(lambda i, text: received.append(text))
    before = sys.getrefcount(True)
    for i in range(500):
        emitter.value.emit(i)
        emitter.token.emit(i, "x")
    worker = threading.Thread(target=lambda: [emitter.value.emit(i) for i in range(500)])
    worker.start()
    worker.join()
    qapp.processEvents()
    assert len(received) == 1500
    assert sys.getrefcount(True) - before > -100  # the bug: -1500
