"""The model library: every GGUF model QuantDesk can run, found where it already lies.

Three places are scanned: the app's own models folder, the Hugging Face cache (through
huggingface-hub's cache API), and folders the user adds (an LM Studio or other models folder).
Files are never copied. A split model (``x-00001-of-00003.gguf``) is one entry; multimodal
projector files (``mmproj*``) and unfinished downloads are skipped. A file that cannot be read
is listed with the reason, not hidden.
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
    return PARTIAL_SUFFIX not in name and ".incomplete" not in name


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
                if real in seen:
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


def remove(entry: LibraryEntry) -> list[Path]:
    """Delete a model's file(s) from disk (every split part; for the Hugging Face cache, the
    snapshot link and the blob it points to). Returns what was deleted."""
    targets = list(entry.info.split_files) if entry.info and entry.info.split_files else \
        [entry.path]
    deleted = []
    for path in targets:
        blob = path.resolve() if path.is_symlink() else None
        path.unlink(missing_ok=True)
        deleted.append(path)
        if blob is not None and blob.exists():
            blob.unlink()
            deleted.append(blob)
    return deleted
