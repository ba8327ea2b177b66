"""A real GUI process (the Chat page, offscreen, on the tiny model) is SIGKILLed while replies
stream and while evaluation results are being saved; each time the database opens, passes
``PRAGMA integrity_check`` and holds every message and evaluation written before the kill.
Set QUANTDESK_KILL_SEED to replay a run. The long version (50 kills) is bench/storage_kills.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.helpers.storage_kills import run

SEED = int(os.environ.get("QUANTDESK_KILL_SEED") or time.time_ns() % 2**32)


def test_killed_gui_loses_nothing_it_had_written(tiny_model: Path, tmp_path: Path) -> None:
    report = run(4, tiny_model, tmp_path / "home", seed=SEED)
    where = f"(seed {SEED}; replay with QUANTDESK_KILL_SEED={SEED})"
    assert report.failures == [], where
    assert report.gui_crashes == 0 and report.integrity_errors == 0
    assert report.completed_lost == 0 and report.evaluations_lost == 0
    assert report.completed >= 4 and report.evaluations >= 1  # the kills came after writes
    assert sum(report.kills.values()) == 4
    assert any("streamed" in landed for landed in report.kills), report.kills
