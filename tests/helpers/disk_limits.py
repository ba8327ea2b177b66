"""Make writes fail for lack of room, the two ways a test can: a file-size limit for the engine's
child processes (anywhere on POSIX), and a small real file system (where this process may mount).

``child_file_size_limit``: every child that ``app.engine.child`` starts meanwhile runs under
RLIMIT_FSIZE, so a write past ``limit`` bytes fails in it with EFBIG exactly where a write fails
on a drive whose file system allows no larger file (FAT32). The hook is multiprocessing's own
``set_executable``: children start through a small shell script that sets the limit and then
runs the usual interpreter, so the app's code runs unchanged and the test process (pytest, its
capture files) is never limited.

``small_disk``: a tmpfs of a few MiB mounted on a test folder, where a write fails with ENOSPC
as on a full disk. Mounting needs root (and a ``mount`` that works): elsewhere the test is
skipped, and the file-size-limit tests still cover the same code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker, spawn
from pathlib import Path

import pytest

from app.engine import child

_SET_LIMIT_AND_RUN = (
    "import os, resource, sys\n"
    "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
    "limit = {limit} if hard == resource.RLIM_INFINITY else min({limit}, hard)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


@contextmanager
def child_file_size_limit(limit: int, folder: Path) -> Iterator[None]:
    """Engine children started inside the block may write no file past ``limit`` bytes."""
    # started now, unlimited: the tracker is shared by every later child and must not be limited
    resource_tracker.ensure_running()
    child.stop_warm()  # a spare started earlier would run the job without the limit
    script = folder / "python-with-fsize-limit"
    code = _SET_LIMIT_AND_RUN.format(limit=int(limit))
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(code)} "
                      '"$@"\n')
    script.chmod(0o755)
    previous = spawn.get_executable()
    spawn.set_executable(str(script))
    try:
        yield
    finally:
        spawn.set_executable(previous)


@contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``folder`` for the block; skips the test where this
    process cannot mount one."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root on Linux")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged write could still use on ``folder``'s file system."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def fill(folder: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``folder``'s file system with a filler file (delete it
    to free the space again)."""
    filler = folder / "filler.bin"
    size = free_bytes(folder) - leave
    assert size > 0, f"{folder} has less than {leave} bytes free already"
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def write_past_own_limit(path: str, limit: int) -> None:
    """In a child: write past a file-size limit with SIGXFSZ's default action (which Python
    turns off, and native code may turn on again), so that the kernel kills the process."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(
        resource.RLIMIT_FSIZE)[1]))
    with Path(path).open("wb") as handle:
        handle.write(b"\0" * (limit + 1))
