"""Read a GGUF model's header from Hugging Face without downloading the model.

A GGUF file starts with everything the memory estimate needs (its metadata and the table of
its tensors); the weights follow. This fetches only that beginning, with HTTP Range requests
through huggingface-hub's own session (the token and HF_ENDPOINT are honoured as for a
download): a first range, then larger ones until ``app.core.gguf_info.parse_header`` has the
whole header, each request asking only for bytes not yet fetched, up to ``MAX_HEADER``. A split
model's description is in its first part; every part's header is read, since each lists its
own tensors. The result is the same ``ModelInfo`` that reading the downloaded file would give.

Headers are kept by (repo, commit, file), in memory and under the cache folder: a commit's
files never change, so a cached header is never stale. A header that cannot be read this way
(a server that ignores Range, one larger than the cap, a damaged one) raises HeaderUnavailable
with the reason; the caller falls back to the file's size and says why.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core import paths
from app.core.atomic import atomic_output
from app.core.gguf_info import (
    GGUFError,
    Header,
    HeaderIncomplete,
    ModelInfo,
    model_info_from_headers,
    parse_header,
)
from app.core.units import format_bytes
from app.hub.download import RemoteFile, remote_file, target_path
from app.hub.errors import HubError, translated

log = logging.getLogger(__name__)

FIRST_RANGE = 1024 * 1024  # most headers are 1-10 MiB (the vocabulary); small ones end here
MAX_HEADER = 64 * 1024 * 1024  # far above any real header (a 256k vocabulary is ~12 MiB)
_SIZE_BYTES = 8  # a cache file: the file's total size, then the header's bytes


class HeaderUnavailable(HubError):
    """A model's header could not be read without downloading the model; says why.

    ``size`` is the model's size in bytes (all parts) when it is known.
    """

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True)
class RemoteHeader:
    """A model on the hub as its header describes it, and what reading the header cost."""

    repo_id: str
    files: tuple[str, ...]
    commit: str | None
    info: ModelInfo  # its path: where the file would be downloaded, relative to the folder
    size: int  # bytes of all parts
    bytes_read: int  # body bytes fetched now (0 when every header came from the cache)
    requests: int  # GET requests made now
    seconds: float
    cached: bool  # every header came from the cache


@dataclass
class _Cost:
    bytes_read: int = 0
    requests: int = 0


_memory_cache: dict[tuple[str, str, str], tuple[int, bytes]] = {}
_lock = threading.Lock()


def _cache_file(key: tuple[str, str, str]) -> Path:
    # a hash as the name: the repo id and file name come from the hub and are not paths here
    digest = hashlib.sha256("\0".join(key).encode("utf-8")).hexdigest()
    return paths.cache_dir() / "gguf-headers" / f"{digest}.bin"


def _cached(key: tuple[str, str, str]) -> tuple[int, bytes] | None:
    with _lock:
        if key in _memory_cache:
            return _memory_cache[key]
    try:
        raw = _cache_file(key).read_bytes()
    except OSError:
        return None
    if len(raw) < _SIZE_BYTES:
        return None
    found = int.from_bytes(raw[:_SIZE_BYTES], "little"), raw[_SIZE_BYTES:]
    with _lock:
        _memory_cache[key] = found
    return found


def _keep(key: tuple[str, str, str], size: int, data: bytes) -> None:
    with _lock:
        _memory_cache[key] = (size, data)
    try:
        with atomic_output(_cache_file(key)) as handle:
            handle.write(size.to_bytes(_SIZE_BYTES, "little") + data)
    except OSError as exc:  # a cache that cannot be written costs a fetch next time, no more
        log.warning("could not cache the header of %s: %s", key[2], exc)


def forget_cache() -> None:
    """Drop the headers kept in memory (tests; the files under the cache folder stay)."""
    with _lock:
        _memory_cache.clear()


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def _fetch(remote: RemoteFile, url: str, start: int, end: int, token: str | None,
           cost: _Cost) -> tuple[bytes, str]:
    """Bytes ``start`` to ``end`` (exclusive) of ``remote``, and the URL that served them (the
    hub redirects to its storage; later ranges go there directly)."""
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        build_hf_headers,
        get_session,
        hf_raise_for_status,
    )

    # The token goes to the hub only: httpx drops it on a redirect to another host, and a
    # storage URL reached directly must not get it either.
    headers = build_hf_headers(token=token if _same_origin(url, remote.url) else False)
    headers["Accept-Encoding"] = "identity"
    headers["Range"] = f"bytes={start}-{end - 1}"
    body = bytearray()
    with translated(f"{remote.repo_id}/{remote.filename}"), get_session().stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=30) as response:
        hf_raise_for_status(response)
        cost.requests += 1
        whole_is_asked = start == 0 and end >= remote.size
        if response.status_code != 206 and not whole_is_asked:
            # Closing without reading: the body is the whole model.
            raise HeaderUnavailable(
                f"the server does not answer Range requests for {remote.filename}: reading its "
                f"header would mean downloading all {format_bytes(remote.size)}", remote.size)
        if response.status_code == 206:
            _check_range(remote, response.headers.get("Content-Range", ""), start)
        for block in response.iter_bytes(256 * 1024):
            body += block
            if len(body) >= end - start:
                break
        final_url = str(response.url)
    cost.bytes_read += len(body)
    return bytes(body[:end - start]), final_url


def _check_range(remote: RemoteFile, content_range: str, start: int) -> None:
    """The server sent the part that was asked for, of the file the hub described."""
    try:
        unit, _, rest = content_range.partition(" ")
        span, _, total = rest.partition("/")
        first = int(span.split("-")[0])
        whole = int(total)
    except ValueError:
        raise HeaderUnavailable(f"the server's answer for {remote.filename} does not say which "
                                f"part it holds (Content-Range {content_range!r})",
                                remote.size) from None
    if unit != "bytes" or first != start or whole != remote.size:
        raise HeaderUnavailable(f"the server sent another part of {remote.filename} than the "
                                f"one asked for (Content-Range {content_range!r}); it may have "
                                "changed while it was read", remote.size)


def _read_header(remote: RemoteFile, path: Path, key: tuple[str, str, str], token: str | None,
                 first_range: int, max_header: int, cost: _Cost) -> tuple[Header, bool]:
    """One file's parsed header (from the cache when it is there); whether it was cached."""
    cached = _cached(key)
    if cached is not None and cached[0] == remote.size:
        try:
            return parse_header(cached[1], remote.size, path), True
        except (GGUFError, HeaderIncomplete):  # only parsed headers are kept: a damaged cache
            log.warning("dropping a damaged cached header of %s", remote.filename)
    data, url = b"", remote.url
    want = min(first_range, remote.size)
    while True:
        more, url = _fetch(remote, url, len(data), want, token, cost)
        if not more:
            raise HeaderUnavailable(f"the server sent nothing for bytes {len(data):,} to "
                                    f"{want:,} of {remote.filename}", remote.size)
        data += more
        try:
            header = parse_header(data, remote.size, path)
        except HeaderIncomplete as exc:
            want = min(remote.size, max(2 * len(data), exc.needed))
            if want > max_header:
                raise HeaderUnavailable(
                    f"the header of {remote.filename} is larger than "
                    f"{max_header / 2**20:.0f} MiB, more than QuantDesk reads to estimate a "
                    "model", remote.size) from None
            continue
        except GGUFError as exc:
            raise HeaderUnavailable(str(exc), remote.size) from None
        _keep(key, remote.size, data[:header.header_bytes])
        return header, False


def read_remote_model(repo_id: str, files: Sequence[str], *, revision: str = "main",
                      endpoint: str | None = None, token: str | None = None,
                      first_range: int = FIRST_RANGE, max_header: int = MAX_HEADER
                      ) -> RemoteHeader:
    """The ModelInfo of the model made of ``files`` (one file, or every part of a split model
    in order) in ``repo_id``, from their headers alone.

    Raises HeaderUnavailable (with the reason and, when known, the size) when a header cannot
    be read this way, RefusedName for names that could not be saved, and the other HubErrors
    (offline, not found, refused) as a download would.
    """
    started = time.monotonic()
    if not files:
        raise HubError(f"No file of {repo_id} was named.")
    # Names from the hub become paths only through target_path (app.core.paths.contained):
    # the result's path is where the download would land, relative to the models folder.
    local = [target_path(Path(), repo_id, name) for name in files]
    remotes = [remote_file(repo_id, name, revision=revision, token=token, endpoint=endpoint)
               for name in files]
    size = sum(r.size for r in remotes)
    cost = _Cost()
    headers, all_cached = [], True
    for remote, path in zip(remotes, local, strict=True):
        key = (repo_id, remote.commit or revision, remote.filename)
        try:
            header, cached = _read_header(remote, path, key, token, first_range, max_header,
                                          cost)
        except HeaderUnavailable as exc:
            raise HeaderUnavailable(str(exc), size) from None
        headers.append(header)
        all_cached = all_cached and cached
    try:
        info = model_info_from_headers(headers)
    except GGUFError as exc:
        raise HeaderUnavailable(str(exc), size) from None
    return RemoteHeader(repo_id, tuple(files), remotes[0].commit, info, size, cost.bytes_read,
                        cost.requests, time.monotonic() - started, all_cached)
