"""Download GGUF files from Hugging Face: progress, cancel, pause, resume, SHA-256 check.

Metadata (size, SHA-256 of LFS files, the commit) comes from huggingface-hub; the bytes come
through huggingface-hub's own HTTP session with a Range header, so a download that was paused,
lost its connection or whose app was killed resumes where it stopped: the bytes already on
disk are hashed again, not fetched again. The file is written as ``NAME.part`` beside its
final place (the library skips such files) and renamed only after its size and SHA-256 match.
A failed check deletes the part and says so; nothing unverified is ever offered as a model.
A file already in its final place with the published size and SHA-256 is not fetched again,
so resuming a model of several parts fetches only what is missing.

Repo ids and file names come from the hub, so they are untrusted: ``target_path`` builds
every local path through ``app.core.paths.contained``, and a name that would leave its
folder is refused (RefusedName) before anything is asked or written.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core.atomic import NO_ROOM_ERRNOS, PARTIAL_SUFFIX
from app.core.paths import UnsafeName, contained
from app.hub.errors import (
    Cancelled,
    DiskFull,
    HubError,
    Paused,
    RefusedName,
    VerificationFailed,
    translated,
)
from app.hub.online import ensure_reachable

CHUNK = 1024 * 1024
PART_SUFFIX = PARTIAL_SUFFIX  # one suffix for every unfinished file: the library skips it
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
    """A verified file in its final place (``reused``: it was there already, not fetched)."""

    path: Path
    size: int
    sha256: str
    reused: bool = False


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def remote_file(repo_id: str, filename: str, *, revision: str = "main", token: str | None = None,
                endpoint: str | None = None) -> RemoteFile:
    """Ask the hub for a file's size and SHA-256 (HEAD request).

    A repo id or file name that could not be saved inside a folder is refused (RefusedName)
    before the hub is asked: there is no point fetching what will not be written.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    target_path(Path(), repo_id, filename)
    ensure_reachable(endpoint)
    with translated(f"{repo_id}/{filename}"):
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=_endpoint(endpoint))
        meta = get_hf_file_metadata(url, token=token, timeout=15)
    etag = (meta.etag or "").strip('"')
    sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    if meta.size is None:
        raise HubError(f"Hugging Face did not say how large {filename} is.")
    return RemoteFile(repo_id, filename, url, int(meta.size), sha, meta.commit_hash)


def target_path(dest_dir: Path, repo_id: str, filename: str) -> Path:
    """Where a download lands: DEST/org/repo/filename.

    Raises RefusedName when the hub's names would leave DEST or are not plain names (see
    ``app.core.paths.contained``); room is kept for the '.part' suffix of the unfinished file.
    """
    try:
        return contained(dest_dir, repo_id, filename, room=len(PART_SUFFIX))
    except UnsafeName as exc:
        raise RefusedName(f"Hugging Face offered a name QuantDesk will not write to disk: {exc}. "
                          "Nothing was downloaded.") from None


def part_path(target: Path) -> Path:
    """The in-progress file beside ``target``."""
    return target.with_name(target.name + PART_SUFFIX)


def _stop_if_asked(remote: RemoteFile, done: int, cancel: threading.Event | None,
                   pause: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"Download of {remote.filename} cancelled.")
    if pause is not None and pause.is_set():
        raise Paused(f"Download of {remote.filename} paused at {done / 2**20:.0f} MiB; resume "
                     "to continue.")


def _hashed(path: Path, hasher: hashlib._Hash, remote: RemoteFile, message: str,
            cancel: threading.Event | None, pause: threading.Event | None,
            interval: float) -> Generator[Progress, None, int]:
    """Feed ``path`` to ``hasher``; yields Progress while it reads, returns the bytes read.

    Hashing a finished part of a large model takes a while, so it reports and can be stopped
    like a transfer.
    """
    done, last_report = 0, time.monotonic()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            _stop_if_asked(remote, done, cancel, pause)
            hasher.update(block)
            done += len(block)
            now = time.monotonic()
            if now - last_report >= interval:
                last_report = now
                yield Progress(done, remote.size, 0.0, None, message)
    return done


def _write_failed(remote: RemoteFile, folder: Path, exc: OSError, done: int) -> HubError:
    if exc.errno in NO_ROOM_ERRNOS:
        return DiskFull(f"Writing {remote.filename} failed: {exc.strerror}. Free some space on "
                        f"{folder} (or choose another models folder) and download it again: the "
                        f"{done / 2**20:.0f} MiB fetched so far are kept and will not be "
                        "fetched again.")
    return HubError(f"Writing {remote.filename} to {folder} failed: {exc.strerror or exc}. The "
                    "part downloaded so far is kept.")


def download(remote: RemoteFile, dest_dir: Path, *, token: str | None = None,
             cancel: threading.Event | None = None, pause: threading.Event | None = None,
             progress_interval: float = 0.2) -> Iterator[Progress | Downloaded]:
    """Fetch ``remote`` into ``dest_dir``; yields Progress, finally Downloaded.

    A file already in its final place with the published size and SHA-256 is checked, not
    fetched again (Downloaded.reused); a part left by a pause, a cut connection or a killed app
    is hashed and resumed from its end. Raises Cancelled (part removed), Paused (part kept),
    VerificationFailed (part removed), DiskFull (part kept), RefusedName (nothing written), or
    another HubError with the reason.
    """
    target = target_path(dest_dir, remote.repo_id, remote.filename)
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield from _download(remote, target, part, token, cancel, pause, progress_interval)
    except Cancelled:
        part.unlink(missing_ok=True)
        raise


def _download(remote: RemoteFile, target: Path, part: Path, token: str | None,
              cancel: threading.Event | None, pause: threading.Event | None,
              interval: float) -> Iterator[Progress | Downloaded]:
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        build_hf_headers,
        get_session,
        hf_raise_for_status,
    )

    # Only a published SHA-256 can vouch for a file already in place; files without one are
    # small (not LFS) and are simply fetched again.
    if remote.sha256 is not None and target.is_file() and target.stat().st_size == remote.size:
        hasher = hashlib.sha256()
        yield from _hashed(target, hasher, remote, "Checking the downloaded file", cancel, pause,
                           interval)
        if hasher.hexdigest() == remote.sha256:
            part.unlink(missing_ok=True)  # left by an older attempt; the file is complete
            yield Progress(remote.size, remote.size, 0.0, 0.0, "Already downloaded")
            yield Downloaded(target, remote.size, remote.sha256, reused=True)
            return
        # Not the published file (changed upstream, or damaged): it is fetched again below
        # and replaced only once the new bytes verify.

    hasher = hashlib.sha256()
    done = 0
    if part.is_file():
        done = yield from _hashed(part, hasher, remote, "Checking what was downloaded", cancel,
                                  pause, interval)
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
            # httpx reports network failures as its own exceptions, so an OSError here is the
            # disk's: opening, writing or closing the part.
            try:
                with part.open(mode) as handle:
                    for block in response.iter_bytes(CHUNK):
                        _stop_if_asked(remote, done, cancel, pause)
                        handle.write(block)
                        hasher.update(block)
                        done += len(block)
                        fetched += len(block)
                        now = time.monotonic()
                        if now - last_report >= interval:
                            last_report = now
                            speed = fetched / max(now - started, 1e-6)
                            eta = (remote.size - done) / speed if speed > 0 else None
                            yield Progress(done, remote.size, speed, eta, "Downloading")
            except OSError as exc:
                raise _write_failed(remote, target.parent, exc, done) from None

    digest = hasher.hexdigest()
    if done != remote.size or (remote.sha256 is not None and digest != remote.sha256):
        part.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{remote.filename} did not verify: got {done:,} bytes with SHA-256 {digest[:12]}…, "
            f"expected {remote.size:,} bytes with {str(remote.sha256)[:12]}…. The damaged file "
            "was deleted; download it again.")
    part.replace(target)
    yield Downloaded(target, done, digest)


def download_files(remotes: Sequence[RemoteFile], dest_dir: Path, *, token: str | None = None,
                   cancel: threading.Event | None = None, pause: threading.Event | None = None,
                   progress_interval: float = 0.2) -> Iterator[Progress | Downloaded]:
    """Fetch several files one after the other (a split model's parts, a checkpoint's files).

    Progress covers all of them; a Downloaded comes for each file. Resuming is safe at any
    point: files already in place and verified are not fetched again, and the one that was in
    progress continues from its part. Raises what ``download`` raises.
    """
    total = sum(r.size for r in remotes)
    before = 0
    for remote in remotes:
        for event in download(remote, dest_dir, token=token, cancel=cancel, pause=pause,
                              progress_interval=progress_interval):
            if isinstance(event, Progress):
                done = before + event.done
                eta = (total - done) / event.speed if event.speed > 0 else None
                yield Progress(done, total, event.speed, eta,
                               f"{remote.filename}: {event.message}")
            else:
                yield event
        before += remote.size
