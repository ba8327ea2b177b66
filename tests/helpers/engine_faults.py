"""Engine faults under a real GUI: cycles of load, reply, kill the engine child, reload.

``run(cycles)`` starts a GUI process (the real Chat page, offscreen, on the tiny model) that,
each cycle, starts a new conversation, gets a short reply that completes, then a long one that
it breaks at a random point (once 1–200 characters of it arrived) — SIGKILL or SIGSEGV to the
engine child, or an address-space limit (``tests.helpers.address_space.starve``) under which
Python and llama.cpp can no longer allocate — and reloads the model. The GUI process writes
what it saw as JSON; ``run`` then checks the database from outside: it passes ``PRAGMA
integrity_check``, every completed message is there as written, every broken reply is there
with status partial.

    python -m tests.helpers.engine_faults drive --cycles N --seed S --model M --report R
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULTS = ("SIGKILL", "SIGSEGV", "RLIMIT_AS")
ROOT = Path(__file__).resolve().parents[2]


def digest(text: str) -> str:
    """A short fingerprint of a message's text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Report:
    """What a run of cycles found."""

    cycles: int = 0
    failures: list[str] = field(default_factory=list)  # one line per problem found
    gui_crashed: bool = False
    gui_exit: int | None = None
    rss: list[int] = field(default_factory=list)  # the GUI process's RSS after each cycle
    integrity: str = ""
    completed_lost: int = 0
    completed: int = 0
    partial: int = 0
    qt_warnings: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # how broken replies ended

    @property
    def rss_drift(self) -> int:
        """RSS growth across the cycles, after a warm-up: median of the last five cycles less
        the median of five cycles just after the warm-up (fewer on short runs)."""
        if len(self.rss) < 3:
            return 0
        warm = min(10, len(self.rss) // 3)
        span = max(1, min(5, (len(self.rss) - warm) // 2))
        return int(statistics.median(self.rss[-span:]) -
                   statistics.median(self.rss[warm:warm + span]))


def run(cycles: int, model: Path, home: Path, seed: int = 0, timeout: float = 600) -> Report:
    """Drive ``cycles`` fault cycles in a fresh GUI process; check its database afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    report_path = home / "engine-faults.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QUANTDESK_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.engine_faults", "drive", "--cycles", str(cycles),
         "--seed", str(seed), "--model", str(model), "--report", str(report_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    report = Report(cycles=cycles, gui_exit=proc.returncode)
    if proc.returncode != 0 or not report_path.exists():
        report.gui_crashed = True
        report.failures.append(f"GUI process exited with {proc.returncode}: "
                               f"{proc.stderr.strip().splitlines()[-3:]}")
        return report
    seen = json.loads(report_path.read_text())
    report.failures += seen["failures"]
    report.rss = seen["rss"]
    report.qt_warnings = seen["qt_warnings"]
    report.outcomes = seen["outcomes"]
    _check_database(Path(seen["database"]), seen["messages"], report)
    return report


def _check_database(db: Path, messages: list[dict[str, Any]], report: Report) -> None:
    conn = sqlite3.connect(db)
    try:
        report.integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        for expected in messages:
            row = conn.execute("SELECT content, status FROM messages WHERE id = ?",
                               (expected["id"],)).fetchone()
            ok = row is not None and digest(row[0]) == expected["sha"] and \
                row[1] == expected["status"]
            if expected["status"] == "complete":
                report.completed += 1
                report.completed_lost += not ok
            else:
                report.partial += 1
            if not ok:
                report.failures.append(f"message {expected} is {row and (row[1], len(row[0]))}")
    finally:
        conn.close()


# --- the GUI process ----------------------------------------------------------------------------


def drive(cycles: int, seed: int, model: Path, report_path: Path) -> None:
    """The GUI side: run the cycles on a real Chat page and write what happened."""
    import gc

    import psutil
    from PySide6.QtCore import QCoreApplication, QEvent, QtMsgType, qInstallMessageHandler
    from PySide6.QtWidgets import QApplication

    from app.core.settings import Settings
    from app.core.storage import Storage
    from app.jobs.engine_client import EngineClient
    from app.pipeline.chat_session import Reply
    from app.ui.chat.chat_page import ChatPage
    from tests.helpers import qt_wait
    from tests.helpers.address_space import no_core_files, starve

    no_core_files()  # the engine children started from here inherit it (SIGSEGV on purpose)
    app = QApplication.instance() or QApplication([])
    warnings: list[str] = []

    def on_message(kind: QtMsgType, _context: object, text: str) -> None:
        # The offscreen platform says this of every shown window; it is not the app's.
        if kind not in (QtMsgType.QtDebugMsg, QtMsgType.QtInfoMsg) and \
                "does not support propagateSizeHints" not in text:
            warnings.append(text)

    qInstallMessageHandler(on_message)
    rng = random.Random(seed)
    store = Storage()
    engine = EngineClient()
    settings = Settings(max_tokens=8, n_ctx=2048)
    page = ChatPage(store, engine, settings, model)
    page.resize(900, 600)
    page.show()
    failures: list[str] = []
    messages: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    rss: list[int] = []
    ended: list[Reply] = []
    loaded: list[object] = []
    load_errors: list[str] = []
    page.reply_ended.connect(ended.append)
    page.model_loaded.connect(loaded.append)
    engine.load_failed.connect(load_errors.append)

    def wait(condition: Any, timeout: float) -> bool:
        return qt_wait.wait(app, condition, timeout)

    def reply(text: str, max_tokens: int) -> Reply | None:
        settings.max_tokens = max_tokens
        ended.clear()
        page.send(text)
        if not wait(lambda: bool(ended), 120):
            return None
        return ended[0]

    def record(found: Reply, expected_status: str | None) -> None:
        if found.message is None:
            failures.append(f"reply {found.request_id} was not saved: {found.save_error}")
            return
        if expected_status is not None and found.status != expected_status:
            failures.append(f"reply ended {found.status} ({found.error}), not {expected_status}")
        messages.append({"id": found.message.id, "sha": digest(found.message.content),
                         "status": found.message.status})

    def reload() -> bool:
        for _ in range(3):  # a starved child fails its load once; the next load is a fresh one
            loaded.clear()
            load_errors.clear()
            page.reload_model()
            if not wait(lambda: bool(loaded or load_errors), 60):
                return False
            if loaded:
                return True
        return False

    if not wait(lambda: engine.current is not None, 60):
        raise SystemExit("the model did not load")
    for cycle in range(cycles):
        fault = FAULTS[cycle % len(FAULTS)]
        page.new_conversation()
        short = reply(f"cycle {cycle}: a short one", 8)
        if short is None:
            failures.append(f"cycle {cycle}: the short reply did not end")
            break
        record(short, "complete")

        at = rng.randint(1, 200)
        seen = [0]

        def inject(_request: int, text: str, at: int = at, fault: str = fault,
                   seen: list[int] = seen) -> None:
            # counted in characters (a token each on this model): the window gets the text in
            # events of many tokens (READING_INTERVAL)
            before, seen[0] = seen[0], seen[0] + len(text)
            pid = engine.pid()
            if not before < at <= seen[0] or pid is None:
                return
            if fault == "RLIMIT_AS":
                starve(pid)
            else:
                os.kill(pid, getattr(signal, fault))

        engine.token.connect(inject)
        broken = reply(f"cycle {cycle}: a long one, broken by {fault} after {at} characters", 1900)
        engine.token.disconnect(inject)
        if broken is None:
            failures.append(f"cycle {cycle}: the broken reply did not end")
            break
        outcome = f"{fault}: {broken.status}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if fault != "RLIMIT_AS":
            record(broken, "partial")
            if fault not in (broken.error or ""):
                failures.append(f"cycle {cycle}: the error does not name {fault}: "
                                f"{broken.error}")
        else:  # starved: the reply fails or crashes, or ends before it needs more memory
            record(broken, None)
        for user in (m for m in store.messages(broken.conversation_id) if m.role == "user"):
            messages.append({"id": user.id, "sha": digest(user.content), "status": "complete"})
        if broken.status == "partial" and len(broken.text) < at - 1:
            failures.append(f"cycle {cycle}: partial reply lost text ({len(broken.text)} "
                            f"characters for {at} tokens)")
        if not page.banner.isVisibleTo(page) and broken.status == "partial":
            failures.append(f"cycle {cycle}: no message shown for {fault}")
        if not reload():
            failures.append(f"cycle {cycle}: the model did not load again ({load_errors})")
            break
        gc.collect()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
        rss.append(psutil.Process().memory_info().rss)
    page.shutdown()
    store.close()
    report_path.write_text(json.dumps({"failures": failures, "messages": messages, "rss": rss,
                                       "qt_warnings": warnings, "outcomes": outcomes,
                                       "database": str(store.path)}))


def main(argv: list[str] | None = None) -> None:
    """Command line of the GUI process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["drive"])
    parser.add_argument("--cycles", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    drive(args.cycles, args.seed, args.model, args.report)
    os._exit(0)  # skip interpreter teardown: everything is written


if __name__ == "__main__":
    main()
