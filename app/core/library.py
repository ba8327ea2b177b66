"""The model library: every GGUF model QuantDesk can run, found where it already lies.

Three places are scanned: the app's own models folder, the Hugging Face cache (through
huggingface-hub's cache API), and folders the user adds (an LM Studio or other models folder).
Files are never copied. A split model (``x-00001-of-00003.gguf``) is one entry; multimodal
projector files (``mmproj*``), importance matrices (``*.imatrix.gguf``, written beside models by
the quantizer) and unfinished downloads (``*.part``, and a split model while one of its parts
is still a ``.part``) are skipped. A file that cannot be read is listed with the reason, not
hidden.

Removing an entry deletes exactly what ``removal_plan`` lists, which is also what the
confirmation shows: a file (every part of a split model), a link (only the link, never what it
points to), or, in the Hugging Face cache, the snapshot's link and its blob when no other
snapshot still links to that blob.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.core import paths
from app.core.atomic import PARTIAL_SUFFIX
from app.core.gguf_info import GGUFError, ModelInfo, read_model_info, split_parts

log = logging.getLogger(__name__)

SOURCE_APP = "QuantDesk"
SOURCE_HF = "Hugging Face cache"


@dataclass(frozen=True)
class LibraryEntry:
    """One model in the library."""

    path: Path
    source: str  # SOURCE_APP, SOURCE_HF, or the user folder's path
    info: ModelInfo | None
    error: str | None = None
    repo_id: str | None = None

    @property
    def name(self) -> str:
        """What to call it: the file name without extension (and without the split suffix)."""
        stem = self.path.stem
        if self.info and self.info.split_count > 1:
            stem = stem.rsplit("-", 3)[0]
        return stem


def _is_model_file(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(".gguf") or name.startswith(("mmproj", ".")):
        return False
    if name.endswith(".imatrix.gguf") or name == "imatrix.gguf":  # a quantizer input, no model
        return False
    return PARTIAL_SUFFIX not in name and ".incomplete" not in name


def _part_of(path: Path) -> Path:
    """The unfinished download of ``path`` (app.hub.download writes NAME.part beside NAME)."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _downloading(path: Path) -> bool:
    """Whether ``path`` is a split model some of whose parts are still being downloaded."""
    return any(not part.exists() and _part_of(part).exists() for part in split_parts(path))


def _first_parts(files: Iterable[Path]) -> list[Path]:
    """Keep one path per model: split parts other than the first are dropped."""
    kept = []
    for path in sorted(set(files)):
        parts = split_parts(path)
        if parts[0] == path:
            kept.append(path)
    return kept


def _walk(folder: Path, max_depth: int = 4) -> list[Path]:
    found: list[Path] = []
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder, followlinks=True):
        depth = len(Path(root).parts) - base_depth
        dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < max_depth else []
        found += [Path(root) / f for f in files if _is_model_file(Path(f))]
    return found


def hf_cache_models(cache_dir: Path | None = None) -> list[tuple[Path, str]]:
    """GGUF files in the Hugging Face cache, with their repo id."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:  # pragma: no cover - huggingface-hub is a dependency
        return []
    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    except OSError as exc:
        log.warning("Hugging Face cache could not be read: %s", exc)
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for file in revision.files:
                if _is_model_file(Path(file.file_name)):
                    found.append((Path(file.file_path), repo.repo_id))
    return found


class Library:
    """Scans the three places; keeps what it read, keyed by path, size and mtime."""

    def __init__(self, folders: Iterable[str] = (), hf_cache_dir: Path | None = None) -> None:
        self.folders = [Path(f) for f in folders]
        self.hf_cache_dir = hf_cache_dir
        self._cache: dict[tuple[Path, int, float], tuple[ModelInfo | None, str | None]] = {}

    def _read(self, path: Path) -> tuple[ModelInfo | None, str | None]:
        try:
            stat = path.stat()
        except OSError as exc:
            return None, f"cannot be read: {exc.strerror or exc}"
        key = (path, stat.st_size, stat.st_mtime)
        if key not in self._cache:
            try:
                self._cache[key] = (read_model_info(path), None)
            except GGUFError as exc:
                self._cache[key] = (None, str(exc))
        return self._cache[key]

    def scan(self) -> list[LibraryEntry]:
        """All models, app folder first, then the HF cache, then the user's folders."""
        entries: list[LibraryEntry] = []
        seen: set[Path] = set()

        def add(paths_: Iterable[Path], source: str, repos: dict[Path, str] | None = None) -> None:
            for path in _first_parts(paths_):
                real = path.resolve()
                if real in seen or _downloading(path):
                    continue
                seen.add(real)
                info, error = self._read(path)
                entries.append(LibraryEntry(path, source, info, error,
                                            (repos or {}).get(path)))

        add(_walk(paths.models_dir()), SOURCE_APP)
        hf = hf_cache_models(self.hf_cache_dir)
        add([p for p, _ in hf], SOURCE_HF, dict(hf))
        for folder in self.folders:
            if folder.is_dir():
                add(_walk(folder), str(folder))
            else:
                log.warning("model folder %s is missing", folder)
        return entries


def _files_of(entry: LibraryEntry) -> list[Path]:
    """The model's own files: every split part there is, or the one file."""
    if entry.info is not None and entry.info.split_files:
        return list(entry.info.split_files)
    # An unreadable split model (a part missing, say) still owns the parts that are there;
    # the library lists only the first, so leaving the others would orphan them unseen.
    return [p for p in split_parts(entry.path) if p == entry.path or os.path.lexists(p)]


def _hf_repo_of(link: Path) -> Path | None:
    """The cache folder (``models--org--name``) of a file in one of its snapshots."""
    for folder in link.parents:
        if folder.parent.name == "snapshots":
            return folder.parent.parent
    return None


def _hf_blob(link: Path) -> tuple[Path, Path] | None:
    """For a snapshot link into the cache's blobs: (its repo folder, its blob)."""
    repo = _hf_repo_of(link)
    if repo is None or not link.is_symlink():
        return None
    blob = link.resolve()
    if blob.parent != (repo / "blobs").resolve() or not blob.is_file():
        return None
    return repo, blob


def _links_to(blob: Path, repo: Path) -> set[Path]:
    """Every snapshot link (of every revision) in ``repo`` that points at ``blob``."""
    found = set()
    for root, _dirs, files in os.walk(repo / "snapshots"):  # links are not followed: good
        for name in files:
            path = Path(root) / name
            if path.is_symlink() and path.resolve() == blob:
                found.add(path)
    return found


def removal_plan(entry: LibraryEntry) -> list[Path]:
    """Exactly the paths that ``remove(entry)`` deletes, in that order; the confirmation shows
    this list.

    A plain file is deleted (every part of a split model). A link is deleted, never the file it
    points to, unless the link is a Hugging Face cache snapshot: then its blob goes too, but
    only when no other snapshot or revision links to that blob.
    """
    files = _files_of(entry)
    plan: list[Path] = []
    for path in files:
        plan.append(path)
        cached = _hf_blob(path) if entry.source == SOURCE_HF else None
        if cached is not None:
            repo, blob = cached
            if _links_to(blob, repo) <= set(files) and blob not in plan:
                plan.append(blob)
    return plan


def remove(entry: LibraryEntry, plan: Iterable[Path] | None = None) -> list[Path]:
    """Delete ``plan`` (by default ``removal_plan(entry)``: pass the one the person confirmed)
    and return what was deleted. Links are removed as links; nothing they point to is touched
    unless it is in the plan. Raises OSError at the first path that cannot be deleted."""
    deleted = []
    for path in removal_plan(entry) if plan is None else plan:
        if os.path.lexists(path):
            path.unlink()
            deleted.append(path)
    return deleted
