"""Engine faults, 100 cycles: the long version of tests/robustness/test_engine_faults.py.

A GUI process (the real Chat page, offscreen, on the tiny model) runs the cycles of
tests/helpers/engine_faults.py: a short reply that completes, a long one broken at a random
token by SIGKILL, SIGSEGV or an address-space limit on the engine child, a reload. The books
are kept from outside: the database is checked after the GUI process has exited.

- failures: cycles where anything was off (a reply not saved or saved with the wrong status,
  an error that does not say what happened, a reload that did not load, a Qt warning);
- GUI crashes: the GUI process did not finish the run;
- RSS drift: the GUI process's RSS at the end less just after the warm-up (target < 5 MB);
- integrity errors: ``PRAGMA integrity_check`` not 'ok';
- completed messages lost: completed messages (the user's, and replies that completed) not in
  the database as written. Target: 0 everywhere but the drift.

    .venv/bin/python -m bench.engine_faults [--cycles 100] [--seed N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.helpers.engine_faults import run
from tests.helpers.tiny_model import write_tiny_llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 2**32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-faults-") as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny-llama.gguf")
        started = time.monotonic()
        report = run(args.cycles, model, Path(tmp) / "home", seed=args.seed, timeout=3600)
        seconds = time.monotonic() - started
    problems = len(report.failures) + len(report.qt_warnings)
    print(f"engine faults: {args.cycles} cycles, seed {args.seed}, {seconds:.0f} s")
    print("| cycles | failures found | GUI crashes | RSS drift | integrity errors "
          "| completed messages lost |\n|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.cycles} | {problems} | {int(report.gui_crashed)} "
          f"| {report.rss_drift / 1024**2:+.2f} MB | {int(report.integrity != 'ok')} "
          f"| {report.completed_lost} of {report.completed} |")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
    print(f"broken replies: {outcomes}; partial replies kept: {report.partial}")
    if report.rss:
        print(f"GUI RSS: {report.rss[0] / 1024**2:.1f} MB after the first cycle, "
              f"{max(report.rss) / 1024**2:.1f} MB at most, {report.rss[-1] / 1024**2:.1f} MB "
              "at the end")
    for line in (report.failures + report.qt_warnings)[:20]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
