"""A hostile hub: repo ids and file names that try to leave the models folder.

The local hub server serves whatever names the test gives it, and hands over the bytes when
the client asks for them, as a hostile or compromised hub would. The real huggingface-hub
client downloads through app.hub.download; every refused name must give a clear RefusedName
and leave no file anywhere under the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core import paths
from app.core.paths import MAX_NAME_BYTES, UnsafeName, contained
from app.hub.checkpoint import fetch_checkpoint
from app.hub.download import Downloaded, RemoteFile, download, download_files, remote_file
from app.hub.errors import RefusedName
from app.hub.search import repo_files
from tests.helpers.fake_hub import COMMIT, FakeHub

REPO = "org/hostile-GGUF"
DATA = b"GGUF" + os.urandom(64 * 1024)

# (name the hub offers, words the refusal must use)
HOSTILE = [
    ("../../../escaped-Q4_0.gguf", "'..'"),
    ("../../../../escaped-Q4_0.gguf", "'..'"),
    ("sub/../../../../escaped-Q4_0.gguf", "'..'"),
    ("./escaped-Q4_0.gguf", "'.'"),
    ("/abs/escaped-Q4_0.gguf", "absolute path"),
    ("C:/escaped-Q4_0.gguf", "drive letter"),
    ("C:escaped-Q4_0.gguf", "drive letter"),
    ("c:\\escaped-Q4_0.gguf", "drive letter"),
    ("..\\..\\..\\escaped-Q4_0.gguf", "backslash"),
    ("sub\\escaped-Q4_0.gguf", "backslash"),
    ("nul\x00byte-Q4_0.gguf", "control character U+0000"),
    ("line\nbreak-Q4_0.gguf", "control character U+000A"),
    ("escape\x1b[2J-Q4_0.gguf", "control character U+001B"),
    ("del\x7f-Q4_0.gguf", "control character U+007F"),
    ("c1\x85-Q4_0.gguf", "control character U+0085"),
    ("sub//escaped-Q4_0.gguf", "empty folder name"),
    ("sub/-Q4_0.gguf/", "empty folder name"),
    ("x" * 256 + "-Q4_0.gguf", "bytes"),
    ("é" * 130 + "-Q4_0.gguf", "bytes"),  # 130 characters, 260 bytes in UTF-8
    ("y" * 246 + "-Q4_0.gguf", "bytes"),  # 256 bytes: fits alone, not with '.part'
    ("sub/" + "z" * 300 + "/a-Q4_0.gguf", "bytes"),
    (".. /escaped-Q4_0.gguf", "dot or a space"),
    ("what?-Q4_0.gguf", "Windows does not allow"),
    ("NUL.Q4_0.gguf", "device name"),
]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    for name, _ in HOSTILE:
        h.add(REPO, name, DATA)
    h.add(REPO, "fine-Q8_0.gguf", DATA)
    h.start()
    yield h
    h.stop()


def _files_under(root: Path) -> set[Path]:
    return {Path(folder) / f for folder, _dirs, files in os.walk(root) for f in files}


def test_the_hostile_hub_really_serves_the_names(hub: FakeHub) -> None:
    """The server side of the other tests: a refusal below is the client's, not a 404."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    for name in ("../../../escaped-Q4_0.gguf", "C:/escaped-Q4_0.gguf", "line\nbreak-Q4_0.gguf",
                 "x" * 256 + "-Q4_0.gguf"):
        meta = get_hf_file_metadata(hf_hub_url(REPO, name, endpoint=hub.endpoint))
        assert meta.size == len(DATA)
    listed = [s for q in repo_files(REPO, endpoint=hub.endpoint).quants for s in q.files]
    assert "../../../escaped-Q4_0.gguf" in listed


@pytest.mark.parametrize(("name", "reason"), HOSTILE, ids=[repr(n)[:40] for n, _ in HOSTILE])
def test_hostile_file_name_is_refused_and_nothing_is_written(
        hub: FakeHub, tmp_path: Path, name: str, reason: str) -> None:
    dest = paths.models_dir()
    before = _files_under(tmp_path)
    with pytest.raises(RefusedName) as refused:
        remote = remote_file(REPO, name, endpoint=hub.endpoint)
        list(download(remote, dest))
    message = str(refused.value)
    assert "will not write to disk" in message and reason in message
    assert "Nothing was downloaded" in message
    assert "\n" not in message and "\x00" not in message  # the name is shown escaped
    assert _files_under(tmp_path) == before
    assert [r for r in hub.requests if r.file is not None] == []  # refused before asking


@pytest.mark.parametrize(("name", "reason"), HOSTILE, ids=[repr(n)[:40] for n, _ in HOSTILE])
def test_download_refuses_even_a_remote_it_did_not_vet(
        hub: FakeHub, tmp_path: Path, name: str, reason: str) -> None:
    """``download`` builds the path itself: a RemoteFile made elsewhere gets the same check."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(REPO, name, endpoint=hub.endpoint)
    remote = RemoteFile(REPO, name, url, len(DATA), None, COMMIT)
    before = _files_under(tmp_path)
    with pytest.raises(RefusedName, match="will not write to disk"):
        list(download_files([remote], paths.models_dir()))
    assert _files_under(tmp_path) == before
    assert hub.gets(REPO, name) == []


@pytest.mark.parametrize("repo_id", ["../../escaped", "org/..", "..", "org//x", "org/x\n",
                                     "C:/x", "org\\x"])
def test_hostile_repo_id_is_refused_before_any_request(hub: FakeHub, tmp_path: Path,
                                                       repo_id: str) -> None:
    before = _files_under(tmp_path)
    with pytest.raises(RefusedName):
        remote_file(repo_id, "fine-Q8_0.gguf", endpoint=hub.endpoint)
    with pytest.raises(RefusedName):
        list(fetch_checkpoint(repo_id, paths.checkpoints_dir(), endpoint=hub.endpoint))
    assert hub.requests == [] and _files_under(tmp_path) == before


def test_a_hostile_repo_id_from_a_search_hit_is_a_clear_error(hub: FakeHub) -> None:
    """Listing a repo whose id the client itself rejects is a HubError, not a raw ValueError."""
    with pytest.raises(RefusedName, match="not a valid Hugging Face name"):
        repo_files("../escaped", endpoint=hub.endpoint)


@pytest.mark.parametrize("weights", ["..\\..\\..\\model.safetensors", "C:model.safetensors",
                                     "model\x00.safetensors", "w" * 300 + ".safetensors"])
def test_checkpoint_with_a_hostile_weights_name_writes_nothing(tmp_path: Path,
                                                               weights: str) -> None:
    hub = FakeHub()
    hub.add("org/ckpt", "config.json", b"{}")
    hub.add("org/ckpt", weights, DATA)
    hub.start()
    try:
        before = _files_under(tmp_path)
        with pytest.raises(RefusedName, match="will not write to disk"):
            list(fetch_checkpoint("org/ckpt", paths.checkpoints_dir(), endpoint=hub.endpoint))
        assert _files_under(tmp_path) == before
        assert hub.gets("org/ckpt", weights) == []
    finally:
        hub.stop()


def test_a_plain_name_beside_the_hostile_ones_still_downloads(hub: FakeHub) -> None:
    remote = remote_file(REPO, "fine-Q8_0.gguf", endpoint=hub.endpoint)
    done = list(download(remote, paths.models_dir()))[-1]
    assert isinstance(done, Downloaded)
    assert done.path == paths.models_dir() / "org" / "hostile-GGUF" / "fine-Q8_0.gguf"
    assert done.path.read_bytes() == DATA


# --- the helper itself ------------------------------------------------------------------------

def test_contained_keeps_plain_names(tmp_path: Path) -> None:
    assert contained(tmp_path, "org/repo", "sub/x.gguf") == tmp_path / "org/repo/sub/x.gguf"
    assert contained(tmp_path, "a" * MAX_NAME_BYTES) == tmp_path / ("a" * MAX_NAME_BYTES)
    assert contained(tmp_path, "..x", "x..gguf", "Ünïcødé 模型.gguf") == \
        tmp_path / "..x" / "x..gguf" / "Ünïcødé 模型.gguf"
    with pytest.raises(UnsafeName, match="at most 250"):
        contained(tmp_path, "a" * 251, room=5)
    assert contained(tmp_path, "a" * 251 + "/b", room=5) == tmp_path / ("a" * 251) / "b"


@given(st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=4))
def test_contained_either_refuses_or_stays_inside(parts: list[str]) -> None:
    """Any names at all: a path that comes back lies inside the base, one component per
    name segment, and none of them is a relative step."""
    base = Path("/base/models")
    try:
        path = contained(base, *parts)
    except UnsafeName as exc:
        assert str(exc).startswith("the name ")
        return
    assert os.path.normpath(path) == str(path)
    assert path.is_relative_to(base) and path != base
    assert len(path.parts) == len(base.parts) + sum(len(p.split("/")) for p in parts)
    assert not {".", ".."} & set(path.parts)
