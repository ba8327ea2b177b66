"""The long fuzz run of GGUF inspection: thousands of malformed files, one table.

The cases come from ``tests.helpers.gguf_mutations``, the generators the quick suite
(``tests/robustness/test_malformed_gguf.py``) draws from: every truncation at a region boundary
and every metadata value replaced by every type (exhaustive), then ``--cases`` random mutations
spread over the classes and the valid base files, from a seeded generator. Each case is written
to disk and inspected with ``read_model_info``; the outcome is a ModelInfo, a GGUFError, or
anything else, which is a bug (the run exits 1). A case that runs past ``--limit`` seconds is
stopped and counted as a bug too. The table gives, per mutation class: cases, parsed, refused
with GGUFError, other exceptions, worst seconds per case; then the process's peak RSS growth
(its high-water mark less the RSS before the first case: an upper bound). Target: no other
exceptions, every case well under 2 s, RSS growth of a few MiB.

    .venv/bin/python -m bench.fuzz_gguf [--cases 10000] [--seed 1] [--limit 2]
"""

from __future__ import annotations

import argparse
import random
import resource
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psutil

from app.core.gguf_info import GGUFError, read_model_info
from tests.helpers import gguf_mutations as gm

MIB = 1024 * 1024


class _TooSlow(Exception):
    pass


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _TooSlow


def cases(bases: list[gm.Base], n_random: int, seed: int) -> Iterator[gm.Case]:
    """The exhaustive classes for every base, then ``n_random`` random mutations."""
    for base in bases:
        yield from gm.truncations(base)
        yield from gm.replacements(base)
    rng = random.Random(seed)
    kinds = sorted(gm.MUTATIONS)
    for i in range(n_random):  # round robin over classes, so each gets its share
        yield gm.MUTATIONS[kinds[i % len(kinds)]](rng, rng.choice(bases))


def main() -> None:
    """Run the cases and print the table; exit 1 if any case raised other than GGUFError."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="random cases (after the "
                        "exhaustive ones)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", type=float, default=2.0, help="seconds allowed per case")
    args = parser.parse_args()

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    worst: dict[str, float] = defaultdict(float)
    failures: list[str] = []
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as tmp:
        folder = Path(tmp)
        bases = gm.bases(folder)
        target = folder / "case.gguf"
        read_model_info(folder / "base-llama.gguf")  # imports and first-call costs, not a case
        rss_start = psutil.Process().memory_info().rss
        started = time.perf_counter()
        for case in cases(bases, args.cases, args.seed):
            target.write_bytes(case.data)
            signal.setitimer(signal.ITIMER_REAL, args.limit)
            t0 = time.perf_counter()
            try:
                read_model_info(target)
                outcome = "ok"
            except GGUFError as exc:
                outcome = "refused" if str(exc).strip() and target.name in str(exc) else "other"
                if outcome == "other":
                    failures.append(f"{case.kind} ({case.label}): unreadable message {exc!s:.200}")
            except _TooSlow:
                outcome = "other"
                failures.append(f"{case.kind} ({case.label}): over {args.limit} s")
            except Exception as exc:  # the bug this run looks for
                outcome = "other"
                failures.append(f"{case.kind} ({case.label}): {type(exc).__name__}: {exc!s:.200}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            worst[case.kind] = max(worst[case.kind], time.perf_counter() - t0)
            counts[case.kind][outcome] += 1
        elapsed = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux: the high-water mark over the whole run
    rss_growth = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start)

    print("| mutation class | cases | parsed OK | GGUFError | other exceptions | worst s/case |\n"
          "|---|---:|---:|---:|---:|---:|")
    total: Counter[str] = Counter()
    for kind in sorted(counts):
        c = counts[kind]
        total.update(c)
        print(f"| {kind} | {sum(c.values())} | {c['ok']} | {c['refused']} | {c['other']} | "
              f"{worst[kind]:.4f} |")
    print(f"| **all** | {sum(total.values())} | {total['ok']} | {total['refused']} | "
          f"{total['other']} | {max(worst.values()):.4f} |")
    print(f"\n{sum(total.values())} cases in {elapsed:.1f} s; peak RSS growth "
          f"{rss_growth / MIB:.1f} MiB (from {rss_start / MIB:.0f} MiB)")
    for line in failures[:20]:
        print("FAIL", line)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
