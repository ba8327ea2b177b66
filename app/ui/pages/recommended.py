"""Recommended: catalog models and the quantization of each that suits this machine, and why.

The ranking is by quality (measured by the user's own evaluations where there are some, else
expected from the table in resources) within this machine's memory and the speed target set
here; the reason names what ruled out the next better quantization.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import bandwidth, catalog, memory, recommend, store_reads
from app.core.hardware import GIB, HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.jobs.task import Task
from app.ui.widgets import row_table, text_label

COLUMNS = ("Model", "Quantization", "Fit", "Memory", "Speed", "Quality", "License", "Why")
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 131072)

_Result = tuple[int, bandwidth.Bandwidth, list[recommend.Recommendation], int]


def _measured(store: Storage) -> dict[tuple[str, str], recommend.Quality]:
    """The user's evaluations, by catalog model and quant."""
    return recommend.measured_quality(store.evaluations(), catalog.load())


class RecommendedView(QWidget):
    """The recommendation table with its two settings; 'Find files' hands the repo to Discover."""

    ready = Signal(list)
    find_files = Signal(str)  # repo id

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or Settings()
        self.profile: HardwareProfile | None = None
        self.recommendations: list[recommend.Recommendation] = []
        self._asked = 0  # the latest computation: an older one's answer is dropped
        layout = QVBoxLayout(self)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Speed target"))
        self.min_tps = QDoubleSpinBox()
        self.min_tps.setRange(0.5, 200.0)
        self.min_tps.setDecimals(1)
        self.min_tps.setSingleStep(1.0)
        self.min_tps.setSuffix(" tok/s")
        self.min_tps.setValue(self.settings.recommend_min_tps)
        self.min_tps.setToolTip("The slowest generation worth recommending: a better "
                                "quantization that would run slower than this is passed over")
        self.min_tps.editingFinished.connect(self._settings_changed)
        controls.addWidget(self.min_tps)
        controls.addWidget(QLabel("Context"))
        self.context = QComboBox()
        for n in CONTEXTS:
            self.context.addItem(memory.context_label(n), n)
        chosen = self.settings.recommend_n_ctx
        self.context.setCurrentIndex(CONTEXTS.index(chosen) if chosen in CONTEXTS else 1)
        self.context.currentIndexChanged.connect(self._settings_changed)
        controls.addWidget(self.context)
        controls.addStretch()
        layout.addLayout(controls)
        self.summary = QLabel("Waiting for the hardware probe…")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.table = row_table(COLUMNS)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._show_reason)
        layout.addWidget(self.table, 1)
        self.reason = text_label("Pick a model to read why its quantization was chosen.",
                                 "Muted")
        layout.addWidget(self.reason)
        row = QHBoxLayout()
        row.addStretch()
        self.find_button = QPushButton("Find its files")
        self.find_button.setToolTip("List the model's quantizations on Hugging Face (Discover)")
        self.find_button.setEnabled(False)  # until a model is picked
        self.find_button.clicked.connect(self._find)
        row.addWidget(self.find_button)
        layout.addLayout(row)

    def set_hardware(self, profile: HardwareProfile) -> None:
        """Compute recommendations in the background (measures bandwidth once)."""
        self.profile = profile
        self.summary.setText("Measuring memory bandwidth…")
        self.refresh()

    def refresh(self) -> None:
        """Recompute with the current settings and the stored evaluations."""
        if self.profile is None:
            return
        self._asked += 1
        asked, profile = self._asked, self.profile
        n_ctx, min_tps = int(self.context.currentData()), self.min_tps.value()

        def work() -> _Result:
            bw = bandwidth.bandwidth(profile)
            recs = recommend.recommend(profile, catalog.load(), bw, n_ctx=n_ctx,
                                       min_tps=min_tps, measured=store_reads.read(_measured))
            return asked, bw, recs, len(catalog.load())

        task = Task(work)
        task.finished.connect(self._show)
        task.failed.connect(self.summary.setText)
        task.start()

    def _settings_changed(self) -> None:
        self.settings.recommend_min_tps = self.min_tps.value()
        self.settings.recommend_n_ctx = int(self.context.currentData())
        self.refresh()

    def _show(self, result: _Result) -> None:
        asked, bw, recs, n_models = result
        if asked != self._asked:
            return
        self.recommendations = recs
        top = next((r for r in recs if r.top_pick), None)
        gpu = (f", GPU {bw.gpu / 1e9:.0f} GB/s ({bw.gpu_source})" if bw.gpu else "")
        left_out = n_models - len(recs)
        missing = (f" {left_out} catalog model(s) cannot run here at "
                   f"{self.min_tps.value():g} tok/s or faster." if left_out else "")
        self.summary.setText((f"★ {top.model.name} {top.reason}\n" if top else "")
                             + f"Memory bandwidth: CPU {bw.cpu / 1e9:.1f} GB/s (measured){gpu}. "
                             "Speeds are estimates from bandwidth; quality is your own "
                             "measurement where you evaluated a model, else the expected figure "
                             f"for the type.{missing}")
        self.table.setRowCount(len(recs))
        for row, r in enumerate(recs):
            quality = "" if r.quality is None else (
                f"KLD {r.quality.kld:.3g} ({'measured' if r.quality.measured else 'expected'})")
            cells = (("★ " if r.top_pick else "") + r.model.name, r.quant, r.plan.badge,
                     f"{r.plan.estimate.total / GIB:.1f} GiB",
                     recommend.speed_text(r.tokens_per_second),
                     quality, r.model.license, r.reason)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(r.reason if col == len(cells) - 1 else text)
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()
        self.ready.emit(recs)

    def _show_reason(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        picked = bool(rows) and rows[0].row() < len(self.recommendations)
        self.find_button.setEnabled(picked)
        if picked:
            r = self.recommendations[rows[0].row()]
            self.reason.setText(f"{r.model.name} {r.reason}")

    def _find(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.find_files.emit(self.recommendations[rows[0].row()].model.gguf_repo)
