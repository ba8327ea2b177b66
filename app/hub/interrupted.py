"""Downloads that stopped before their end (a pause, a lost connection, the app closed or
killed), found on disk at start-up so that they can be resumed or discarded.

A download writes ``MODELS/org/repo/FILE.part`` beside its final place (``app.hub.download``),
so the part's place says which repo and file it was: the path is read back into a repo id and
a file name, and kept only when ``target_path`` builds that same path again (the one way a hub
name becomes a path). A split model is one entry with all its parts: resuming fetches only what
is missing, and discarding deletes its unfinished part and the finished parts, which are no
model on their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.hub.download import PART_SUFFIX, part_path, target_path
from app.hub.errors import RefusedName
from app.hub.search import split_names


@dataclass(frozen=True)
class Interrupted:
    """One model whose download did not finish."""

    repo_id: str
    files: tuple[str, ...]  # every file of the model, as the hub names them (split: in order)
    on_disk: tuple[Path, ...]  # what is there: unfinished parts and finished split parts
    done_bytes: int

    @property
    def name(self) -> str:
        """'org/repo/file.gguf' (the first part, for a split model)."""
        return f"{self.repo_id}/{self.files[0]}"


def _read_back(dest: Path, part: Path) -> tuple[str, str] | None:
    """(repo id, file name) of a download's part file, or None if it is not one."""
    try:
        relative = part.relative_to(dest)
    except ValueError:
        return None
    pieces = relative.parts
    if len(pieces) < 3 or not pieces[-1].endswith(PART_SUFFIX):
        return None
    repo_id = "/".join(pieces[:2])
    filename = "/".join(pieces[2:])[: -len(PART_SUFFIX)]
    try:
        if part_path(target_path(dest, repo_id, filename)) != part:
            return None
    except RefusedName:
        return None
    return repo_id, filename


def interrupted_downloads(dest: Path) -> list[Interrupted]:
    """Unfinished downloads under ``dest`` (the models folder), by repo and file name."""
    found: dict[tuple[str, tuple[str, ...]], Interrupted] = {}
    if not dest.is_dir():
        return []
    for root, dirs, names in os.walk(dest):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            # hidden '.NAME.XXXX.part' files are other writers' atomic temporaries
            if name.startswith(".") or not name.endswith(PART_SUFFIX):
                continue
            read = _read_back(dest, Path(root) / name)
            if read is None:
                continue
            repo_id, filename = read
            files = split_names(filename)
            key = (repo_id, files)
            if key in found:
                continue
            targets = [target_path(dest, repo_id, f) for f in files]
            on_disk = tuple(p for t in targets for p in (t, part_path(t)) if p.is_file())
            found[key] = Interrupted(repo_id, files, on_disk,
                                     sum(p.stat().st_size for p in on_disk))
    return list(found.values())


def discard(item: Interrupted) -> list[Path]:
    """Delete what ``item`` left on disk (its ``on_disk`` files, nothing else); returns what
    was deleted."""
    deleted = []
    for path in item.on_disk:
        if path.is_file() and not path.is_symlink():
            path.unlink()
            deleted.append(path)
    return deleted
