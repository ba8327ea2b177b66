"""One model host shared by several clients — the app's chat and the server's requests.

The engine child generates as many replies at once as the loaded model has sequences (one
unless the load asked for ``n_parallel`` more; each keeps its KV cache for the next turn).
``SharedHost`` owns that ``ModelHost`` and a thread that reads its events;
clients *submit* work (a reply, embeddings) and receive that work's events through a callback,
on the reader thread. Engine-wide events (load progress, loaded, a failed load, a crash,
unloaded) go to every listener.

Fairness: work waits in one queue per *source* ("app" for the window's chat, one per client
address for the server), first come first served within a source, and the sources take turns.
A burst of sixteen requests from one script therefore runs in the order it arrived, and the
chat in the window still gets the next turn instead of waiting behind all sixteen. With several
sequences, work starts whenever one is free, in the same order.

Cancellation: queued work is dropped at once (it ends with ``ReplyDone('stopped')`` and no
text); running work is stopped through the host, which takes effect within one token (see
``host_child``). ``Work.events_after_cancel`` records how many text events still arrived
(at most one by design: the one already on its way).

Reading ahead: while nothing else runs or waits, a client may have the prompt of a reply it
expects decoded into the cache (``read_ahead``: the chat reads the message being typed, so its
reply starts from the cache). That work never waits, and delays other work by one batch at
most: any work submitted ends it first, at the end of the batch being decoded (what it decoded
stays cached, and the work waiting for its place starts when it has ended, so on its cache),
and a load stops it.

A dead child: the running work receives ``Crashed``, and so does every listener. Work submitted
with ``recover=True`` (the server's) reloads the last loaded model when its turn comes, so a
killed engine answers the next request again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from app.engine.host import Crashed, EngineBusy, EngineError, HostEvent, ModelHost
from app.engine.protocol import (
    ChatMessage,
    Embeddings,
    Failed,
    Loaded,
    LoadProgress,
    LoadSettings,
    LogLine,
    ReplyDone,
    ReplyMetrics,
    Sampling,
    Token,
    Unloaded,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[HostEvent], None]
NOT_RUNNING = "The engine is not running: load a model first."


@dataclass(eq=False)
class Work:
    """One submitted request and what happened to it (times from ``time.monotonic``)."""

    id: int
    source: str
    on_event: EventCallback
    messages: tuple[ChatMessage, ...] = ()
    sampling: Sampling | None = None
    prompt: str | None = None
    texts: tuple[str, ...] | None = None  # set: an embeddings request
    recover: bool = False
    event_interval: float = 0.0  # the least time between text events (Chat.event_interval)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0
    events_after_cancel: int = 0
    read_ahead: bool = False  # only decodes its prompt into the cache (``SharedHost.read_ahead``)
    on_demand: bool = False  # its reader asks for each text event after the first (``more``)


def _stopped_before_start(work: Work) -> ReplyDone:
    now = time.monotonic()
    return ReplyDone(work.id, "", "stopped", ReplyMetrics(
        prompt_tokens=0, generated_tokens=0, ttft_seconds=0.0, prompt_tokens_per_second=0.0,
        generation_tokens_per_second=0.0, total_seconds=now - work.queued_at, peak_rss_bytes=0))


class SharedHost:
    """A ``ModelHost`` that many clients use in turn. Thread-safe."""

    def __init__(self, host: ModelHost | None = None) -> None:
        self.host = host or ModelHost()
        self._lock = threading.RLock()
        self._queues: dict[str, deque[Work]] = {}
        self._turns: deque[str] = deque()  # sources, the next to be served first
        self._last_served: str | None = None
        self._listeners: list[EventCallback] = []
        self._ids = itertools.count(1)
        self.active: dict[int, Work] = {}  # running work by id, in the order it started
        self.loading = False
        self._recovering = False
        self.settings: LoadSettings | None = None  # the last load asked for (for recovery)
        self._alive = True
        self._wake = threading.Event()
        self._reader = threading.Thread(target=self._pump, name="engine-events", daemon=True)
        self._reader.start()

    # --- state --------------------------------------------------------------------------------

    @property
    def current(self) -> Loaded | None:
        """The loaded model, if any."""
        return self.host.loaded

    @property
    def running(self) -> Work | None:
        """The running work that started first, or None when the engine is idle (a read-ahead
        is not counted: it gives way to anything)."""
        with self._lock:
            return next((w for w in self.active.values() if not w.read_ahead), None)

    def pending(self, source: str | None = None) -> int:
        """Work queued (not yet running), of ``source`` or in all."""
        with self._lock:
            if source is not None:
                return len(self._queues.get(source, ()))
            return sum(len(q) for q in self._queues.values())

    def has_work(self, source: str) -> bool:
        """Whether ``source`` has work queued or running."""
        with self._lock:
            running = any(work.source == source and not work.read_ahead
                          for work in self.active.values())
            return running or bool(self._queues.get(source))

    def add_listener(self, callback: EventCallback) -> None:
        """Receive engine-wide events (LoadProgress, Loaded, Failed of a load, Crashed,
        Unloaded) on the reader thread."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: EventCallback) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # --- model --------------------------------------------------------------------------------

    def load(self, settings: LoadSettings) -> None:
        """Load a model (replacing the current one); raises EngineBusy while a reply runs.
        Queued work runs on the new model once it is loaded."""
        with self._lock:
            if any(not work.read_ahead for work in self.active.values()):
                raise EngineBusy("A reply is being generated; stop it before switching models.")
            if not self.host.alive:
                self.host.kill()  # clear what a dead child left
            self.host.load(settings, stop_running=True)  # a read-ahead ends as stopped
            self.settings = settings
            self.loading = True
            self._recovering = False
        self._wake.set()

    def forget(self) -> None:
        """Drop the conversations the engine keeps for quick next turns (a conversation was
        deleted); replies being written go on."""
        with self._lock:
            self.host.forget()

    def unload(self) -> None:
        """Free the model, keep the process."""
        with self._lock:
            self.host.unload()

    def kill(self) -> None:
        """End the engine process at once; the running work ends as crashed."""
        with self._lock:
            self.host.kill()
            self.loading = False
            for work in list(self.active.values()):
                self._end(work, Crashed(None, "The engine was stopped.", ()))

    def pid(self) -> int | None:
        """The engine process id."""
        return self.host.pid

    def shutdown(self) -> None:
        """Stop the reader thread and the child process; queued work ends as stopped, running
        work as failed (its reader is told the engine went away)."""
        self._alive = False
        self._wake.set()
        self._reader.join(2)
        with self._lock:
            for queue in self._queues.values():
                while queue:
                    work = queue.popleft()
                    self._end(work, _stopped_before_start(work))
            self.host.shutdown(timeout=3)
            for work in list(self.active.values()):
                self._end(work, Failed(work.id, "The engine was shut down.",
                                       code="engine_unavailable"))

    # --- work ---------------------------------------------------------------------------------

    def submit(self, source: str, on_event: EventCallback, *,
               messages: Sequence[ChatMessage] = (), sampling: Sampling | None = None,
               prompt: str | None = None, texts: Sequence[str] | None = None,
               recover: bool = False, event_interval: float = 0.0,
               on_demand: bool = False) -> Work:
        """Queue a reply to ``messages`` (or a continuation of ``prompt``), or embeddings of
        ``texts``. Its events go to ``on_event``: Token… (at least ``event_interval`` seconds
        apart; with ``on_demand``, after the first, only when asked for: ``more``), then
        ReplyDone, Failed or Crashed (or Embeddings). Raises EngineError when no engine runs
        and ``recover`` is not asked."""
        with self._lock:
            if not recover and not self.host.alive and not self.loading:
                raise EngineError(NOT_RUNNING)
            work = Work(next(self._ids), source, on_event, tuple(messages), sampling, prompt,
                        tuple(texts) if texts is not None else None, recover, event_interval,
                        on_demand=on_demand)
            self._queues.setdefault(source, deque()).append(work)
            self._end_read_aheads()
            if source not in self._turns:
                # a newcomer's turn comes before the source served last (at the back)
                last = len(self._turns) - (self._turns[-1] == self._last_served
                                           if self._turns else 0)
                self._turns.insert(last, source)
            self._dispatch()
        self._wake.set()
        return work

    def more(self, work: Work) -> None:
        """The reader of ``on_demand`` work asks for its next text event: the text since the
        last one, as soon as there is any. No-op when the work is not running (waiting, or
        ended)."""
        with self._lock:
            if work.on_demand and self.active.get(work.id) is work:
                self.host.more(work.id)

    def read_ahead(self, source: str, on_event: EventCallback,
                   messages: Sequence[ChatMessage]) -> Work | None:
        """Have the prompt of a reply to ``messages`` decoded into the cache, when nothing
        else runs or waits (None otherwise, and when no model is loaded): a reply to them
        submitted next then starts from the cache. It ends with ReplyDone ('length' when the
        whole prompt was decoded, 'stopped' when other work came first), or Failed (a prompt
        longer than the context, say)."""
        with self._lock:
            if (self.loading or self.active or any(self._queues.values())
                    or not self.host.alive or self.host.loaded is None):
                return None
            work = Work(next(self._ids), source, on_event, tuple(messages), read_ahead=True)
            try:
                self.host.chat(work.messages, request_id=work.id, read_ahead=True)
            except EngineError:
                return None
            work.started_at = time.monotonic()
            self.active[work.id] = work
            return work

    def _end_read_aheads(self) -> None:
        """Stop the read-aheads running (other work came, under the lock)."""
        for work in self.active.values():
            if work.read_ahead and work.cancelled_at is None:
                work.cancelled_at = time.monotonic()
                self.host.stop(work.id)

    def cancel(self, work: Work) -> None:
        """Drop queued work, or stop running work after the current token (no-op when it has
        ended)."""
        with self._lock:
            if work.finished_at is not None:
                return
            if self.active.get(work.id) is work:
                if work.cancelled_at is None:
                    work.cancelled_at = time.monotonic()
                self.host.stop(work.id)
                return
            queue = self._queues.get(work.source)
            if queue is not None and work in queue:
                queue.remove(work)
                work.cancelled_at = time.monotonic()
                self._end(work, _stopped_before_start(work))

    def _next_work(self) -> Work | None:
        for _ in range(len(self._turns)):
            source = self._turns[0]
            queue = self._queues.get(source)
            if not queue:
                self._turns.popleft()  # nothing waiting: it rejoins at the back when it has
                continue
            self._turns.rotate(-1)  # served: its next turn comes after every other source's
            self._last_served = source
            return queue.popleft()
        return None

    def _dispatch(self) -> None:
        """Start the next work while the engine has a free sequence (under the lock). Not
        while a read-ahead runs: it was stopped when work came, and that work waits to start
        on the cache it leaves."""
        if any(work.read_ahead for work in self.active.values()):
            return
        while not self.loading and (not self.host.alive or self.host.free):
            work = self._next_work()
            if work is None:
                return
            if not self.host.alive:
                if self.active:  # a crash still being reported: its work ends first
                    self._queues[work.source].appendleft(work)
                    return
                if work.recover and self.settings is not None:
                    self._queues[work.source].appendleft(work)  # runs once reloaded
                    log.info("reloading %s after the engine stopped", self.settings.path)
                    self.host.kill()
                    self.host.load(self.settings)
                    self.loading = self._recovering = True
                    return
                self._end(work, Failed(work.id, NOT_RUNNING, code="no_model"))
                continue
            try:
                if work.texts is not None:
                    self.host.embed(work.texts, request_id=work.id)
                else:
                    self.host.chat(work.messages, work.sampling, work.prompt,
                                   request_id=work.id, event_interval=work.event_interval,
                                   on_demand=work.on_demand)
            except EngineError as exc:
                self._end(work, Failed(work.id, str(exc)))
                continue
            work.started_at = time.monotonic()
            self.active[work.id] = work

    def _end(self, work: Work, event: HostEvent) -> None:
        work.finished_at = time.monotonic()
        self.active.pop(work.id, None)
        self._deliver(work.on_event, event)

    @staticmethod
    def _deliver(callback: EventCallback, event: HostEvent) -> None:
        try:
            callback(event)
        except Exception:  # one client's broken callback must not stop the others' events
            log.exception("an engine event callback failed")

    # --- events (reader thread) ---------------------------------------------------------------

    def _pump(self) -> None:
        while self._alive:
            with self._lock:
                handles = self.host.wait_handles()
            if not handles:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            # The handles may be closed under us (kill): then just look again.
            with contextlib.suppress(OSError, ValueError):
                wait(handles, timeout=0.2)  # type: ignore[arg-type]
            for _ in range(512):
                with self._lock:
                    event = self.host.poll(0)
                    if event is None:
                        break
                    self._handle(event)

    def _handle(self, event: HostEvent) -> None:
        """One event from the host (under the lock)."""
        if isinstance(event, LogLine):
            return
        if isinstance(event, (Token, ReplyDone, Embeddings)) or (
                isinstance(event, Failed) and event.request_id is not None):
            work = self.active.get(event.request_id or 0)
            if work is None:
                return  # the end of work already ended here (killed, say)
            if isinstance(event, Token):
                work.tokens += event.pieces
                if work.cancelled_at is not None:
                    work.events_after_cancel += 1
                self._deliver(work.on_event, event)
            else:
                self._end(work, event)
            self._dispatch()
            return
        if isinstance(event, (Crashed, Failed)):  # died, or a load failed
            self.loading = False
            for work in list(self.active.values()):
                self._end(work, event)
            if self._recovering:
                self._fail_waiting_recovery(event.message)
        elif isinstance(event, Loaded):
            self.loading = self._recovering = False
        elif not isinstance(event, (LoadProgress, Unloaded)):
            return
        for listener in list(self._listeners):
            self._deliver(listener, event)
        self._dispatch()

    def _fail_waiting_recovery(self, message: str) -> None:
        """A reload for recovery failed: the work waiting for it fails with the reason
        (instead of reloading again and again); the next work submitted tries again."""
        self._recovering = False
        for queue in self._queues.values():
            for work in [w for w in queue if w.recover]:
                queue.remove(work)
                self._end(work, Failed(work.id, f"The model could not be reloaded: {message}",
                                       code="engine_unavailable"))
