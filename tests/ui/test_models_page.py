"""Models page: library table with fit badges, open in chat, add folder, remove."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QThreadPool
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from app.core import paths
from app.core.embedded import DISPLAY_NAME
from app.core.settings import Settings
from app.ui.main_window import MainWindow
from app.ui.pages.models import COLUMNS, ModelsPage
from tests.unit.test_gguf_info import _write_split

MakeWindow = Callable[[Path | None], MainWindow]


@pytest.fixture(autouse=True)
def background_work_ends(qtbot: QtBot) -> Iterator[None]:
    """Header reads, scans and database reads a test started end before the next test (or
    the interpreter's exit) rather than answering into a torn-down application."""
    yield
    assert QThreadPool.globalInstance().waitForDone(20_000), "background work still running"
    qtbot.wait(10)  # deliver their queued results


def _column(window: MainWindow, name: str) -> list[str]:
    table = window.models_page.table
    col = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())].index(name)
    return [table.item(r, col).text() for r in range(table.rowCount())]


def test_library_lists_models_with_fit_badges(qtbot: QtBot, tiny_model: Path, smollm2: Path,
                                              make_window: MakeWindow) -> None:
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.gguf")
    window = make_window(smollm2)
    page = window.models_page
    qtbot.waitUntil(lambda: page.profile is not None and page.table.rowCount() == 1,
                    timeout=30_000)
    assert _column(window, "Model") == ["tiny"]
    assert _column(window, "Type") == ["F32"]
    assert _column(window, "Fit") == ["Fits in RAM"]  # this machine has no GPU
    fit_item = page.table.item(0, COLUMNS.index("Fit"))
    assert "Runs on the CPU" in fit_item.toolTip()


def test_the_embedded_model_goes_by_the_name_the_rest_of_the_app_uses(
        qtbot: QtBot, smollm2: Path, make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    page = window.models_page
    qtbot.waitUntil(lambda: page.embedded_info is not None, timeout=30_000)
    assert page.embedded_info is not None and page.embedded_info.name != DISPLAY_NAME
    assert page.embedded_card.title.text() == f"Embedded model: {DISPLAY_NAME}"
    assert window.server_page.model.itemText(0) == DISPLAY_NAME


def test_open_in_chat_loads_the_model(qtbot: QtBot, tiny_model: Path, smollm2: Path,
                                      make_window: MakeWindow) -> None:
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.gguf")
    window = make_window(smollm2)
    page = window.models_page
    qtbot.waitUntil(lambda: page.table.rowCount() == 1, timeout=30_000)
    qtbot.waitSignal(window.chat_page.model_loaded, timeout=30_000).wait()  # the embedded one
    page.table.selectRow(0)
    with qtbot.waitSignal(window.chat_page.model_loaded, timeout=30_000) as blocker:
        page.chat_button.click()
    assert blocker.args[0].path == str(paths.models_dir() / "tiny.gguf")
    assert window.pages.currentWidget() is window.chat_page
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)


def test_add_folder_then_remove(qtbot: QtBot, tiny_model: Path, tmp_path: Path,
                                make_window: MakeWindow) -> None:
    folder = tmp_path / "my-models"
    folder.mkdir()
    shutil.copyfile(tiny_model, folder / "mine.gguf")
    window = make_window(None)
    page = window.models_page
    qtbot.waitUntil(lambda: page.rescan_button.isEnabled(), timeout=10_000)
    with qtbot.waitSignal(page.library_scanned, timeout=10_000):
        page.add_folder(str(folder))
    assert _column(window, "Model") == ["mine"] and _column(window, "Source") == [str(folder)]
    assert window.settings.model_folders == [str(folder)]
    page.table.selectRow(0)
    with qtbot.waitSignal(page.library_scanned, timeout=10_000):
        page.remove_selected(confirm=False)
    assert not (folder / "mine.gguf").exists()
    assert page.table.rowCount() == 0
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)


def _listed(text: str) -> set[Path]:
    """The paths a removal confirmation lists (one per indented line)."""
    return {Path(line.strip()) for line in text.splitlines() if line.startswith("    ")}


def _on_disk(root: Path) -> set[Path]:
    """Files and links under ``root``, but not the app's own data (its database and the WAL
    files a connection opens and closes)."""
    home = paths.data_home()
    return {p for p in root.rglob("*") if (p.is_symlink() or p.is_file())
            and not p.is_relative_to(home)}


def test_remove_confirmation_lists_exactly_what_is_deleted(
        qtbot: QtBot, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "elsewhere" / "real.gguf"
    real.parent.mkdir()
    shutil.copyfile(tiny_model, real)
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "linked.gguf").symlink_to(real)
    _write_split(folder, 2)
    shown: list[str] = []
    answer = QMessageBox.StandardButton.No

    def question(_parent: object, _title: str, text: str) -> QMessageBox.StandardButton:
        shown.append(text)
        return answer

    monkeypatch.setattr(QMessageBox, "question", question)
    page = ModelsPage(None, Settings(model_folders=[str(folder)]))
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.table.rowCount() == 2, timeout=10_000)
    names = [e.path.name for e in page.entries]
    assert names == ["linked.gguf", "tiny-00001-of-00002.gguf"]

    before = _on_disk(tmp_path)
    page.table.selectRow(0)
    page.remove_selected()  # answered No: nothing goes
    assert _on_disk(tmp_path) == before

    answer = QMessageBox.StandardButton.Yes
    for expected in ([folder / "linked.gguf"],
                     [folder / "tiny-00001-of-00002.gguf", folder / "tiny-00002-of-00002.gguf"]):
        page.table.selectRow(0)
        before = _on_disk(tmp_path)
        with qtbot.waitSignal(page.library_scanned, timeout=10_000):
            page.remove_selected()
        assert _listed(shown[-1]) == set(expected)
        assert before - _on_disk(tmp_path) == set(expected)  # what it said, and only that
    assert "only the link is deleted" in shown[1] and str(real) in shown[1]
    assert real.read_bytes() == tiny_model.read_bytes()
    assert page.table.rowCount() == 0


def _record_load(model: Path, measured_rss: int) -> None:
    from app.core import load_stats, memory
    from app.core.gguf_info import read_model_info
    from app.core.storage import Storage

    store = Storage()
    try:
        load_stats.record_load(store, model, memory.estimate(read_model_info(model), 2048),
                               measured_rss)
    finally:
        store.close()


def test_the_last_measured_load_is_shown_beside_its_estimate(qtbot: QtBot,
                                                            tiny_model: Path) -> None:
    from app.core import load_stats, memory
    from app.core.gguf_info import read_model_info
    from app.core.units import format_bytes

    model = paths.models_dir() / "tiny.gguf"
    shutil.copyfile(tiny_model, model)
    _record_load(model, 40 * 2**20)
    _record_load(model, 30 * 2**20)  # the latest is shown
    page = ModelsPage(None, Settings())
    qtbot.addWidget(page)
    column = COLUMNS.index("Last load")
    qtbot.waitUntil(lambda: page.table.rowCount() == 1
                    and page.table.item(0, column).text() != "not loaded yet", timeout=10_000)
    resident = load_stats.resident_estimate(memory.estimate(read_model_info(model), 2048))
    assert page.table.item(0, column).text() == \
        f"{format_bytes(30 * 2**20)} (est. {format_bytes(resident)})"
    assert page.table.item(0, column).toolTip().startswith("RAM: estimated")


def test_the_hardware_page_says_how_far_off_the_estimates_were(qtbot: QtBot,
                                                              tiny_model: Path) -> None:
    from app.ui.pages.hardware import HardwarePage
    from tests.ui.test_discover import _profile

    page = HardwarePage(_profile)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.profile_ready, timeout=10_000):
        page.refresh()
    qtbot.waitUntil(lambda: bool(page.estimates_label.text()), timeout=10_000)
    assert "No model has been loaded here yet" in page.estimates_label.text()
    _record_load(tiny_model, 20 * 2**20)
    with qtbot.waitSignal(page.profile_ready, timeout=10_000):
        page.refresh()
    qtbot.waitUntil(lambda: "over 1 load;" in page.estimates_label.text(), timeout=10_000)
    assert page.estimates_label.text().startswith("Memory estimates here have been within ")
