"""Fetch a Hugging Face checkpoint (the files the GGUF converter reads) into a local folder.

Only what conversion needs is fetched: ``config.json``, the tokenizer files and the weights
(``*.safetensors`` with their index). The files go through ``download_files`` (resume without
fetching finished files again, SHA-256 verification for LFS files, disk-space check, and names
from the hub refused unless they stay inside the checkpoint's folder). A repo that only has
PyTorch ``*.bin`` weights is refused with the reason: those are pickles, which can run code when
loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.hub.download import Progress, download_files, remote_file, target_path
from app.hub.errors import HubError, translated
from app.hub.online import ensure_reachable

WANTED_EXACT = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.jinja", "model.safetensors.index.json"}


@dataclass(frozen=True)
class Checkpoint:
    """A fetched checkpoint: its folder and the files in it."""

    folder: Path
    files: tuple[str, ...]


def checkpoint_files(repo_id: str, *, endpoint: str | None = None,
                     token: str | None = None) -> tuple[str, ...]:
    """The files of ``repo_id`` that conversion needs (top-level only)."""
    from huggingface_hub import HfApi

    ensure_reachable(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with translated(repo_id):
        info = api.model_info(repo_id)
    names = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
    wanted = tuple(sorted(n for n in names if n in WANTED_EXACT or n.endswith(".safetensors")))
    if "config.json" not in wanted:
        raise HubError(f"{repo_id} has no config.json: it is not a Transformers checkpoint.")
    if not any(n.endswith(".safetensors") for n in wanted):
        if any(n.endswith(".bin") for n in names):
            raise HubError(f"{repo_id} has only PyTorch .bin weights, which can run code when "
                           "loaded; QuantDesk converts safetensors checkpoints only.")
        raise HubError(f"{repo_id} has no weights to convert.")
    return wanted


def fetch_checkpoint(repo_id: str, dest_dir: Path, *, endpoint: str | None = None,
                     token: str | None = None, cancel: threading.Event | None = None
                     ) -> Iterator[Progress | Checkpoint]:
    """Download the checkpoint into DEST/org/repo/; yields overall Progress, then Checkpoint."""
    # built first, so that a repo id that would leave DEST is refused before any request
    folder = target_path(dest_dir, repo_id, "config.json").parent
    names = checkpoint_files(repo_id, endpoint=endpoint, token=token)
    remotes = [remote_file(repo_id, n, token=token, endpoint=endpoint) for n in names]
    for event in download_files(remotes, dest_dir, token=token, cancel=cancel):
        if isinstance(event, Progress):  # each file's Downloaded adds nothing for the caller
            yield event
    yield Checkpoint(folder, names)
