"""The main window: a sidebar of pages beside a stack that shows the chosen one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent, QColor, QIcon, QPainter, QPixmap, QShowEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import settings as settings_store
from app.core.embedded import DISPLAY_NAME
from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.jobs import warm
from app.jobs.engine_client import EngineClient
from app.ui.chat.chat_page import ChatPage
from app.ui.compare.page import QuantizeComparePage
from app.ui.pages.hardware import HardwarePage
from app.ui.pages.models import ModelsPage
from app.ui.pages.server import ServerPage
from app.ui.resume_banner import ResumeBanner
from app.ui.wizard.wizard_page import WizardPage

WIZARD = "Quantize wizard"
SERVER = "Server"


class MainWindow(QMainWindow):
    """Hardware, Models, Chat, the quantize wizard, Quantize & Compare, the local server."""

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

        self.hardware_page = HardwarePage(probe, settings)
        self.models_page = ModelsPage(embedded_model, settings)
        default_model = Path(settings.default_model) if settings.default_model else embedded_model
        self.chat_page = ChatPage(store, engine, settings, default_model,
                                  DISPLAY_NAME if default_model == embedded_model else None)
        self.hardware_page.profile_ready.connect(self.chat_page.set_hardware)
        self.hardware_page.profile_ready.connect(self.models_page.set_hardware)
        self.models_page.open_in_chat.connect(self._open_in_chat)
        self.compare_page = QuantizeComparePage(store, settings)
        self.hardware_page.profile_ready.connect(self.compare_page.set_hardware)
        self.wizard_page = WizardPage(store, settings, embedded_model is not None)
        self.hardware_page.profile_ready.connect(self.wizard_page.set_hardware)
        self.wizard_page.chat_requested.connect(self._open_in_chat)
        self.wizard_page.ab_requested.connect(self._open_ab_chat)
        self.wizard_page.default_requested.connect(self._set_default_model)
        self.models_page.quantize_requested.connect(self._quantize)
        self.chat_page.load_measured.connect(self._load_measured)
        # the server shares the chat's engine (one copy of the model, a fair queue)
        self.server_page = ServerPage(engine, settings, embedded_model, DISPLAY_NAME)
        self.server_page.running_changed.connect(self._server_indicator)
        for name, page in (("Hardware", self.hardware_page), ("Models", self.models_page),
                           ("Chat", self.chat_page), (WIZARD, self.wizard_page),
                           ("Quantize & Compare", self.compare_page),
                           (SERVER, self.server_page)):
            self.sidebar.addItem(name)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.itemClicked.connect(self._page_clicked)
        try:
            self.show_page(settings.last_page)
        except KeyError:  # a page of another version
            self.show_page("Chat")
        self._shown = False

        self.resume_banner = ResumeBanner(store)
        self.resume_banner.resume_requested.connect(self._resume_run)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(0)
        right.addWidget(self.resume_banner)
        right.addWidget(self.pages, 1)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addLayout(right, 1)
        self.setCentralWidget(central)

        self.hardware_page.refresh()
        self.resume_banner.refresh()

    def _open_ab_chat(self, evaluation_id: int, first: str, second: str) -> None:
        self.compare_page.tabs.setCurrentWidget(self.compare_page.compare)
        self.compare_page.compare.open_ab_chat(evaluation_id, first, second)
        self.show_page("Quantize & Compare")

    def _set_default_model(self, path: str) -> None:
        self.settings.default_model = path
        if self._save_settings:
            settings_store.save(self.settings)
        self.chat_page.model_bar.add_model(Path(path))

    def _load_measured(self, _record: object) -> None:
        """A load's estimate against its measured memory: the Models page shows the model's
        last figure, the Hardware page the estimator's error here."""
        self.models_page.rescan()
        self.hardware_page.refresh_estimates()

    def _server_indicator(self, running: bool) -> None:
        """A green dot beside 'Server' while it serves (the text stays: show_page finds it)."""
        item = self.sidebar.findItems(SERVER, Qt.MatchFlag.MatchExactly)[0]
        if not running:
            item.setIcon(QIcon())
            item.setToolTip("")
            return
        dot = QPixmap(10, 10)
        dot.fill(Qt.GlobalColor.transparent)
        painter = QPainter(dot)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setBrush(QColor("#2e9d4f"))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.drawEllipse(0, 0, 10, 10)
        painter.end()
        item.setIcon(QIcon(dot))
        item.setToolTip(f"Serving at {self.server_page.address.text()}")

    def _quantize(self, path: str) -> None:
        self.show_page(WIZARD)
        self.wizard_page.start_from(path)

    def _resume_run(self, run_id: int) -> None:
        self.show_page(WIZARD)
        self.wizard_page.resume(run_id)

    def _open_in_chat(self, path: str) -> None:
        self.chat_page.model_bar.select(Path(path))
        self.chat_page.load_model(path)
        self.show_page("Chat")
        self._keys_to_chat()

    def showEvent(self, event: QShowEvent) -> None:
        """Opened on the chat, the keys go to its message box: type and send. (Set before the
        window is shown, the focus went to the sidebar, the first widget Qt finds.)"""
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            self._keys_to_chat()

    def _page_clicked(self, _item: QListWidgetItem) -> None:
        """Chat opened with the mouse takes the keyboard in its message box: what is typed
        next is the message. Left in the sidebar, each letter would jump to the page whose
        name starts with it (typing "Say hello" opened Server). Moving through the sidebar
        with the arrow keys leaves the keyboard there."""
        self._keys_to_chat()

    def _keys_to_chat(self) -> None:
        """The chat, if it is the page shown, takes the keyboard in its message box."""
        if self.pages.currentWidget() is self.chat_page:
            self.chat_page.composer.setFocus()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop serving, save a reply in progress and the settings, end the engine."""
        self.server_page.shutdown()
        self.chat_page.shutdown()
        self.compare_page.shutdown()
        self.wizard_page.shutdown()
        self.hardware_page.stop_sharing()  # this machine's RPC server ends with the window
        warm.stop_warm()
        self.settings.last_page = self.sidebar.currentItem().text()
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
