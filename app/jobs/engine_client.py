"""The model host for the UI: requests from the UI thread, events back as Qt signals.

The engine is a ``SharedHost`` (``app.engine.shared_host``): the window's chat and the local
server (``app.server``) use the same loaded model, taking turns through its fair queue. Its
reader thread waits on the child *without* holding the lock, so the UI thread's calls (chat,
stop, load) never wait behind a blocking read; the events of the chat's own replies, and the
engine-wide ones, come back here and are re-emitted as signals.

``EngineClient`` is a ``ChatEngine`` (``app.pipeline.chat_session``): a chat session starts and
stops replies through it and is handed every event through the ``engine_event`` signal, on the UI
thread. Its own ``busy`` is the engine's view, cleared on the reader thread as soon as a reply
ends there; whether the *session* has finished with a reply is the session's ``busy``.

Reading ahead (``read_ahead``): the chat has the message being typed decoded while the engine
is idle, so its reply starts from the cache. At most one read-ahead is in flight; a newer
message waits for it to end and then goes (the latest only), since each one continues the
cache the last one left. Its events are the engine's business only: none reaches the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from PySide6.QtCore import QObject, Signal

from app.engine.host import Crashed, EngineBusy, EngineError, HostEvent
from app.engine.protocol import (
    READING_INTERVAL,
    ChatMessage,
    Failed,
    Loaded,
    LoadProgress,
    LoadSettings,
    ReplyDone,
    Sampling,
    Token,
    Unloaded,
)
from app.engine.shared_host import SharedHost, Work

APP_SOURCE = "app"  # the window's chat, in the shared engine's queue
# The window redraws a streaming reply at most 25 times a second (the chat page's render
# timer), so its text events need come no faster (READING_INTERVAL), and it asks for each one
# (``on_demand``, ``more``) when it has drawn the last, which is less often when drawing is
# dear. Each event wakes this process on a core that llama.cpp's threads are using: on a 2-core
# machine, an event per token cost a fast model 40% of its speed, and an event every 40 ms
# while the window drew every 150 ms cost it 3% (bench/ui_responsiveness.py).

log = logging.getLogger(__name__)


class EngineClient(QObject):
    """Owns the shared engine (``shared``); emits its events on the UI thread."""

    load_progress = Signal(float)
    loaded = Signal(object)  # Loaded
    load_failed = Signal(str)
    token = Signal(int, str)  # request id, text
    reply_done = Signal(object)  # ReplyDone
    reply_failed = Signal(int, str)  # request id, message
    crashed = Signal(object)  # Crashed
    unloaded = Signal()
    engine_event = Signal(object)  # every event but log lines and load progress (for sessions)
    read_ahead_ended = Signal(object)  # a read-ahead's end (ReplyDone, Failed or Crashed)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.shared = SharedHost()
        self._work: Work | None = None
        self._ahead: Work | None = None  # the read-ahead in flight
        self._ahead_next: tuple[ChatMessage, ...] | None = None  # to read once it has ended
        # a read-ahead ends on the reader thread, under the engine's lock: the next one is
        # asked for here, on the UI thread (a queued signal), not from there
        self.read_ahead_ended.connect(self._read_next)
        self._lock = threading.Lock()
        self._running = True
        self.shared.add_listener(self._dispatch)

    # --- requests (UI thread) -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A reply of the chat's is queued or being generated."""
        work = self._work
        return work is not None and work.finished_at is None

    @property
    def current(self) -> Loaded | None:
        """The loaded model, if any."""
        return self.shared.current

    def load(self, settings: LoadSettings) -> None:
        """Load a model (replacing the current one); raises EngineBusy while generating."""
        self.shared.load(settings)

    def chat(self, messages: Sequence[ChatMessage], sampling: Sampling, *,
             on_demand: bool = False) -> int:
        """Start a reply (it waits its turn if the server is answering); raises EngineBusy or
        EngineError. ``on_demand``: after the first, a text event comes only when asked for
        (``more``): the chat page asks at each redraw."""
        with self._lock:
            if self.busy:
                raise EngineBusy("A reply is already being generated; wait for it or stop it.")
            self._ahead_next = None  # the message is sent: it is read as the reply's prompt
            self._work = self.shared.submit(APP_SOURCE, self._dispatch, messages=messages,
                                            sampling=sampling,
                                            event_interval=READING_INTERVAL,
                                            on_demand=on_demand)
            return self._work.id

    def more(self) -> None:
        """Ask for the running reply's next text event (an ``on_demand`` reply's): the text
        written since the last one, as soon as there is any."""
        work = self._work
        if work is not None:
            self.shared.more(work)

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        """Have the prompt of a reply to ``messages`` decoded into the cache while the engine
        has nothing else to do (``SharedHost.read_ahead``); nothing happens while a reply of
        the chat's runs or when the engine is busy."""
        with self._lock:
            if self.busy:
                return
            ahead = self._ahead
            if ahead is not None and ahead.finished_at is None:
                self._ahead_next = tuple(messages)
                return
            self._ahead_next = None
            self._ahead = self.shared.read_ahead(APP_SOURCE, self._ahead_event, messages)

    @property
    def reading_ahead(self) -> bool:
        """A read-ahead is in flight."""
        ahead = self._ahead
        return ahead is not None and ahead.finished_at is None

    def _ahead_event(self, event: HostEvent) -> None:
        if not self._running:
            return
        try:
            self.read_ahead_ended.emit(event)
        except RuntimeError:  # the QObject was deleted while the app closes
            self._running = False

    def _read_next(self, _event: object) -> None:
        with self._lock:
            following, self._ahead_next = self._ahead_next, None
        if following is not None:
            self.read_ahead(following)

    def stop(self) -> None:
        """Stop the running reply after the current token (or drop it if still queued)."""
        work = self._work
        if work is not None:
            self.shared.cancel(work)

    def forget(self) -> None:
        """Drop the conversations the engine keeps for quick next turns, on disk too (a
        conversation was deleted)."""
        self.shared.forget()

    def kill(self) -> None:
        """End the engine process at once."""
        self.shared.kill()

    def pid(self) -> int | None:
        """The engine process id."""
        return self.shared.pid()

    def shutdown(self) -> None:
        """Stop the reader thread and the child process."""
        self._running = False
        self.shared.remove_listener(self._dispatch)
        self.shared.shutdown()

    # --- events (reader thread) ---------------------------------------------------------------

    def _dispatch(self, event: HostEvent) -> None:
        if not self._running:
            return
        try:
            if not isinstance(event, LoadProgress):
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


__all__ = ["READING_INTERVAL", "EngineClient", "EngineError"]
