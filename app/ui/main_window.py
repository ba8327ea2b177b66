"""The main window: a sidebar of pages beside a stack that shows the chosen one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QHBoxLayout, QListWidget, QMainWindow, QStackedWidget, QWidget

from app.core import settings as settings_store
from app.core.embedded import DISPLAY_NAME
from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.engine import child
from app.jobs.engine_client import EngineClient
from app.ui.chat.chat_page import ChatPage
from app.ui.compare.page import QuantizeComparePage
from app.ui.pages.hardware import HardwarePage
from app.ui.pages.models import ModelsPage


class MainWindow(QMainWindow):
    """Hardware, Models, Chat, Quantize & Compare."""

    def __init__(self, probe: Callable[[], HardwareProfile], embedded_model: Path | None,
                 store: Storage, engine: EngineClient, settings: Settings,
                 save_settings: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self._save_settings = save_settings
        self.setWindowTitle("QuantDesk")
        self.resize(1100, 720)

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("Sidebar")
        self.sidebar.setFixedWidth(200)
        self.pages = QStackedWidget()

        self.hardware_page = HardwarePage(probe)
        self.models_page = ModelsPage(embedded_model, settings)
        default_model = Path(settings.default_model) if settings.default_model else embedded_model
        self.chat_page = ChatPage(store, engine, settings, default_model,
                                  DISPLAY_NAME if default_model == embedded_model else None)
        self.hardware_page.profile_ready.connect(self.chat_page.set_hardware)
        self.hardware_page.profile_ready.connect(self.models_page.set_hardware)
        self.models_page.open_in_chat.connect(self._open_in_chat)
        self.compare_page = QuantizeComparePage(store)
        self.hardware_page.profile_ready.connect(self.compare_page.set_hardware)
        for name, page in (("Hardware", self.hardware_page), ("Models", self.models_page),
                           ("Chat", self.chat_page), ("Quantize & Compare", self.compare_page)):
            self.sidebar.addItem(name)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.hardware_page.refresh()

    def _open_in_chat(self, path: str) -> None:
        self.chat_page.model_bar.select(Path(path))
        self.chat_page.load_model(path)
        self.show_page("Chat")

    def closeEvent(self, event: QCloseEvent) -> None:
        """Save a reply in progress and the settings, end the engine."""
        self.chat_page.shutdown()
        self.compare_page.shutdown()
        child.stop_warm()
        if self._save_settings:
            settings_store.save(self.settings)
        super().closeEvent(event)

    def show_page(self, name: str) -> None:
        """Switch to the page whose sidebar entry is ``name``."""
        for row in range(self.sidebar.count()):
            if self.sidebar.item(row).text() == name:
                self.sidebar.setCurrentRow(row)
                return
        raise KeyError(name)
