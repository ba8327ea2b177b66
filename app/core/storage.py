"""SQLite storage for conversations and messages (WAL, versioned schema, migrations).

A message is written once it is complete; a reply that was stopped, or whose engine died, is
written too, with ``status`` saying so. Every write is its own transaction, so a crash loses at
most the reply being generated at that moment, never anything already shown as saved.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import paths

# Each entry moves the schema from version i to i+1. Never edit a shipped step: append one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        model_path TEXT,
        sampling_json TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'complete'
            CHECK (status IN ('complete', 'stopped', 'partial')),
        error TEXT,
        model TEXT,
        sampling_json TEXT,
        metrics_json TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    """,
    """
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        result_json TEXT NOT NULL,
        votes_json TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    """,
    # Pipeline runs (app.pipeline) and their steps: see app/core/runs.py.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        options_json TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
        error TEXT,
        pid INTEGER,
        pid_started REAL,
        dismissed INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        params_json TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
        fingerprint TEXT,
        outputs_json TEXT,
        error TEXT,
        reused_from INTEGER,
        started_at REAL,
        finished_at REAL,
        seconds REAL,
        UNIQUE (run_id, key)
    );
    CREATE INDEX steps_by_fingerprint ON steps(kind, fingerprint, status);
    """,
    # Model loads: the memory estimate against what the engine measured (app/core/load_stats.py).
    """
    CREATE TABLE loads (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_path TEXT NOT NULL,
        n_ctx INTEGER NOT NULL,
        n_gpu_layers INTEGER NOT NULL,
        estimated_rss INTEGER NOT NULL,
        measured_rss INTEGER NOT NULL,
        estimated_gpu INTEGER,
        measured_gpu INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX loads_by_model ON loads(model_path, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

STATUS_COMPLETE = "complete"
STATUS_STOPPED = "stopped"  # the user pressed Stop: the reply is what was generated until then
STATUS_PARTIAL = "partial"  # the engine failed or died mid-reply


@dataclass(frozen=True)
class StoredEvaluation:
    id: int
    title: str
    result: dict[str, Any]
    votes: dict[str, int]
    created_at: float


class StorageError(Exception):
    """The database could not be opened or written; the message says what to do."""


@dataclass(frozen=True)
class Conversation:
    """A conversation's header."""

    id: int
    title: str
    system_prompt: str
    model_path: str | None
    sampling: dict[str, Any] | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Message:
    """One stored message."""

    id: int
    conversation_id: int
    role: str
    content: str
    status: str
    error: str | None
    model: str | None
    sampling: dict[str, Any] | None
    metrics: dict[str, Any] | None
    created_at: float


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _unjson(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


class Storage:
    """The app's database. One instance per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.database_path()
        try:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._wal()
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"The database {self.path} cannot be opened ({exc}). Your conversations are in "
                "that file: move it aside (do not delete it) and restart QuantDesk."
            ) from None

    def _wal(self) -> None:
        """Switch to write-ahead logging. On a new file another connection doing the same at
        that moment makes SQLite answer 'database is locked' at once (the busy timeout does not
        cover it): wait and try again."""
        for attempt in range(50):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02 * (attempt + 1))

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        while True:
            # The version is read inside the write transaction: two processes (the window and
            # a CLI, two workers) opening a new database at once must not both run a step.
            with self.transaction() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise StorageError(f"The database {self.path} was written by a newer "
                                       f"QuantDesk (schema {version}); update QuantDesk to "
                                       "open it.")
                if version == SCHEMA_VERSION:
                    return
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only statement."""
        return list(self._db.execute(sql, params).fetchall())

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- conversations ------------------------------------------------------------------------

    def create_conversation(self, title: str = "New chat", system_prompt: str = "",
                            model_path: str | None = None,
                            sampling: dict[str, Any] | None = None) -> Conversation:
        """Add an empty conversation."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, system_prompt, model_path, sampling_json, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (title, system_prompt, model_path, _json(sampling), now, now))
        return self.conversation(int(cur.lastrowid or 0))

    def conversation(self, conversation_id: int) -> Conversation:
        """One conversation; KeyError if it does not exist."""
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?",
                               (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(conversation_id)
        return self._conversation(row)

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(row["id"], row["title"], row["system_prompt"], row["model_path"],
                            _unjson(row["sampling_json"]), row["created_at"], row["updated_at"])

    def conversations(self, search: str = "") -> list[Conversation]:
        """All conversations, most recently updated first; ``search`` matches title or text."""
        if search:
            pattern = f"%{search}%"
            rows = self._db.execute(
                "SELECT * FROM conversations c WHERE c.title LIKE ? OR EXISTS ("
                "SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?) "
                "ORDER BY updated_at DESC, id DESC", (pattern, pattern)).fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM conversations ORDER BY updated_at DESC, id DESC").fetchall()
        return [self._conversation(r) for r in rows]

    def update_conversation(self, conversation_id: int, *, title: str | None = None,
                            system_prompt: str | None = None, model_path: str | None = None,
                            sampling: dict[str, Any] | None = None) -> None:
        """Change a conversation's title, system prompt, model or sampling."""
        sets: list[str] = ["updated_at = ?"]
        values: list[object] = [time.time()]
        for column, value in (("title", title), ("system_prompt", system_prompt),
                              ("model_path", model_path), ("sampling_json", _json(sampling))):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        with self.transaction() as db:
            db.execute(f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?",
                       (*values, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        """Remove a conversation and its messages."""
        with self.transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages -----------------------------------------------------------------------------

    def add_message(self, conversation_id: int, role: str, content: str, *,
                    status: str = STATUS_COMPLETE, error: str | None = None,
                    model: str | None = None, sampling: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> Message:
        """Append a finished (or stopped, or partial) message."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, error, model, "
                "sampling_json, metrics_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, status, error, model, _json(sampling),
                 _json(metrics), now))
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                       (now, conversation_id))
        return self.message(int(cur.lastrowid or 0))

    def message(self, message_id: int) -> Message:
        """One message; KeyError if it does not exist."""
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return self._message(row)

    @staticmethod
    def _message(row: sqlite3.Row) -> Message:
        return Message(row["id"], row["conversation_id"], row["role"], row["content"],
                       row["status"], row["error"], row["model"], _unjson(row["sampling_json"]),
                       _unjson(row["metrics_json"]), row["created_at"])

    def messages(self, conversation_id: int) -> list[Message]:
        """A conversation's messages in order."""
        rows = self._db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id",
                                (conversation_id,)).fetchall()
        return [self._message(r) for r in rows]

    def edit_message(self, message_id: int, content: str) -> None:
        """Replace a message's text."""
        with self.transaction() as db:
            db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete ``message_id`` and every later message of the conversation."""
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                       (conversation_id, message_id))

    # Evaluations: the result is stored whole as JSON (app.engine.evaluate.Evaluation.to_json),
    # with what reproduces it (file fingerprints, text hash, n_ctx, chunks, build). Votes are
    # the A/B chat's tally: {"variant name": count}.

    def add_evaluation(self, title: str, result: dict[str, Any]) -> int:
        """Store an evaluation's result; returns its id."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO evaluations (title, result_json, created_at) "
                             "VALUES (?, ?, ?)", (title, json.dumps(result), time.time()))
            return int(cur.lastrowid or 0)

    def evaluations(self) -> list[StoredEvaluation]:
        """Every stored evaluation, newest first."""
        rows = self._db.execute("SELECT * FROM evaluations ORDER BY id DESC").fetchall()
        return [self._evaluation(r) for r in rows]

    def evaluation(self, evaluation_id: int) -> StoredEvaluation:
        """One evaluation; KeyError if it does not exist."""
        row = self._db.execute("SELECT * FROM evaluations WHERE id = ?",
                               (evaluation_id,)).fetchone()
        if row is None:
            raise KeyError(evaluation_id)
        return self._evaluation(row)

    @staticmethod
    def _evaluation(row: sqlite3.Row) -> StoredEvaluation:
        return StoredEvaluation(row["id"], row["title"], json.loads(row["result_json"]),
                                json.loads(row["votes_json"]), row["created_at"])

    def add_vote(self, evaluation_id: int, variant: str) -> dict[str, int]:
        """Count one A/B preference for ``variant``; returns the new tally."""
        with self.transaction() as db:
            row = db.execute("SELECT votes_json FROM evaluations WHERE id = ?",
                             (evaluation_id,)).fetchone()
            if row is None:
                raise KeyError(evaluation_id)
            votes: dict[str, int] = json.loads(row["votes_json"])
            votes[variant] = votes.get(variant, 0) + 1
            db.execute("UPDATE evaluations SET votes_json = ? WHERE id = ?",
                       (json.dumps(votes), evaluation_id))
            return votes

    def delete_evaluation(self, evaluation_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM evaluations WHERE id = ?", (evaluation_id,))
