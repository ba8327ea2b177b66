"""Step 4: the results. The comparison with the recommendation highlighted and explained in words
from the measured numbers, and what to do next: chat with it, A/B chat against the reference,
make it the default chat model, export the report, delete the files not kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import report
from app.core.atomic import write_text_atomic
from app.core.storage import Storage
from app.core.units import format_bytes
from app.pipeline import wizard
from app.pipeline.events import PipelineError
from app.ui.compare.charts import QualityChart, png
from app.ui.compare.comparison_table import ComparisonTable
from app.ui.widgets import Card, text_label


class ResultsStep(QWidget):
    """The run's comparison and the actions on the recommended variant."""

    chat_requested = Signal(str)  # a model path
    ab_requested = Signal(int, str, str)  # evaluation id, reference path, variant path
    default_requested = Signal(str)
    start_over = Signal()

    def __init__(self, store: Storage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.run_id: int | None = None
        self.evaluation_id: int | None = None
        self.evaluation: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.recommended: int | None = None
        self.budget = report.DEFAULT_KLD_BUDGET
        layout = QVBoxLayout(self)

        top = Card("Recommendation")
        self.headline = text_label("", "CardTitle")
        self.detail = text_label("", "Muted")
        top.body.addWidget(self.headline)
        top.body.addWidget(self.detail)
        actions = QHBoxLayout()
        self.chat_button = QPushButton("Chat with it")
        self.chat_button.setObjectName("Primary")
        self.chat_button.clicked.connect(self._chat)
        self.ab_button = QPushButton("A/B chat against the reference")
        self.ab_button.clicked.connect(self._ab)
        self.default_button = QPushButton("Make it the default chat model")
        self.default_button.clicked.connect(self._default)
        self.export_button = QPushButton("Export report…")
        self.export_button.clicked.connect(self.export)
        again = QPushButton("Quantize another model")
        again.clicked.connect(self.start_over)
        for button in (self.chat_button, self.ab_button, self.default_button,
                       self.export_button):
            actions.addWidget(button)
        actions.addStretch()
        actions.addWidget(again)
        top.body.addLayout(actions)
        layout.addWidget(top)

        self.tabs = QTabWidget()
        self.table = ComparisonTable()
        self.chart = QualityChart()
        self.chart.setMinimumHeight(200)
        self.tabs.addTab(self.table, "Measured")
        self.tabs.addTab(self.chart, "Quality against size")
        files = QWidget()
        files_layout = QVBoxLayout(files)
        files_layout.addWidget(text_label(
            "Tick the files you do not want to keep. Nothing is ticked for you; your own source "
            "file is never listed.", "Muted"))
        self.files = QListWidget()
        self.files.itemChanged.connect(lambda _item: self._update_delete())
        files_layout.addWidget(self.files, 1)
        row = QHBoxLayout()
        self.delete_button = QPushButton("Delete ticked files")
        self.delete_button.clicked.connect(self.delete_ticked)
        self.freed = text_label("", "Muted")
        row.addWidget(self.delete_button)
        row.addWidget(self.freed, 1)
        files_layout.addLayout(row)
        self.tabs.addTab(files, "Files this run made")
        layout.addWidget(self.tabs, 1)

    # --- showing ---------------------------------------------------------------------------

    def show_run(self, run_id: int, evaluation_id: int, budget: float) -> None:
        """Show the comparison stored by run ``run_id``'s summary step."""
        self.run_id, self.evaluation_id, self.budget = run_id, evaluation_id, budget
        self.evaluation = self.store.evaluation(evaluation_id).result
        self.rows = report.rows(self.evaluation)
        self.recommended, sentence = report.explain(self.rows, budget)
        pick = self.rows[self.recommended] if self.recommended is not None else None
        if pick is None:
            self.headline.setText("No recommendation")
        elif pick["kld"] <= budget:
            self.headline.setText(f"Keep {pick['quant']}")
        else:
            self.headline.setText(f"Closest to your quality budget: {pick['quant']}")
        self.detail.setText(sentence + (f"\n{pick['path']}" if pick else ""))
        self.table.show_rows(self.rows, highlight=self.recommended)
        self.chart.show_rows(self.rows)
        for button in (self.chat_button, self.ab_button, self.default_button):
            button.setEnabled(pick is not None and Path(pick["path"]).is_file())
        self._fill_files()

    def _fill_files(self) -> None:
        assert self.run_id is not None
        keep = self.recommended_path()
        self.files.blockSignals(True)
        self.files.clear()
        for entry in wizard.run_files(self.store, self.run_id):
            item = QListWidgetItem(f"{entry.label} — {format_bytes(entry.size)}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            item.setData(Qt.ItemDataRole.UserRole, (str(entry.path), entry.size))
            if keep is not None and entry.path.resolve() == keep.resolve():
                item.setText(item.text() + "  (recommended)")
            self.files.addItem(item)
        self.files.blockSignals(False)
        self._update_delete()

    def _ticked(self) -> list[tuple[str, int]]:
        found = []
        for i in range(self.files.count()):
            item = self.files.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                found.append(item.data(Qt.ItemDataRole.UserRole))
        return found

    def _update_delete(self) -> None:
        ticked = self._ticked()
        self.delete_button.setEnabled(bool(ticked))
        self.freed.setText(f"frees {format_bytes(sum(size for _, size in ticked))}"
                           if ticked else "")

    # --- actions ---------------------------------------------------------------------------

    def recommended_path(self) -> Path | None:
        if self.recommended is None:
            return None
        return Path(self.rows[self.recommended]["path"])

    def _chat(self) -> None:
        path = self.recommended_path()
        if path is not None:
            self.chat_requested.emit(str(path))

    def _ab(self) -> None:
        path = self.recommended_path()
        if path is not None and self.evaluation_id is not None and self.evaluation:
            self.ab_requested.emit(self.evaluation_id, self.evaluation["reference"]["path"],
                                   str(path))

    def _default(self) -> None:
        path = self.recommended_path()
        if path is not None:
            self.default_requested.emit(str(path))
            self.default_button.setText("The default chat model ✓")

    def export_html(self) -> str:
        """The run's comparison as a self-contained HTML report."""
        assert self.evaluation is not None and self.evaluation_id is not None
        votes = self.store.evaluation(self.evaluation_id).votes
        return report.to_html(self.evaluation, {"Quality against size": png(self.chart)},
                              votes, self.budget)

    def export(self) -> None:
        if self.evaluation is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export the report", "quantdesk-report.html",
                                              "HTML (*.html)")
        if path:
            write_text_atomic(Path(path), self.export_html())
            self.freed.setText(f"Saved {path}")

    def delete_ticked(self, confirm: bool = True) -> None:
        """Delete the ticked files (after asking), and show what was freed."""
        ticked = self._ticked()
        if not ticked or self.run_id is None:
            return
        names = "\n".join(Path(p).name for p, _ in ticked)
        if confirm and QMessageBox.question(
                self, "Delete files", f"Delete these files for good?\n\n{names}") != \
                QMessageBox.StandardButton.Yes:
            return
        try:
            freed = wizard.delete_files(self.store, self.run_id, [Path(p) for p, _ in ticked])
        except (PipelineError, OSError) as exc:
            self.freed.setText(f"Not deleted: {exc}")
            return
        self._fill_files()
        self.freed.setText(f"Deleted {len(ticked)} files, freed {format_bytes(freed)}.")
        keep = self.recommended_path()
        for button in (self.chat_button, self.ab_button, self.default_button):
            button.setEnabled(keep is not None and keep.is_file())
