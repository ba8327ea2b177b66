"""Memory figures of the current process, as the OS counts them."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil


def rss_bytes() -> int:
    """Resident memory now."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Highest resident memory of this process so far.

    On Linux this is VmHWM, the high-water mark of the process's own address space. Not
    ``ru_maxrss``: that survives ``execve``, so a spawned engine child would report the parent's
    size at fork time whenever the parent (the GUI, a test runner) is the larger one.
    """
    if sys.platform == "win32":
        return int(psutil.Process().memory_info().peak_wset)
    if sys.platform.startswith("linux"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
