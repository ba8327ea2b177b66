"""A GUI process killed 50 times: the long version of tests/robustness/test_storage_kills.py.

Each cycle starts a GUI process (the real Chat page, offscreen, on the tiny model) over the
same database; it chats (short replies that complete, long ones that stream) while a worker
thread saves evaluation results, and reports every write once it has returned. It is SIGKILLed
just after a long reply starts streaming, or somewhere inside an evaluation's write (the two
alternate). After every kill the database is checked from outside
(tests/helpers/storage_kills.py):

- failures: anything off in a check;
- GUI crashes: GUI processes that died before they were killed;
- RSS drift: the last GUI processes' RSS (just before their kill) less the first ones': a
  fresh process each cycle, over a database that keeps growing;
- integrity errors: ``PRAGMA integrity_check`` not 'ok', or the app unable to open it;
- completed messages lost: messages (and evaluations) reported written but not in the
  database as written. Target: 0 everywhere.

    .venv/bin/python -m bench.storage_kills [--cycles 50] [--seed N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.helpers.storage_kills import run
from tests.helpers.tiny_model import write_tiny_llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 2**32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storage-kills-") as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny-llama.gguf")
        started = time.monotonic()
        report = run(args.cycles, model, Path(tmp) / "home", seed=args.seed)
        seconds = time.monotonic() - started
    print(f"storage kills: {args.cycles} SIGKILLs of the GUI process, seed {args.seed}, "
          f"{seconds:.0f} s")
    print("| cycles | failures found | GUI crashes | RSS drift | integrity errors "
          "| completed messages lost |\n|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.cycles} | {len(report.failures)} | {report.gui_crashes} "
          f"| {report.rss_drift / 1024**2:+.2f} MB | {report.integrity_errors} "
          f"| {report.completed_lost} of "
          f"{report.completed + report.completed_lost} messages, {report.evaluations_lost} of "
          f"{report.evaluations + report.evaluations_lost} evaluations |")
    print("kills landed: " + ", ".join(f"{k} {v}" for k, v in sorted(report.kills.items())))
    for line in report.failures[:20]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
