"""Kill a real download process at random points, resume it, and keep the books.

Used by tests/robustness/test_downloads.py (a few cycles) and bench/download_kills.py (many).
The download runs in a spawned child (``app.hub.download.download_files`` with the real
huggingface-hub client against the local hub server) and is SIGKILLed once the bytes on disk
reach a random mark; the next cycle starts a fresh child, as a person restarting the app would.
The books are kept from the outside, independently of the code under test: what was on disk
when each run started (hashed here, against the bytes the hub serves) and which byte ranges
the server sent during that run.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.fake_hub import FakeHub

PART_SUFFIX = ".part"  # written beside the final name while a file downloads


def download_child(endpoint: str, home: str, repo_id: str, files: list[str],
                   file_size_limit: int | None = None, results: Any = None) -> None:
    """The child's whole life: download ``files`` of ``repo_id`` into HOME's models folder.

    With ``file_size_limit`` no file may grow past that many bytes (RLIMIT_FSIZE): a write
    beyond it fails as it would on a full disk. The outcome goes to ``results`` (a queue):
    ("ok", "") or (the HubError's class name, its message).
    """
    os.environ["QUANTDESK_HOME"] = home
    if file_size_limit is not None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that the write fails, not the child
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))
    from app.core import paths
    from app.hub.download import download_files, remote_file
    from app.hub.errors import HubError

    try:
        remotes = [remote_file(repo_id, f, endpoint=endpoint) for f in files]
        for _ in download_files(remotes, paths.models_dir()):
            pass
    except HubError as exc:
        if results is not None:
            results.put((type(exc).__name__, str(exc)))
        raise SystemExit(3) from None
    if results is not None:
        results.put(("ok", ""))


def run_child(hub: FakeHub, home: Path, repo_id: str, files: list[str],
              file_size_limit: int | None = None, timeout: float = 60.0) -> tuple[str, str]:
    """Run one download child to its end; its (outcome, message)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=download_child, args=(hub.endpoint, str(home), repo_id, files,
                                                     file_size_limit, results))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return "hung", f"the download did not end within {timeout} s"
    try:
        return results.get(timeout=5)  # type: ignore[no-any-return]
    except Exception:  # the child died without a word
        return "crashed", f"exit code {child.exitcode}"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Run:
    """One child's run: what was on disk when it started, and how it ended."""

    verified_at_start: dict[str, bool]  # the final file was there with the right bytes
    on_disk_at_start: dict[str, int]  # bytes of the final file, else of its part
    first_request: int  # index into hub.requests
    last_request: int = -1
    killed: bool = False
    exit_code: int | None = None


@dataclass
class Tally:
    """What the cycles found (the bench prints these)."""

    cycles: int = 0  # kills
    files: int = 0
    verified: int = 0  # files in place with the right SHA-256 at the end
    parts_refetched: int = 0  # fetches of files that were already finished and verified
    bytes_refetched: int = 0  # bytes sent again that were already on disk
    failures: list[str] = field(default_factory=list)


class KillCycles:
    """Download ``files`` (name → bytes, all served by ``hub`` under ``repo_id``) into
    HOME/models, killing the child at random points, then let a last run finish."""

    def __init__(self, hub: FakeHub, repo_id: str, files: dict[str, bytes], home: Path,
                 seed: int) -> None:
        self.hub, self.repo_id, self.files, self.home = hub, repo_id, files, home
        self.seed = seed
        self.rng = random.Random(seed)
        self.folder = home / "models" / repo_id
        self.runs: list[Run] = []
        self.tally = Tally(files=len(files))

    # --- the disk, seen from outside --------------------------------------------------------

    def _size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def on_disk(self) -> int:
        """Bytes of the files so far, finished or in progress."""
        return sum(self._size(self.folder / n) + self._size(self.folder / (n + PART_SUFFIX))
                   for n in self.files)

    def _verified(self, name: str) -> bool:
        path = self.folder / name
        return path.is_file() and sha256(path.read_bytes()) == sha256(self.files[name])

    def _check_disk(self, when: str) -> None:
        """A final file is never wrong, and the library lists nothing unfinished."""
        for name in self.files:
            if (self.folder / name).exists() and not self._verified(name):
                self.tally.failures.append(f"{when}: {name} is in place with wrong bytes")
        self.tally.failures += [f"{when}: {p}" for p in library_problems(self.files,
                                                                          self.folder)]

    # --- runs -------------------------------------------------------------------------------

    def run_once(self, kill_at: int | None, kill_after: float | None = None,
                 timeout: float = 60.0) -> Run:
        """One child; SIGKILL it once ``kill_at`` bytes are on disk or ``kill_after`` seconds
        have passed (both None: let it finish)."""
        run = Run({n: self._verified(n) for n in self.files},
                  {n: self._size(self.folder / n) or self._size(self.folder / (n + PART_SUFFIX))
                   for n in self.files}, len(self.hub.requests))
        ctx = mp.get_context("spawn")
        child = ctx.Process(target=download_child, args=(self.hub.endpoint, str(self.home),
                                                         self.repo_id, list(self.files)))
        child.start()
        started = time.monotonic()
        deadline = started + timeout
        while child.is_alive():
            if (kill_at is not None and self.on_disk() >= kill_at) or \
                    (kill_after is not None and time.monotonic() - started >= kill_after):
                assert child.pid is not None
                os.kill(child.pid, signal.SIGKILL)
                run.killed = True
                break
            if time.monotonic() > deadline:
                child.kill()
                self.tally.failures.append(f"run {len(self.runs) + 1} hung")
                break
            time.sleep(0.002)
        child.join()
        run.exit_code = child.exitcode
        run.killed = run.killed and child.exitcode == -signal.SIGKILL
        if not run.killed and child.exitcode != 0:
            self.tally.failures.append(f"run {len(self.runs) + 1} ended with exit code "
                                       f"{child.exitcode}")
        run.last_request = len(self.hub.requests)
        self.runs.append(run)
        self.tally.cycles += run.killed
        self._check_disk(f"after run {len(self.runs)} (seed {self.seed})")
        return run

    def run(self, kills: int) -> Tally:
        """``kills`` runs killed at random points, then one that finishes; the books.

        Most runs die once a random number of bytes beyond what the last run left is on disk,
        on average 1/(kills + 1) of the whole, so that the kills spread over the download:
        inside a file, between files, right after one finished. One in four dies after a random
        time instead, which also lands in the child's start, its requests for metadata and its
        checks of what is already there.
        """
        total = sum(len(d) for d in self.files.values())
        mean_step = max(2, total // (kills + 1))
        for _ in range(kills):
            have = self.on_disk()
            if self.rng.random() < 0.25 or have + 1 >= total:
                self.run_once(None, kill_after=self.rng.uniform(0.0, 0.35))
            else:
                self.run_once(min(total - 1, have + self.rng.randrange(1, 2 * mean_step)))
        self.run_once(None)
        time.sleep(0.05)  # the server threads finish their bookkeeping of the last bodies
        self._count()
        return self.tally

    def _count(self) -> None:
        for number, run in enumerate(self.runs, 1):
            for name in self.files:
                gets = [r for r in self.hub.requests[run.first_request:run.last_request]
                        if r.method == "GET" and r.file == (self.repo_id, name)]
                if run.verified_at_start[name] and gets:
                    self.tally.parts_refetched += 1
                    self.tally.failures.append(f"run {number} fetched the finished {name} again")
                have = len(self.files[name]) if run.verified_at_start[name] else \
                    run.on_disk_at_start[name]
                for r in gets:
                    again = max(0, min(have, r.start + r.sent) - r.start)
                    if again:
                        self.tally.bytes_refetched += again
                        self.tally.failures.append(
                            f"run {number} fetched {again} bytes of {name} again "
                            f"(asked from {r.start}, {have} were on disk)")
        self.tally.verified = sum(self._verified(n) for n in self.files)
        if self.tally.verified != len(self.files):
            self.tally.failures.append(f"only {self.tally.verified} of {len(self.files)} files "
                                       f"verified at the end (seed {self.seed})")


def library_problems(files: dict[str, bytes], folder: Path) -> list[str]:
    """Entries of the app's library that show something unfinished as a model."""
    from app.core.gguf_info import split_parts
    from app.core.library import SOURCE_APP, Library

    problems = []
    for entry in Library().scan():
        if entry.source != SOURCE_APP:
            continue
        if entry.path.name.endswith(PART_SUFFIX):
            problems.append(f"the library lists the partial file {entry.path.name}")
        if entry.info is None:
            continue
        for part in split_parts(entry.path):
            if part.parent == folder and part.name in files and \
                    (not part.is_file() or sha256(part.read_bytes()) != sha256(files[part.name])):
                problems.append(f"the library offers {entry.path.name} as a model while "
                                f"{part.name} is unfinished")
    return problems
