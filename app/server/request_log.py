"""What the server did, one entry per request: the Server page's live log and the benchmark's
figures. Thread-safe; keeps the last ``maxlen`` entries."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from app.engine.shared_host import Work


@dataclass
class LogEntry:
    """One request. Times in seconds; ``ttft``: from the request's arrival to its first token
    (queueing and the prompt included). ``status``: the HTTP status answered (499: the client
    left before the end)."""

    client: str
    endpoint: str
    stream: bool = False
    started: float = field(default_factory=time.time)  # wall clock, for display
    arrived: float = field(default_factory=time.monotonic)
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    tokens_per_second: float | None = None
    duration: float | None = None
    queued_seconds: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    work: Work | None = field(default=None, repr=False)  # the engine's side, live

    @property
    def done(self) -> bool:
        return self.status != 0

    @property
    def work_id(self) -> int | None:
        """Its place in the engine's queue (numbered on arrival)."""
        return self.work.id if self.work else None

    @property
    def engine_started(self) -> float | None:
        """Monotonic time the engine took it."""
        return self.work.started_at if self.work else None

    @property
    def engine_finished(self) -> float | None:
        """Monotonic time the engine was free of it (after a cancel, that comes later than the
        answer's end)."""
        return self.work.finished_at if self.work else None

    @property
    def cancelled_at(self) -> float | None:
        """Monotonic time its work was cancelled (the client left)."""
        return self.work.cancelled_at if self.work else None

    @property
    def events_after_cancel(self) -> int:
        """Text events that still arrived after the cancel (at most one by design)."""
        return self.work.events_after_cancel if self.work else 0


class RequestLog:
    """Entries in arrival order, each with a serial number."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[int, LogEntry]] = deque(maxlen=maxlen)
        self._serial = 0
        self.changes = 0  # bumped on every change: a reader polls it

    def add(self, entry: LogEntry) -> int:
        with self._lock:
            self._serial += 1
            self._entries.append((self._serial, entry))
            self.changes += 1
            return self._serial

    def touch(self) -> None:
        """An entry was updated in place."""
        with self._lock:
            self.changes += 1

    def entries(self) -> list[LogEntry]:
        with self._lock:
            return [entry for _, entry in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.changes += 1
