"""The chat session: one conversation's reply life cycle, without Qt.

The Chat page, the A/B chat and ``quantdesk chat`` all drive a ``ChatSession``; widgets show its
state and forward intent. It owns the one state machine of a reply:

    IDLE ──send / regenerate / edit_and_resend──▶ REPLYING ──stop──▶ STOPPING
      ▲                                              │                  │
      └──── ReplyDone · Failed · Crashed · close ────┴──────────────────┘
                (the reply is saved: complete, stopped or partial)

The session is IDLE only once it has *handled* the end of its reply. The engine may already
have finished (its own "busy" flag cleared on a reader thread) while the end event is still on
its way to the session: a send in that gap is refused with ``SessionBusy`` — the text stays with
the caller — instead of starting a second reply over the first and losing it.

Saving follows ``app.core.storage``: the user's message is written when its reply starts; a
reply is written when it ends — ``complete``; ``stopped`` (by the user, or because the app
closed); ``partial``, with the error, when the engine failed or died. Nothing is changed in the
store until the engine has accepted the request, so an engine that refuses (not running, busy)
loses nothing: the text stays with the caller, a regenerated reply stays in place.

The session talks to the engine through ``ChatEngine`` (start a reply, stop it, what is loaded)
and is told what happened by ``handle(event)``. The Qt bridge (``app.jobs.engine_client``)
delivers events on the UI thread; headless callers (the CLI) use ``follow`` with
``ModelHost.poll``. ``MemoryStore`` keeps a conversation that is not to be saved (A/B chat, CLI).
"""

from __future__ import annotations

import enum
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from app.core import storage
from app.core.sampling import Sampling
from app.core.storage import Conversation, Message
from app.engine.host import Crashed, EngineBusy, EngineError, HostEvent
from app.engine.protocol import (
    ChatMessage,
    Failed,
    Loaded,
    LoadSettings,
    ReplyDone,
    ReplyMetrics,
    Token,
)

log = logging.getLogger(__name__)

COMPLETE = storage.STATUS_COMPLETE
STOPPED = storage.STATUS_STOPPED
PARTIAL = storage.STATUS_PARTIAL
_SAMPLING_FIELDS = {f.name for f in fields(Sampling)}

__all__ = [
    "COMPLETE", "PARTIAL", "STOPPED", "ChatEngine", "ChatMessage", "ChatSession", "ChatStore",
    "Crashed", "EngineBusy", "EngineError", "Failed", "LoadSettings", "Loaded", "MemoryStore",
    "ReadsAhead", "Reply", "ReplyDone", "ReplyEnded", "ReplyMetrics", "ReplyText", "Sampling",
    "SessionBusy", "SessionError", "SessionState", "Started", "Token", "follow", "status_text",
]


class ChatEngine(Protocol):
    """What a session needs from an engine: ``ModelHost`` and ``EngineClient`` both are one."""

    @property
    def current(self) -> Loaded | None:
        """The loaded model, if any."""

    def chat(self, messages: Sequence[ChatMessage], sampling: Sampling, *,
             on_demand: bool = False) -> int:
        """Start a reply; return its request id; raise EngineError if the engine cannot.
        ``on_demand``: after the first, a text event comes only when the reader asks for it
        (the engine's ``more``)."""

    def stop(self) -> None:
        """Ask the running reply to stop after the current token."""


@runtime_checkable
class ReadsAhead(Protocol):
    """An engine that can decode a prompt before its reply is asked for (``EngineClient``)."""

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        """Decode the prompt of a reply to ``messages`` into the cache, when idle."""


class ChatStore(Protocol):
    """The part of ``Storage`` a session uses; ``MemoryStore`` is the unsaved twin."""

    def create_conversation(self, title: str = ...) -> Conversation: ...
    def conversation(self, conversation_id: int) -> Conversation: ...
    def messages(self, conversation_id: int) -> list[Message]: ...
    def message(self, message_id: int) -> Message: ...

    def add_message(self, conversation_id: int, role: str, content: str, *,
                    status: str = ..., error: str | None = ..., model: str | None = ...,
                    sampling: dict[str, Any] | None = ...,
                    metrics: dict[str, Any] | None = ...) -> Message: ...

    def edit_message(self, message_id: int, content: str) -> None: ...
    def delete_messages_from(self, conversation_id: int, message_id: int) -> None: ...


class SessionState(enum.Enum):
    """Where the reply life cycle is."""

    IDLE = "idle"
    REPLYING = "replying"
    STOPPING = "stopping"


class SessionError(Exception):
    """A request the session cannot take (empty text, no model); the message says why."""


class SessionBusy(SessionError):
    """A reply is still being written (or its end not yet handled)."""


@dataclass
class Reply:
    """The reply being written, then how it ended. ``message`` is the stored message once
    saved (None if it could not be: ``save_error`` says why)."""

    request_id: int
    conversation_id: int
    model: str
    sampling: Sampling
    text: str = ""
    status: str | None = None  # None while it is written; then COMPLETE, STOPPED or PARTIAL
    error: str | None = None
    finish_reason: str | None = None
    metrics: ReplyMetrics | None = None
    message: Message | None = None
    save_error: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the reply has ended (and was saved, if it could be)."""
        return self.status is not None


@dataclass(frozen=True)
class Started:
    """A reply started. ``user`` is the message it answers when that is new or edited."""

    reply: Reply
    user: Message | None


@dataclass(frozen=True)
class ReplyText:
    """Text arrived for the reply."""

    reply: Reply
    text: str


@dataclass(frozen=True)
class ReplyEnded:
    """The reply ended; ``reply.status`` says how. It was saved (``reply.message``) unless
    ``reply.save_error`` says why not."""

    reply: Reply


Update = ReplyText | ReplyEnded


def status_text(status: str, error: str | None) -> str:
    """The line under a reply that did not complete ('' for a complete one)."""
    if status == STOPPED:
        return "Stopped."
    if status == PARTIAL:
        return f"Incomplete: {error or 'the reply was cut short'}"
    return ""


def _sampling_json(sampling: Sampling) -> dict[str, Any]:
    values = asdict(sampling)
    values["stop"] = list(values["stop"])
    return values


class ChatSession:
    """One conversation at a time, and at most one reply in progress."""

    def __init__(self, engine: ChatEngine, store: ChatStore,
                 default_sampling: Callable[[], Sampling] = Sampling, *,
                 on_demand: bool = False) -> None:
        """``on_demand``: the reader asks the engine for each text event of a reply after the
        first (the chat page does at each redraw), so none comes that nothing would show."""
        self.engine = engine
        self.on_demand = on_demand
        self.store = store
        self.default_sampling = default_sampling
        self.state = SessionState.IDLE
        self.conversation_id: int | None = None  # None: a new conversation, created on send
        self.reply: Reply | None = None

    @property
    def busy(self) -> bool:
        """A reply is in progress (its end not yet handled)."""
        return self.state is not SessionState.IDLE

    # --- the open conversation ----------------------------------------------------------------

    def open(self, conversation_id: int) -> list[Message]:
        """Show another conversation; returns its messages. A reply in progress for another
        conversation is stopped, and saved to its own conversation when it ends."""
        self.store.conversation(conversation_id)  # KeyError if it does not exist
        if self.reply is not None and self.reply.conversation_id != conversation_id:
            self.stop()
        self.conversation_id = conversation_id
        return self.messages()

    def new(self) -> None:
        """Start a new conversation (created in the store by its first message)."""
        if self.reply is not None:
            self.stop()
        self.conversation_id = None

    def messages(self) -> list[Message]:
        """The open conversation's stored messages, in order."""
        if self.conversation_id is None:
            return []
        try:
            return self.store.messages(self.conversation_id)
        except KeyError:
            return []

    def sampling(self) -> Sampling:
        """The conversation's own sampling, or the defaults."""
        if self.conversation_id is not None:
            stored = self.store.conversation(self.conversation_id).sampling
            if stored:
                values = {k: v for k, v in stored.items() if k in _SAMPLING_FIELDS}
                values["stop"] = tuple(values.get("stop", ()))
                return replace(self.default_sampling(), **values)
        return self.default_sampling()

    def history(self, messages: Sequence[Message] | None = None) -> list[ChatMessage]:
        """What the model is shown: the system prompt, then the turns (empty replies left
        out: a reply that failed before its first token is no turn)."""
        history: list[ChatMessage] = []
        if self.conversation_id is not None:
            conv = self.store.conversation(self.conversation_id)
            if conv.system_prompt:
                history.append(ChatMessage("system", conv.system_prompt))
        if messages is None:
            messages = self.messages()
        return history + [ChatMessage(m.role, m.content) for m in messages
                          if m.content or m.role != "assistant"]

    def _with_message(self, text: str) -> list[ChatMessage]:
        """What the model is shown when ``text`` is sent: the history, then it. ``send`` and
        ``read_ahead`` both build it here, so what is read ahead is the prompt Send makes."""
        return [*self.history(), ChatMessage("user", text)]

    # --- intent -------------------------------------------------------------------------------

    def read_ahead(self, text: str) -> bool:
        """The message ``text`` is being typed: have the engine decode the prompt its send
        would make (the same history, the same message as ``send`` strips it), so that the
        reply, once sent, starts from the cache. Nothing is saved. False (nothing asked) for
        empty text, while a reply is in progress, with no model, or an engine that cannot."""
        text = text.strip()
        if (not text or self.busy or self.engine.current is None
                or not isinstance(self.engine, ReadsAhead)):
            return False
        self.engine.read_ahead(self._with_message(text))
        return True

    def send(self, text: str, sampling: Sampling | None = None) -> Started:
        """Send ``text`` and start the reply. Raises SessionBusy while a reply is in progress,
        SessionError for empty text or no model, EngineError if the engine refuses; in each
        case nothing was saved."""
        text = text.strip()
        if not text:
            raise SessionError("Type a message first.")
        self._check_ready()
        reply = self._start(self._with_message(text), sampling)
        with self._saving():
            if self.conversation_id is None:
                title = " ".join(text.split())[:48] or "New chat"
                self.conversation_id = self.store.create_conversation(title).id
            reply.conversation_id = self.conversation_id
            user = self.store.add_message(self.conversation_id, "user", text)
        return Started(reply, user)

    def regenerate(self, sampling: Sampling | None = None) -> Started:
        """Replace the last reply with a new one (or answer the last message if it has no
        reply yet, as after a failed start). The old reply is removed only once the engine
        has taken the request."""
        self._check_ready()
        messages = self.messages()
        if not messages:
            raise SessionError("There is nothing to regenerate yet.")
        keep = messages[:-1] if messages[-1].role == "assistant" else messages
        if not keep or keep[-1].role != "user":
            raise SessionError("There is no message to answer.")
        reply = self._start(self.history(keep), sampling)
        if keep is not messages:
            assert self.conversation_id is not None
            with self._saving():
                self.store.delete_messages_from(self.conversation_id, messages[-1].id)
        return Started(reply, None)

    def edit_and_resend(self, message_id: int, text: str,
                        sampling: Sampling | None = None) -> Started:
        """Change a user message, drop everything after it, and answer it again."""
        text = text.strip()
        if not text:
            raise SessionError("An edited message cannot be empty.")
        self._check_ready()
        messages = self.messages()
        index = next((i for i, m in enumerate(messages) if m.id == message_id), None)
        if index is None or messages[index].role != "user":
            raise SessionError("Only a message of this conversation you wrote can be edited.")
        edited = replace(messages[index], content=text)
        reply = self._start(self.history([*messages[:index], edited]), sampling)
        assert self.conversation_id is not None
        with self._saving():
            # One transaction would be tidier; each write is atomic, and a failure between
            # them leaves the later messages gone but the edit not made: retrying edits again.
            if index + 1 < len(messages):
                self.store.delete_messages_from(self.conversation_id, messages[index + 1].id)
            self.store.edit_message(message_id, text)
            user = self.store.message(message_id)
        return Started(reply, user)

    def truncate(self, message_id: int) -> None:
        """Remove ``message_id`` and everything after it from the open conversation."""
        if self.busy:
            raise SessionBusy("A reply is being written: stop it first.")
        if self.conversation_id is not None:
            self.store.delete_messages_from(self.conversation_id, message_id)

    def stop(self) -> bool:
        """Ask the reply in progress to stop; what was written is kept. False when idle."""
        if self.state is SessionState.IDLE:
            return False
        if self.state is SessionState.REPLYING:
            self.state = SessionState.STOPPING
        self.engine.stop()
        return True

    def close(self) -> ReplyEnded | None:
        """The app is closing: save a reply in progress as stopped, and stop it."""
        if self.reply is None:
            return None
        self.engine.stop()
        return self._finish(STOPPED, self.reply.text, None, None, None)

    # --- events -------------------------------------------------------------------------------

    def handle(self, event: HostEvent | object) -> Update | None:
        """Take one engine event; returns what changed for the reply, if anything."""
        reply = self.reply
        if reply is None:
            return None
        if isinstance(event, Token) and event.request_id == reply.request_id:
            reply.text += event.text
            return ReplyText(reply, event.text)
        if isinstance(event, ReplyDone) and event.request_id == reply.request_id:
            status = STOPPED if event.finish_reason == "stopped" else COMPLETE
            return self._finish(status, event.text, None, event.metrics, event.finish_reason)
        if isinstance(event, Failed) and event.request_id == reply.request_id:
            return self._finish(PARTIAL, reply.text, event.message, None, None)
        if isinstance(event, Crashed):
            return self._finish(PARTIAL, reply.text, event.message, None, None)
        return None

    # --- inside -------------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.busy:
            raise SessionBusy("A reply is still being written: wait for it, or stop it first.")
        if self.engine.current is None:
            raise SessionError("No model is loaded yet: wait for it to load, or pick one.")

    @contextmanager
    def _saving(self) -> Iterator[None]:
        """The store writes that follow a started reply: if they fail, the reply is dropped
        (the engine stopped, its events ignored) and the caller keeps the text."""
        try:
            yield
        except (sqlite3.Error, storage.StorageError) as exc:
            log.error("could not save before the reply: %s", exc)
            self.engine.stop()
            self.reply = None
            self.state = SessionState.IDLE
            raise SessionError(f"Your message could not be saved ({exc}), so no reply is "
                               "written to it.") from exc

    def _start(self, history: list[ChatMessage], sampling: Sampling | None) -> Reply:
        chosen = sampling or self.sampling()
        loaded = self.engine.current
        # EngineError: nothing changed yet
        request_id = self.engine.chat(history, chosen, on_demand=self.on_demand)
        self.reply = Reply(request_id, self.conversation_id or 0,
                           Path(loaded.path).name if loaded else "?", chosen)
        self.state = SessionState.REPLYING
        return self.reply

    def _finish(self, status: str, text: str, error: str | None,
                metrics: ReplyMetrics | None, finish_reason: str | None) -> ReplyEnded:
        reply = self.reply
        assert reply is not None
        self.reply = None
        self.state = SessionState.IDLE  # first: whatever saving does, the session goes on
        reply.text, reply.status, reply.error = text, status, error
        reply.metrics, reply.finish_reason = metrics, finish_reason
        try:
            self.store.conversation(reply.conversation_id)
        except KeyError:  # deleted while its reply was written: nothing to save it to
            reply.save_error = "the conversation was deleted"
            return ReplyEnded(reply)
        try:
            reply.message = self.store.add_message(
                reply.conversation_id, "assistant", text, status=status, error=error,
                model=reply.model, sampling=_sampling_json(reply.sampling),
                metrics=asdict(metrics) if metrics is not None else None)
        except (sqlite3.Error, storage.StorageError) as exc:
            log.error("could not save the reply: %s", exc)
            reply.save_error = f"it could not be saved ({exc})"
        return ReplyEnded(reply)


class MemoryStore:
    """Conversations kept in memory, for chats that are not saved (A/B chat, the CLI)."""

    def __init__(self) -> None:
        self._conversations: dict[int, Conversation] = {}
        self._messages: dict[int, list[Message]] = {}
        self._ids = itertools.count(1)

    def create_conversation(self, title: str = "New chat", system_prompt: str = "",
                            sampling: dict[str, Any] | None = None) -> Conversation:
        """Add an empty conversation."""
        now = time.time()
        conv = Conversation(next(self._ids), title, system_prompt, None, sampling, now, now)
        self._conversations[conv.id] = conv
        self._messages[conv.id] = []
        return conv

    def conversation(self, conversation_id: int) -> Conversation:
        """One conversation; KeyError if there is none."""
        return self._conversations[conversation_id]

    def messages(self, conversation_id: int) -> list[Message]:
        """A conversation's messages in order."""
        return list(self._messages[conversation_id])

    def message(self, message_id: int) -> Message:
        """One message; KeyError if there is none."""
        for messages in self._messages.values():
            for msg in messages:
                if msg.id == message_id:
                    return msg
        raise KeyError(message_id)

    def add_message(self, conversation_id: int, role: str, content: str, *,
                    status: str = COMPLETE, error: str | None = None,
                    model: str | None = None, sampling: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> Message:
        """Append a message."""
        msg = Message(next(self._ids), conversation_id, role, content, status, error, model,
                      sampling, metrics, time.time())
        self._messages[conversation_id].append(msg)
        return msg

    def edit_message(self, message_id: int, content: str) -> None:
        """Replace a message's text."""
        for messages in self._messages.values():
            for i, msg in enumerate(messages):
                if msg.id == message_id:
                    messages[i] = replace(msg, content=content)

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete ``message_id`` and every later message of the conversation."""
        self._messages[conversation_id] = [m for m in self._messages[conversation_id]
                                           if m.id < message_id]


def follow(session: ChatSession, poll: Callable[[float], object | None],
           timeout: float = 600.0) -> Iterator[Update]:
    """Headless: feed ``poll``'s events (``ModelHost.poll``) to ``session`` until its reply
    ends, yielding each update. If nothing arrives for ``timeout`` seconds the reply is stopped
    and EngineError raised."""
    last = time.monotonic()
    while session.busy:
        event = poll(0.1)
        if event is None:
            if time.monotonic() - last > timeout:
                session.stop()
                raise EngineError(f"The engine did not answer within {timeout:.0f} s.")
            continue
        last = time.monotonic()
        update = session.handle(event)
        if update is not None:
            yield update

