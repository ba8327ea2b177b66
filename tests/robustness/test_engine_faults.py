"""The engine child dies at a random point of a reply — SIGKILL, SIGSEGV, or starved of address
space so that Python and llama.cpp cannot allocate — while a real GUI process (the Chat page,
offscreen) streams its reply; the model is reloaded and the next cycle begins. The GUI process
stays up, its memory does not grow, every completed message is in the database and every
broken reply is kept with status partial. Set QUANTDESK_FAULT_SEED to replay a run. The long
version (100 cycles) is bench/engine_faults.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.helpers.engine_faults import FAULTS, run

SEED = int(os.environ.get("QUANTDESK_FAULT_SEED") or time.time_ns() % 2**32)
CYCLES = 2 * len(FAULTS)


def test_engine_faults_leave_the_window_and_every_message(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    report = run(CYCLES, tiny_model, tmp_path / "home", seed=SEED)
    where = f"(seed {SEED}; replay with QUANTDESK_FAULT_SEED={SEED})"
    assert not report.gui_crashed, f"{report.failures} {where}"
    assert report.failures == [], where
    assert report.qt_warnings == [], where
    assert report.integrity == "ok"
    # Each cycle: the user's two messages and the short reply completed, the long one broken.
    assert report.completed >= 3 * CYCLES and report.completed_lost == 0
    assert report.partial >= 2 * CYCLES // 3  # SIGKILL and SIGSEGV always leave a partial one
    assert sum(report.outcomes.values()) == CYCLES
    assert len(report.rss) == CYCLES
    assert report.rss_drift < 5 * 1024**2, f"RSS {report.rss} {where}"
