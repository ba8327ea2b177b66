"""The chat session's reply life cycle, driven by the real model host on the tiny model."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import storage
from app.core.storage import Storage
from app.engine.host import ModelHost
from app.pipeline.chat_session import (
    ChatSession,
    EngineError,
    LoadSettings,
    MemoryStore,
    ReplyDone,
    ReplyEnded,
    ReplyText,
    Sampling,
    SessionBusy,
    SessionError,
    SessionState,
    Token,
    follow,
)


@pytest.fixture(scope="module")
def host(tiny_model: Path) -> Iterator[ModelHost]:
    h = ModelHost()
    h.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    yield h
    h.shutdown()


@pytest.fixture
def live_host(host: ModelHost, tiny_model: Path) -> ModelHost:
    """The shared host, reloaded if an earlier test killed its child."""
    if host.loaded is None:
        host.kill()
        host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    return host


@pytest.fixture
def store() -> Iterator[Storage]:
    s = Storage()
    yield s
    s.close()


def _session(host: ModelHost, store: Storage | MemoryStore, max_tokens: int = 16) -> ChatSession:
    return ChatSession(host, store, lambda: Sampling(max_tokens=max_tokens, seed=1))


def _events_until_end(host: ModelHost, request_id: int, timeout: float = 30) -> list[object]:
    """Read the host's events for one reply without handing them to anyone."""
    events: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = host.poll(0.1)
        if event is None:
            continue
        events.append(event)
        if isinstance(event, ReplyDone) and event.request_id == request_id:
            return events
    raise AssertionError(f"no end of reply {request_id}: {events[-3:]}")


def test_send_streams_then_saves_the_complete_reply(live_host: ModelHost,
                                                    store: Storage) -> None:
    session = _session(live_host, store, max_tokens=24)
    started = session.send("  Hello there  ")
    assert session.state is SessionState.REPLYING and session.busy
    assert started.user is not None and started.user.content == "Hello there"
    updates = list(follow(session, live_host.poll))
    texts = [u.text for u in updates if isinstance(u, ReplyText)]
    end = updates[-1]
    assert isinstance(end, ReplyEnded) and session.state is SessionState.IDLE
    reply = end.reply
    assert reply.status == storage.STATUS_COMPLETE and reply.finish_reason == "length"
    # 24 tokens of one printable byte each, in as many events as the reader's pace made
    assert reply.text == "".join(texts) and len(reply.text) == 24 and 1 <= len(texts) <= 24
    saved = reply.message
    assert saved is not None and store.message(saved.id) == saved
    assert saved.content == reply.text and saved.model == "tiny-llama-f32.gguf"
    assert saved.metrics is not None and saved.metrics["generated_tokens"] == 24
    assert saved.sampling is not None and saved.sampling["max_tokens"] == 24
    conv = store.conversation(reply.conversation_id)
    assert conv.title == "Hello there"
    assert [(m.role, m.content) for m in store.messages(conv.id)] == [
        ("user", "Hello there"), ("assistant", reply.text)]


def test_a_send_before_the_finished_reply_is_handled_loses_nothing(live_host: ModelHost,
                                                                   store: Storage) -> None:
    # The race: the engine has finished (its reader cleared the engine's busy flag) but the
    # end of the reply has not reached the session yet.
    session = _session(live_host, store)
    first = session.send("first").reply
    events = _events_until_end(live_host, first.request_id)
    assert live_host.active_request is None  # the engine itself would take a new request
    with pytest.raises(SessionBusy):
        session.send("second")
    with pytest.raises(SessionBusy):
        session.regenerate()
    assert session.reply is first and session.state is SessionState.REPLYING
    updates = [session.handle(e) for e in events]
    end = updates[-1]
    assert isinstance(end, ReplyEnded) and end.reply is first
    assert first.status == storage.STATUS_COMPLETE and first.message is not None
    # Now the second message goes through, after the first reply.
    second = session.send("second").reply
    list(follow(session, live_host.poll))
    assert second.status == storage.STATUS_COMPLETE
    assert [m.content for m in store.messages(first.conversation_id)] == [
        "first", first.text, "second", second.text]


def test_stop_keeps_what_was_written_as_stopped(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store, max_tokens=1800)
    reply = session.send("Tell me a long story").reply
    seen = ""
    events_after_stop = 0
    for update in follow(session, live_host.poll):
        if isinstance(update, ReplyText):
            seen += update.text
            if session.state is SessionState.STOPPING:
                events_after_stop += 1
            elif len(seen) >= 10:  # an event may carry several pieces (a busy reader)
                assert session.stop()
                assert session.state is SessionState.STOPPING
                assert session.stop()  # a second press changes nothing
                assert session.state is SessionState.STOPPING
    assert reply.status == storage.STATUS_STOPPED and reply.finish_reason == "stopped"
    assert reply.text == seen and len(seen) >= 10 and events_after_stop <= 1
    assert reply.message is not None and reply.message.status == storage.STATUS_STOPPED
    assert reply.message.content == seen
    assert not session.stop()  # idle: nothing to stop


def test_reply_failed_by_the_engine_is_kept_partial(live_host: ModelHost,
                                                    store: Storage) -> None:
    session = _session(live_host, store)
    reply = session.send("x" * 5000).reply  # longer than the context: refused in the child
    end = list(follow(session, live_host.poll))[-1]
    assert isinstance(end, ReplyEnded)
    assert reply.status == storage.STATUS_PARTIAL
    assert reply.error is not None and "more than the model's context" in reply.error
    saved = store.messages(reply.conversation_id)
    assert [m.role for m in saved] == ["user", "assistant"]
    assert saved[1].status == storage.STATUS_PARTIAL and saved[1].error == reply.error
    assert session.history() == session.history(saved[:1])  # the empty reply is no turn


def test_engine_death_mid_reply_is_kept_partial(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store, max_tokens=1800)
    reply = session.send("this reply dies").reply
    killed = False
    for update in follow(session, live_host.poll):
        if isinstance(update, ReplyText) and len(reply.text) >= 20 and not killed:
            assert live_host.pid is not None
            os.kill(live_host.pid, signal.SIGKILL)
            killed = True
    assert reply.status == storage.STATUS_PARTIAL and "SIGKILL" in (reply.error or "")
    assert reply.message is not None and reply.message.content == reply.text
    assert len(reply.text) >= 20
    assert session.state is SessionState.IDLE
    with pytest.raises(SessionError, match="No model is loaded"):
        session.send("anyone there?")
    assert [m.role for m in store.messages(reply.conversation_id)] == ["user", "assistant"]


def test_close_saves_the_reply_in_progress_as_stopped(live_host: ModelHost,
                                                      store: Storage) -> None:
    session = _session(live_host, store, max_tokens=1800)
    reply = session.send("until the window closes").reply
    while len(reply.text) < 5:
        event = live_host.poll(0.1)
        if event is not None:
            session.handle(event)
    end = session.close()
    assert end is not None and end.reply is reply and session.state is SessionState.IDLE
    assert reply.status == storage.STATUS_STOPPED
    assert reply.message is not None and reply.message.content == reply.text
    # What the engine still sends for that reply changes nothing.
    for event in _events_until_end(live_host, reply.request_id):
        assert session.handle(event) is None
    assert store.messages(reply.conversation_id)[-1] == reply.message


def test_regenerate_replaces_the_last_reply(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store)
    session.send("Hi")
    first = list(follow(session, live_host.poll))[-1]
    assert isinstance(first, ReplyEnded)
    started = session.regenerate(Sampling(max_tokens=16, seed=2))
    assert started.user is None
    list(follow(session, live_host.poll))
    messages = store.messages(started.reply.conversation_id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert first.reply.message is not None and messages[1].id != first.reply.message.id
    assert messages[1].content == started.reply.text != first.reply.text


def test_edit_and_resend_drops_later_messages(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store, max_tokens=8)
    for text in ("first question", "second question"):
        session.send(text)
        list(follow(session, live_host.poll))
    conv_id = session.conversation_id
    assert conv_id is not None
    first = store.messages(conv_id)[0]
    started = session.edit_and_resend(first.id, "first question, edited")
    assert started.user is not None and started.user.content == "first question, edited"
    list(follow(session, live_host.poll))
    messages = store.messages(conv_id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "first question, edited"), ("assistant", started.reply.text)]
    with pytest.raises(SessionError, match="Only a message"):
        session.edit_and_resend(messages[1].id, "not mine")


def test_an_engine_that_refuses_changes_nothing(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store)
    session.send("Hi")
    list(follow(session, live_host.poll))
    conv_id = session.conversation_id
    assert conv_id is not None
    before = store.messages(conv_id)
    other = live_host.chat([], Sampling(max_tokens=1800))  # someone else holds the engine
    try:
        with pytest.raises(EngineError, match="already being generated"):
            session.send("lost?")
        with pytest.raises(EngineError):
            session.regenerate()
        with pytest.raises(EngineError):
            session.edit_and_resend(before[0].id, "changed?")
    finally:
        live_host.stop()
        _events_until_end(live_host, other)
    assert store.messages(conv_id) == before
    assert session.state is SessionState.IDLE
    with pytest.raises(SessionError, match="Type a message"):
        session.send("   ")


def test_a_store_that_cannot_write_drops_the_reply_and_keeps_the_text(
        live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store, max_tokens=1800)
    session.send("saved")
    list(follow(session, live_host.poll))
    conv_id = session.conversation_id
    assert conv_id is not None
    before = store.messages(conv_id)
    store._db.execute("PRAGMA query_only = ON")  # every write now fails, as on a bad disk
    try:
        with pytest.raises(SessionError, match=r"could not be saved .*readonly"):
            session.send("not saved")
        assert session.state is SessionState.IDLE and session.reply is None
        # The engine was told to stop the reply nobody will keep; its events change nothing.
        deadline = time.monotonic() + 30
        while live_host.active_request is not None and time.monotonic() < deadline:
            event = live_host.poll(0.1)
            assert session.handle(event) is None
        assert live_host.active_request is None
    finally:
        store._db.execute("PRAGMA query_only = OFF")
    assert store.messages(conv_id) == before
    session.send("saved again")
    assert list(follow(session, live_host.poll))[-1].reply.status == storage.STATUS_COMPLETE


def test_switching_conversation_saves_the_reply_to_its_own(live_host: ModelHost,
                                                           store: Storage) -> None:
    other = store.create_conversation("other")
    session = _session(live_host, store, max_tokens=1800)
    reply = session.send("a long one").reply
    assert session.open(other.id) == []
    assert session.state is SessionState.STOPPING  # the reply was asked to stop
    list(follow(session, live_host.poll))
    assert reply.status == storage.STATUS_STOPPED
    assert [m.role for m in store.messages(reply.conversation_id)] == ["user", "assistant"]
    assert store.messages(other.id) == []
    with pytest.raises(KeyError):
        session.open(10_000)


def test_deleting_the_conversation_mid_reply_is_not_an_error(live_host: ModelHost,
                                                             store: Storage) -> None:
    session = _session(live_host, store, max_tokens=1800)
    reply = session.send("soon gone").reply
    store.delete_conversation(reply.conversation_id)
    session.new()
    end = list(follow(session, live_host.poll))[-1]
    assert isinstance(end, ReplyEnded) and end.reply.save_error == "the conversation was deleted"
    assert session.state is SessionState.IDLE and session.messages() == []


def test_per_conversation_system_prompt_and_sampling(live_host: ModelHost,
                                                     store: Storage) -> None:
    session = _session(live_host, store)
    session.send("hello")
    list(follow(session, live_host.poll))
    conv_id = session.conversation_id
    assert conv_id is not None
    store.update_conversation(conv_id, system_prompt="Be terse.",
                              sampling={"temperature": 0.0, "max_tokens": 5, "stop": ["x"]})
    assert session.history()[0].content == "Be terse."
    assert session.sampling() == Sampling(temperature=0.0, max_tokens=5, seed=1, stop=("x",))
    reply = session.send("again").reply
    list(follow(session, live_host.poll))
    assert reply.message is not None and reply.message.metrics is not None
    assert reply.message.metrics["generated_tokens"] <= 5


def test_memory_store_keeps_an_unsaved_conversation(live_host: ModelHost) -> None:
    session = _session(live_host, MemoryStore(), max_tokens=6)
    for text in ("one", "two"):
        session.send(text)
        list(follow(session, live_host.poll))
    assert [m.role for m in session.history()] == ["user", "assistant", "user", "assistant"]
    last_user = session.messages()[2]
    session.truncate(last_user.id)
    assert [m.content for m in session.history()] == ["one", session.messages()[1].content]
    assert Storage().conversations() == []  # nothing went to the database


def test_tokens_of_an_old_request_are_ignored(live_host: ModelHost, store: Storage) -> None:
    session = _session(live_host, store)
    reply = session.send("hi").reply
    assert session.handle(Token(reply.request_id + 100, "stray")) is None
    assert reply.text == ""
    list(follow(session, live_host.poll))
    assert "stray" not in reply.text
