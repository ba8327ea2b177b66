"""Pipeline runs and their steps, as stored in the app's database (tables ``runs``, ``steps``).

A run is an ordered list of steps (get the source, importance matrix, quantize, evaluate,
summarize) with the options that made them. Each step keeps its parameters, its status, the
fingerprint of its inputs when it ran, its outputs (paths with their fingerprints, numbers) and
its timings. ``app.pipeline.runner`` decides what to run; this module only reads and writes.

A run whose status is ``running`` while the process that claimed it is gone was interrupted
(the app was killed, the machine went down): ``interrupted()`` lists those for "Continue where
you left off".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from app.core.storage import Storage

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"


@dataclass(frozen=True)
class StepRecord:
    """One stored step."""

    id: int
    run_id: int
    position: int
    key: str
    kind: str
    label: str
    params: dict[str, Any]
    status: str
    fingerprint: str | None
    outputs: dict[str, Any] | None
    error: str | None
    reused_from: int | None
    started_at: float | None
    finished_at: float | None
    seconds: float | None


@dataclass(frozen=True)
class RunRecord:
    """One stored run (its steps are read with ``RunStore.steps``)."""

    id: int
    kind: str
    title: str
    options: dict[str, Any]
    status: str
    error: str | None
    pid: int | None
    pid_started: float | None
    dismissed: bool
    created_at: float
    updated_at: float


def _step(row: Any) -> StepRecord:
    return StepRecord(
        row["id"], row["run_id"], row["position"], row["key"], row["kind"], row["label"],
        json.loads(row["params_json"]), row["status"], row["fingerprint"],
        json.loads(row["outputs_json"]) if row["outputs_json"] else None, row["error"],
        row["reused_from"], row["started_at"], row["finished_at"], row["seconds"])


def _run(row: Any) -> RunRecord:
    return RunRecord(row["id"], row["kind"], row["title"], json.loads(row["options_json"]),
                     row["status"], row["error"], row["pid"], row["pid_started"],
                     bool(row["dismissed"]), row["created_at"], row["updated_at"])


class RunStore:
    """Reads and writes runs and steps through one ``Storage`` (one per thread)."""

    def __init__(self, store: Storage) -> None:
        self.store = store

    def create(self, kind: str, title: str, options: dict[str, Any],
               steps: list[tuple[str, str, str, dict[str, Any]]]) -> RunRecord:
        """A new pending run with ``steps`` as (key, kind, label, params), in order."""
        now = time.time()
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, title, options_json, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)", (kind, title, json.dumps(options), now, now))
            run_id = int(cur.lastrowid or 0)
            for position, (key, step_kind, label, params) in enumerate(steps):
                db.execute(
                    "INSERT INTO steps (run_id, position, key, kind, label, params_json) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, position, key, step_kind, label, json.dumps(params, sort_keys=True)))
        return self.run(run_id)

    def run(self, run_id: int) -> RunRecord:
        """One run; KeyError if there is none."""
        rows = self.store.query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise KeyError(run_id)
        return _run(rows[0])

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """The latest runs, newest first."""
        return [_run(r) for r in self.store.query(
            "SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))]

    def steps(self, run_id: int) -> list[StepRecord]:
        """A run's steps in order."""
        return [_step(r) for r in self.store.query(
            "SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,))]

    def step(self, step_id: int) -> StepRecord:
        """One step; KeyError if there is none."""
        rows = self.store.query("SELECT * FROM steps WHERE id = ?", (step_id,))
        if not rows:
            raise KeyError(step_id)
        return _step(rows[0])

    def claim(self, run_id: int, pid: int, pid_started: float) -> None:
        """Mark the run as running in process ``pid`` (started at ``pid_started``)."""
        with self.store.transaction() as db:
            db.execute("UPDATE runs SET status = ?, error = NULL, pid = ?, pid_started = ?, "
                       "dismissed = 0, updated_at = ? WHERE id = ?",
                       (RUNNING, pid, pid_started, time.time(), run_id))

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        """End a run as done, failed or cancelled."""
        with self.store.transaction() as db:
            db.execute("UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                       (status, error, time.time(), run_id))

    def dismiss(self, run_id: int) -> None:
        """Stop offering an unfinished run for resuming (it stays in the history)."""
        with self.store.transaction() as db:
            db.execute("UPDATE runs SET dismissed = 1 WHERE id = ?", (run_id,))

    def start_step(self, step_id: int, fingerprint: str) -> None:
        """A step begins (again): running, with the fingerprint of its inputs."""
        with self.store.transaction() as db:
            db.execute("UPDATE steps SET status = ?, fingerprint = ?, error = NULL, "
                       "outputs_json = NULL, reused_from = NULL, started_at = ?, "
                       "finished_at = NULL, seconds = NULL WHERE id = ?",
                       (RUNNING, fingerprint, time.time(), step_id))

    def finish_step(self, step_id: int, fingerprint: str, outputs: dict[str, Any],
                    seconds: float, reused_from: int | None = None) -> None:
        """A step is done, with its outputs (``reused_from``: the step whose outputs these
        are, when nothing was computed)."""
        now = time.time()
        with self.store.transaction() as db:
            db.execute("UPDATE steps SET status = ?, fingerprint = ?, outputs_json = ?, "
                       "error = NULL, reused_from = ?, started_at = COALESCE(started_at, ?), "
                       "finished_at = ?, seconds = ? WHERE id = ?",
                       (DONE, fingerprint, json.dumps(outputs), reused_from, now, now, seconds,
                        step_id))

    def end_step(self, step_id: int, status: str, error: str | None = None) -> None:
        """A step failed or was cancelled."""
        with self.store.transaction() as db:
            db.execute("UPDATE steps SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                       (status, error, time.time(), step_id))

    def done_with(self, kind: str, fingerprint: str) -> list[StepRecord]:
        """Finished steps of ``kind`` whose inputs had ``fingerprint`` (newest first): their
        outputs can stand for a new step with the same inputs, if they still exist."""
        return [_step(r) for r in self.store.query(
            "SELECT * FROM steps WHERE kind = ? AND fingerprint = ? AND status = ? "
            "ORDER BY finished_at DESC, id DESC", (kind, fingerprint, DONE))]

    def unfinished(self) -> list[RunRecord]:
        """Runs not done and not dismissed, newest first (running ones included)."""
        return [_run(r) for r in self.store.query(
            "SELECT * FROM runs WHERE status IN (?, ?, ?, ?) AND dismissed = 0 ORDER BY id DESC",
            (PENDING, RUNNING, FAILED, CANCELLED))]
