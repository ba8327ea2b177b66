"""Recommended: catalog models and quantizations that run well on this machine."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import bandwidth, catalog, recommend
from app.core.hardware import GIB, HardwareProfile
from app.jobs.task import Task
from app.ui.widgets import row_table

COLUMNS = ("Model", "Quantization", "Fit", "Memory", "Speed", "License", "Why")


class RecommendedView(QWidget):
    """The recommendation table; 'Find files' hands the repo to Discover."""

    ready = Signal(list)
    find_files = Signal(str)  # repo id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.recommendations: list[recommend.Recommendation] = []
        layout = QVBoxLayout(self)
        self.summary = QLabel("Waiting for the hardware probe…")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.table = row_table(COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table, 1)
        row = QHBoxLayout()
        row.addStretch()
        self.find_button = QPushButton("Find its files")
        self.find_button.clicked.connect(self._find)
        row.addWidget(self.find_button)
        layout.addLayout(row)

    def set_hardware(self, profile: HardwareProfile) -> None:
        """Compute recommendations in the background (measures bandwidth once)."""
        self.summary.setText("Measuring memory bandwidth…")

        def work() -> tuple[bandwidth.Bandwidth, list[recommend.Recommendation]]:
            bw = bandwidth.bandwidth(profile)
            return bw, recommend.recommend(profile, catalog.load(), bw)

        task = Task(work)
        task.finished.connect(self._show)
        task.failed.connect(self.summary.setText)
        task.start()

    def _show(self, result: tuple[bandwidth.Bandwidth, list[recommend.Recommendation]]) -> None:
        bw, recs = result
        self.recommendations = recs
        top = next((r for r in recs if r.top_pick), None)
        gpu = (f", GPU {bw.gpu / 1e9:.0f} GB/s ({bw.gpu_source})" if bw.gpu else "")
        self.summary.setText((f"★ {top.reason}\n" if top else "")
                             + f"Memory bandwidth: CPU {bw.cpu / 1e9:.1f} GB/s (measured){gpu}. "
                             "Speeds are estimates from bandwidth.")
        self.table.setRowCount(len(recs))
        for row, r in enumerate(recs):
            cells = (("★ " if r.top_pick else "") + r.model.name, r.quant, r.plan.badge,
                     f"{r.plan.estimate.total / GIB:.1f} GiB", f"~{r.tokens_per_second:.0f} tok/s",
                     r.model.license, r.reason)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(r.reason if col == len(cells) - 1 else text)
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()
        self.ready.emit(recs)

    def _find(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.find_files.emit(self.recommendations[rows[0].row()].model.gguf_repo)
