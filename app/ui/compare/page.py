"""The Quantize & Compare page: two tabs, and a hand-over from the first to the second."""

from __future__ import annotations

from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.jobs import warm
from app.ui.compare.compare_panel import ComparePanel
from app.ui.compare.quantize_panel import QuantizePanel
from app.ui.widgets import page_title


class QuantizeComparePage(QWidget):
    def __init__(self, store: Storage, settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.addWidget(page_title("Quantize & Compare"))
        self.tabs = QTabWidget()
        self.quantize = QuantizePanel(store)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.quantize)
        self.compare = ComparePanel(store, settings)
        self.tabs.addTab(scroll, "Quantize")
        self.tabs.addTab(self.compare, "Compare")
        layout.addWidget(self.tabs, 1)
        self.quantize.compare_requested.connect(self._to_compare)

    def showEvent(self, event: QShowEvent) -> None:
        """Someone about to quantize or compare: have an engine child ready, so that a job does
        not wait 0.3 s for Python and llama.cpp to start (the main window lets it go)."""
        warm.keep_warm()
        super().showEvent(event)

    def set_hardware(self, profile: HardwareProfile) -> None:
        self.compare.ab_chat.set_hardware(profile)

    def shutdown(self) -> None:
        self.quantize.shutdown()
        self.compare.shutdown()

    def _to_compare(self, reference: str, candidates: list[str]) -> None:
        self.compare.prefill(reference, candidates)
        self.tabs.setCurrentWidget(self.compare)
