"""The shared engine's events for one request, as an asyncio stream on the server's loop.

``SharedHost`` calls back on its reader thread; each request's events are handed to the event
loop with ``call_soon_threadsafe`` and read with ``await``. Waiting also watches the client: a
client that goes away cancels its work — dropped from the queue, or stopped within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from starlette.requests import Request

from app.engine.host import HostEvent
from app.engine.protocol import ChatMessage, Sampling
from app.engine.shared_host import SharedHost, Work

DISCONNECT_CHECK_SECONDS = 0.1


class Gone(Exception):
    """The client disconnected; its work was cancelled."""


class WorkEvents:
    """One submitted request; ``next`` returns its events in order."""

    def __init__(self, shared: SharedHost, source: str, *,
                 messages: Sequence[ChatMessage] = (), sampling: Sampling | None = None,
                 prompt: str | None = None, texts: Sequence[str] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[HostEvent] = asyncio.Queue()
        self._shared = shared
        self.work: Work = shared.submit(source, self._on_event, messages=messages,
                                        sampling=sampling, prompt=prompt, texts=texts,
                                        recover=True)

    def _on_event(self, event: HostEvent) -> None:  # the engine's reader thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def next(self, request: Request | None = None) -> HostEvent:
        """The next event; raises Gone (after cancelling) if ``request``'s client leaves."""
        if request is None or not self._queue.empty():
            return await self._queue.get()
        while True:
            try:
                return await asyncio.wait_for(self._queue.get(), DISCONNECT_CHECK_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                    raise Gone from None

    def cancel(self) -> None:
        """Drop the work from the queue, or stop it after the current token."""
        self._shared.cancel(self.work)

    @property
    def finished(self) -> bool:
        return self.work.finished_at is not None
