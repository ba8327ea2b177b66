"""Fault injection: starve a running process of address space, from outside.

``resource.prlimit`` sets another process's ``RLIMIT_AS`` (Linux). Set below what the process
already maps, every new mapping fails — llama.cpp's ``mmap`` of a model, its buffer
allocations, Python's next arena — just as when the machine has no memory left. Nothing in the
engine has to know about it: the engine child is limited exactly as a real shortage would.
"""

from __future__ import annotations

import resource
from pathlib import Path


def mapped_bytes(pid: int) -> int:
    """The address space ``pid`` maps now (VmSize)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmSize for process {pid}")


def starve(pid: int, below: int = 64 * 1024**2) -> int:
    """Limit ``pid``'s address space to ``below`` bytes under what it maps now; returns the
    limit set. A starved process may abort: it is also kept from writing a core file."""
    no_core_files(pid)
    limit = mapped_bytes(pid) - below
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    return limit


def no_core_files(pid: int = 0) -> None:
    """Crashes injected on purpose leave no core file in the working folder (0: this
    process, and the children it starts from now on)."""
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_CORE)
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, hard))
