"""The main window: a sidebar of pages beside a stack that shows the chosen one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QListWidget, QMainWindow, QStackedWidget, QWidget

from app.core.hardware import HardwareProfile
from app.ui.pages.hardware import HardwarePage
from app.ui.pages.models import ModelsPage
from app.ui.pages.placeholder import PlaceholderPage


class MainWindow(QMainWindow):
    """Hardware, Models, Chat, Quantize & Compare."""

    def __init__(self, probe: Callable[[], HardwareProfile], embedded_model: Path | None) -> None:
        super().__init__()
        self.setWindowTitle("QuantDesk")
        self.resize(1100, 720)

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("Sidebar")
        self.sidebar.setFixedWidth(200)
        self.pages = QStackedWidget()

        self.hardware_page = HardwarePage(probe)
        self.models_page = ModelsPage(embedded_model)
        self.chat_page = PlaceholderPage(
            "Chat", "Chat with any model through llama.cpp: streaming replies, conversations "
            "kept on disk, sampling settings, and the embedded model ready with no setup.")
        self.compare_page = PlaceholderPage(
            "Quantize & Compare", "Quantize a model to Q8…Q2 types (with calibration) and "
            "compare the variants' size, memory, speed and quality in tables and charts.")
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

    def show_page(self, name: str) -> None:
        """Switch to the page whose sidebar entry is ``name``."""
        for row in range(self.sidebar.count()):
            if self.sidebar.item(row).text() == name:
                self.sidebar.setCurrentRow(row)
                return
        raise KeyError(name)
