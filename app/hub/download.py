"""Download GGUF files from Hugging Face: progress, cancel, pause, resume, SHA-256 check.

Metadata (size, SHA-256 of LFS files, the commit) comes from huggingface-hub; the bytes come
through huggingface-hub's own HTTP session with a Range header, so a download that was paused,
lost its connection or whose app was killed resumes where it stopped: the bytes already on
disk are hashed again, not fetched again. The file is written as ``NAME.part`` beside its
final place (the library skips such files) and renamed only after its size and SHA-256 match.
A failed check deletes the part and says so; nothing unverified is ever offered as a model.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.hub.errors import Cancelled, DiskFull, HubError, Paused, VerificationFailed, translated
from app.hub.online import ensure_reachable

CHUNK = 1024 * 1024
PART_SUFFIX = ".part"
DISK_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file."""

    repo_id: str
    filename: str
    url: str
    size: int
    sha256: str | None
    commit: str | None


@dataclass(frozen=True)
class Progress:
    """Bytes so far of ``total``, speed (bytes/s) and seconds left (None: unknown yet)."""

    done: int
    total: int
    speed: float
    eta: float | None
    message: str


@dataclass(frozen=True)
class Downloaded:
    """A verified file in its final place."""

    path: Path
    size: int
    sha256: str


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def remote_file(repo_id: str, filename: str, *, revision: str = "main", token: str | None = None,
                endpoint: str | None = None) -> RemoteFile:
    """Ask the hub for a file's size and SHA-256 (HEAD request)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    ensure_reachable(endpoint)
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=_endpoint(endpoint))
    with translated(f"{repo_id}/{filename}"):
        meta = get_hf_file_metadata(url, token=token, timeout=15)
    etag = (meta.etag or "").strip('"')
    sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    if meta.size is None:
        raise HubError(f"Hugging Face did not say how large {filename} is.")
    return RemoteFile(repo_id, filename, url, int(meta.size), sha, meta.commit_hash)


def target_path(dest_dir: Path, repo_id: str, filename: str) -> Path:
    """Where a download lands: DEST/org/repo/filename."""
    return dest_dir.joinpath(*repo_id.split("/"), *filename.split("/"))


def part_path(target: Path) -> Path:
    """The in-progress file beside ``target``."""
    return target.with_name(target.name + PART_SUFFIX)


def _hash_existing(part: Path, hasher: hashlib._Hash) -> int:
    done = 0
    with part.open("rb") as handle:
        while block := handle.read(CHUNK):
            hasher.update(block)
            done += len(block)
    return done


def download(remote: RemoteFile, dest_dir: Path, *, token: str | None = None,
             cancel: threading.Event | None = None, pause: threading.Event | None = None,
             progress_interval: float = 0.2) -> Iterator[Progress | Downloaded]:
    """Fetch ``remote`` into ``dest_dir``; yields Progress, finally Downloaded.

    Raises Cancelled (part removed), Paused (part kept), VerificationFailed (part removed),
    DiskFull, or another HubError with the reason.
    """
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        build_hf_headers,
        get_session,
        hf_raise_for_status,
    )

    target = target_path(dest_dir, remote.repo_id, remote.filename)
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    done = _hash_existing(part, hasher) if part.exists() else 0
    if done > remote.size:  # not ours, or the file changed upstream: start again
        part.unlink()
        hasher, done = hashlib.sha256(), 0
    free = shutil.disk_usage(target.parent).free
    if free < remote.size - done + DISK_MARGIN:
        raise DiskFull(f"{remote.filename} needs {(remote.size - done) / 2**30:.2f} GiB more but "
                       f"only {free / 2**30:.2f} GiB is free on {target.parent}. Free some space "
                       "or choose another models folder.")
    yield Progress(done, remote.size, 0.0, None, "Resuming" if done else "Starting")

    if done < remote.size:
        headers = build_hf_headers(token=token)
        headers["Accept-Encoding"] = "identity"
        if done:
            headers["Range"] = f"bytes={done}-"
        started, last_report, fetched = time.monotonic(), 0.0, 0
        with translated(f"{remote.repo_id}/{remote.filename}"), get_session().stream(
                "GET", remote.url, headers=headers, follow_redirects=True,
                timeout=30) as response:
            hf_raise_for_status(response)
            mode = "ab"
            if done and response.status_code != 206:  # the server ignored Range: restart
                hasher, done, mode = hashlib.sha256(), 0, "wb"
            with part.open(mode) as handle:
                for block in response.iter_bytes(CHUNK):
                    if cancel is not None and cancel.is_set():
                        handle.close()
                        part.unlink(missing_ok=True)
                        raise Cancelled(f"Download of {remote.filename} cancelled.")
                    if pause is not None and pause.is_set():
                        raise Paused(f"Download of {remote.filename} paused at "
                                     f"{done / 2**20:.0f} MiB; resume to continue.")
                    try:
                        handle.write(block)
                    except OSError as exc:
                        raise DiskFull(f"Writing {remote.filename} failed: {exc.strerror}. "
                                       "The part downloaded so far is kept.") from None
                    hasher.update(block)
                    done += len(block)
                    fetched += len(block)
                    now = time.monotonic()
                    if now - last_report >= progress_interval:
                        last_report = now
                        speed = fetched / max(now - started, 1e-6)
                        eta = (remote.size - done) / speed if speed > 0 else None
                        yield Progress(done, remote.size, speed, eta, "Downloading")

    digest = hasher.hexdigest()
    if done != remote.size or (remote.sha256 is not None and digest != remote.sha256):
        part.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{remote.filename} did not verify: got {done:,} bytes with SHA-256 {digest[:12]}…, "
            f"expected {remote.size:,} bytes with {str(remote.sha256)[:12]}…. The damaged file "
            "was deleted; download it again.")
    part.replace(target)
    yield Downloaded(target, done, digest)
