"""Downloads with the real huggingface-hub client against a local hub server."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import paths
from app.core.library import Library
from app.hub.download import Downloaded, Progress, download, part_path, remote_file, target_path
from app.hub.errors import (
    Cancelled,
    DiskFull,
    HubNotFound,
    HubOffline,
    HubServerError,
    Paused,
    VerificationFailed,
)
from tests.helpers.fake_hub import FakeHub

REPO, NAME = "org/tiny-GGUF", "tiny-Q8_0.gguf"
DATA = os.urandom(3 * 1024 * 1024 + 123)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    h.add(REPO, NAME, DATA)
    h.start()
    yield h
    h.stop()


def _run(hub: FakeHub, **kwargs: object) -> list[object]:
    remote = remote_file(REPO, NAME, endpoint=hub.endpoint)
    return list(download(remote, paths.models_dir(), **kwargs))  # type: ignore[arg-type]


def test_full_download_is_verified_and_placed(hub: FakeHub) -> None:
    remote = remote_file(REPO, NAME, endpoint=hub.endpoint)
    assert remote.size == len(DATA) and remote.sha256 is not None and len(remote.sha256) == 64
    events = list(download(remote, paths.models_dir(), progress_interval=0))
    done = events[-1]
    assert isinstance(done, Downloaded)
    assert done.path == paths.models_dir() / "org" / "tiny-GGUF" / NAME
    assert done.path.read_bytes() == DATA and done.sha256 == remote.sha256
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == len(DATA) and progress[-1].eta is not None
    assert not part_path(done.path).exists()


def test_corrupted_bytes_are_caught_and_nothing_is_kept(hub: FakeHub) -> None:
    hub.add(REPO, "bad.gguf", DATA, corrupt=True)
    remote = remote_file(REPO, "bad.gguf", endpoint=hub.endpoint)
    with pytest.raises(VerificationFailed, match="did not verify"):
        list(download(remote, paths.models_dir()))
    target = target_path(paths.models_dir(), REPO, "bad.gguf")
    assert not target.exists() and not part_path(target).exists()


def test_cut_connection_then_resume_fetches_only_the_rest(hub: FakeHub) -> None:
    hub.cut_after = 1024 * 1024
    with pytest.raises(HubOffline):
        _run(hub)
    target = target_path(paths.models_dir(), REPO, NAME)
    kept = part_path(target).stat().st_size
    assert kept >= 1024 * 1024 - 65536
    hub.cut_after = None
    assert isinstance(_run(hub)[-1], Downloaded)
    assert target.read_bytes() == DATA
    assert hub.body_bytes(REPO, NAME) == [None, f"bytes={kept}-"]


def _download_in_child(endpoint: str, home: str) -> None:
    os.environ["QUANTDESK_HOME"] = home
    remote = remote_file(REPO, NAME, endpoint=endpoint)
    for _ in download(remote, paths.models_dir()):
        pass


def test_killed_app_resumes_without_fetching_again(hub: FakeHub,
                                                   quantdesk_home: Path) -> None:
    hub.delay = 0.02
    child = mp.get_context("spawn").Process(target=_download_in_child,
                                            args=(hub.endpoint, str(quantdesk_home)))
    child.start()
    part = part_path(target_path(paths.models_dir(), REPO, NAME))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 512 * 1024):
        time.sleep(0.02)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    kept = part.stat().st_size
    assert 0 < kept < len(DATA)
    hub.delay = 0.0
    assert isinstance(_run(hub)[-1], Downloaded)
    assert hub.body_bytes(REPO, NAME)[-1] == f"bytes={kept}-"
    assert target_path(paths.models_dir(), REPO, NAME).read_bytes() == DATA


def test_cancel_removes_the_partial_file(hub: FakeHub) -> None:
    hub.delay = 0.01
    cancel = threading.Event()
    remote = remote_file(REPO, NAME, endpoint=hub.endpoint)
    with pytest.raises(Cancelled):
        for event in download(remote, paths.models_dir(), cancel=cancel, progress_interval=0):
            if isinstance(event, Progress) and event.done > 256 * 1024:
                cancel.set()
    target = target_path(paths.models_dir(), REPO, NAME)
    assert not target.exists() and not part_path(target).exists()
    assert Library().scan() == []


def test_pause_keeps_the_part_and_resume_completes(hub: FakeHub) -> None:
    hub.delay = 0.01
    pause = threading.Event()
    remote = remote_file(REPO, NAME, endpoint=hub.endpoint)
    with pytest.raises(Paused):
        for event in download(remote, paths.models_dir(), pause=pause, progress_interval=0):
            if isinstance(event, Progress) and event.done > 256 * 1024:
                pause.set()
    target = target_path(paths.models_dir(), REPO, NAME)
    assert part_path(target).exists() and Library().scan() == []
    hub.delay = 0.0
    assert isinstance(list(download(remote, paths.models_dir()))[-1], Downloaded)
    assert target.read_bytes() == DATA


def test_missing_repo_and_file(hub: FakeHub) -> None:
    with pytest.raises(HubNotFound, match="org/nope"):
        remote_file("org/nope", NAME, endpoint=hub.endpoint)
    with pytest.raises(HubNotFound, match="not found in the repository"):
        remote_file(REPO, "missing.gguf", endpoint=hub.endpoint)


def test_private_repo_needs_a_token(hub: FakeHub) -> None:
    hub.add("org/private", NAME, DATA[:1000])
    hub.private.add("org/private")
    with pytest.raises(HubNotFound, match="token"):
        remote_file("org/private", NAME, endpoint=hub.endpoint)
    remote = remote_file("org/private", NAME, endpoint=hub.endpoint, token="good-token")
    done = list(download(remote, paths.models_dir(), token="good-token"))[-1]
    assert isinstance(done, Downloaded) and done.path.read_bytes() == DATA[:1000]


def test_server_error(hub: FakeHub) -> None:
    hub.errors[REPO] = 500
    with pytest.raises(HubServerError, match="500"):
        remote_file(REPO, NAME, endpoint=hub.endpoint)


def test_offline_is_quick_and_clear() -> None:
    start = time.monotonic()
    with pytest.raises(HubOffline, match="cannot be reached"):
        remote_file(REPO, NAME, endpoint="http://127.0.0.1:9")  # nothing listens there
    assert time.monotonic() - start < 5


def test_disk_space_is_checked_before_downloading(hub: FakeHub,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(paths.models_dir())
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _p: usage._replace(free=1024 * 1024))
    with pytest.raises(DiskFull, match=r"only 0\.00 GiB is free"):
        _run(hub)
    assert hub.body_bytes(REPO, NAME) == []
