"""Downloads that did not finish, found on disk and resumed with the real client, or discarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.hub.download import Downloaded, download_files, remote_file
from app.hub.interrupted import discard, interrupted_downloads
from tests.helpers.fake_hub import FakeHub
from tests.helpers.split_model import split_model_parts

REPO = "org/Split-GGUF"


@pytest.fixture
def parts() -> dict[str, bytes]:
    return split_model_parts("Split-Q4_K_M", 2, 300_000)


@pytest.fixture
def hub(parts: dict[str, bytes]) -> Iterator[FakeHub]:
    h = FakeHub()
    for name, data in parts.items():
        h.add(REPO, name, data)
    h.add("org/One-GGUF", "sub/One-Q8_0.gguf", b"GGUF" + bytes(5000))
    h.start()
    yield h
    h.stop()


def _leave_behind(dest: Path, parts: dict[str, bytes]) -> tuple[Path, Path]:
    """A split download stopped in its second part, and a one-file download in a subfolder."""
    first, second = sorted(parts)
    folder = dest / REPO
    folder.mkdir(parents=True)
    (folder / first).write_bytes(parts[first])
    (folder / (second + ".part")).write_bytes(parts[second][:1000])
    one = dest / "org" / "One-GGUF" / "sub" / "One-Q8_0.gguf.part"
    one.parent.mkdir(parents=True)
    one.write_bytes(b"GGUF")
    # not downloads: another writer's hidden temporary, a part outside any repo folder
    (folder / ".Split.gguf.x1y2.part").write_bytes(b"tmp")
    (dest / "loose.gguf.part").write_bytes(b"x")
    return folder / first, one


def test_unfinished_downloads_are_found_by_repo_and_file(tmp_path: Path,
                                                         parts: dict[str, bytes]) -> None:
    finished, one = _leave_behind(tmp_path, parts)
    found = {i.repo_id: i for i in interrupted_downloads(tmp_path)}
    assert set(found) == {REPO, "org/One-GGUF"}
    split = found[REPO]
    assert split.files == tuple(sorted(parts))
    assert split.on_disk == (finished, finished.parent / (sorted(parts)[1] + ".part"))
    assert split.done_bytes == len(parts[sorted(parts)[0]]) + 1000
    assert found["org/One-GGUF"].files == ("sub/One-Q8_0.gguf",)
    assert found["org/One-GGUF"].on_disk == (one,)
    assert interrupted_downloads(tmp_path / "missing") == []


def test_resuming_fetches_only_what_is_missing(tmp_path: Path, hub: FakeHub,
                                               parts: dict[str, bytes]) -> None:
    _leave_behind(tmp_path, parts)
    split = next(i for i in interrupted_downloads(tmp_path) if i.repo_id == REPO)
    remotes = [remote_file(REPO, f, endpoint=hub.endpoint) for f in split.files]
    done = [e for e in download_files(remotes, tmp_path) if isinstance(e, Downloaded)]
    assert [d.reused for d in done] == [True, False]
    first, second = sorted(parts)
    assert hub.gets(REPO, first) == [] and [r.start for r in hub.gets(REPO, second)] == [1000]
    assert (tmp_path / REPO / second).read_bytes() == parts[second]
    assert [i.repo_id for i in interrupted_downloads(tmp_path)] == ["org/One-GGUF"]


def test_discard_deletes_exactly_what_was_listed(tmp_path: Path,
                                                 parts: dict[str, bytes]) -> None:
    _leave_behind(tmp_path, parts)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    split = next(i for i in interrupted_downloads(tmp_path) if i.repo_id == REPO)
    assert discard(split) == list(split.on_disk)
    assert before - {p for p in tmp_path.rglob("*") if p.is_file()} == set(split.on_disk)
