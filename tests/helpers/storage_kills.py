"""A real GUI process killed with SIGKILL while replies stream and evaluations are saved.

``run(cycles)`` starts, each cycle, a GUI process (the real Chat page, offscreen, on the tiny
model) over the same database. It chats — short replies that complete, long ones that stream —
while a worker thread saves evaluation results (``Storage.add_evaluation``, a few hundred KB of
JSON each), and reports on stdout every write once it has returned (the data is committed):

    READY                      the model is loaded
    MSG <id> <sha> <status>    a message is saved (the user's on send, a reply when it ends)
    STREAM <n>                 a long reply has started streaming
    EVAL_BEGIN <n>             an evaluation is about to be written
    EVAL <id> <sha> <seconds>  it was written, in that long
    RSS <bytes>                the process's resident memory, after each reply

The parent SIGKILLs the process at a random moment just after a STREAM or an EVAL_BEGIN line,
then checks the database from outside: it opens, passes ``PRAGMA integrity_check``, and holds
every message and evaluation reported before the kill, as written.

    python -m tests.helpers.storage_kills drive --model M     (the GUI side)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODES = ("streaming", "evaluation")


def digest(text: str) -> str:
    """A short fingerprint of a stored text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Report:
    """What the kill cycles found."""

    cycles: int = 0
    failures: list[str] = field(default_factory=list)
    gui_crashes: int = 0  # GUI processes that died before they were killed
    integrity_errors: int = 0
    completed: int = 0  # messages reported written, and found as written
    completed_lost: int = 0
    evaluations: int = 0
    evaluations_lost: int = 0
    kills: dict[str, int] = field(default_factory=dict)  # when each kill landed
    rss: list[int] = field(default_factory=list)  # each GUI process's last RSS before its kill
    lost: set[str] = field(default_factory=set)  # what was found missing (reported once)

    @property
    def rss_drift(self) -> int:
        """How much more the last GUI processes held than the first (the database grows)."""
        if len(self.rss) < 4:
            return 0
        span = min(5, len(self.rss) // 2)
        return int(statistics.median(self.rss[-span:]) - statistics.median(self.rss[:span]))


def run(cycles: int, model: Path, home: Path, seed: int = 0) -> Report:
    """Kill ``cycles`` GUI processes over one database; check it after each kill."""
    home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = Report(cycles=cycles)
    messages: dict[int, tuple[str, str]] = {}
    evaluations: dict[int, str] = {}
    db: Path | None = None
    for cycle in range(cycles):
        mode = MODES[cycle % len(MODES)]
        lines, landed, crashed = _one_process(model, home, mode, rng)
        if crashed:
            report.gui_crashes += 1
            report.failures.append(f"cycle {cycle}: the GUI process died by itself: {crashed}")
        report.kills[landed] = report.kills.get(landed, 0) + 1
        for line in lines:
            kind, *rest = line.split() or [""]
            if kind == "MSG":
                messages[int(rest[0])] = (rest[1], rest[2])
            elif kind == "EVAL":
                evaluations[int(rest[0])] = rest[1]
            elif kind == "DB":
                db = Path(rest[0])
        rss = [int(line.split()[1]) for line in lines if line.startswith("RSS ")]
        if rss:
            report.rss.append(rss[-1])
        if db is None:
            report.failures.append(f"cycle {cycle}: the GUI process never opened its database")
            continue
        _check(db, messages, evaluations, report, cycle)
    report.completed = len(messages) - report.completed_lost
    report.evaluations = len(evaluations) - report.evaluations_lost
    return report


def _one_process(model: Path, home: Path, mode: str,
                 rng: random.Random) -> tuple[list[str], str, str]:
    """One GUI process, killed in ``mode``; returns its lines, where the kill landed, and why
    it died if it was not killed."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QUANTDESK_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.storage_kills", "drive", "--model", str(model),
         "--seed", str(rng.randrange(2**31))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    durations: list[float] = []
    marker = "STREAM" if mode == "streaming" else "EVAL_BEGIN"
    wanted_before = rng.randint(1, 6)  # messages written before the kill is armed
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        written = sum(s.startswith("MSG") for s in seen)
        if line.startswith("EVAL "):
            durations.append(float(line.split()[3]))
        if line.startswith(marker) and written >= wanted_before:
            # Just after the marker: mid-stream, or somewhere inside the evaluation's write
            # (as long as the writes so far took).
            write = sorted(durations)[len(durations) // 2] if durations else 0.01
            time.sleep(rng.uniform(0, 0.3) if mode == "streaming" else rng.uniform(0, write))
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    if not killed and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    reader.join(10)
    while True:  # what it wrote before it died is in the pipe still
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            seen.append(line)
    stderr = proc.stderr.read() if proc.stderr else ""
    crashed = "" if killed else f"exit {proc.returncode}: {stderr.strip().splitlines()[-3:]}"
    return seen, _landed(seen), crashed


def _landed(lines: list[str]) -> str:
    """Where the kill landed, from the last lines: a reply streams from its STREAM line to
    the MSG of its end; an evaluation is being written from EVAL_BEGIN to EVAL."""
    def last(kind: str) -> int:
        return max((i for i, line in enumerate(lines) if line.split()[:1] == [kind]),
                   default=-1)

    streaming = last("STREAM") > last("MSG")
    writing = last("EVAL_BEGIN") > last("EVAL")
    if streaming and writing:
        return "while a reply streamed and an evaluation was written"
    if streaming:
        return "while a reply streamed"
    return "while an evaluation was written" if writing else "between writes"


def _check(db: Path, messages: dict[int, tuple[str, str]], evaluations: dict[int, str],
           report: Report, cycle: int) -> None:
    from app.core.storage import Storage, StorageError

    conn = sqlite3.connect(db)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            report.integrity_errors += 1
            report.failures.append(f"cycle {cycle}: integrity_check says {result[:3]}")
        for message_id, (sha, status) in messages.items():
            row = conn.execute("SELECT content, status FROM messages WHERE id = ?",
                               (message_id,)).fetchone()
            if (row is None or digest(row[0]) != sha or row[1] != status) and \
                    f"m{message_id}" not in report.lost:
                report.lost.add(f"m{message_id}")
                report.completed_lost += 1
                report.failures.append(f"cycle {cycle}: message {message_id} is {row}")
        for eval_id, sha in evaluations.items():
            row = conn.execute("SELECT result_json FROM evaluations WHERE id = ?",
                               (eval_id,)).fetchone()
            if (row is None or digest(row[0]) != sha) and f"e{eval_id}" not in report.lost:
                report.lost.add(f"e{eval_id}")
                report.evaluations_lost += 1
                report.failures.append(f"cycle {cycle}: evaluation {eval_id} is lost")
    finally:
        conn.close()
    try:
        Storage(db).close()  # the app itself opens it (and would migrate it)
    except StorageError as exc:
        report.failures.append(f"cycle {cycle}: the app cannot open the database: {exc}")


# --- the GUI process ----------------------------------------------------------------------------


def _evaluation(rng: random.Random, n: int) -> dict[str, Any]:
    """A result the size of a real evaluation's: per-chunk figures for a few variants."""
    return {"title": f"kill test {n}", "variants": [
        {"name": f"Q{bits}_K", "perplexity": rng.uniform(5, 20),
         "chunks": [rng.random() for _ in range(3000)]} for bits in (2, 3, 4, 5, 6, 8)]}


def drive(model: Path, seed: int) -> None:
    """The GUI side: chat and save evaluations until killed, reporting every write."""
    import psutil
    from PySide6.QtWidgets import QApplication

    from app.core.settings import Settings
    from app.core.storage import Storage
    from app.jobs.engine_client import EngineClient
    from app.pipeline.chat_session import Reply
    from app.ui.chat.chat_page import ChatPage
    from tests.helpers import qt_wait

    said = threading.Lock()

    def say(line: str) -> None:
        # One write per line, under a lock: print() writes the text and its newline
        # separately, and the evaluation thread says things too.
        with said:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    app = QApplication.instance() or QApplication([])
    store = Storage()
    say(f"DB {store.path}")
    engine = EngineClient()
    settings = Settings(max_tokens=8, n_ctx=2048)
    page = ChatPage(store, engine, settings, model)
    page.resize(900, 600)
    page.show()
    ended: list[Reply] = []
    page.reply_ended.connect(ended.append)

    def wait(condition: Any, timeout: float) -> bool:
        return qt_wait.wait(app, condition, timeout)

    if not wait(lambda: engine.current is not None, 60):
        raise SystemExit("the model did not load")
    say("READY")

    def save_evaluations() -> None:
        own = Storage()  # one connection per thread, as the app's workers have
        numbers = random.Random(seed + 1)
        for n in range(10**6):
            result = _evaluation(numbers, n)
            say(f"EVAL_BEGIN {n}")
            started = time.perf_counter()
            eval_id = own.add_evaluation(f"kill test {n}", result)
            took = time.perf_counter() - started
            say(f"EVAL {eval_id} {digest(json.dumps(result))} {took:.4f}")
            time.sleep(0.02)

    threading.Thread(target=save_evaluations, daemon=True).start()
    for n in range(10**6):
        if n % 4 == 0:
            page.new_conversation()
        long = n % 2 == 1
        settings.max_tokens = 600 if long else 8
        ended.clear()
        page.send(f"message {n}: {'a long one' if long else 'a short one'}")
        user = store.messages(page.conversation_id)[-1] if page.conversation_id else None
        if user is not None and user.role == "user":
            say(f"MSG {user.id} {digest(user.content)} {user.status}")
        if long:
            say(f"STREAM {n}")
        if not wait(lambda: bool(ended), 120):
            raise SystemExit("a reply did not end")
        saved = ended[0].message
        if saved is not None:
            say(f"MSG {saved.id} {digest(saved.content)} {saved.status}")
        say(f"RSS {psutil.Process().memory_info().rss}")


def main(argv: list[str] | None = None) -> None:
    """Command line of the GUI process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["drive"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    drive(args.model, args.seed)


if __name__ == "__main__":
    main()
