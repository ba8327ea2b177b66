"""The model host for the UI: requests from the UI thread, events back as Qt signals.

A reader thread waits on the child's event pipe and its process sentinel *without* holding the
lock, then takes the lock only to read what is ready; the UI thread's calls (chat, stop, load)
therefore never wait behind a blocking read.

``EngineClient`` is a ``ChatEngine`` (``app.pipeline.chat_session``): a chat session starts and
stops replies through it and is handed every event through the ``engine_event`` signal, on the UI
thread. Its own ``busy`` is the engine's view, cleared on the reader thread as soon as a reply
ends there; whether the *session* has finished with a reply is the session's ``busy``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from multiprocessing.connection import wait

from PySide6.QtCore import QObject, Signal

from app.engine.host import Crashed, EngineError, ModelHost
from app.engine.protocol import (
    ChatMessage,
    Failed,
    Loaded,
    LoadProgress,
    LoadSettings,
    LogLine,
    ReplyDone,
    Sampling,
    Token,
    Unloaded,
)

log = logging.getLogger(__name__)


class EngineClient(QObject):
    """Owns one ModelHost; emits its events on the UI thread."""

    load_progress = Signal(float)
    loaded = Signal(object)  # Loaded
    load_failed = Signal(str)
    token = Signal(int, str)  # request id, text
    reply_done = Signal(object)  # ReplyDone
    reply_failed = Signal(int, str)  # request id, message
    crashed = Signal(object)  # Crashed
    unloaded = Signal()
    engine_event = Signal(object)  # every event but log lines and load progress (for sessions)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._host = ModelHost()
        self._lock = threading.Lock()
        self._running = True
        self._wake = threading.Event()
        self._reader = threading.Thread(target=self._pump, name="engine-events", daemon=True)
        self._reader.start()

    # --- requests (UI thread) -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A reply is being generated."""
        return self._host.active_request is not None

    @property
    def current(self) -> Loaded | None:
        """The loaded model, if any."""
        return self._host.loaded

    def load(self, settings: LoadSettings) -> None:
        """Load a model (replacing the current one); raises EngineBusy while generating."""
        with self._lock:
            if not self._host.alive:
                self._host.kill()  # clear what a dead child left
            self._host.load(settings)
        self._wake.set()

    def chat(self, messages: Sequence[ChatMessage], sampling: Sampling) -> int:
        """Start a reply; raises EngineBusy or EngineError."""
        with self._lock:
            return self._host.chat(messages, sampling)

    def stop(self) -> None:
        """Stop the running reply after the current token."""
        with self._lock:
            self._host.stop()

    def kill(self) -> None:
        """End the engine process at once."""
        with self._lock:
            self._host.kill()

    def pid(self) -> int | None:
        """The engine process id."""
        return self._host.pid

    def shutdown(self) -> None:
        """Stop the reader thread and the child process."""
        self._running = False
        self._wake.set()
        self._reader.join(2)
        with self._lock:
            self._host.shutdown(timeout=3)

    # --- events (reader thread) ---------------------------------------------------------------

    def _pump(self) -> None:
        while self._running:
            with self._lock:
                handles = self._host.wait_handles()
            if not handles:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            # The handles may be closed under us (kill): then just look again.
            with contextlib.suppress(OSError, ValueError):
                wait(handles, timeout=0.2)  # type: ignore[arg-type]
            for _ in range(512):
                with self._lock:
                    event = self._host.poll(0)
                if event is None:
                    break
                self._dispatch(event)

    def _dispatch(self, event: object) -> None:
        try:
            if not isinstance(event, (LogLine, LoadProgress)):
                self.engine_event.emit(event)
            if isinstance(event, Token):
                self.token.emit(event.request_id, event.text)
            elif isinstance(event, LoadProgress):
                self.load_progress.emit(event.fraction)
            elif isinstance(event, Loaded):
                self.loaded.emit(event)
            elif isinstance(event, ReplyDone):
                self.reply_done.emit(event)
            elif isinstance(event, Failed):
                if event.request_id is None:
                    self.load_failed.emit(event.message)
                else:
                    self.reply_failed.emit(event.request_id, event.message)
            elif isinstance(event, Crashed):
                self.crashed.emit(event)
            elif isinstance(event, Unloaded):
                self.unloaded.emit()
        except RuntimeError:  # the QObject was deleted while the app closes
            self._running = False


__all__ = ["EngineClient", "EngineError"]
