"""Step 3: the run. Overall progress with the time left, each step's state, a log to open, Cancel,
and Resume after a cancel or a failure (finished steps are not done again)."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.runs import RunStore
from app.core.storage import Storage
from app.core.units import format_duration
from app.jobs.pipeline_job import PipelineJob
from app.pipeline import events as ev
from app.ui.widgets import Card, text_label

WAITING, RUNNING, DONE, REUSED, FAILED = "waiting", "running", "done", "reused", "failed"
_MARKS = {WAITING: "○", RUNNING: "▶", DONE: "✓", REUSED: "✓", FAILED: "✗"}


class RunStep(QWidget):
    """Shows one run; ``finished`` carries the RunFinished when every step is done."""

    finished = Signal(object)
    running_changed = Signal(bool)

    def __init__(self, store: Storage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.run_id: int | None = None
        self.job: PipelineJob | None = None
        self.items: dict[str, QTreeWidgetItem] = {}
        layout = QVBoxLayout(self)
        card = Card("")
        self.title = card.title
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.overall = text_label("", "Muted")
        card.body.addWidget(self.progress)
        card.body.addWidget(self.overall)
        self.steps = QTreeWidget()
        self.steps.setHeaderLabels(["", "Step", "State"])
        self.steps.setRootIsDecorated(False)
        self.steps.setMinimumHeight(260)
        card.body.addWidget(self.steps, 1)
        buttons = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("Primary")
        self.resume_button.clicked.connect(self.resume)
        self.resume_button.hide()
        self.log_button = QPushButton("Show log")
        self.log_button.setCheckable(True)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        buttons.addStretch()
        buttons.addWidget(self.log_button)
        card.body.addLayout(buttons)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.hide()
        self.log_button.toggled.connect(self.log.setVisible)
        self.log_button.toggled.connect(
            lambda on: self.log_button.setText("Hide log" if on else "Show log"))
        card.body.addWidget(self.log, 1)
        layout.addWidget(card, 1)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def start(self, run_id: int) -> None:
        """Run (or resume) ``run_id`` and show it."""
        record = RunStore(self.store).run(run_id)
        self.run_id = run_id
        self.title.setText(record.title)
        self.steps.clear()
        self.items = {}
        for step in RunStore(self.store).steps(run_id):
            item = QTreeWidgetItem([_MARKS[WAITING], step.label, "waiting"])
            self.steps.addTopLevelItem(item)
            self.items[step.key] = item
        for column in range(3):
            self.steps.resizeColumnToContents(column)
        self.resume()

    def resume(self) -> None:
        if self.run_id is None or self.running:
            return
        self.resume_button.hide()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.overall.setText("Starting…")
        self._log(f"run {self.run_id} started")
        self.job = PipelineJob(self.run_id, self)
        self.job.progress.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.job.failed.connect(self._on_stopped)
        self.job.cancelled.connect(lambda: self._on_stopped("Cancelled; the unfinished file was "
                                                            "removed."))
        self.running_changed.emit(True)
        self.job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.cancel_button.setEnabled(False)
            self.overall.setText("Cancelling…")
            self.job.cancel()

    def _mark(self, key: str, state: str, text: str) -> None:
        item = self.items.get(key)
        if item is not None:
            item.setText(0, _MARKS[state])
            item.setText(2, text)

    def _on_event(self, event: object) -> None:
        if isinstance(event, ev.StepStarted):
            self._mark(event.key, RUNNING, "running")
            self._log(f"{event.label}…")
            self.steps.scrollToItem(self.items[event.key])
        elif isinstance(event, ev.StepProgress):
            part = f"{event.done}/{event.total}" if event.total else f"{event.done}"
            left = f", {format_duration(event.eta_seconds)} left" if event.eta_seconds else ""
            what = event.message.rsplit(": ", 1)[-1]  # 'file.gguf: chunk 3/8' → 'chunk 3/8'
            self._mark(event.key, RUNNING, f"{part}{left} · {what[:48]}")
        elif isinstance(event, ev.StepNote):
            self._log(f"note: {event.message}")
        elif isinstance(event, ev.StepFinished):
            if event.reused:
                self._mark(event.key, REUSED, "done earlier, reused")
            else:
                self._mark(event.key, DONE, f"done in {format_duration(event.seconds)}")
            self._log(f"{event.label}: {'reused' if event.reused else 'done'}")
        elif isinstance(event, ev.StepFailed):
            self._mark(event.key, FAILED, "cancelled" if event.cancelled else "failed")
            self._log(f"{event.label}: {event.message}")
        elif isinstance(event, ev.RunProgress):
            self.progress.setValue(round(event.fraction * 1000))
            left = f" · about {format_duration(event.eta_seconds)} left" \
                if event.eta_seconds else ""
            self.overall.setText(f"Step {min(event.steps_done + 1, event.steps_total)} of "
                                 f"{event.steps_total}{left}")

    def _on_finished(self, last: object) -> None:
        self.progress.setValue(1000)
        self.overall.setText("Done.")
        self.cancel_button.hide()
        self.running_changed.emit(False)
        self._log("run finished")
        if isinstance(last, ev.RunFinished):
            self.finished.emit(last)

    def _on_stopped(self, message: str) -> None:
        self.overall.setText(f"Stopped: {message} Resume goes on from the step that stopped; "
                             "finished steps are not done again.")
        self.cancel_button.hide()
        self.resume_button.show()
        self.running_changed.emit(False)
        self._log(f"stopped: {message}")

    def _log(self, line: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {line}")

    def shutdown(self) -> None:
        """Cancel the run (the window closes); it can be resumed at the next start."""
        if self.running and self.job is not None:
            self.job.cancel()
            self.job.wait(10)
