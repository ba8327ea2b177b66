"""Downloads killed over and over: the long version of tests/robustness/test_downloads.py.

A real child process downloads a model (one file, then a split model of several parts) with
the real huggingface-hub client from the local hub server, and is SIGKILLed at random points
(mostly once a random number of new bytes is on disk, sometimes after a random time); each
cycle starts a fresh child, as a person restarting the app would, and a last run finishes.
The books are kept from outside the code under test (tests/helpers/download_kills.py):

- verified files: files in place at the end whose SHA-256 matches the hub's bytes;
- parts refetched: fetches of a file that was already in place and verified when the run began;
- bytes refetched: bytes the server sent again that were already on disk when the run began
  (beyond the resume point);
- failures: runs that ended with an error, a wrong file in place, the library offering
  something unfinished as a model, or any refetch. Target: everything verified, 0 refetched,
  0 failures.

    .venv/bin/python -m bench.download_kills [--cycles 20] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.helpers.download_kills import KillCycles, Tally
from tests.helpers.fake_hub import FakeHub
from tests.helpers.split_model import split_model_parts

MiB = 1024 * 1024


def scenario(name: str, files: dict[str, bytes], cycles: int, seed: int,
             delay: float) -> tuple[Tally, float]:
    """Serve ``files``, run the kill cycles in a fresh home; the books and the seconds taken."""
    with tempfile.TemporaryDirectory(prefix="download-kills-") as tmp:
        home = Path(tmp) / "home"
        os.environ["QUANTDESK_HOME"] = str(home)  # the library the books check is this one
        hub = FakeHub()
        hub.delay = delay
        repo = f"bench/{name}-GGUF"
        for filename, data in files.items():
            hub.add(repo, filename, data)
        hub.start()
        try:
            started = time.monotonic()
            tally = KillCycles(hub, repo, files, home, seed).run(kills=cycles)
            return tally, time.monotonic() - started
        finally:
            hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20, help="kills per scenario")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--delay", type=float, default=0.004,
                        help="server pause per 64 KiB (a slower network: kills land anywhere)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    scenarios = {
        # sizes: the download writes 1 MiB at a time, so each kill needs at least a MiB to land
        # in, and 20 of them need room
        "single": split_model_parts("model-Q8_0", 1, 40 * MiB + 4321, seed=seed),
        "split": split_model_parts("model-Q4_K_M", 4, 10 * MiB + 321, seed=seed),
    }
    print(f"seed {seed}, {args.cycles} kills per scenario, {args.delay * 1000:.0f} ms per "
          "64 KiB served\n")
    print("| scenario | files | size MiB | cycles | verified files | parts refetched | "
          "bytes refetched | failures | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    problems: list[str] = []
    for name, files in scenarios.items():
        tally, seconds = scenario(name, files, args.cycles, seed, args.delay)
        size = sum(len(d) for d in files.values()) / MiB
        print(f"| {name} | {tally.files} | {size:.1f} | {tally.cycles} | {tally.verified} | "
              f"{tally.parts_refetched} | {tally.bytes_refetched} | {len(tally.failures)} | "
              f"{seconds:.1f} |", flush=True)
        problems += [f"{name}: {f}" for f in tally.failures]
    for problem in problems:
        print(problem)


if __name__ == "__main__":
    main()
