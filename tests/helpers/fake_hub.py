"""A local HTTP server that answers the Hugging Face hub routes QuantDesk uses.

It serves files the test adds, with the headers the real hub sends for LFS files (X-Repo-Commit,
X-Linked-Etag holding the SHA-256, X-Linked-Size), honours Range requests (``bytes=a-`` and
``bytes=a-b``, answered 206 with Content-Range; ``ranges = False`` makes it ignore them and send
the whole file), and records every request so tests can check that resumed downloads do not
fetch bytes again and that a header read fetched only the header. Tests can make a
file corrupt (its bytes differ from its published SHA-256), make a path answer an error status,
or cut a transfer off after some bytes.

Repo ids and file names are whatever the test chooses, hostile ones included ('../../x',
'C:/x', names with control characters or backslashes): a file is found by the path the client
actually requests (percent-decoded, and with '.' and '..' collapsed the way HTTP clients do), so
the server hands over the bytes of a hostile name as a hostile hub would, and only the client's
side can refuse them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    sha256: str
    served: bytes  # what is sent (differs from data when corrupted)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    file: tuple[str, str] | None = None  # (repo_id, filename) when it asked for a file
    sent: int = 0  # body bytes written to the client (less than asked when it went away)

    @property
    def start(self) -> int:
        """Where the requested range starts (0 without a Range header)."""
        if self.range and self.range.startswith("bytes="):
            return int(self.range[6:].split("-")[0])
        return 0

    def end(self, size: int) -> int:
        """Where the requested range ends, exclusive (``bytes=a-b`` ends after b; an open
        range or none at the end of the file)."""
        if self.range and self.range.startswith("bytes="):
            last = self.range[6:].split("-")[1]
            if last:
                return min(int(last) + 1, size)
        return size


def _route(path: str) -> str:
    """A path as the server compares it: dot segments collapsed, as an HTTP client does."""
    return posixpath.normpath(path)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # a client killed or cut off mid-body (the point of several tests) is not a server bug
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass
class FakeHub:
    """Start with ``start()``; ``endpoint`` is the base URL for HF_ENDPOINT."""

    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # repo_id -> status
    private: set[str] = field(default_factory=set)  # repos needing "Bearer good-token"
    requests: list[Request] = field(default_factory=list)
    cut_after: int | None = None  # close the connection after this many body bytes
    delay: float = 0.0  # seconds between 64 KiB pieces of a body (a slow network)
    repos: dict[str, dict[str, object]] = field(default_factory=dict)
    ranges: bool = True  # False: ignore Range headers and send whole files, as some servers do

    def add(self, repo_id: str, filename: str, data: bytes, corrupt: bool = False,
            **repo_info: object) -> None:
        sha = hashlib.sha256(data).hexdigest()
        served = data[:-1] + bytes([data[-1] ^ 0xFF]) if corrupt else data
        self.files[(repo_id, filename)] = HubFile(data, sha, served)
        self.repos.setdefault(repo_id, {}).update(repo_info)

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._handle(head=True)

            def do_GET(self) -> None:
                self._handle(head=False)

            def _json(self, payload: object, status: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _handle(self, head: bool) -> None:
                url = urllib.parse.urlparse(self.path)
                request = Request(self.command, url.path, self.headers.get("Range"),
                                  self.headers.get("Authorization"))
                hub.requests.append(request)
                wanted = _route(urllib.parse.unquote(url.path))
                for repo_id, filename in list(hub.files):
                    if _route(f"/{repo_id}/resolve/main/{filename}") == wanted:
                        if self._refused(repo_id):
                            return None
                        request.file = (repo_id, filename)
                        return self._file(repo_id, filename, head, request)
                parts = url.path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 2:
                    return self._search(urllib.parse.parse_qs(url.query))
                if parts[:2] == ["api", "models"]:
                    repo_id = "/".join(parts[2:4])
                    if self._refused(repo_id):
                        return None
                    return self._repo_info(repo_id)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                    if self._refused(repo_id):
                        return None
                    return self._error(404, "EntryNotFound")
                return self._error(404, "RepoNotFound")

            def _refused(self, repo_id: str) -> bool:
                if repo_id in hub.errors:
                    status = hub.errors[repo_id]
                    self._error(status, "RepoNotFound" if status in (401, 404) else "")
                    return True
                if repo_id in hub.private and \
                        self.headers.get("Authorization") != "Bearer good-token":
                    self._error(401, "RepoNotFound")
                    return True
                if not any(r == repo_id for r, _ in hub.files):
                    self._error(404, "RepoNotFound")
                    return True
                return False

            def _file(self, repo_id: str, filename: str, head: bool, request: Request) -> None:
                f = hub.files[(repo_id, filename)]
                ranged = hub.ranges and request.range is not None
                start, end = (request.start, request.end(len(f.data))) if ranged \
                    else (0, len(f.data))
                body = f.served[start:end]
                self.send_response(206 if ranged else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{f.sha256}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
                self.send_header("Content-Length", str(len(body)))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(f.data)}")
                self.end_headers()
                if head:
                    return None
                if hub.cut_after is not None:
                    self.wfile.write(body[: hub.cut_after])
                    self.wfile.flush()
                    request.sent = min(len(body), hub.cut_after)
                    self.close_connection = True
                    return None
                for i in range(0, len(body), 65536):
                    self.wfile.write(body[i:i + 65536])
                    request.sent += len(body[i:i + 65536])
                    if hub.delay:
                        time.sleep(hub.delay)
                return None

            def _siblings(self, repo_id: str) -> list[dict[str, object]]:
                return [{"rfilename": name, "size": len(f.data),
                         "lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}}
                        for (r, name), f in sorted(hub.files.items()) if r == repo_id]

            def _repo_info(self, repo_id: str) -> None:
                info = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False,
                        "downloads": 0, "likes": 0, "tags": ["gguf"],
                        "siblings": self._siblings(repo_id)}
                info.update(hub.repos.get(repo_id, {}))
                self._json(info)

            def _search(self, query: dict[str, list[str]]) -> None:
                text = query.get("search", [""])[0].lower()
                found = [{"id": r, "modelId": r, "downloads": info.get("downloads", 0),
                          "likes": info.get("likes", 0), "tags": ["gguf"],
                          "lastModified": "2026-01-01T00:00:00.000Z"}
                         for r, info in sorted(hub.repos.items()) if text in r.lower()]
                sort = query.get("sort", ["downloads"])[0]
                if sort in ("downloads", "likes"):
                    found.sort(key=lambda m: -int(m[sort]))  # type: ignore[call-overload]
                self._json(found)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: stop() (every test's teardown) waits up to one poll interval
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def body_bytes(self, repo_id: str, filename: str) -> list[str | None]:
        """Range headers of the GET requests made for one file."""
        return [r.range for r in self.gets(repo_id, filename)]

    def gets(self, repo_id: str, filename: str, since: int = 0) -> list[Request]:
        """The GET requests (body fetches) for one file, from request number ``since`` on."""
        return [r for r in self.requests[since:]
                if r.method == "GET" and r.file == (repo_id, filename)]
