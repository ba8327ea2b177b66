"""Downloads with the real huggingface-hub client against a local hub server."""

from __future__ import annotations

import hashlib
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
from app.core.library import SOURCE_APP, Library, LibraryEntry
from app.hub.checkpoint import Checkpoint, fetch_checkpoint
from app.hub.download import (
    Downloaded,
    Progress,
    RemoteFile,
    download,
    download_files,
    part_path,
    remote_file,
    target_path,
)
from app.hub.errors import (
    Cancelled,
    DiskFull,
    HubError,
    HubNotFound,
    HubOffline,
    HubServerError,
    Paused,
    VerificationFailed,
)
from tests.helpers.fake_hub import FakeHub
from tests.helpers.split_model import split_model_parts

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


# --- files already in place, and models of several parts ------------------------------------

SPLIT_REPO = "org/split-GGUF"


@pytest.fixture
def split_hub(hub: FakeHub) -> dict[str, bytes]:
    """A real three-part GGUF model (about 2.5 MiB a part) on the hub."""
    parts = split_model_parts("split-Q4_K_M", 3, 2560 * 1024 + 99)
    for name, data in parts.items():
        hub.add(SPLIT_REPO, name, data)
    return parts


def _remotes(hub: FakeHub, parts: dict[str, bytes]) -> list[RemoteFile]:
    return [remote_file(SPLIT_REPO, name, endpoint=hub.endpoint) for name in sorted(parts)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _models() -> list[LibraryEntry]:
    return [e for e in Library().scan() if e.source == SOURCE_APP]


def test_a_verified_file_in_place_is_not_fetched_again(hub: FakeHub) -> None:
    first = _run(hub)[-1]
    assert isinstance(first, Downloaded) and not first.reused
    again = _run(hub, progress_interval=0)[-1]
    assert isinstance(again, Downloaded) and again.reused
    assert again.path == first.path and again.sha256 == _sha(DATA)
    assert hub.body_bytes(REPO, NAME) == [None]  # one fetch in all


def test_a_damaged_file_in_place_is_fetched_again_and_replaced(hub: FakeHub) -> None:
    target = target_path(paths.models_dir(), REPO, NAME)
    target.parent.mkdir(parents=True)
    target.write_bytes(bytes(len(DATA)))  # the right size, the wrong bytes
    done = _run(hub)[-1]
    assert isinstance(done, Downloaded) and not done.reused
    assert target.read_bytes() == DATA and hub.body_bytes(REPO, NAME) == [None]


def test_split_download_progress_covers_every_part(hub: FakeHub,
                                                   split_hub: dict[str, bytes]) -> None:
    events = list(download_files(_remotes(hub, split_hub), paths.models_dir(),
                                 progress_interval=0))
    total = sum(len(d) for d in split_hub.values())
    progress = [e for e in events if isinstance(e, Progress)]
    assert all(p.total == total for p in progress)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == total
    done = [e for e in events if isinstance(e, Downloaded)]
    assert [d.path.name for d in done] == sorted(split_hub)
    assert all(d.path.read_bytes() == split_hub[d.path.name] for d in done)


def test_split_download_pause_then_resume_fetches_no_finished_part(
        hub: FakeHub, split_hub: dict[str, bytes]) -> None:
    first, second, third = sorted(split_hub)
    hub.delay = 0.002
    pause = threading.Event()
    with pytest.raises(Paused, match=second):
        for event in download_files(_remotes(hub, split_hub), paths.models_dir(), pause=pause,
                                    progress_interval=0):
            if isinstance(event, Progress) and event.done > len(split_hub[first]) + 512 * 1024:
                pause.set()
    folder = paths.models_dir() / SPLIT_REPO
    kept = part_path(folder / second).stat().st_size
    assert (folder / first).read_bytes() == split_hub[first] and 0 < kept < len(split_hub[second])
    assert _models() == []  # neither the finished first part nor the part file is a model

    hub.delay = 0.0
    events = list(download_files(_remotes(hub, split_hub), paths.models_dir()))
    assert [e.reused for e in events if isinstance(e, Downloaded)] == [True, False, False]
    assert hub.body_bytes(SPLIT_REPO, first) == [None]
    assert hub.body_bytes(SPLIT_REPO, second) == [None, f"bytes={kept}-"]
    assert hub.body_bytes(SPLIT_REPO, third) == [None]
    for name, data in split_hub.items():
        assert _sha((folder / name).read_bytes()) == _sha(data)
    [model] = _models()
    assert model.path == folder / first and model.info is not None
    assert model.info.split_count == 3


def _download_all_in_child(endpoint: str, home: str, names: list[str]) -> None:
    os.environ["QUANTDESK_HOME"] = home
    remotes = [remote_file(SPLIT_REPO, n, endpoint=endpoint) for n in names]
    for _ in download_files(remotes, paths.models_dir()):
        pass


def test_killed_split_download_resumes_without_fetching_finished_parts(
        hub: FakeHub, split_hub: dict[str, bytes], quantdesk_home: Path) -> None:
    first, second, _ = sorted(split_hub)
    hub.delay = 0.02  # 64 KiB per 20 ms: the kill lands well inside the second part
    child = mp.get_context("spawn").Process(
        target=_download_all_in_child, args=(hub.endpoint, str(quantdesk_home), sorted(split_hub)))
    child.start()
    folder = paths.models_dir() / SPLIT_REPO
    part = part_path(folder / second)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 512 * 1024):
        time.sleep(0.01)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    kept = part.stat().st_size
    assert (folder / first).read_bytes() == split_hub[first] and 0 < kept < len(split_hub[second])
    assert _models() == []

    hub.delay = 0.0
    list(download_files(_remotes(hub, split_hub), paths.models_dir()))
    assert hub.body_bytes(SPLIT_REPO, first) == [None]
    assert hub.body_bytes(SPLIT_REPO, second) == [None, f"bytes={kept}-"]
    for name, data in split_hub.items():
        assert _sha((folder / name).read_bytes()) == _sha(data)
    assert [m.path.name for m in _models()] == [first]


def test_a_write_that_fails_for_another_reason_says_so(hub: FakeHub) -> None:
    target = target_path(paths.models_dir(), REPO, NAME)
    part_path(target).mkdir(parents=True)  # the part's name is taken by a folder
    with pytest.raises(HubError, match=f"Writing {NAME} to .* failed") as failed:
        _run(hub)
    assert not isinstance(failed.value, DiskFull)


def test_checkpoint_fetch_places_what_conversion_needs_and_resumes_for_free(hub: FakeHub) -> None:
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
             "tokenizer.json": b"{}", "model.safetensors": DATA, "README.md": b"# hi",
             "pytorch_model.bin": b"pickle"}
    for name, data in files.items():
        hub.add("org/ckpt", name, data)
    events = list(fetch_checkpoint("org/ckpt", paths.checkpoints_dir(), endpoint=hub.endpoint))
    done = events[-1]
    assert isinstance(done, Checkpoint)
    assert done.folder == paths.checkpoints_dir() / "org" / "ckpt"
    assert done.files == ("config.json", "model.safetensors", "tokenizer.json")
    assert sorted(p.name for p in done.folder.iterdir()) == list(done.files)
    assert all((done.folder / n).read_bytes() == files[n] for n in done.files)
    last = events[-2]
    assert isinstance(last, Progress)
    assert last.done == last.total == sum(len(files[n]) for n in done.files)
    fetched = len([r for r in hub.requests if r.method == "GET" and r.file])
    list(fetch_checkpoint("org/ckpt", paths.checkpoints_dir(), endpoint=hub.endpoint))
    assert len([r for r in hub.requests if r.method == "GET" and r.file]) == fetched
