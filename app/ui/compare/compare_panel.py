"""Evaluate variants against a reference and compare them: table, charts, recommendation,
export, and the stored evaluations to reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import report
from app.core.settings import Settings
from app.core.storage import Storage
from app.core.units import format_duration
from app.jobs.pipeline_job import PipelineJob
from app.pipeline import events as ev
from app.pipeline import plans
from app.pipeline.texts import TextSource
from app.ui.compare.ab_chat import ABChat, tally_text
from app.ui.compare.charts import QualityChart, bar_chart, png
from app.ui.compare.comparison_table import ComparisonTable
from app.ui.compare.layer_view import LayerView
from app.ui.widgets import Card, name_combo, text_label


class ComparePanel(QWidget):
    """New evaluation form, stored evaluations, and the comparison of the chosen one.
    ``settings``: the app's (the A/B chat reads ahead as the Chat page does); the defaults
    without."""

    def __init__(self, store: Storage, settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.job: PipelineJob | None = None
        self.current: dict[str, Any] | None = None
        self.current_id: int | None = None
        self.table_rows: list[dict[str, Any]] = []
        layout = QVBoxLayout(self)

        # The form folds away while a comparison is looked at (its table, charts and A/B chat
        # need the height); "New evaluation" opens it, as does a job running or being prefilled.
        self.form = form = Card("New evaluation")
        ref_row = QHBoxLayout()
        self.reference = QLineEdit()
        self.reference.setPlaceholderText("Reference: the highest-precision file (F16, Q8_0)")
        pick_ref = QPushButton("Browse…")
        pick_ref.clicked.connect(self._pick_reference)
        ref_row.addWidget(self.reference, 1)
        ref_row.addWidget(pick_ref)
        form.body.addLayout(ref_row)
        cand_row = QHBoxLayout()
        self.candidates = QListWidget()
        self.candidates.setMaximumHeight(80)
        add = QPushButton("Add variants…")
        add.clicked.connect(self._add_candidates)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.candidates.takeItem(self.candidates.row(i))
                                        for i in self.candidates.selectedItems()])
        cand_row.addWidget(self.candidates, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        cand_row.addLayout(buttons)
        form.body.addLayout(cand_row)
        opts = QHBoxLayout()
        self.chunks = QSpinBox()
        self.chunks.setRange(1, 10000)
        self.chunks.setValue(8)
        self.chunks.setPrefix("chunks: ")
        self.chunks.setToolTip("Chunks of 512 tokens of the bundled evaluation text to score "
                               "(23 in all); more is slower and more precise.")
        self.run_button = QPushButton("Evaluate")
        self.run_button.setObjectName("Primary")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.job and self.job.cancel())
        opts.addWidget(self.chunks)
        opts.addStretch()
        opts.addWidget(self.run_button)
        opts.addWidget(self.cancel_button)
        form.body.addLayout(opts)
        self.progress = QProgressBar()
        self.status = text_label("", "Muted")
        form.body.addWidget(self.progress)
        form.body.addWidget(self.status)

        top = QHBoxLayout()
        self.new_button = QPushButton("New evaluation")
        self.new_button.setCheckable(True)
        self.new_button.setToolTip("Measure quantizations against their reference")
        self.new_button.toggled.connect(self._show_form)
        top.addWidget(self.new_button)
        self.stored = name_combo(30)
        self.stored.currentIndexChanged.connect(self._open_stored)
        top.addWidget(text_label("Comparison:"))
        top.addWidget(self.stored, 1)
        self.budget = QDoubleSpinBox()
        self.budget.setDecimals(3)
        self.budget.setSingleStep(0.01)
        self.budget.setRange(0.001, 5.0)
        self.budget.setValue(report.DEFAULT_KLD_BUDGET)
        self.budget.setPrefix("KLD budget ")
        self.budget.valueChanged.connect(self._update_recommendation)
        top.addWidget(self.budget)
        for label, slot in (("CSV…", self.export_csv), ("JSON…", self.export_json),
                            ("HTML report…", self.export_html)):
            button = QPushButton(label)
            button.clicked.connect(slot)
            top.addWidget(button)
        layout.addLayout(top)
        layout.addWidget(form)  # below its button, which stays where it is
        self.recommendation = text_label("", "CardTitle")
        layout.addWidget(self.recommendation)
        self.votes = text_label("", "Muted")
        layout.addWidget(self.votes)

        self.tabs = QTabWidget()
        self.table = ComparisonTable()
        self.tabs.addTab(self.table, "Table")
        self.quality_chart = QualityChart()
        self.tabs.addTab(self.quality_chart, "Quality vs size")
        self.speed_chart = bar_chart("Speed", [], [("pp", "prompt"), ("tg", "generation")],
                                     "tokens/s")
        self.memory_chart = bar_chart("Memory", [], [("rss_gib", "peak RAM")], "GiB")
        self.tabs.addTab(self.speed_chart, "Speed")
        self.tabs.addTab(self.memory_chart, "Memory")
        self.layer_view = LayerView()
        self.tabs.addTab(self.layer_view, "Layers")
        self.ab_chat = ABChat(store, settings)
        self.ab_chat.voted.connect(lambda tally: self.votes.setText(tally_text(tally)))
        self.tabs.addTab(self.ab_chat, "A/B chat")
        layout.addWidget(self.tabs, 1)
        self.reload()
        self._show_form(self.stored.count() == 0)  # nothing to look at yet: start here

    # ------------------------------------------------------------------ inputs

    def _pick_reference(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference GGUF", "", "GGUF (*.gguf)")
        if path:
            self.reference.setText(path)

    def _add_candidates(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Variants to compare", "", "GGUF (*.gguf)")
        for p in paths:
            self.candidates.addItem(p)

    def prefill(self, reference: str, candidates: list[str]) -> None:
        """Fill the form (from the quantize panel's results)."""
        self.reference.setText(reference)
        self.candidates.clear()
        for c in candidates:
            self.candidates.addItem(c)
        self._show_form(True)

    @property
    def running(self) -> bool:
        """An evaluation started here has not ended yet (its thread may linger a moment after
        its last signal: the buttons tell)."""
        return self.cancel_button.isEnabled()

    def _show_form(self, on: bool) -> None:
        """Open or fold the form; it stays open while its job runs (the progress is there)."""
        on = on or self.running
        self.form.setVisible(on)
        self.new_button.blockSignals(True)
        self.new_button.setChecked(on)
        self.new_button.blockSignals(False)

    # ------------------------------------------------------------------ evaluation job

    def start(self) -> None:
        ref = Path(self.reference.text().strip())
        cands = [Path(self.candidates.item(i).text()) for i in range(self.candidates.count())]
        if not ref.is_file() or not cands:
            self.status.setText("Choose a reference file and at least one variant.")
            return
        plan = plans.evaluate_plan(ref, cands, TextSource.evaluation(),
                                   chunks=self.chunks.value())
        self.job = PipelineJob(plans.create(self.store, plan), self)
        self.job.progress.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.job.failed.connect(lambda m: self._stopped(f"Stopped: {m}"))
        self.job.cancelled.connect(lambda: self._stopped("Cancelled."))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Starting…")
        self.job.start()

    def _on_event(self, event: object) -> None:
        if isinstance(event, ev.RunProgress):
            self.progress.setRange(0, 1000)
            self.progress.setValue(round(event.fraction * 1000))
        elif isinstance(event, ev.StepProgress):
            eta = f" · {format_duration(event.eta_seconds)} left" if event.eta_seconds else ""
            self.status.setText(f"{event.message}{eta}")
        elif isinstance(event, ev.StepFinished) and "result" in event.outputs:
            result = event.outputs["result"]
            cached = event.reused or event.outputs.get("from_cache")
            self.status.setText(f"{result['name']}: PPL {result['quality']['ppl']:.3f}"
                                + (" (measured earlier)" if cached else ""))

    def _on_finished(self, result: object) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if isinstance(result, ev.RunFinished):
            self.status.setText("Done; the comparison is saved.")
            self.reload(select=int(result.outputs["summary"]["evaluation_id"]))
            self._show_form(False)  # the new comparison, with the room to read it

    def _stopped(self, message: str) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.status.setText(message)

    # ------------------------------------------------------------------ showing results

    def reload(self, select: int | None = None) -> None:
        self.stored.blockSignals(True)
        self.stored.clear()
        for stored in self.store.evaluations():
            self.stored.addItem(f"#{stored.id} {stored.title}", stored.id)
        self.stored.blockSignals(False)
        if self.stored.count():
            index = self.stored.findData(select) if select is not None else 0
            self.stored.setCurrentIndex(max(index, 0))
            self._open_stored(max(index, 0))

    def _open_stored(self, index: int) -> None:
        eval_id = self.stored.itemData(index)
        if eval_id is None:
            return
        stored = self.store.evaluation(int(eval_id))
        self.show_evaluation(stored.result, stored.id)

    def show_evaluation(self, evaluation: dict[str, Any], eval_id: int | None = None) -> None:
        self.current, self.current_id = evaluation, eval_id
        self.table_rows = report.rows(evaluation)
        self.table.show_rows(self.table_rows)
        self.quality_chart.show_rows(self.table_rows)
        self._replace_chart("speed_chart", bar_chart(
            "Speed (pp512, tg128)", self.table_rows, [("pp", "prompt"), ("tg", "generation")],
            "tokens/s"), 2)
        self._replace_chart("memory_chart", bar_chart(
            "Peak memory while evaluating", self.table_rows, [("rss_gib", "peak RAM")], "GiB"),
            3)
        self._update_recommendation()
        reference = evaluation["reference"]
        candidates = evaluation["candidates"]
        self.layer_view.set_variants(reference["path"],
                                     [(c["name"], c["path"]) for c in candidates])
        self.ab_chat.set_variants(eval_id, [(v["name"], v["path"])
                                            for v in (reference, *candidates)])
        votes = self.store.evaluation(eval_id).votes if eval_id is not None else {}
        self.votes.setText(tally_text(votes))

    def open_ab_chat(self, evaluation_id: int, first: str, second: str) -> None:
        """Show the stored evaluation's A/B chat with ``first`` and ``second`` (model paths)
        chosen."""
        self.reload(select=evaluation_id)
        self._show_form(False)
        self.tabs.setCurrentWidget(self.ab_chat)
        for combo, path in ((self.ab_chat.first, first), (self.ab_chat.second, second)):
            index = combo.findText(Path(path).stem)
            if index >= 0:
                combo.setCurrentIndex(index)

    def shutdown(self) -> None:
        """End the A/B chat's engines and any running job (the window closes)."""
        self.ab_chat.shutdown()
        for job in (self.job, self.layer_view.job):
            if job is not None and job.running:
                job.cancel()

    def _replace_chart(self, attr: str, view: QWidget, index: int) -> None:
        old = getattr(self, attr)
        title = self.tabs.tabText(index)
        self.tabs.removeTab(index)
        self.tabs.insertTab(index, view, title)
        old.deleteLater()
        setattr(self, attr, view)

    def _update_recommendation(self) -> None:
        if self.table_rows:
            self.recommendation.setText(report.recommendation(self.table_rows,
                                                              self.budget.value()))

    # ------------------------------------------------------------------ export

    def _save(self, title: str, pattern: str, text: str) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(self, title, "", pattern)
        if not path:
            return None
        from app.core.atomic import write_text_atomic

        write_text_atomic(Path(path), text)
        self.status.setText(f"Saved {path}")
        return Path(path)

    def export_text(self, kind: str) -> str:
        assert self.current is not None
        votes = self.store.evaluation(self.current_id).votes if self.current_id else {}
        if kind == "csv":
            return report.to_csv(self.table_rows)
        if kind == "json":
            return report.to_json(self.current, votes)
        charts = {"Quality against size": png(self.quality_chart),
                  "Speed": png(self.speed_chart), "Memory": png(self.memory_chart)}
        return report.to_html(self.current, charts, votes, self.budget.value())

    def export_csv(self) -> None:
        if self.current:
            self._save("Export CSV", "CSV (*.csv)", self.export_text("csv"))

    def export_json(self) -> None:
        if self.current:
            self._save("Export JSON", "JSON (*.json)", self.export_text("json"))

    def export_html(self) -> None:
        if self.current:
            self._save("Export HTML report", "HTML (*.html)", self.export_text("html"))

