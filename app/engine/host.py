"""The parent's handle on a model-host child process.

``ModelHost`` starts the child (spawn), sends requests and hands back events. It runs as many
replies at once as the loaded model has sequences (``Loaded.n_parallel``, 1 unless the load
asked for more) and refuses another (``EngineBusy``); each running reply gets a *lane*, its slot
in the stop and read counts shared with the child. A dead child becomes a ``Crashed`` event
carrying the exit code or signal and llama.cpp's last log lines.

Callers either poll events themselves (the Qt bridge does, on a thread) or use the synchronous
helpers ``load_sync`` and ``chat_stream`` (the CLI and benchmarks do). Whoever polls must keep
polling while a reply runs: the child holds each token until the one before has been read
(see ``host_child``), which is what makes a stop take effect within one token.

A load that failed may have left the child half-allocated, or the child may be unable to
allocate at all (an address-space limit, memory taken by others); so may a reply that ran out
of memory (``Failed.unusable``). Then the next load starts a fresh child instead of asking that
one again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from app.core import paths
from app.engine import host_child, kv_shelf, rpc
from app.engine.child import describe_exit
from app.engine.protocol import (
    MAX_PARALLEL,
    Chat,
    ChatMessage,
    Embed,
    Embeddings,
    Event,
    Failed,
    Forget,
    Load,
    Loaded,
    LoadProgress,
    LoadSettings,
    LogLine,
    ReplyDone,
    Request,
    Sampling,
    Shutdown,
    Token,
    Unload,
    Unloaded,
)

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("quantdesk.engine.child")
_CTX = mp.get_context("spawn")


@dataclass(frozen=True)
class Crashed:
    """The child died. ``message`` says how, in words; ``log_tail`` is what it said last."""

    exitcode: int | None
    message: str
    log_tail: tuple[str, ...]


class EngineError(Exception):
    """A request failed; the message is for the user."""

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.log_tail = tuple(log_tail)


class EngineCrashed(EngineError):
    """The engine process died."""

    def __init__(self, crash: Crashed) -> None:
        super().__init__(crash.message, crash.log_tail)
        self.exitcode = crash.exitcode


class EngineBusy(EngineError):
    """A reply is still being generated."""


HostEvent = Event | Crashed


class ModelHost:
    """One child process that owns (at most) one loaded model."""

    def __init__(self, event_interval: float = 0.0) -> None:
        """``event_interval``: the least time between the text events of its replies, unless
        a request says otherwise (``Chat.event_interval``; ``READING_INTERVAL`` for a person)."""
        self.event_interval = event_interval
        self._proc: mp.process.BaseProcess | None = None
        self._requests: mp.connection.Connection | None = None
        self._events: mp.connection.Connection | None = None
        # per lane: the id of the request to stop; the text events of its reply this side took
        # (read them, or for an ``on_demand`` reply, asked past them: ``more``); only this side
        # writes either
        self._stop = _CTX.Array("q", [-1] * MAX_PARALLEL, lock=False)
        self._consumed = _CTX.Array("q", MAX_PARALLEL, lock=False)
        self._ids = itertools.count(1)
        self._crash_reported = False
        self._replace_child = False
        self.active: dict[int, int] = {}  # running request id -> its lane
        self._on_demand: set[int] = set()  # running requests whose reader asks for text
        self.loaded: Loaded | None = None
        self.log_tail: deque[str] = deque(maxlen=40)
        self._rpc_servers: tuple[str, ...] = ()  # of the last load: named if the child dies

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the child process is running."""
        return self._proc is not None and self._proc.is_alive()

    @property
    def current(self) -> Loaded | None:
        """The loaded model, if any (``loaded``, under the name chat sessions use)."""
        return self.loaded

    @property
    def active_request(self) -> int | None:
        """A running request's id (the first started), or None when the engine is idle."""
        return next(iter(self.active), None)

    @property
    def capacity(self) -> int:
        """How many replies can run at once: the loaded model's sequences."""
        return self.loaded.n_parallel if self.loaded is not None else 1

    @property
    def free(self) -> bool:
        """Whether another reply can start now."""
        return len(self.active) < self.capacity

    @property
    def pid(self) -> int | None:
        """The child's process id (for tests and diagnostics)."""
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the child if it is not running."""
        if self.alive:
            return
        req_recv, req_send = _CTX.Pipe(duplex=False)
        ev_recv, ev_send = _CTX.Pipe(duplex=False)
        self._proc = _CTX.Process(target=host_child.serve,
                                  args=(req_recv, ev_send, self._stop, self._consumed),
                                  name="quantdesk-model-host", daemon=True)
        self._proc.start()
        req_recv.close()
        ev_send.close()
        self._requests, self._events = req_send, ev_recv
        self._crash_reported = False
        self._replace_child = False
        self.active.clear()
        self._on_demand.clear()
        self.loaded = None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the child to exit; kill it if it does not within ``timeout``."""
        if self._proc is None:
            return
        if self.alive:
            self.stop()
            self._send(Shutdown())
            self._proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        """End the child at once (used to cancel and in tests of crash handling)."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)
        for conn in (self._requests, self._events):
            if conn is not None:
                conn.close()
        self._proc = self._requests = self._events = None
        self.active.clear()
        self._on_demand.clear()
        self.loaded = None

    # --- requests -----------------------------------------------------------------------------

    def _send(self, request: Request) -> None:
        assert self._requests is not None
        with contextlib.suppress(OSError):  # a dead child: poll() reports how it died
            self._requests.send(request)

    def load(self, settings: LoadSettings, *, stop_running: bool = False) -> None:
        """Load a model (unloading the current one); events: LoadProgress…, Loaded or Failed.
        Raises EngineBusy while a reply runs, unless ``stop_running``: then the running replies
        end as stopped (their ReplyDone comes before the load's events)."""
        if self.active and not stop_running:
            raise EngineBusy("A reply is being generated; stop it before switching models.")
        self.stop()
        if self._replace_child:
            self.kill()
        self.start()
        self.loaded = None
        self._rpc_servers = settings.rpc_servers
        self._send(Load(settings))

    def chat(self, messages: Sequence[ChatMessage], sampling: Sampling | None = None,
             prompt: str | None = None, request_id: int | None = None,
             event_interval: float | None = None, read_ahead: bool = False,
             on_demand: bool = False) -> int:
        """Start a reply to ``messages`` (or a continuation of the raw text ``prompt``, no
        template); returns its request id (``request_id`` when the caller numbers requests
        itself: ``SharedHost`` does). Events: Token…, then ReplyDone or Failed; text events
        at least ``event_interval`` seconds apart (the host's own when None). ``read_ahead``:
        only decode the prompt into the cache (``Chat.read_ahead``). ``on_demand``: after the
        first, a text event goes only when the reader asks for it (``more``), not as soon as
        the last one is read; the rest of the text goes with the reply's end."""
        request_id = self._begin(request_id)
        if on_demand:
            self._on_demand.add(request_id)
        self._send(Chat(request_id, tuple(messages), sampling or Sampling(), prompt,
                        lane=self.active[request_id],
                        event_interval=self.event_interval if event_interval is None
                        else event_interval, read_ahead=read_ahead))
        return request_id

    def embed(self, texts: Sequence[str], request_id: int | None = None) -> int:
        """Ask for embedding vectors of ``texts``; events: Embeddings or Failed."""
        request_id = self._begin(request_id)
        self._send(Embed(request_id, tuple(texts)))
        return request_id

    def _begin(self, request_id: int | None) -> int:
        if not self.free:
            raise EngineBusy("A reply is already being generated; wait for it or stop it."
                             if self.capacity == 1 else
                             f"{self.capacity} replies are already being generated.")
        if not self.alive:
            raise EngineError("The engine is not running: load a model first.")
        request_id = next(self._ids) if request_id is None else request_id
        lane = min(set(range(MAX_PARALLEL)) - set(self.active.values()))
        # the lane is free: no event of its last reply is in flight
        self._consumed[lane] = 0
        self._stop[lane] = -1
        self.active[request_id] = lane
        return request_id

    def more(self, request_id: int) -> None:
        """The reader of an ``on_demand`` reply asks for its next text event (the text since
        the last one, as soon as there is any); no-op when the reply is not running."""
        lane = self.active.get(request_id)
        if lane is not None and request_id in self._on_demand:
            self._consumed[lane] += 1

    def stop(self, request_id: int | None = None) -> None:
        """Stop a running reply (every one when ``request_id`` is None) after the current
        token; no-op when it is not running."""
        for running, lane in list(self.active.items()):
            if request_id is None or running == request_id:
                self._stop[lane] = running

    def forget(self) -> None:
        """Drop the conversations the child keeps for quick next turns (``Forget``). Without a
        running child (none started yet, or it died), the shelves earlier loads left on disk
        are removed here: a deleted conversation's keys, values and tokens must not wait for
        the next engine to go."""
        if self.alive:
            self._send(Forget())
        else:
            kv_shelf.remove_left(paths.cache_location())

    def unload(self) -> None:
        """Free the model but keep the process; event: Unloaded."""
        if self.alive:
            self.stop()
            self._send(Unload())

    # --- events -------------------------------------------------------------------------------

    def wait_handles(self) -> list[object]:
        """What to wait on (``multiprocessing.connection.wait``) for the next event or a death."""
        if self._events is None or self._proc is None:
            return []
        return [self._events, self._proc.sentinel]

    def poll(self, timeout: float = 0.1) -> HostEvent | None:
        """The next event, None if none came within ``timeout``, or Crashed once if it died."""
        if self._events is None or self._proc is None:
            return None
        try:
            ready = self._events.poll(timeout)
            event: HostEvent | None = self._events.recv() if ready else None
        except (EOFError, OSError):
            event = None
            ready = False
        if event is None:
            if self._proc.is_alive() or ready:
                return None
            return self._crashed()
        self._track(event)
        return event

    def _crashed(self) -> Crashed | None:
        if self._crash_reported:
            return None
        self._crash_reported = True
        assert self._proc is not None
        self._proc.join(1)
        code = self._proc.exitcode
        # llama.cpp aborts the child when an RPC server holding part of the model goes away
        hint = rpc.crash_hint(self._rpc_servers) if self._rpc_servers else ""
        crash = Crashed(code, f"The engine stopped unexpectedly: {describe_exit(code)}.{hint}",
                        tuple(self.log_tail))
        log.error("%s Last log lines:\n%s", crash.message, "\n".join(crash.log_tail))
        self.active.clear()
        self._on_demand.clear()
        self.loaded = None
        return crash

    def _track(self, event: HostEvent) -> None:
        if isinstance(event, LogLine):
            self.log_tail.append(event.text)
            _llama_log.log(event.level, "%s", event.text)
        elif isinstance(event, Token):
            lane = self.active.get(event.request_id)
            if lane is not None and event.request_id not in self._on_demand:
                self._consumed[lane] += 1  # the child sends the next text at once
        elif isinstance(event, Loaded):
            self.loaded = event
        elif isinstance(event, Failed) and (event.request_id is None or event.unusable):
            self._replace_child = True  # the next load gets a fresh child
            if event.request_id is not None:
                self._ended(event.request_id)
        elif isinstance(event, (ReplyDone, Failed, Embeddings)) and event.request_id is not None:
            self._ended(event.request_id)
        elif isinstance(event, Unloaded):
            self.loaded = None

    def _ended(self, request_id: int) -> None:
        self.active.pop(request_id, None)
        self._on_demand.discard(request_id)

    def _next(self, timeout: float) -> HostEvent:
        """Wait for the next event other than a log line; raise EngineCrashed on death."""
        deadline = time.monotonic() + timeout  # wall time: poll() may return at once
        while True:
            event = self.poll(0.1)
            if isinstance(event, Crashed):
                raise EngineCrashed(event)
            if event is not None and not isinstance(event, LogLine):
                return event
            if event is None and time.monotonic() > deadline:
                raise EngineError(f"The engine did not answer within {timeout:.0f} s.")

    # --- synchronous helpers ------------------------------------------------------------------

    def load_sync(self, settings: LoadSettings, timeout: float = 600.0,
                  on_progress: Callable[[float], None] | None = None) -> Loaded:
        """Load and wait; raise EngineError with llama.cpp's reason on failure."""
        self.load(settings)
        while True:
            event = self._next(timeout)
            if isinstance(event, LoadProgress) and on_progress:
                on_progress(event.fraction)
            elif isinstance(event, Loaded):
                return event
            elif isinstance(event, Failed):
                raise EngineError(event.message, event.log_tail)

    def chat_stream(self, messages: Sequence[ChatMessage], sampling: Sampling | None = None,
                    timeout: float = 600.0, prompt: str | None = None,
                    event_interval: float | None = None) -> Iterator[Token | ReplyDone]:
        """Yield Token events and finally the ReplyDone; raise EngineError on failure."""
        request_id = self.chat(messages, sampling, prompt, event_interval=event_interval)
        while True:
            event = self._next(timeout)
            if isinstance(event, Token) and event.request_id == request_id:
                yield event
            elif isinstance(event, ReplyDone) and event.request_id == request_id:
                yield event
                return
            elif isinstance(event, Failed):
                raise EngineError(event.message, event.log_tail)
