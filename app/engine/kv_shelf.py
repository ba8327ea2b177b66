"""Conversations' KV caches put aside on disk while another conversation has their sequence.

A context has one sequence per reply that can run at once (one in the window). When another
conversation takes a sequence, what the sequence held would be dropped, and going back to the
first conversation would decode its whole history again: on a CPU that is seconds to minutes
(SmolLM2 at 2,700 tokens: 9.5 s on 2 cores). Instead the generator puts the sequence's state
(its keys and values, through llama.cpp's ``llama_state_seq_save_file``) on this shelf, and
brings it back (``llama_state_seq_load_file``) when a prompt goes on from it: a file of
tens to hundreds of megabytes read in well under a second.

Decisions: the shelf lives in the app's cache folder, one folder per process, removed when
the model is unloaded (and at the next start if the process died): states are only valid for
the context that wrote them, so none outlives it. It holds at most ``MOST`` states and
``budget`` bytes (the least recently used go first), and a state is only put aside when it is
worth it (``MIN_TOKENS``). A write that fails (a full disk) is dropped and logged: the
conversation is decoded again when it comes back, as without the shelf.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIN_TOKENS = 256  # a sequence shorter than this is decoded again rather than put aside
MOST = 8  # states kept at most
BUDGET_BYTES = 2 << 30  # and at most this much disk (less where the disk has less free)
PREFIX = "kv-"


@dataclass
class Shelved:
    """One sequence's state on disk: the tokens it holds, in order."""

    path: Path
    tokens: list[int]
    size: int
    used: int = field(default=0)  # a clock: the larger, the more recently put or looked at


class KvShelf:
    """The states put aside by one generator (``Generator.shelf``)."""

    def __init__(self, parent: Path, budget: int = BUDGET_BYTES, most: int = MOST) -> None:
        """The shelf's folder under ``parent`` is made when the first state goes on it."""
        if parent.is_dir():
            _remove_orphans(parent)
        self.folder = parent / f"{PREFIX}{os.getpid()}-{id(self):x}"
        self.budget = budget
        self.most = most
        self.states: list[Shelved] = []
        self._names = itertools.count()
        self._clock = itertools.count(1)

    def new_path(self) -> Path:
        """Where the next state goes (written there by the caller, then ``add``ed)."""
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            self.budget = min(self.budget, shutil.disk_usage(self.folder).free // 4)
        return self.folder / f"{next(self._names)}.state"

    def add(self, path: Path, tokens: list[int]) -> None:
        """Keep the state written at ``path``; the least recently used go while the shelf
        holds too many or too much."""
        self.states.append(Shelved(path, tokens, path.stat().st_size, next(self._clock)))
        self.states.sort(key=lambda s: s.used)
        while self.states and (len(self.states) > self.most
                               or sum(s.size for s in self.states) > self.budget):
            self.remove(self.states[0])

    def touch(self, state: Shelved) -> None:
        state.used = next(self._clock)

    def remove(self, state: Shelved) -> None:
        self.states.remove(state)
        with contextlib.suppress(OSError):
            state.path.unlink()

    def close(self) -> None:
        self.states.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_orphans(parent: Path) -> None:
    """Remove the shelves of processes that ended without removing theirs (killed)."""
    for folder in parent.glob(f"{PREFIX}*"):
        try:
            pid = int(folder.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    import psutil  # not os.kill(pid, 0): on Windows that ends the process

    return bool(psutil.pid_exists(pid))
