"""SQLite storage: schema, messages with status, search, persistence, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.core import paths
from app.core.storage import (
    SCHEMA_VERSION,
    STATUS_PARTIAL,
    STATUS_STOPPED,
    Storage,
    StorageError,
)


def test_new_database_is_migrated_and_in_wal_mode() -> None:
    store = Storage()
    assert store.path == paths.database_path()
    assert store.schema_version == SCHEMA_VERSION
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_conversation_and_messages_round_trip() -> None:
    store = Storage()
    conv = store.create_conversation("Trip", system_prompt="Be brief.", sampling={"t": 0.2})
    store.add_message(conv.id, "user", "Plan a trip")
    reply = store.add_message(conv.id, "assistant", "Go to", status=STATUS_STOPPED,
                              model="tiny.gguf", metrics={"generated_tokens": 2})
    store.close()

    again = Storage()
    conv2 = again.conversation(conv.id)
    assert (conv2.title, conv2.system_prompt, conv2.sampling) == ("Trip", "Be brief.", {"t": 0.2})
    msgs = again.messages(conv.id)
    assert [(m.role, m.content, m.status) for m in msgs] == [
        ("user", "Plan a trip", "complete"), ("assistant", "Go to", "stopped")]
    assert msgs[1].metrics == {"generated_tokens": 2} and msgs[1].id == reply.id


def test_search_matches_titles_and_message_text() -> None:
    store = Storage()
    a = store.create_conversation("Cooking")
    b = store.create_conversation("Other")
    store.add_message(b.id, "user", "how do quantized kernels work")
    assert [c.id for c in store.conversations("cook")] == [a.id]
    assert [c.id for c in store.conversations("KERNELS")] == [b.id]
    assert {c.id for c in store.conversations()} == {a.id, b.id}


def test_most_recently_updated_first() -> None:
    store = Storage()
    a = store.create_conversation("A")
    b = store.create_conversation("B")
    store.add_message(a.id, "user", "later")
    assert [c.id for c in store.conversations()][:2] == [a.id, b.id]


def test_delete_from_a_message_truncates_and_edit_changes_text() -> None:
    store = Storage()
    conv = store.create_conversation()
    first = store.add_message(conv.id, "user", "one")
    store.add_message(conv.id, "assistant", "two")
    third = store.add_message(conv.id, "user", "three")
    store.add_message(conv.id, "assistant", "four", status=STATUS_PARTIAL, error="engine died")
    store.delete_messages_from(conv.id, third.id)
    store.edit_message(first.id, "uno")
    assert [m.content for m in store.messages(conv.id)] == ["uno", "two"]


def test_delete_conversation_removes_its_messages() -> None:
    store = Storage()
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "x")
    store.delete_conversation(conv.id)
    with pytest.raises(KeyError):
        store.conversation(conv.id)
    assert store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_rename() -> None:
    store = Storage()
    conv = store.create_conversation()
    store.update_conversation(conv.id, title="Renamed")
    assert store.conversation(conv.id).title == "Renamed"


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer QuantDesk"):
        Storage(path)


def test_corrupt_database_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="move it aside"):
        Storage(path)
    assert path.read_bytes().startswith(b"this is not sqlite")  # nothing overwritten


def test_ids_are_never_reused_after_a_delete() -> None:
    store = Storage()
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "q")
    reply = store.add_message(conv.id, "assistant", "a")
    store.delete_messages_from(conv.id, reply.id)
    assert store.add_message(conv.id, "assistant", "b").id > reply.id


def test_connections_opening_a_new_database_at_once_all_get_it(tmp_path: Path) -> None:
    """Each connection waits for another's migration step instead of running it again (which
    failed with 'table conversations already exists'), and the switch to WAL is retried."""
    import threading

    for attempt in range(10):
        db = tmp_path / f"new-{attempt}.sqlite3"
        start = threading.Barrier(6)
        versions: list[object] = []

        def open_it(path: Path = db, barrier: threading.Barrier = start,
                    out: list[object] = versions) -> None:
            barrier.wait()
            try:
                store = Storage(path)
                out.append(store.schema_version)
                store.close()
            except StorageError as exc:
                out.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert versions == [SCHEMA_VERSION] * 6
