"""Search Hugging Face for GGUF models and list a repo's files grouped by quantization."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core import quant_types
from app.core.gguf_info import split_parts
from app.hub.errors import translated
from app.hub.online import ensure_reachable


@dataclass(frozen=True)
class RepoSummary:
    """A search hit."""

    repo_id: str
    downloads: int
    likes: int
    last_modified: str | None


@dataclass(frozen=True)
class QuantFiles:
    """The files of one quantization in a repo (several when the model is split)."""

    quant: str
    files: tuple[str, ...]
    size: int
    sha256: tuple[str | None, ...]


@dataclass(frozen=True)
class RepoFiles:
    """What a repo offers: GGUF quantizations, or safetensors to convert."""

    repo_id: str
    quants: tuple[QuantFiles, ...]
    has_safetensors: bool


def _api(endpoint: str | None, token: str | None):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


def search_models(text: str, *, sort: str = "downloads", limit: int = 50,
                  endpoint: str | None = None, token: str | None = None) -> list[RepoSummary]:
    """GGUF model repos matching ``text``, sorted by 'downloads', 'likes' or 'last_modified'."""
    ensure_reachable(endpoint)
    api = _api(endpoint, token)
    with translated(f"the search for {text!r}"):
        hits = list(api.list_models(search=text or None, filter="gguf", sort=sort,
                                    limit=limit))
    return [RepoSummary(h.id, int(h.downloads or 0), int(h.likes or 0),
                        str(h.last_modified) if h.last_modified else None) for h in hits]


def repo_files(repo_id: str, *, endpoint: str | None = None,
               token: str | None = None) -> RepoFiles:
    """A repo's GGUF files grouped by quantization, with sizes and SHA-256."""
    ensure_reachable(endpoint)
    api = _api(endpoint, token)
    with translated(repo_id):
        info = api.model_info(repo_id, files_metadata=True)
    groups: dict[str, list[tuple[str, int, str | None]]] = {}
    has_safetensors = False
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if name.endswith(".safetensors"):
            has_safetensors = True
        base = name.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or base.startswith("mmproj"):
            continue
        quant = quant_types.name_in(name) or "other"
        sha = sibling.lfs.sha256 if sibling.lfs else None
        groups.setdefault(quant, []).append((name, int(sibling.size or 0), sha))
    order = {t.name: i for i, t in enumerate(quant_types.ALL)}
    quants = []
    for quant, files in sorted(groups.items(), key=lambda kv: order.get(kv[0], 999)):
        files.sort()
        # a split model's parts belong together; keep them in part order
        names = tuple(f[0] for f in files)
        quants.append(QuantFiles(quant, names, sum(f[1] for f in files),
                                 tuple(f[2] for f in files)))
    return RepoFiles(repo_id, tuple(quants), has_safetensors)


def is_split(files: tuple[str, ...]) -> bool:
    """Whether a group is one split model (its names follow the -0000N-of-0000M pattern)."""
    return len(files) > 1 and len(split_parts(Path(files[0]))) == len(files)


def split_names(filename: str) -> tuple[str, ...]:
    """Every part's name of the split model ``filename`` belongs to, in order, as the hub names
    them ('sub/x-00002-of-00003.gguf' → 'sub/x-00001-of-00003.gguf', …); or just ``filename``."""
    folder, _, base = filename.rpartition("/")  # hub names use '/' on every OS
    return tuple(f"{folder}/{p.name}" if folder else p.name for p in split_parts(Path(base)))
