"""The child processes this test process has spawned for engine jobs, to kill or watch them.

``app.engine.child`` starts each job in a multiprocessing 'spawn' child; its command line runs
``multiprocessing.spawn.spawn_main``. multiprocessing's resource tracker is a child too, but
runs ``resource_tracker``, so it is never mistaken for a job.
"""

from __future__ import annotations

import psutil


def job_children() -> list[psutil.Process]:
    """Live spawned job children of this process, oldest first."""
    found = []
    for proc in psutil.Process().children():
        try:
            if any("spawn_main" in part for part in proc.cmdline()) and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return sorted(found, key=lambda p: p.create_time())


def the_job_child() -> psutil.Process:
    """The one job child running now (fails the test when there is not exactly one)."""
    children = job_children()
    assert len(children) == 1, f"expected one engine child, found {children}"
    return children[0]


def is_gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has ended and been reaped (or is at least dead)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
