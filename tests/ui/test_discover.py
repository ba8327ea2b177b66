"""Discover and Recommended on the Models page, against the local hub server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core import paths
from app.core.settings import Settings
from app.engine.probe import full_profile
from app.ui.pages.models import ModelsPage
from tests.helpers.fake_hub import FakeHub
from tests.helpers.split_model import split_model_parts

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture
def hub(tiny_model: Path) -> Iterator[FakeHub]:
    h = FakeHub()
    data = tiny_model.read_bytes()
    h.add(REPO, "SmolLM2-135M-Instruct-Q8_0.gguf", data, downloads=10)
    h.add(REPO, "SmolLM2-135M-Instruct-Q4_K_M.gguf", data)
    h.add("org/unrelated", "x-Q4_0.gguf", b"x" * 10)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def page(qtbot: QtBot, hub: FakeHub) -> ModelsPage:
    p = ModelsPage(None, Settings(), hub_endpoint=hub.endpoint)
    qtbot.addWidget(p)
    qtbot.waitUntil(lambda: p.rescan_button.isEnabled(), timeout=10_000)
    return p


def test_search_pick_and_download_lands_in_the_library(qtbot: QtBot, page: ModelsPage) -> None:
    discover = page.discover
    discover.query.setText("smollm2")
    with qtbot.waitSignal(discover.searched, timeout=10_000) as blocker:
        discover.search_button.click()
    assert [h.repo_id for h in blocker.args[0]] == [REPO]
    with qtbot.waitSignal(discover.files_listed, timeout=10_000):
        discover.results.itemClicked.emit(discover.results.item(0))
    quants = [discover.files.item(r, 0).text() for r in range(discover.files.rowCount())]
    assert quants == ["Q8_0", "Q4_K_M"]
    discover.files.selectRow(1)
    with qtbot.waitSignal(page.library_scanned, timeout=20_000):
        discover.download_button.click()
    target = paths.models_dir() / "bartowski" / "SmolLM2-135M-Instruct-GGUF" / \
        "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    assert target.exists()
    assert "Downloaded and verified" in discover.status.text()
    assert [e.path for e in page.entries] == [target]
    assert discover.progress.value() == 1000


def test_cancel_from_the_ui(qtbot: QtBot, page: ModelsPage, hub: FakeHub) -> None:
    hub.delay = 0.05
    discover = page.discover
    with qtbot.waitSignal(discover.files_listed, timeout=10_000):
        discover.open_repo(REPO)
    discover.files.selectRow(0)
    discover.download_button.click()
    qtbot.waitUntil(lambda: discover.progress.value() > 0, timeout=10_000)
    assert discover.job is not None
    job = discover.job
    with qtbot.waitSignal(job.cancelled, timeout=10_000):
        discover.cancel_button.click()
    assert "cancelled" in discover.status.text()
    assert not any(paths.models_dir().rglob("*.gguf*"))
    assert discover.download_button.isEnabled()


def test_offline_is_shown_not_hung(qtbot: QtBot) -> None:
    p = ModelsPage(None, Settings(), hub_endpoint="http://127.0.0.1:9")
    qtbot.addWidget(p)
    p.discover.query.setText("anything")
    p.discover.search_button.click()
    qtbot.waitUntil(lambda: "cannot be reached" in p.discover.status.text(), timeout=10_000)


def test_recommended_lists_models_and_finds_their_files(qtbot: QtBot, page: ModelsPage) -> None:
    with qtbot.waitSignal(page.recommended.ready, timeout=60_000) as blocker:
        page.set_hardware(full_profile())
    recs = blocker.args[0]
    assert recs and page.recommended.table.rowCount() == len(recs)
    assert "Memory bandwidth: CPU" in page.recommended.summary.text()
    row = next(i for i, r in enumerate(recs) if r.model.gguf_repo == REPO)
    page.recommended.table.selectRow(row)
    with qtbot.waitSignal(page.discover.files_listed, timeout=10_000):
        page.recommended.find_button.click()
    assert page.tabs.currentWidget() is page.discover
    assert page.discover.files.rowCount() == 2


def test_token_button_saves_to_the_keyring(page: ModelsPage) -> None:
    import keyring

    from tests.unit.test_hub_token import MemoryKeyring

    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        page.discover.save_token("hf_abcdefghijklmnop")
        assert "saved" in page.discover.status.text()
        assert list(backend.store.values()) == ["hf_abcdefghijklmnop"]
        page.discover.save_token("not a token")
        assert "start with 'hf_'" in page.discover.status.text()
        page.discover.save_token("")
        assert backend.store == {}
    finally:
        keyring.set_keyring(previous)


SPLIT_REPO = "org/Split-GGUF"


def test_pause_and_resume_of_a_split_model_fetches_no_finished_part(
        qtbot: QtBot, page: ModelsPage, hub: FakeHub) -> None:
    parts = split_model_parts("Split-Q4_K_M", 3, 2560 * 1024 + 5)
    for name, data in parts.items():
        hub.add(SPLIT_REPO, name, data)
    first, second, third = sorted(parts)
    folder = paths.models_dir() / SPLIT_REPO
    hub.delay = 0.02  # the pause lands while the second part's last 1.5 MiB take 0.5 s
    discover = page.discover
    with qtbot.waitSignal(discover.files_listed, timeout=10_000):
        discover.open_repo(SPLIT_REPO)
    assert discover.files.item(0, 1).text() == "3 parts"
    discover.files.selectRow(0)
    discover.download_button.click()
    part = folder / (second + ".part")
    qtbot.waitUntil(lambda: part.exists() and part.stat().st_size > 0, timeout=20_000)
    job = discover.job
    assert job is not None
    with qtbot.waitSignal(job.paused, timeout=10_000):
        discover.pause_button.click()
    assert discover.pause_button.text() == "Resume" and "paused" in discover.status.text()
    kept = part.stat().st_size
    with qtbot.waitSignal(page.library_scanned, timeout=10_000):
        page.rescan()
    assert page.entries == []  # the finished first part alone is not offered as a model

    hub.delay = 0.0
    with qtbot.waitSignal(page.library_scanned, timeout=20_000):
        discover.pause_button.click()  # Resume
    assert "Downloaded and verified" in discover.status.text()
    assert hub.body_bytes(SPLIT_REPO, first) == [None]  # fetched once, before the pause
    assert [r.start for r in hub.gets(SPLIT_REPO, second)] == [0, kept]  # resumed at its end
    assert hub.body_bytes(SPLIT_REPO, third) == [None]
    for name, data in parts.items():
        assert hashlib.sha256((folder / name).read_bytes()).digest() == \
            hashlib.sha256(data).digest()
    assert [e.path for e in page.entries] == [folder / first]
    assert page.entries[0].info is not None and page.entries[0].info.split_count == 3


def test_a_hostile_file_name_is_refused_with_a_clear_message(
        qtbot: QtBot, page: ModelsPage, hub: FakeHub, tmp_path: Path) -> None:
    hub.add("org/Hostile-GGUF", "../../../escaped-Q4_K_M.gguf", b"GGUF" * 1000)
    discover = page.discover
    with qtbot.waitSignal(discover.files_listed, timeout=10_000):
        discover.open_repo("org/Hostile-GGUF")
    discover.files.selectRow(0)
    discover.download_button.click()
    qtbot.waitUntil(lambda: discover.job is None, timeout=10_000)
    assert "will not write to disk" in discover.status.text()
    assert "'../../../escaped-Q4_K_M.gguf'" in discover.status.text()
    assert not list(tmp_path.rglob("*escaped*"))
    assert discover.download_button.isEnabled()
