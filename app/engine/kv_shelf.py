"""Conversations' KV caches put aside on disk while another conversation has their sequence.

A context has one sequence per reply that can run at once (one in the window). When another
conversation takes a sequence, what the sequence held would be dropped, and going back to the
first conversation would decode its whole history again: on a CPU that is seconds to minutes
(SmolLM2 at 2,700 tokens: 9.5 s on 2 cores). Instead the generator puts the sequence's state
(its keys and values, through llama.cpp's ``llama_state_seq_save_file``) on this shelf, and
brings it back (``llama_state_seq_load_file``) when a prompt goes on from it: a file of
tens to hundreds of megabytes read in well under a second.

When the model is unloaded (another model, the app closing), the conversations still in
its sequences go on the shelf too, and the shelf is left for the next load of the same model
file with the same settings (``key``): reopening the app and going on with a long
conversation brings it back instead of decoding it.

Decisions: the shelf lives in the app's cache folder, one folder per process while a model is
loaded (removed at the next start if the process died), renamed to one folder per ``key`` at
unload, and taken over (renamed again, so two processes never share one) by the next load with
that key. A state is only valid for the model file and context settings that wrote it, which
is what the key covers (llama.cpp also refuses a state whose layout differs). It holds at most
``MOST`` states and ``budget`` bytes (the least recently used go first), left shelves at most
``budget`` bytes together (the oldest go first), and a state is only put aside when it is
worth it (``MIN_TOKENS``). A write that fails (a full disk) is dropped and logged: the
conversation is decoded again when it comes back, as without the shelf. A state holds its
conversation's text (its tokens, keys and values), so deleting a conversation drops every
state, this shelf's and those left on disk (``Generator.forget``, ``remove_left``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from app.core.atomic import atomic_output

log = logging.getLogger(__name__)

MIN_TOKENS = 256  # a sequence shorter than this is decoded again rather than put aside
MOST = 8  # states kept at most
BUDGET_BYTES = 2 << 30  # and at most this much disk (less where the disk has less free)
PREFIX = "kv-"  # a loaded model's shelf: kv-<pid>-<id>
LEFT = "kv-left-"  # a shelf left at unload for the next load with the same key
INDEX = "index.json"  # in a left shelf: its states' files and tokens


@dataclass
class Shelved:
    """One sequence's state on disk: the tokens it holds, in order."""

    path: Path
    tokens: list[int]
    size: int
    used: int = field(default=0)  # a clock: the larger, the more recently shelved


class KvShelf:
    """The states put aside by one generator (``Generator.shelf``)."""

    def __init__(self, parent: Path, key: str = "", budget: int = BUDGET_BYTES,
                 most: int = MOST) -> None:
        """The shelf's folder under ``parent`` is made when the first state goes on it, or
        taken over from the shelf left by the last unload with the same ``key`` (the model
        file and the context settings; empty: nothing is left or taken over)."""
        self.parent, self.key = parent, key
        self.folder = parent / f"{PREFIX}{os.getpid()}-{id(self):x}"
        self.budget = budget
        self.most = most
        self.states: list[Shelved] = []
        self._names = itertools.count()
        self._clock = itertools.count(1)
        if parent.is_dir():
            _remove_orphans(parent)
            if key:
                self._take_over(parent / f"{LEFT}{key}")

    def _take_over(self, left: Path) -> None:
        try:
            left.rename(self.folder)  # atomic: one process gets it
        except OSError:
            return  # none left (or another process took it)
        try:
            index = json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
            (self.folder / INDEX).unlink()
            for entry in index["states"]:
                path = self.folder / str(entry["name"])
                if path.is_file():
                    self.states.append(Shelved(path, [int(t) for t in entry["tokens"]],
                                               path.stat().st_size, next(self._clock)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("The conversations put aside at the last unload could not be read "
                        "(%s); they are decoded again", exc)
            self.close()
            return
        names = [int(s.path.stem) for s in self.states if s.path.stem.isdigit()]
        self._names = itertools.count(max(names, default=-1) + 1)
        self.budget = min(self.budget, shutil.disk_usage(self.folder).free // 4)
        log.info("took over %d conversations put aside at the last unload", len(self.states))

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

    def remove(self, state: Shelved) -> None:
        self.states.remove(state)
        with contextlib.suppress(OSError):
            state.path.unlink()

    def close(self) -> None:
        """Remove the shelf and its states."""
        self.states.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def leave(self) -> None:
        """At unload: leave the states for the next load with the same key (or remove them
        when there is no key or nothing to leave). Shelves left before by other keys go,
        oldest first, while all of them together hold more than the budget."""
        if not (self.key and self.states):
            self.close()
            return
        left = self.parent / f"{LEFT}{self.key}"
        try:
            index = {"states": [{"name": s.path.name, "tokens": s.tokens} for s in self.states]}
            with atomic_output(self.folder / INDEX, "w") as out:
                json.dump(index, out)  # type: ignore[arg-type]
            shutil.rmtree(left, ignore_errors=True)
            self.folder.rename(left)
        except OSError as exc:
            log.warning("The conversations put aside could not be left for the next load (%s)",
                        exc)
            self.close()
            return
        self.states.clear()
        try:  # (another process may be removing or taking over one meanwhile)
            shelves = sorted(self.parent.glob(f"{LEFT}*"), key=lambda p: p.stat().st_mtime,
                             reverse=True)
            total = 0
            for shelf in shelves:
                total += sum(f.stat().st_size for f in shelf.iterdir() if f.is_file())
                if total > self.budget and shelf != left:
                    shutil.rmtree(shelf, ignore_errors=True)
        except OSError as exc:
            log.info("Shelves left by earlier loads were not trimmed (%s)", exc)


def remove_left(parent: Path) -> None:
    """Remove every shelf left at an unload (a conversation was deleted: its keys, values and
    tokens must not stay on disk)."""
    for folder in parent.glob(f"{LEFT}*"):
        shutil.rmtree(folder, ignore_errors=True)


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
